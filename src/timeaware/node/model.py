"""The paper's NODE image classifier (section 4.1): stem → ODE block → head.

stem  one 3×3 conv, then two pre-activation residual blocks with stride 2 (torchdiffeq's
      ``odenet_mnist`` ResBlock), so the ODE state is C × H/4 × W/4;
block z(T) from dz/dt = ODEFunc(t, z) (ConcatConv, or the MLP timestep embedding of Table 2);
head  [N–Act–global average pool–Dropout(0.5)–FC] (softmax lives in the loss).
Every norm and activation comes from the one ``TimeAware`` config, so an ablation changes all of them.
Inputs are images in [0, 1]; the mean-std normalisation is a buffer of the model, saved with its weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import TimeAware
from ..embeddings import make_activation
from ..layers import make_norm
from .func import ODEFunc
from .solve import ODEBlock, SolverOptions, SolveStats


class StemBlock(nn.Module):
    """Pre-activation residual block, stride 2: x → N–Act → (conv3×3/2 → N–Act → conv3×3) + conv1×1/2."""

    def __init__(self, channels: int, config: TimeAware) -> None:
        super().__init__()
        self.norm1, self.norm2 = make_norm(config, channels), make_norm(config, channels)
        self.act = make_activation(config.activation)
        self.conv1 = nn.Conv2d(channels, channels, 3, 2, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(channels, channels, 1, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(x))
        return self.conv2(self.act(self.norm2(self.conv1(h)))) + self.shortcut(h)


def state_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the ODE state after the stem's two stride-2 blocks."""
    h, w = image_size
    for _ in range(2):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w


class NodeClassifier(nn.Module):
    """stem → ODEBlock → head; ``stats`` holds the latest solve's NFE-F / NFE-B."""

    mean: torch.Tensor  # buffers: the per-channel input normalisation
    std: torch.Tensor

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], *, channels: int = 64,
                 config: TimeAware | None = None, time: str = "concat", solver: SolverOptions | None = None,
                 dropout: float = 0.5, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        config = config or TimeAware()
        config.check_channels(channels)
        mean = [0.0] * in_channels if mean is None else list(mean)
        std = [1.0] * in_channels if std is None else list(std)
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} values; the images have {in_channels} channels")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, 1, 1), StemBlock(channels, config),
                                  StemBlock(channels, config))
        solver = solver or SolverOptions()
        func = ODEFunc(channels, config, time=time, size=state_size(image_size), t1=solver.t1)
        self.block = ODEBlock(func, solver)
        self.head = nn.Sequential(make_norm(config, channels), make_activation(config.activation),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes))

    @property
    def stats(self) -> SolveStats:
        return self.block.stats

    def initial_state(self, images: torch.Tensor) -> torch.Tensor:
        """z(0) = stem(normalised images): what the ODE function sees at t = 0 (used by the audit)."""
        return self.stem((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.initial_state(images)))
