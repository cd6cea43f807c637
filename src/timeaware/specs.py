"""Users' own models, from where they keep them, and how to call them with (x, t).

A model *spec* is one of:

* a diffusers folder (``config.json`` with ``_class_name``; weights from ``save_pretrained`` if present)
  or a diffusers ``config.json`` file: built offline, never downloaded;
* a timeaware run or checkpoint folder: a DDPM run's U-Net (EMA weights) or a NODE run's ODE function;
* an import path ``package.module:factory`` whose factory returns an ``nn.Module`` (keyword strings
  from the CLI's ``--set key=value`` are passed to it).

``load_model`` also returns a JSON *record* from which ``build_base`` rebuilds the same model, so a
fixed model can be saved as weights plus a recipe.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .embeddings import sinusoidal_features
from .io import load_tensors, read_json

CallFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]


def is_model_path(spec: str) -> bool:
    """Whether a spec names a diffusers folder or config file rather than an import path."""
    return spec.endswith(".json") or Path(spec).is_dir()


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` → ``{"k": "v"}``; a one-line error for anything else."""
    kwargs = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise ValueError(f"--set {pair!r} is not of the form key=value")
        kwargs[key] = value
    return kwargs


def load_model(spec: str, kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a spec names; returns it and the record ``build_base`` rebuilds it from."""
    if is_model_path(spec):
        path = Path(spec)
        if path.is_dir() and ((path / "state.json").is_file() or (path / "checkpoints").is_dir()):
            if kwargs:
                raise ValueError(f"--set {next(iter(kwargs))}=... is not allowed with the run folder {spec}: "
                                 "its model is rebuilt from its checkpoint")
            return _timeaware_run(path)
        return _diffusers(path)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ValueError(f"MODEL {spec!r} is not allowed; give a diffusers folder or config.json, a timeaware run "
                         "folder, or an import path package.module:factory")
    record = {"kind": "factory", "target": spec, "kwargs": dict(kwargs or {})}
    return build_base(record), record


def build_base(record: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the record ``load_model`` returned."""
    if record.get("kind") == "diffusers":
        import diffusers

        cls = getattr(diffusers, str(record.get("class")), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
            raise ValueError(f"diffusers has no model class {record.get('class')!r}")
        return cls.from_config(record["config"])
    if record.get("kind") == "timeaware-unet":
        from .diffusion.unet import UNet, UNetConfig

        return UNet(UNetConfig.from_dict(record["config"]))
    if record.get("kind") == "timeaware-node-func":
        from .config import TimeAware
        from .node.func import ODEFunc

        func = ODEFunc(record["channels"], TimeAware.from_dict(record["config"]), time=record["time"],
                       size=tuple(record["size"]))
        func.time_range = (0.0, float(record.get("t1", 1.0)))
        return func
    if record.get("kind") != "factory":
        raise ValueError(f"unknown model record kind {record.get('kind')!r}; expected diffusers, factory, "
                         "timeaware-unet or timeaware-node-func")
    spec, kwargs = record["target"], record.get("kwargs", {})
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r} from MODEL {spec!r}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{module_name!r} has no factory {attr!r}; MODEL must name a callable returning an nn.Module")
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"{spec} does not accept --set {sorted(kwargs)}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}; allowed: a torch.nn.Module")
    return model


def _diffusers(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    config_file = path / "config.json" if path.is_dir() else path
    config = read_json(config_file)
    if not isinstance(config, dict) or "_class_name" not in config:
        raise ValueError(f"{config_file}: not a diffusers config (it has no _class_name)")
    record = {"kind": "diffusers", "class": config["_class_name"], "config": config}
    model: Any = build_base(record)  # a diffusers ModelMixin (untyped)
    weights = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if weights:
        try:
            model.load_state_dict(load_tensors(weights[0]))
        except RuntimeError as err:
            raise ValueError(f"{weights[0]}: does not match {config_file} ({str(err).splitlines()[0]})") from None
    return model, {**record, "config": dict(model.config)}


def _timeaware_run(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A timeaware DDPM run's U-Net (EMA weights) or NODE run's ODE function, from its latest checkpoint."""
    from .training import find_checkpoint, load_checkpoint, read_checkpoint_state

    found = find_checkpoint(path)
    state = read_checkpoint_state(found)["state"]
    if "unet" in state:
        from .diffusion.sampling import load_model as load_unet

        return load_unet(found, device="cpu")[0], {"kind": "timeaware-unet", "config": state["unet"]}
    if "config" not in state:
        raise ValueError(f"{found}: not a timeaware DDPM or NODE checkpoint (its state.json has no 'unet' or 'config')")
    if "input_shape" not in state:
        raise ValueError(f"{found}: this NODE checkpoint does not record its input shape (written before 2026-12-03); "
                         "train it again, or audit its ODE function through an import path")
    from .node.model import NodeClassifier, state_size
    from .node.run_config import NodeRunConfig

    cfg = NodeRunConfig.from_dict(state["config"])
    image_channels, h, w = state["input_shape"]
    classifier = NodeClassifier(image_channels, state["num_classes"], (h, w), channels=cfg.channels, config=cfg.model,
                                time=cfg.time, solver=cfg.solver, dropout=cfg.dropout)
    load_checkpoint(found, modules={"model": classifier}, restore_rng=False)
    record = {"kind": "timeaware-node-func", "channels": cfg.channels, "config": cfg.model.to_dict(),
              "time": cfg.time, "size": list(state_size((h, w))), "t1": classifier.block.solver.t1}
    return classifier.block.func.eval(), record


def default_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """(C, H, W) of one input when the model says it (``input_shape``, a diffusers ``sample_size``), else None."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    config = getattr(model, "config", None)
    size = getattr(config, "sample_size", None)
    channels = getattr(config, "in_channels", None)
    if size is None or channels is None:
        return None
    return (channels, *((size, size) if isinstance(size, int) else size))


def detect_call(model: nn.Module) -> str | CallFn:
    """How to call a model with (x, t).

    "tx" for torchdiffeq-style ``forward(t, x)``; "xt" for ``model(x, t)``; for a block that takes a
    time embedding (diffusers' ``ResnetBlock2D``), a call feeding it sinusoidal features of t.
    """
    proj = getattr(model, "time_emb_proj", None)
    if isinstance(proj, nn.Linear):
        dim = proj.in_features
        return lambda m, x, t: m(x, sinusoidal_features(t.float(), dim).to(x.dtype))
    params = list(inspect.signature(model.forward).parameters)
    return "tx" if params and params[0] in ("t", "time", "ts") else "xt"


def default_timesteps(model: nn.Module, k: int = 8) -> torch.Tensor:
    """K integer diffusion steps for diffusion models (diffusers', or one with ``num_train_timesteps``),
    else K values of t over the model's ``time_range`` (an ODE function's interval), else [0, 1]."""
    steps = getattr(model, "num_train_timesteps", None)
    if steps is not None or type(model).__module__.startswith("diffusers"):
        steps = int(steps or getattr(getattr(model, "config", None), "num_train_timesteps", None) or 1000)
        return torch.linspace(0, steps - 1, k).round().long()
    t0, t1 = getattr(model, "time_range", (0.0, 1.0))
    return torch.linspace(t0, t1, k)
