"""Make the CIFAR-10 ``.npz`` that ``--data`` / ``TIMEAWARE_CIFAR10`` read, from your own local download.

  python scripts/make_cifar10_npz.py cifar-10-batches-bin cifar10.npz   # the "binary version": no pickle
  python scripts/make_cifar10_npz.py cifar-10-batches-py cifar10.npz    # the "python version"
  python scripts/make_cifar10_npz.py --torchvision data cifar10.npz      # torchvision's copy under data/

The binary version (data_batch_1.bin ... data_batch_5.bin, test_batch.bin; 1 label byte + 3,072 pixel bytes
per image) is read with NumPy alone. The python version is a set of pickles: they are read with an
unpickler that accepts nothing but NumPy's array reconstruction, so a tampered file fails instead of
running code. torchvision reads the same pickles with plain ``pickle`` (trust your own download only).
The archive holds x_train (50000, 32, 32, 3) uint8 HWC RGB, y_train (50000,) int64, x_test, y_test and
class_names, in the batches' order; it is written atomically.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

from timeaware.io import atomic_write

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
RECORD = 1 + 3 * 32 * 32  # binary version: label byte, then 1,024 red, 1,024 green, 1,024 blue pixel bytes
# The only globals a CIFAR python batch needs: NumPy rebuilding its uint8 ``data`` array, and _codecs.encode,
# which a protocol-2 pickle written by Python 3 uses for bytes (torch's weights_only unpickler allows it too).
ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickle dicts, lists, bytes and NumPy arrays only; any other global stops with a ValueError."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ARRAY_GLOBALS:
            raise ValueError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only arrays and lists")
        return super().find_class(module, name)


def read_binary(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) and labels (N,) from binary-version batches, with NumPy only."""
    raw = [np.fromfile(_file(folder, f"{name}.bin"), dtype=np.uint8) for name in names]
    for name, part in zip(names, raw):
        if part.size % RECORD:
            raise ValueError(f"{folder / name}.bin: {part.size} bytes is not a whole number of {RECORD}-byte records")
    records = np.concatenate(raw).reshape(-1, RECORD)
    return _hwc(records[:, 1:]), records[:, 0].astype(np.int64)


def read_python(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from python-version batches, through ``ArrayUnpickler``."""
    xs, ys = [], []
    for name in names:
        with open(_file(folder, name), "rb") as fh:
            batch = ArrayUnpickler(fh, encoding="bytes").load()
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"{folder / name}: not a CIFAR-10 batch (expected a dict with data and labels)")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return _hwc(np.concatenate(xs)), np.concatenate(ys)


def read_torchvision(root: Path, download: bool) -> dict[str, np.ndarray]:
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise ValueError("--torchvision needs torchvision, which is not installed") from None
    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = CIFAR10(str(root), train=train, download=download)
        out[f"x_{split}"], out[f"y_{split}"] = np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)
    return out


def make_npz(source: Path, out: Path, *, torchvision: bool = False, download: bool = False) -> Path:
    """Write the .npz from ``source`` (a batches folder, or torchvision's root); returns ``out``."""
    if torchvision:
        arrays = read_torchvision(source, download)
    else:
        folder = _batches_folder(source)
        read = read_binary if (folder / "data_batch_1.bin").is_file() else read_python
        (x_train, y_train), (x_test, y_test) = read(folder, TRAIN), read(folder, TEST)
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays["class_names"] = np.array(CLASS_NAMES)

    def write(path: Path) -> None:
        with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to the temporary name
            np.savez_compressed(fh, **arrays)

    return atomic_write(out, write)


def _batches_folder(source: Path) -> Path:
    """``source`` itself or its cifar-10-batches-bin / -py subfolder, whichever holds data_batch_1."""
    for folder in (source, source / "cifar-10-batches-bin", source / "cifar-10-batches-py"):
        if (folder / "data_batch_1.bin").is_file() or (folder / "data_batch_1").is_file():
            return folder
    raise FileNotFoundError(f"{source}: no CIFAR-10 batches (expected data_batch_1.bin ... test_batch.bin of the "
                            "binary version or data_batch_1 ... test_batch of the python version)")


def _file(folder: Path, name: str) -> Path:
    if not (folder / name).is_file():
        raise FileNotFoundError(f"{folder / name}: no such file (a CIFAR-10 download has data_batch_1..5, test_batch)")
    return folder / name


def _hwc(rows: np.ndarray) -> np.ndarray:
    """(N, 3072) channel-major rows → (N, 32, 32, 3) images."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="cifar-10-batches-bin or -py folder (or the folder holding it); "
                                                  "with --torchvision, torchvision's root")
    parser.add_argument("out", type=Path, help="the .npz to write")
    parser.add_argument("--torchvision", action="store_true", help="read torchvision's CIFAR10 under SOURCE")
    parser.add_argument("--download", action="store_true", help="with --torchvision: let torchvision download it")
    args = parser.parse_args(argv)
    try:
        path = make_npz(args.source, args.out, torchvision=args.torchvision, download=args.download)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"make_cifar10_npz: error: {err}", file=sys.stderr)
        return 2
    with np.load(path, allow_pickle=False) as d:
        print(f"{path}: {len(d['y_train'])} train + {len(d['y_test'])} test images {d['x_train'].shape[1:]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
