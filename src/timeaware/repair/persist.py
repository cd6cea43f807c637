"""Fixed models saved so they load back identically, and loaded without running anyone's code.

A fixed model is ``model.safetensors`` (all weights, the added maps included) plus ``fix.json`` (how to
rebuild the original model, how it is called, and which fix to redo on it) and ``report.json``.
``fix.json`` is data: a recipe that names a factory to import is refused unless ``trust_code=True``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..calling import ModelCall
from ..io import load_weights, save_tensors, write_json
from ..metadata import FIX_RECIPE, read_checked
from ..resources import check_memory
from ..specs import build_base
from ..validate import MAX_MAP
from .fix import POSITIONAL_FORMS, FixResult, apply_fix

FIX_FIELDS = {"positional", "zero_operand_bias", "groups", "preserve_output", "sites", "operands"}


def save_fixed(result: FixResult, out: str | Path, base: dict[str, Any]) -> Path:
    """Write the fixed model, its recipe and the before/after report into ``out``."""
    out = Path(out)
    save_tensors(out / "model.safetensors", result.model.state_dict())
    write_json(out / "report.json", result.to_dict())
    write_json(out / "fix.json", {"base": base, "call": result.call.to_dict(), "fix": result.options})
    return out


def load_fixed(folder: str | Path, *, trust_code: bool = False) -> nn.Module:
    """Load a model written by ``save_fixed``: rebuild, redo the fix's structure, load the weights.

    ``trust_code``: allow ``fix.json`` to name a factory that is imported and called (only for folders
    you trust, as with ``trust_remote_code``); diffusers models and timeaware runs never need it.
    """
    folder = Path(folder)
    recipe = folder / "fix.json"
    meta = read_checked(recipe, FIX_RECIPE)  # the keys, and the call's fields typed and bounded
    call = _field(recipe, "call", lambda: ModelCall.from_dict(meta["call"]))
    options = _options(recipe, meta["fix"])
    if options.get("positional") and options.get("sites"):  # maps: sized first on the meta device, no memory
        with torch.device("meta"):  # (the recorded map sizes could ask for terabytes; build_base sizes the base)
            sized = _field(recipe, "base", lambda: build_base(meta["base"], trust_code=trust_code,
                                                               source=str(recipe)))
            _field(recipe, "fix", lambda: apply_fix(sized, options, call))
        weights = sum(p.numel() * p.element_size() for p in sized.parameters())
        check_memory(2 * weights, f"{recipe}: the fixed model, {weights:,} bytes of weights")
    model = _field(recipe, "base", lambda: build_base(meta["base"], trust_code=trust_code, source=str(recipe)))
    _field(recipe, "fix", lambda: apply_fix(model, options, call))
    load_weights(model, folder / "model.safetensors", against=str(recipe))
    return model


def _options(recipe: Path, options: Any) -> dict[str, Any]:
    """The recorded fix, with every field's type checked."""
    if not isinstance(options, dict) or set(options) - FIX_FIELDS:
        raise ValueError(f"{recipe}: field 'fix' must be an object with keys among {', '.join(sorted(FIX_FIELDS))}")
    if options.get("positional") not in (None, *POSITIONAL_FORMS):
        raise ValueError(f"{recipe}: fix.positional={options['positional']!r}; allowed: null, linear, mlp")
    groups = options.get("groups")
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or groups < 1):
        raise ValueError(f"{recipe}: fix.groups={groups!r}; allowed: null or a positive integer")
    sites = options.get("sites", {})
    if not isinstance(sites, dict) or not all(
            isinstance(v, list) and 1 <= len(v) <= 3 and all(isinstance(s, int) and 0 < s <= 4096 for s in v)
            and math.prod(v) <= MAX_MAP for v in sites.values()):
        raise ValueError(f"{recipe}: fix.sites must map norm names to spatial sizes (1 to 3 positive integers, "
                         f"at most {MAX_MAP:,} positions)")
    for flag in ("zero_operand_bias", "preserve_output"):
        if not isinstance(options.get(flag, False), bool):
            raise ValueError(f"{recipe}: fix.{flag}={options[flag]!r}; allowed: true or false")
    operands = options.get("operands", [])
    if not isinstance(operands, list) or not all(isinstance(o, str) for o in operands):
        raise ValueError(f"{recipe}: fix.operands must be a list of module names")
    return options


def _field(recipe: Path, name: str, build: Any) -> Any:
    """``build()``, with any failure one line naming the recipe and its field (a missing module: AttributeError)."""
    try:
        return build()
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(text if text.startswith(f"{recipe}: ") else f"{recipe}: field {name!r}: {text}") from None
