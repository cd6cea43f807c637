"""Image datasets: a built-in default that needs no download, and CIFAR from local files.

* ``digits`` (default): scikit-learn's 8×8 handwritten digits (1,797 images, shipped with the
  package), split 80/20 with a fixed permutation and resized to ``size``.
* ``cifar10``: a local ``.npz`` in the format of ``shared/data/README.md`` (keys x_train, y_train,
  x_test, y_test; uint8 HWC), from ``--data PATH`` or the ``TIMEAWARE_CIFAR10`` environment variable.
* ``cifar10-torchvision`` / ``cifar100-torchvision``: torchvision's datasets under ``TIMEAWARE_DATA_ROOT``
  when torchvision is installed (downloads only if ``TIMEAWARE_DOWNLOAD=1``).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .resources import FLOAT, check_memory
from .validate import check_positive, choice

SOURCES = ("digits", "cifar10", "cifar10-torchvision", "cifar100-torchvision")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
SPLITS = ("train", "test")
CHANNELS = (1, 3)  # gray or RGB: what augment and the models handle
MAX_CLASSES = 100_000  # labels index the classifier's output layer; beyond this a label is a corrupt value, not a class


@dataclass
class ImageData:
    """Images as float NCHW in [0, 1] with integer labels."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, limit: int | None, seed: int = 0) -> ImageData:
        """A class-balanced-in-expectation random subset of ``limit`` images (all when None)."""
        if limit is None:
            return self
        check_positive("limit", limit)  # before comparing: a string or a bool is a one-line error too
        if limit >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit]
        return ImageData(self.x[idx], self.y[idx], self.num_classes, self.name)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std (for mean-std normalization); a channel without spread cannot be normalised
        (dividing by its std 0 turns every later value into NaN), so it is refused here."""
        mean, std = self.x.mean(dim=(0, 2, 3)).tolist(), self.x.std(dim=(0, 2, 3)).tolist()
        for channel, value in enumerate(std):
            if not value > 0:  # 0, or NaN for a single value
                raise ValueError(f"data {self.name!r}: channel {channel} has zero variance over its {len(self)} images "
                                 "(all pixels equal); cannot normalise")
        return mean, std


def check_source(value: object) -> None:
    """A known source or a .npz path, else a one-line ValueError (the training configs' ``data``)."""
    if not isinstance(value, str) or not (value in SOURCES or value.endswith(".npz")):
        raise ValueError(f"data={value!r} is not allowed; choose one of {', '.join(SOURCES)} or a .npz path")


def load_images(source: str | None = None, split: str = "train", size: int | None = None) -> ImageData:
    """Load ``split`` ("train" | "test") of a dataset name or .npz path, optionally resized to size×size."""
    choice("split", split, ("train", "test"))
    source = source or "digits"
    if source == "digits":
        data = _digits(split)
    elif source == "cifar10" or source.endswith(".npz"):
        data = _npz(_cifar_path(source), split, resized=size is not None)
    elif source in ("cifar10-torchvision", "cifar100-torchvision"):
        data = _torchvision(source, split)
    else:
        raise ValueError(f"dataset {source!r} is unknown; choose one of {', '.join(SOURCES)} or a path to a .npz")
    if size is not None and tuple(data.x.shape[-2:]) != (size, size):
        check_positive("size", size)
        data.x = F.interpolate(data.x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return data


def _digits(split: str) -> ImageData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return ImageData(x[idx], y[idx], 10, "digits")


def _cifar_path(source: str) -> Path:
    if source != "cifar10":
        return Path(source)
    env = os.environ.get("TIMEAWARE_CIFAR10")
    if not env:
        raise ValueError("dataset 'cifar10' needs a path: pass --data /path/to/cifar10.npz or set TIMEAWARE_CIFAR10")
    return Path(env)


def _npz(path: Path, split: str, resized: bool = False) -> ImageData:
    """One split of a CIFAR-style .npz, checked from the .npy headers of all four arrays before any is read:
    a forged header or a huge array is refused in one line instead of being allocated. Labels are checked
    against the training split's classes; ``resized``: the images will be resized, so H×W may differ by split."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a CIFAR-style .npz with keys {', '.join(NPZ_KEYS)})")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [k for k in NPZ_KEYS if f"{k}.npy" not in names]
            if missing:
                raise ValueError(f"{path}: missing keys {missing}; expected {', '.join(NPZ_KEYS)}")
            headers = {key: _npy_header(path, archive, key) for key in NPZ_KEYS}
        shapes = _check_npz_layout(path, headers, resized)
        x_shape = shapes[f"x_{split}"]
        check_memory(math.prod(x_shape) * (1 + 2 * FLOAT) + 16 * (shapes["x_train"][0] + shapes["x_test"][0]),
                     f"{path}: x_{split} of shape {x_shape} as float32")  # uint8, then two float32 copies
        with np.load(path, allow_pickle=False) as d:
            labels = {s: d[f"y_{s}"].reshape(-1) for s in SPLITS}  # (N,) or Keras-style (N, 1)
            x = d[f"x_{split}"]
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as err:
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from None
    num_classes = _check_labels(path, labels)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    return ImageData(images, torch.from_numpy(labels[split].astype(np.int64)), num_classes, path.stem)


def _npy_header(path: Path, archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes stored after the header) of one array, read without reading its data."""
    fmt = np.lib.format
    info = archive.getinfo(f"{key}.npy")
    with archive.open(info) as fh:
        try:
            version = fmt.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version}; expected 1.0 or 2.0")
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(fh)
        except ValueError as err:
            raise ValueError(f"{path}: {key} is not a valid .npy array ({str(err).splitlines()[0][:200]})") from None
        return shape, dtype, info.file_size - fh.tell()


def _check_npz_layout(path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype, int]],
                      resized: bool) -> dict[str, tuple[int, ...]]:
    """Shapes and dtypes of both splits (uint8 NHWC images with N >= 1, integer labels, one per image, the same
    channels, and the same H×W unless resized) and data as large as each header claims; returns the shapes."""
    for key, (shape, dtype, stored) in headers.items():
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > stored and not dtype.hasobject:  # object arrays are pickled (and refused below)
            raise ValueError(f"{path}: {key} claims shape {shape} {dtype} ({claimed:,} bytes) but holds only "
                             f"{max(stored, 0):,}; the file is truncated or its header is wrong")
    for split in SPLITS:
        (xs, xd, _), (ys, yd, _) = headers[f"x_{split}"], headers[f"y_{split}"]
        if len(xs) != 4 or xs[-1] not in CHANNELS or xd != np.uint8:
            raise ValueError(f"{path}: x_{split} has shape {xs} dtype {xd}; expected uint8 (N, H, W, C) with C in "
                             f"{' or '.join(map(str, CHANNELS))}")
        if xs[0] == 0:
            raise ValueError(f"{path}: x_{split} holds 0 images; need at least 1")
        if 0 in xs[1:3]:
            raise ValueError(f"{path}: x_{split} images are {xs[1]}×{xs[2]}; need at least 1×1")
        if ys not in ((xs[0],), (xs[0], 1)) or yd.kind not in "iu":
            raise ValueError(f"{path}: y_{split} has shape {ys} dtype {yd}; expected integer labels of shape "
                             f"({xs[0]},), one per image of x_{split}")
    train, test = headers["x_train"][0], headers["x_test"][0]
    if train[-1] != test[-1]:
        raise ValueError(f"{path}: x_test has {test[-1]} channel(s) but x_train has {train[-1]}; both splits must "
                         "have the same channels")
    if not resized and train[1:3] != test[1:3]:
        raise ValueError(f"{path}: x_test images are {test[1]}×{test[2]} but x_train's are {train[1]}×{train[2]}; "
                         "both splits must have the same size (or pass a size to resize both)")
    return {key: shape for key, (shape, _, _) in headers.items()}


def _check_labels(path: Path, labels: dict[str, np.ndarray]) -> int:
    """Labels 0 .. C-1 with C <= MAX_CLASSES set by the training split; the test split must stay within them
    (a test label the model has no output for is a silent 0% accuracy). Returns C."""
    for split in SPLITS:
        low, high = int(labels[split].min()), int(labels[split].max())
        if low < 0 or high >= MAX_CLASSES:
            reach = f"go down to {low}" if low < 0 else f"reach {high}"
            raise ValueError(f"{path}: y_{split} labels {reach}; allowed: integers 0 to {MAX_CLASSES - 1:,} "
                             f"(at most {MAX_CLASSES:,} classes)")
    classes, high = int(labels["train"].max()) + 1, int(labels["test"].max())
    if high >= classes:
        raise ValueError(f"{path}: y_test holds label {high} but y_train's labels are 0 to {classes - 1} ({classes} "
                         "classes); test labels must be training classes")
    return classes


def _torchvision(source: str, split: str) -> ImageData:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise ValueError(f"dataset {source!r} needs torchvision, which is not installed") from None
    root = os.environ.get("TIMEAWARE_DATA_ROOT", "data")
    cls = tvd.CIFAR10 if source.startswith("cifar10-") else tvd.CIFAR100
    try:
        ds = cls(root, train=split == "train", download=os.environ.get("TIMEAWARE_DOWNLOAD") == "1")
    except RuntimeError as err:
        raise FileNotFoundError(f"{root}: {source} not found ({err}); set TIMEAWARE_DOWNLOAD=1 to download") from None
    images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float() / 255.0
    labels = torch.tensor(ds.targets, dtype=torch.long)
    return ImageData(images, labels, len(ds.classes), source)


# The paper's augmentation (section 4.1) on whole batches with plain torch ops, every random draw
# from one ``torch.Generator`` so that a resumed run sees exactly the same images.


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by ``padding`` and cut a random H×W window per image (torchvision's RandomCrop)."""
    if padding == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy, dx = (torch.randint(0, 2 * padding + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    return padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each RGB image with its grayscale by a per-image ``factor`` (1 = unchanged), as torchvision."""
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    return (factor[:, None, None, None] * x + (1 - factor[:, None, None, None]) * gray).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each RGB image's hue by a per-image ``shift`` in turns (0.05 = 18°), through HSV."""
    r, g, b = x.unbind(1)
    value, argmax = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4]).gather(0, argmax[None])[0]
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift[:, None, None]) % 1.0
    # HSV → RGB with the closed form f(n) = V − C·clamp(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6.
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype)[None, :, None, None] + 6 * hue[:, None]) % 6
    return value[:, None] - chroma[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def augment(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4, hue: float = 0.05,
            saturation: float = 0.05, flip: bool = True) -> torch.Tensor:
    """The paper's training augmentation on a batch in [0, 1]: crop (``padding``), colour jitter, flip.

    Colour jitter draws a saturation factor in [1 − s, 1 + s] and a hue shift in [−h, h] per image
    (saturation first, then hue) and is skipped for 1-channel images; mean-std normalisation is the
    model's first step, not part of the augmentation.
    """
    n = x.shape[0]
    x = random_crop(x, padding, generator)
    if x.shape[1] == 3 and saturation > 0:
        x = adjust_saturation(x, 1 + saturation * (2 * torch.rand(n, generator=generator) - 1))
    if x.shape[1] == 3 and hue > 0:
        x = adjust_hue(x, hue * (2 * torch.rand(n, generator=generator) - 1))
    return random_flip(x, generator) if flip else x
