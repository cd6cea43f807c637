"""DDPM's forward process and simple loss, on diffusers' schedulers (we write no sampler of our own).

Linear β from 1e-4 to 0.02 over T = 1000 steps, ε-prediction, loss ||ε − ε_θ(x_t, t)||² (Ho et al. 2020).
The same β schedule configures the three samplers: DDPM ancestral, DDIM (η = 0), DPM-Solver++ multistep.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..validate import choice

SAMPLERS = ("ddpm", "ddim", "dpm")


@dataclass(frozen=True)
class Schedule:
    """The noise schedule of the paper (and DDPM)."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_scheduler(sampler: str = "ddpm", schedule: Schedule | None = None) -> Any:
    """A diffusers scheduler for ``sampler`` ("ddpm" | "ddim" | "dpm") on ``schedule``."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    choice("sampler", sampler, SAMPLERS)
    kwargs = (schedule or Schedule()).to_dict()
    if sampler == "ddpm":
        # σ² = β_t, Ho et al.'s CIFAR-10 setting (fixedlarge); "trailing" so few steps still start at t = T-1
        return DDPMScheduler(**kwargs, variance_type="fixed_large", clip_sample=True, timestep_spacing="trailing")
    if sampler == "ddim":
        return DDIMScheduler(**kwargs, clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing")
    return DPMSolverMultistepScheduler(**kwargs, algorithm_type="dpmsolver++", solver_order=2)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → [-1, 1], the range DDPM is trained on."""
    return images * 2 - 1


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] samples → [0, 1] images, clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def diffusion_batch(scheduler: Any, x0: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, ε) for a batch of clean images x0 in [-1, 1]: t ~ U{0..T-1}, x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε."""
    n = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return scheduler.add_noise(x0, noise, t), t, noise


def simple_loss(model: nn.Module, scheduler: Any, x0: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's L_simple: mean squared error between the true and the predicted noise."""
    x_t, t, noise = diffusion_batch(scheduler, x0, generator)
    return F.mse_loss(model(x_t, t), noise)
