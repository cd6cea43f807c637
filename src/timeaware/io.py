"""Safe, atomic files: every file the project writes appears whole or not at all.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a
crash at any moment leaves the previous version intact. Weights are safetensors; everything else is
JSON. Nothing is ever unpickled, except through ``torch.load(weights_only=True)``, which refuses code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .resources import check_memory


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename ``tmp_path`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp (and some writers) make 0600; use the mode open() would
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A temporary folder inside ``out`` whose files move into ``out`` when the block succeeds.

    For outputs of many files (sampled images): a failure halfway (a full disk, an interrupt) leaves
    ``out`` as it was, and a folder this call created is removed again.
    """
    out = Path(out)
    created = [p for p in [out, *out.parents] if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staged-", dir=out))
    try:
        yield stage
        for file in sorted(stage.iterdir()):
            os.replace(file, out / file.name)
        _fsync_dir(out)
        created = []
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # innermost first; only those still empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON with NaN/inf written as null (strict JSON that every reader accepts)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value: Any) -> Path:
    return atomic_write_text(path, dumps(value, indent=2) + "\n")


MAX_JSON_BYTES = 64 << 20  # metadata, not data: a larger file is a mistake or an attack
MAX_JSON_DEPTH = 64        # the deepest the project writes is 5; deeper would make readers recurse


MAX_JSON_INTEGER = 10**300  # beyond it an integer overflows when a reader makes it a float


def loads(text: str) -> Any:
    """JSON text whose integers a reader can use: one of hundreds of digits (which overflows when made a float)
    is a one-line ValueError naming the field, not an OverflowError in whoever reads it. NaN and infinities
    stay: some fields hold them (a scheduler's ``mode_worse``), and the checks of the others refuse them."""
    value = json.loads(text)
    found = find_value(value, lambda v: isinstance(v, int) and not -MAX_JSON_INTEGER <= v <= MAX_JSON_INTEGER)
    if found is not None:
        where, number = found
        raise ValueError(f"field {where or '(top level)'}: an integer of {len(str(abs(number)))} digits is not "
                         "allowed; JSON metadata holds integers up to 10**300")
    return value


def find_value(value: Any, test: Callable[[Any], bool]) -> tuple[str, Any] | None:
    """The dotted path (``a.0.b``) and value of the first scalar in a parsed JSON ``value`` that passes ``test``,
    in document order, walked without recursion; None when none does."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        where, item = todo.pop()
        if isinstance(item, dict):
            todo.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            todo.extend((f"{where}.{i}" if where else str(i), v) for i, v in reversed(list(enumerate(item))))
        elif test(item):
            return where, item
    return None


def read_json(path: str | Path) -> Any:
    """A JSON metadata file; too large, too deeply nested or malformed gives a one-line ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes, too large for a metadata file "
                         f"(at most {MAX_JSON_BYTES:,})")
    too_deep = f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        value = loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err.__class__.__name__}: {err})") from None
    except ValueError as err:  # a number no reader can use
        raise ValueError(f"{path}: {err}") from None
    except RecursionError:
        raise ValueError(too_deep) from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(too_deep)
    return value


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (0 for a scalar), counted without recursion."""
    depth, level = 0, [value]
    while True:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            return depth
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors, atomically (contiguous CPU copies; shared storage is fine)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(flat, str(tmp), metadata=metadata)
        except SafetensorError as err:  # its I/O errors (a full disk) arrive as text: make them an OSError again
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None

    return atomic_write(path, write)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or corrupted file gives a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix != ".safetensors":
        return load_untrusted_torch(path)
    check_memory(tensor_bytes(path), f"{path}: its tensors")  # from the header: a small file can claim terabytes
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: corrupted or truncated safetensors file ({err})") from None


def load_weights(module: nn.Module, path: str | Path, against: str = "the model") -> None:
    """Load a weights file into ``module`` after checking every tensor against what the module holds.

    One line naming the file and the first bad tensor for: a missing or unexpected name, another shape, another
    kind of number (an integer, bool or complex tensor for a float parameter, or the reverse: ``load_state_dict``
    would cast it silently), or NaN/inf values. Float precisions may differ (float16 weights load into float32).
    """
    path = Path(path)
    tensors = load_tensors(path)
    problem = weights_problem(tensors, module.state_dict())
    if problem:
        raise ValueError(f"{path}: {problem}; it does not match {against}")
    try:
        module.load_state_dict(tensors)
    except RuntimeError as err:  # a module's own loading hook refusing what the checks above let through
        detail = " ".join(str(err).split())
        raise ValueError(f"{path}: does not match {against} ({detail[:300]})") from None


def weights_problem(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """What is wrong with ``tensors`` as a state dict shaped like ``expected`` ("" when nothing is)."""
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing:
        return f"tensor {missing[0]!r} is missing ({len(missing)} missing in all)"
    if unexpected:
        return f"tensor {unexpected[0]!r} is not one of the model's ({len(unexpected)} unexpected in all)"
    for key, want in expected.items():
        got = tensors[key]
        if got.shape != want.shape:
            return f"tensor {key!r} has shape {tuple(got.shape)}, the model's {tuple(want.shape)}"
        if _kind(got) != _kind(want):
            return f"tensor {key!r} holds {got.dtype} values where the model holds {want.dtype} ({_kind(want)})"
        if (got.is_floating_point() or got.is_complex()) and not bool(torch.isfinite(got).all()):
            return f"tensor {key!r} holds NaN/inf values (corrupted weights, or a run that diverged)"
    return ""


def _kind(tensor: torch.Tensor) -> str:
    if tensor.is_complex():
        return "complex"
    if tensor.is_floating_point():
        return "floating point"
    return "bool" if tensor.dtype == torch.bool else "integer"


def tensor_bytes(path: str | Path) -> int:
    """Bytes the tensors of a safetensors file hold, read from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = [(s.get_shape(), s.get_dtype()) for s in map(handle.get_slice, handle.keys())]
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: corrupted or truncated safetensors file ({err})") from None
    return sum(math.prod(shape) * _BYTES.get(dtype, 8) for shape, dtype in shapes)


_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
          "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # per value; unknown dtypes count 8


def load_untrusted_torch(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a .pt/.pth file with ``weights_only=True``; a pickle that would run code is refused."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: refused, loading it would execute code ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: corrupted or unreadable torch file ({err})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a flat dict of tensors (a state_dict)")
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
