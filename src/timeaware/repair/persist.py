"""Fixed models saved so they load back identically.

A fixed model is saved as ``model.safetensors`` (all weights, the added maps included) plus
``fix.json`` (how to rebuild the original model and which fix to redo on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..io import load_tensors, read_json, save_tensors, write_json
from ..specs import build_base
from .fix import FixResult, apply_fix


def save_fixed(result: FixResult, out: str | Path, base: dict[str, Any]) -> Path:
    """Write the fixed model, its recipe and the before/after report into ``out``."""
    out = Path(out)
    save_tensors(out / "model.safetensors", result.model.state_dict())
    write_json(out / "report.json", result.to_dict())
    write_json(out / "fix.json", {"base": base, "fix": result.options})
    return out


def load_fixed(folder: str | Path) -> nn.Module:
    """Load a model written by ``save_fixed``: rebuild, redo the fix's structure, load the weights."""
    folder = Path(folder)
    meta = read_json(folder / "fix.json")
    model = apply_fix(build_base(meta["base"]), meta["fix"])
    try:
        model.load_state_dict(load_tensors(folder / "model.safetensors"))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"{folder / 'model.safetensors'}: does not match fix.json ({first})") from None
    return model
