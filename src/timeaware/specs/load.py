"""Users' own models, from where they keep them: diffusers folders and configs, timeaware runs, import paths.

A MODEL is one of:

* a diffusers folder (``config.json`` with ``_class_name``; safetensors weights from ``save_pretrained`` if
  present) or a diffusers ``config.json`` file: built offline, never downloaded;
* a timeaware run or checkpoint folder: a DDPM run's U-Net (EMA weights) or a NODE run's ODE function;
* an import path ``package.module:factory`` whose factory returns an ``nn.Module``: the user's own code,
  imported and called because the user typed it (keyword strings from ``--set key=value`` go to it).

``load_model`` also returns a JSON *record* from which ``build_base`` rebuilds the same model, so a
fixed model can be saved as weights plus a recipe. A record read from a file is data: ``build_base``
imports and calls the factory it names only with ``trust_code=True`` (the ``trust_remote_code`` rule).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import load_weights, read_json
from ..metadata import check_diffusers_config
from ..resources import check_memory

PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def is_model_path(spec: str) -> bool:
    """Whether a spec names a folder or a config file rather than an import path."""
    return spec.endswith(".json") or "/" in spec or Path(spec).exists()


def load_model(spec: str, kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a spec names; returns it and the record ``build_base`` rebuilds it from."""
    if is_model_path(spec):
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"MODEL {spec}: no such file or folder")
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
    return build_base(record, trust_code=True), record  # typed by the user: their own code


def build_base(record: dict[str, Any], *, trust_code: bool = False, source: str = "the recipe") -> nn.Module:
    """Rebuild a model from the record ``load_model`` returned.

    A ``factory`` record names code to import and call: refused unless ``trust_code`` (the record may
    come from a folder someone else wrote). ``source`` names that file in the refusal.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{source}: the model record must be a JSON object, not {type(record).__name__}")
    if record.get("kind") == "diffusers":
        import diffusers

        cls = getattr(diffusers, str(record.get("class")), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
            raise ValueError(f"{source}: diffusers has no model class {record.get('class')!r}; allowed: a diffusers "
                             "model such as UNet2DModel, UNet2DConditionModel, UNet1DModel, DiTTransformer2DModel")
        if not isinstance(record.get("config"), dict):
            raise ValueError(f"{source}: the diffusers config must be a JSON object")
        # types, ranges, and whether the model fits in memory, with the class's defaults for absent fields
        check_diffusers_config({**_init_defaults(cls), **record["config"]}, source)

        def make() -> nn.Module:
            try:
                return cls.from_config(record["config"])
            except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as err:
                raise ValueError(f"{source}: {record.get('class')} cannot be built from this config "
                                 f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None

        return build_checked(make, source)  # sized on the meta device first: fields the estimate above ignores
    if record.get("kind") == "timeaware-unet":
        from ..diffusion.unet import UNet, UNetConfig

        return build_checked(lambda: UNet(UNetConfig.from_dict(record["config"])), source)
    if record.get("kind") == "timeaware-node-func":
        from ..config import TimeAware
        from ..node.func import ODEFunc

        return build_checked(lambda: ODEFunc(record["channels"], TimeAware.from_dict(record["config"]),
                                             time=record["time"], size=tuple(record["size"]),
                                             t1=float(record.get("t1", 1.0))), source)
    if record.get("kind") != "factory":
        raise ValueError(f"{source}: unknown model record kind {record.get('kind')!r}; expected diffusers, factory, "
                         "timeaware-unet or timeaware-node-func")
    spec, kwargs = record.get("target"), record.get("kwargs", {})
    if not trust_code:
        raise ValueError(f"{source}: refusing to import and call {spec!r}, code named in a file; pass "
                         "trust_code=True (--trust-code) only if you trust where it came from")
    if not isinstance(spec, str) or not isinstance(kwargs, dict):
        raise ValueError(f"{source}: a factory record needs a target string and a kwargs object")
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


def build_checked(make: Callable[[], nn.Module], source: str) -> nn.Module:
    """``make()`` once its weights are known to fit: built first on the meta device (no memory), so a record's
    sizes from a file cannot ask for terabytes; a missing or mistyped field is one line naming ``source``."""
    try:
        with torch.device("meta"):
            weights = sum(p.numel() * p.element_size() for p in make().parameters())
        check_memory(2 * weights, f"{source}: a model of {weights:,} bytes of weights")  # the weights and a copy
        return make()
    except (KeyError, TypeError, IndexError) as err:
        what = f"missing field {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise ValueError(f"{source}: the model record does not describe a model ({what})") from None


def _init_defaults(cls: type) -> dict[str, Any]:
    """A diffusers class's constructor defaults (what ``from_config`` uses for fields a config leaves out)."""
    params = inspect.signature(cls).parameters.values()
    return {p.name: list(p.default) if isinstance(p.default, tuple) else p.default for p in params
            if p.default is not inspect.Parameter.empty
            and isinstance(p.default, (int, float, str, tuple, list, type(None)))}


def _diffusers(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    config_file = path / "config.json" if path.is_dir() else path
    config = read_json(config_file)
    if not isinstance(config, dict) or "_class_name" not in config:
        raise ValueError(f"{config_file}: not a diffusers config (it has no _class_name)")
    record = {"kind": "diffusers", "class": config["_class_name"], "config": config}
    weights = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    pickled = sorted(p for p in path.glob("*") if p.suffix in PICKLE_WEIGHTS) if path.is_dir() else []
    if pickled and not weights:
        raise ValueError(f"{pickled[0]}: pickle weights are never loaded (unpickling can run code); convert them to "
                         "safetensors where you trust them (diffusers: model.save_pretrained(folder, "
                         "safe_serialization=True)) or pass the config.json alone for random weights")
    model: Any = build_base(record, source=str(config_file))  # a diffusers ModelMixin (untyped)
    if weights:
        load_weights(model, weights[0], against=str(config_file))
    return model, {**record, "config": dict(model.config)}


def _timeaware_run(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A timeaware DDPM run's U-Net (EMA weights) or NODE run's ODE function, from its latest checkpoint."""
    from ..training import find_checkpoint, load_checkpoint, read_checkpoint_state, state_field

    found = find_checkpoint(path)
    state = read_checkpoint_state(found)["state"]
    if "unet" in state:
        from ..diffusion.sampling import load_unet

        return load_unet(found, device="cpu")[0], {"kind": "timeaware-unet", "config": state["unet"]}
    if "config" not in state:
        raise ValueError(f"{found}: not a timeaware DDPM or NODE checkpoint (its state.json has no 'unet' or 'config')")
    if "input_shape" not in state:
        raise ValueError(f"{found}: this NODE checkpoint does not record its input shape (written before 2026-12-03); "
                         "train it again, or audit its ODE function through an import path")
    from ..node.model import NodeClassifier, state_size
    from ..node.run_config import NodeRunConfig

    cfg = state_field(found, "config", lambda: NodeRunConfig.from_dict(state["config"]))
    image_channels, h, w = state["input_shape"]
    classifier = build_checked(lambda: NodeClassifier(image_channels, state["num_classes"], (h, w),
                                                      channels=cfg.channels, config=cfg.model, time=cfg.time,
                                                      solver=cfg.solver, dropout=cfg.dropout), str(found))
    assert isinstance(classifier, NodeClassifier)
    load_checkpoint(found, modules={"model": classifier}, restore_rng=False)
    record = {"kind": "timeaware-node-func", "channels": cfg.channels, "config": cfg.model.to_dict(),
              "time": cfg.time, "size": list(state_size((h, w))), "t1": classifier.block.solver.t1}
    return classifier.block.func.eval(), record


