"""Score a trained DDPM: draw samples once, compute the asked metrics, return each with its protocol."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import load_images
from ..progress import say
from .metrics import (
    LABELS,
    METRICS,
    Protocol,
    check_classifier_path,
    classifier_for,
    fid,
    frechet_distance,
    inception_score,
    require_inception,
)
from .sampling import prepare_sampler, sample
from .unet import UNet


@dataclass(frozen=True)
class EvalSettings:
    """What to sample and what to compare against."""

    metrics: tuple[str, ...] = ("fd-classifier",)
    num: int = 1000
    sampler: str = "ddim"
    steps: int = 50
    seed: int = 0
    data: str = "digits"
    reference_split: str = "train"
    classifier: Path | None = None        # FD-classifier weights (trained and cached here when absent)
    classifier_steps: int = 400           # training steps of that classifier when it is absent
    inception_weights: Path | None = None  # pt_inception-2015-12-05 file for FID / IS
    batch_size: int = 256


def evaluate(model: UNet, settings: EvalSettings, weights: str = "ema",
             progress: bool = False) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Records ``{"metric", "value", ["std"], "protocol"}`` per metric, and the samples they were computed on.

    ``progress``: a line per stage and tqdm bars (sampling, training the FD classifier), on stderr.
    """
    unknown = [m for m in settings.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"metric {unknown[0]!r} is unknown; choose from {', '.join(METRICS)}")
    if {"fid", "is"} & set(settings.metrics):
        require_inception(settings.inception_weights)  # fail before sampling, not after
    if "fd-classifier" in settings.metrics and settings.classifier is not None:
        check_classifier_path(settings.classifier)
    cfg = model.config
    reference = load_images(settings.data, settings.reference_split, cfg.image_size)
    if reference.x.shape[1] != cfg.in_channels:
        raise ValueError(f"data {reference.name} has {reference.x.shape[1]} channels but the model generates "
                         f"{cfg.in_channels}; pass the --data it was trained on")
    prepare_sampler(model, settings.num, sampler=settings.sampler, steps=settings.steps, seed=settings.seed,
                    batch_size=settings.batch_size)  # its arguments are checked before the classifier's work
    classifier = None  # loaded (or trained) before sampling: a classifier for other data is said first
    if "fd-classifier" in settings.metrics:
        path = settings.classifier or Path("runs/classifiers") / f"{reference.name}-{cfg.image_size}.safetensors"
        train = load_images(settings.data, "train", cfg.image_size)
        test = load_images(settings.data, "test", cfg.image_size)
        classifier = path, *classifier_for(path, train, test, steps=settings.classifier_steps, progress=progress)
    fake = sample(model, settings.num, sampler=settings.sampler, steps=settings.steps, seed=settings.seed,
                  batch_size=settings.batch_size, progress=progress)

    def protocol(metric: str, extractor: str) -> dict[str, Any]:
        return Protocol(LABELS[metric], settings.num, f"{reference.name} {settings.reference_split} "
                        f"({len(reference)} images)", settings.sampler, settings.steps, weights, extractor,
                        settings.seed).to_dict()

    inception = f"Inception-v3 pt_inception-2015-12-05 ({settings.inception_weights})"
    records = []
    for metric in settings.metrics:
        if metric == "fd-classifier":
            assert classifier is not None
            path, net, info = classifier
            say(f"FD-classifier: features of {len(reference)} reference and {settings.num} generated images", progress)
            extractor = f"classifier {path} (test accuracy {info['test_accuracy']:.3f}, d={net.num_features})"
            records.append({"metric": LABELS[metric], "value": frechet_distance(net, reference.x, fake),
                            "protocol": protocol(metric, extractor)})
        elif metric == "fid":
            say("FID: Inception features of the reference and generated images", progress)
            records.append({"metric": "FID", "value": fid(reference.x, fake, settings.inception_weights),
                            "protocol": protocol(metric, inception)})
        else:
            say("IS: Inception class probabilities of the generated images", progress)
            mean, std = inception_score(fake, settings.inception_weights)
            records.append({"metric": "IS", "value": mean, "std": std, "protocol": protocol(metric, inception)})
    return records, fake

