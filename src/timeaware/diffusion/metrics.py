"""Sample quality through torchmetrics: FID and Inception Score, and an offline "FD-classifier".

* FID / IS: torchmetrics' ``FrechetInceptionDistance`` and ``InceptionScore`` on the standard
  pt_inception-2015-12-05 weights. They need torch-fidelity and a local weights file (nothing is
  downloaded here); without them ``require_inception`` fails with one line saying how to provide them.
* FD-classifier: the same Fréchet distance (torchmetrics' FID with ``feature=`` a module) in the
  penultimate layer of a small classifier trained on the same data. It runs anywhere in seconds, but it
  is *not* FID and its numbers are not comparable to published FIDs; it is always labelled "FD-classifier".

Every score is returned with its protocol (samples, reference split, sampler and steps, EMA or raw
weights, feature extractor) so no number travels without the way it was measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import ImageData
from ..io import load_untrusted_torch, load_weights, save_tensors, write_json
from ..metadata import CLASSIFIER_INFO, read_checked
from ..paths import check_output
from ..progress import say

METRICS = ("fd-classifier", "fid", "is")
LABELS = {"fd-classifier": "FD-classifier", "fid": "FID", "is": "IS"}
INCEPTION_HELP = ("FID/IS need torch-fidelity and local Inception weights: install timeaware[fid] and pass "
                  "--inception-weights PATH to a pt_inception-2015-12-05 file (or use --metric fd-classifier)")


class FeatureClassifier(nn.Module):
    """A small CNN classifier whose global-average-pooled features define the FD-classifier space."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width}
        self.num_features = 2 * width  # read by torchmetrics' FID
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, d) features of images in [0, 1] (what torchmetrics calls on a custom ``feature`` module)."""
        return self.body(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def train_feature_classifier(train: ImageData, test: ImageData, steps: int = 400, batch_size: int = 128,
                     seed: int = 0, progress: bool = False) -> tuple[FeatureClassifier, float]:
    """Train the feature classifier (Adam, a few hundred steps); returns it and its test accuracy."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FeatureClassifier(train.x.shape[1], train.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    bar = tqdm(range(steps), desc=f"FD-classifier: training on {train.name}", unit="step", leave=False,
               disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(train), (batch_size,), generator=g)
        loss = F.cross_entropy(model.logits(train.x[idx]), train.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        accuracy = (model.logits(test.x).argmax(1) == test.y).float().mean().item()
    return model, accuracy


def check_classifier_path(path: str | Path) -> Path:
    """``path`` if it names a classifier timeaware wrote (.safetensors beside its .json) or a new one it may
    write; else a one-line ValueError, before any work: an existing file of the user's is never overwritten."""
    path = Path(path)
    info_path = path.with_suffix(".json")
    if path.suffix != ".safetensors":
        raise ValueError(f"--classifier {path}: allowed: a .safetensors path (its settings go in the .json beside it)")
    if path.exists() != info_path.exists() or (path.exists() and not (path.is_file() and info_path.is_file())):
        there, missing = (path, info_path) if path.exists() else (info_path, path)
        raise ValueError(f"--classifier {path}: {there} exists but {missing} does not (or one is not a file), so it "
                         "is not a classifier timeaware wrote; give a new path or one written before")
    if not path.exists():
        check_output(path, "file", flag="--classifier")
        check_output(info_path, "file", flag="--classifier")
    return path


def read_classifier_info(path: str | Path, data: str, shape: list[int], num_classes: int) -> dict[str, Any]:
    """The .json beside the classifier ``path``, checked against the images it is to score: ``data`` (a dataset
    name) of ``shape`` [C, H, W] (the model's samples) and ``num_classes``; else one line naming the file and
    the first field that differs. Cheap: callers check before sampling."""
    info_path = Path(path).with_suffix(".json")
    info = read_checked(info_path, CLASSIFIER_INFO)
    fields = (("data", info["data"], data), ("image_shape", info["image_shape"], shape),
              ("config.in_channels", info["config"]["in_channels"], shape[0]),
              ("config.num_classes", info["config"]["num_classes"], num_classes))
    for field, got, want in fields:
        if got != want:
            raise ValueError(f"--classifier {info_path}: field {field} is {got!r} but the images it would score need "
                             f"{want!r} ({data} {shape}, {num_classes} classes); give another --classifier path")
    return info


def classifier_for(path: str | Path, train: ImageData, test: ImageData, steps: int = 400,
                   progress: bool = False) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Load the feature classifier at ``path`` (.safetensors + .json), training it for ``steps`` if absent.

    ``progress``: say that the classifier is being trained (the first evaluation on a dataset) and show a bar.
    """
    path = check_classifier_path(path)
    info_path = path.with_suffix(".json")
    shape = list(train.x.shape[1:])
    if path.is_file():
        info = read_classifier_info(path, train.name, shape, train.num_classes)
        model = FeatureClassifier(**info["config"])
        load_weights(model, path, against=str(info_path))
        return model.eval(), info
    say(f"FD-classifier: no classifier at {path} yet; training one on {train.name} ({len(train)} images, {steps} "
        "steps) and saving it there for later evaluations", progress)
    model, accuracy = train_feature_classifier(train, test, steps=steps, progress=progress)
    info = {"config": model.config, "data": train.name, "image_shape": shape, "test_accuracy": accuracy,
            "steps": steps, "path": str(path)}
    save_tensors(path, model.state_dict())
    write_json(info_path, info)
    return model, info


@dataclass(frozen=True)
class Protocol:
    """How a score was measured; stored next to every number."""

    metric: str              # FID | IS | FD-classifier
    num_samples: int
    reference: str           # e.g. "digits train (1437 images)"
    sampler: str
    steps: int
    weights: str             # ema | raw
    feature_extractor: str   # e.g. "Inception-v3 pt_inception-2015-12-05" or "classifier (acc 0.97) runs/..."
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.metric}: {self.num_samples} samples ({self.sampler}-{self.steps}, {self.weights} weights, "
                f"seed {self.seed}) vs {self.reference}; features: {self.feature_extractor}")


def frechet_distance(features: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 500) -> float:
    """Fréchet distance between ``features(real)`` and ``features(fake)`` via torchmetrics' FID."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return _fill_and_compute(FrechetInceptionDistance(feature=features, normalize=True), real, fake, batch_size)


def _fill_and_compute(metric: Any, real: torch.Tensor, fake: torch.Tensor, batch_size: int,
                      prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> float:
    """Feed a torchmetrics FID-style metric the real then the fake images in chunks; its value."""
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for chunk in images.split(batch_size):
                metric.update(prepare(chunk), real=is_real)
        return float(metric.compute())


def require_inception(weights: str | Path | None) -> Path:
    """The Inception weights path, or a one-line ValueError saying how to provide them."""
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE or weights is None:
        raise ValueError(INCEPTION_HELP)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Inception weights file; {INCEPTION_HELP}")
    load_untrusted_torch(path)  # torch-fidelity unpickles it itself: first make sure that cannot run code
    return path


def _inception_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → uint8 RGB, the input torchmetrics' Inception expects (gray repeated to 3 channels)."""
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def fid(real: torch.Tensor, fake: torch.Tensor, weights: str | Path | None, batch_size: int = 100) -> float:
    """FID with torchmetrics on local pt_inception-2015-12-05 weights."""
    path = require_inception(weights)
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
    return _fill_and_compute(metric, real, fake, batch_size, _inception_uint8)


def inception_score(fake: torch.Tensor, weights: str | Path | None, splits: int = 10,
                    batch_size: int = 100) -> tuple[float, float]:
    """Inception Score (mean, std over splits) with torchmetrics on local weights."""
    path = require_inception(weights)
    from torchmetrics.image.fid import NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore

    net = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=str(path))
    metric = InceptionScore(feature=net, splits=splits)
    with torch.no_grad():
        for chunk in fake.split(batch_size):
            metric.update(_inception_uint8(chunk))
        mean, std = metric.compute()
    return float(mean), float(std)
