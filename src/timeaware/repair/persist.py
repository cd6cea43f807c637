"""Models from where users keep them, and fixed models saved so they load back identically.

A model *spec* is one of:

* a diffusers folder (``config.json`` with ``_class_name``, weights from ``save_pretrained`` if present)
  or a diffusers ``config.json`` file — built offline, never downloaded;
* an import path ``package.module:factory`` whose factory returns an ``nn.Module``.

A fixed model is saved as ``model.safetensors`` (all weights, the added maps included) plus
``fix.json`` (how to rebuild the original model and which fix to redo on it).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from ..io import load_tensors, read_json, save_tensors, write_json
from .fix import FixResult, apply_fix


def load_model(spec: str, kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a spec names; returns it and a JSON record that rebuilds it (``build_base``)."""
    path = Path(spec)
    if path.is_dir() or spec.endswith(".json"):
        return _diffusers(path)
    if ":" in spec:
        base = {"kind": "factory", "target": spec, "kwargs": kwargs or {}}
        return build_base(base), base
    raise ValueError(f"model {spec!r} is neither a diffusers folder/config.json "
                     "nor an import path package.module:factory")


def build_base(base: dict[str, Any]) -> nn.Module:
    """Rebuild an (unfixed) model from its record."""
    if base.get("kind") == "diffusers":
        import diffusers

        cls = getattr(diffusers, base["class"], None)
        if cls is None:
            raise ValueError(f"diffusers has no model class {base['class']!r}")
        return cls.from_config(base["config"])
    if base.get("kind") == "factory":
        module_name, _, attr = base["target"].partition(":")
        if not module_name or not attr:
            raise ValueError(f"import path {base['target']!r} is not of the form package.module:factory")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import {base['target']!r}: {err}") from None
        model = factory(**base.get("kwargs", {}))
        if not isinstance(model, nn.Module):
            raise ValueError(f"{base['target']} returned a {type(model).__name__}, not a torch.nn.Module")
        return model
    raise ValueError(f"unknown model record kind {base.get('kind')!r}; expected diffusers or factory")


def _diffusers(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    config_file = path / "config.json" if path.is_dir() else path
    config = read_json(config_file)
    if not isinstance(config, dict) or "_class_name" not in config:
        raise ValueError(f"{config_file}: not a diffusers config (no _class_name)")
    base = {"kind": "diffusers", "class": config["_class_name"], "config": config}
    model = build_base(base)
    weights = [p for p in (path.glob("*.safetensors") if path.is_dir() else []) if p.name != "model.safetensors"]
    if weights:
        model.load_state_dict(load_tensors(weights[0]))
    return model, {**base, "config": dict(model.config)}


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
