"""Checkpoints that resume a run exactly: weights, EMA, optimizer, LR scheduler, step, RNG states, config.

Layout (``RUN/checkpoints/``)::

    step-00001200/  <module>.safetensors ...  optimizer.safetensors  rng.safetensors  state.json
    latest          name of the newest complete checkpoint folder, replaced atomically

A checkpoint folder is written under a temporary name and renamed when complete, then ``latest`` is
switched, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..io import atomic_write_text, load_tensors, load_weights, save_tensors
from ..metadata import CHECKPOINT_STATE, read_checked
from ..paths import is_run_folder

T = TypeVar("T")
LATEST = "latest"
STEP_NAME = re.compile(r"step-\d{8,}")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when the run has none.

    The ``latest`` pointer must name a ``step-N`` folder of this run (a pointer leading elsewhere is
    refused); when the pointer is gone, the newest complete ``step-N`` folder is the latest.
    """
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        complete = sorted(p for p in root.glob("step-*") if STEP_NAME.fullmatch(p.name) and _inside(p, root)
                          and (p / "state.json").is_file()) if root.is_dir() else []
        return complete[-1] if complete else None
    with open(pointer, "rb") as fh:
        name = fh.read(64).decode("utf-8", errors="replace").strip()
    if not STEP_NAME.fullmatch(name):
        raise ValueError(f"{pointer}: corrupted ({name[:30]!r} is not a checkpoint folder name like step-00000001)")
    folder = root / name
    if not _inside(folder, root):
        raise ValueError(f"{pointer}: points to {folder.resolve()}, outside its run folder; refused")
    if not (folder / "state.json").is_file():
        raise ValueError(f"{pointer}: points to {folder.name}, which is missing or incomplete")
    return folder


def resume_hint(out: str | Path) -> str:
    """What an interrupted run can do next: continue from ``out``'s latest checkpoint, or start again."""
    found = latest_checkpoint(out)
    if found is None:
        return f"no checkpoint in {out} yet, so rerunning the command starts the run again"
    return f"rerun the command with --resume to continue from the last checkpoint, {found}"


def _inside(folder: Path, root: Path) -> bool:
    """Whether ``folder`` (symlinks followed) is a direct child of ``root``."""
    return folder.resolve().parent == root.resolve()


def resolve_resume(out: str | Path, resume: bool | str | Path | None) -> Path | None:
    """The checkpoint folder a run in ``out`` continues from (None: a fresh run), checked before anything is built.

    ``resume``: False (``out`` must not hold a run yet), True or ``"latest"`` (``out``'s latest checkpoint,
    None when it has none: the same command starts a run and continues it after a pre-emption), or a
    checkpoint folder or run folder (which must be ``out``'s own unless ``out`` holds no run).
    """
    out = Path(out)
    if resume is False or resume is None:
        if is_run_folder(out):  # with or without a surviving ``latest`` pointer
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        return None
    if resume is True or resume == "latest":
        return latest_checkpoint(out)
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint")
    if not path.is_dir():
        raise ValueError(f"--resume {path}: expected a checkpoint folder (with state.json) or a run folder")
    found = path if (path / "state.json").is_file() else latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"--resume {path}: no checkpoint found (expected state.json or checkpoints/latest)")
    own = checkpoint_root(out).resolve()
    if found.resolve().parent != own and is_run_folder(out):
        raise ValueError(f"--resume {path}: {out} already holds another run; choose another --out")
    return found


def save_checkpoint(run_dir: str | Path, *, step: int, modules: dict[str, nn.Module],
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any | None = None,
                    generators: dict[str, torch.Generator] | None = None, state: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    """Write a complete checkpoint for ``step`` and make it the latest; keep the newest ``keep``."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_checkpoint(tmp, step, modules, optimizer, scheduler, generators, state)
    except BaseException:  # a full disk or an interrupt: no partial folder left, the previous checkpoint stays latest
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(tmp: Path, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
                      scheduler: Any | None, generators: dict[str, torch.Generator] | None,
                      state: dict[str, Any] | None) -> None:
    for key, module in modules.items():
        save_tensors(tmp / f"{key}.safetensors", module.state_dict())
    meta: dict[str, Any] = {"step": step, "state": state or {}, "modules": sorted(modules)}
    if optimizer is not None:
        tensors, meta["optimizer"] = _split_optimizer(optimizer.state_dict())
        save_tensors(tmp / "optimizer.safetensors", tensors)
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    rng_tensors, meta["rng"] = _rng_state(generators or {})
    save_tensors(tmp / "rng.safetensors", rng_tensors)
    # json with allow_nan: ReduceLROnPlateau keeps best=inf, which must round-trip exactly.
    atomic_write_text(tmp / "state.json", json.dumps(meta, indent=1))  # fsynced like the weights


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the latest checkpoint of a run folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if (path / "state.json").is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no checkpoint found (expected state.json or checkpoints/latest)")
    return found


def load_checkpoint(path: str | Path, *, modules: dict[str, nn.Module],
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any | None = None,
                    generators: dict[str, torch.Generator] | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint folder (or a run folder's latest) into the given objects; returns its metadata."""
    path = find_checkpoint(path)
    meta = read_checkpoint_state(path)
    for key, module in modules.items():
        load_weights(module, path / f"{key}.safetensors")
    state_file = path / "state.json"
    if optimizer is not None:
        with _corrupted(state_file, "optimizer"):
            _check_param_groups(meta["optimizer"]["param_groups"], optimizer)
            _join_optimizer({}, meta["optimizer"], optimizer)  # its plain (non-tensor) state
        with _corrupted(path / "optimizer.safetensors", "optimizer"):
            optimizer.load_state_dict(_join_optimizer(load_tensors(path / "optimizer.safetensors"),
                                                      meta["optimizer"], optimizer))
    if scheduler is not None and "scheduler" in meta:
        with _corrupted(state_file, "scheduler"):  # load_state_dict sets attributes: only the ones it has, alike
            _check_like(meta["scheduler"], scheduler.state_dict(), "scheduler")
            scheduler.load_state_dict(meta["scheduler"])
    if restore_rng:
        with _corrupted(path / "rng.safetensors", "rng"):
            rng = load_tensors(path / "rng.safetensors")
            _check_rng_tensors(rng, generators or {})
        with _corrupted(state_file, "rng"):  # numpy's and Python's generators, from both files
            _restore_host_rng(rng["numpy"], meta["rng"])
        with _corrupted(path / "rng.safetensors", "rng"):
            _restore_torch_rng(rng, generators or {})
    return meta


@contextlib.contextmanager
def _corrupted(file: Path, part: str) -> Iterator[None]:
    """Any failure restoring ``part`` as one line naming ``file`` (a hostile or damaged checkpoint)."""
    try:
        yield
    except (KeyError, TypeError, IndexError, ValueError, OverflowError, RuntimeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{file}: corrupted checkpoint metadata ({part}: {detail[:200]})") from None


def _check_param_groups(groups: Any, optimizer: torch.optim.Optimizer) -> None:
    """Saved param_groups shaped like the optimizer's, over the same parameters, with hyperparameters its
    constructor accepts (betas of [1, 2] would divide by zero at the next step)."""
    live = optimizer.state_dict()["param_groups"]
    _check_like(groups, live, "param_groups")
    if [g["params"] for g in groups] != [g["params"] for g in live]:
        raise ValueError(f"param_groups hold parameters {[g['params'] for g in groups]}, the optimizer's "
                         f"{[g['params'] for g in live]}")
    accepted = set(inspect.signature(type(optimizer)).parameters) - {"params"}
    for group in groups:
        type(optimizer)([torch.zeros(1, requires_grad=True)], **{k: v for k, v in group.items() if k in accepted})


def _check_like(value: Any, like: Any, where: str) -> None:
    """``value`` has the structure of ``like``: the same keys, list lengths, kinds of scalars, null where it has
    null, the same flags (true/false decide what state is kept), and numbers finite (unless ``like``'s is not)
    and within ±2^53."""
    if like is None or value is None:
        if value is not like:
            raise ValueError(f"{where} is {value!r:.40}, expected {like!r:.40}")
        return
    if isinstance(like, dict):
        if not isinstance(value, dict) or set(map(str, value)) != set(map(str, like)):
            raise ValueError(f"{where} has fields {sorted(map(str, value)) if isinstance(value, dict) else value!r}, "
                             f"expected {sorted(map(str, like))}")
        for key, item in like.items():
            _check_like(value.get(key, value.get(str(key))), item, f"{where}.{key}")
    elif isinstance(like, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(like):
            raise ValueError(f"{where} is {str(value)[:40]}, expected a list of {len(like)}")
        for i, (item, ref) in enumerate(zip(value, like)):
            _check_like(item, ref, f"{where}.{i}")
    elif _scalar_kind(value) != _scalar_kind(like):
        raise ValueError(f"{where} is {value!r:.40}, expected a {_scalar_kind(like)}")
    elif isinstance(like, bool) and value != like:
        raise ValueError(f"{where} is {value}, the live object's is {like}")
    elif isinstance(like, int | float) and not _number_ok(value, infinite=not math.isfinite(like)):
        raise ValueError(f"{where} is {value}, expected a finite number within ±2^53")


def _number_ok(value: int | float, infinite: bool = False) -> bool:
    """A number torch and Python handle: not NaN, finite (or ±inf when ``infinite``), at most 2^53 in size."""
    if isinstance(value, int):  # exact: math.isnan(10**400) would overflow
        return abs(value) <= 2**53
    return not math.isnan(value) and (abs(value) <= 2**53 or (infinite and math.isinf(value)))


def _scalar_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def state_field(path: str | Path, name: str, build: Callable[[], T]) -> T:
    """``build()`` from the field ``name`` of a checkpoint's ``state.json``; its failure (a setting out of range,
    an unknown key) is one line naming the file and the field."""
    try:
        return build()
    except (ValueError, TypeError, KeyError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{Path(path) / 'state.json'}: field {name}: {text}") from None


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint folder; a corrupted one gives a one-line error naming the file."""
    file = Path(path) / "state.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (an incomplete checkpoint)")
    try:
        return read_checked(file, CHECKPOINT_STATE)
    except ValueError as err:
        detail = str(err).removeprefix(f"{file}: ")
        raise ValueError(f"{file}: corrupted checkpoint metadata ({detail})") from None


def rewind_to(run_dir: str | Path, folder: str | Path) -> None:
    """Make ``folder`` the run's latest checkpoint and drop newer ones (resuming from an older checkpoint
    abandons what followed it, as ``MetricsLog.truncate_after`` does for the metrics)."""
    root, folder = checkpoint_root(run_dir), Path(folder)
    if folder.resolve().parent != root.resolve():
        return  # a checkpoint of another run: this run folder starts from it
    atomic_write_text(root / LATEST, folder.name + "\n")
    for newer in sorted(p for p in root.glob("step-*") if p.is_dir() and p.name > folder.name):
        shutil.rmtree(newer, ignore_errors=True)


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for idx, slots in sd["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                plain[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict from the tensors and the plain values, each checked against the parameter it
    belongs to: a valid index, once, the parameter's shape and finite floats, and every parameter the same slots."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["plain"].items()]:
        found = re.fullmatch(r"(\d{1,9})\.(\w+)", flat)
        if found is None or int(found[1]) >= len(params):
            raise ValueError(f"state {flat[:40]!r} is not '<index>.<name>' of one of the {len(params)} parameters")
        slots = state.setdefault(int(found[1]), {})
        if found[2] in slots:
            raise ValueError(f"state {flat!r} is given twice")
        slots[found[2]] = value
        problem = _slot_problem(value, params[int(found[1])])
        if problem:
            raise ValueError(f"state {flat!r} {problem}")
    if len({frozenset(slots) for slots in state.values()}) > 1:
        raise ValueError(f"parameters keep different state: {sorted({tuple(sorted(s)) for s in state.values()})}")
    return {"state": state, "param_groups": meta["param_groups"]}


def _slot_problem(value: Any, param: torch.Tensor) -> str:
    """What is wrong with ``value`` as an optimizer state slot of ``param`` ("" when nothing is)."""
    if not isinstance(value, torch.Tensor):
        ok = value is None or isinstance(value, bool) or (isinstance(value, int | float) and _number_ok(value))
        return "" if ok else f"is {value!r:.40}, expected a tensor, a finite number, true/false or null"
    if value.ndim and (value.shape != param.shape or not value.is_floating_point()):
        return f"is {value.dtype} of shape {tuple(value.shape)}, expected a scalar or floats of {tuple(param.shape)}"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return "holds NaN/inf values (a run that diverged, or a corrupted file)"
    return ""


def _rng_state(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy global generator is always MT19937
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    tensors.update({f"gen.{k}": g.get_state() for k, g in generators.items()})
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    py = random.getstate()
    meta = {"numpy": [np_state[0], *np_state[2:]], "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def _check_rng_tensors(tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    """torch's and the generators' states are bytes, numpy's 624 words; every generator has one."""
    for key in ("torch", "numpy", *(f"gen.{k}" for k in generators)):
        if key not in tensors:
            raise ValueError(f"no RNG state {key!r}")
    for key, tensor in tensors.items():
        want = (torch.int64, (624,)) if key == "numpy" else (torch.uint8, None)
        if tensor.dtype != want[0] or tensor.ndim != 1 or (want[1] is not None and tuple(tensor.shape) != want[1]):
            raise ValueError(f"RNG state {key!r} is {tensor.dtype} of shape {tuple(tensor.shape)}, expected "
                             f"{want[0]} {'(624,)' if want[1] else 'bytes'}")


def _restore_host_rng(numpy_words: torch.Tensor, meta: dict[str, Any]) -> None:
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, numpy_words.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def _restore_torch_rng(tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["torch"])
    for key, gen in generators.items():
        gen.set_state(tensors[f"gen.{key}"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
