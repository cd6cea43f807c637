"""Timestep embeddings: how t becomes numbers a network can add.

Two kinds, which is the paper's whole point:

* per-channel embeddings (one scalar per channel: ConcatConv's t·s_c, DDPM's sinusoidal → MLP → Linear)
  that a per-channel normalization cancels, and
* the positional timestep embedding (paper eq. 6): one H×W map shared by all channels, which varies
  inside every normalization unit and so survives it. ``LinearTimeMap`` is the linear form t·P,
  ``MLPTimeMap`` the sinusoidal → MLP branch.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn

from .config import TimeAware, check_positive

M = TypeVar("M", bound=nn.Module)


def as_time(t: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Return t as a (batch,) tensor on ``like``'s device and dtype.

    Accepts a Python number, a 0-d tensor (one t shared by the batch, as in an ODE solve) or a
    per-sample tensor of shape (batch,) (as in diffusion training).
    """
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    t = torch.as_tensor(t, dtype=dtype, device=like.device)  # a Python float never rounds via float32
    if t.ndim == 0:
        t = t.expand(batch)
    elif t.shape != (batch,):
        raise ValueError(f"t has shape {tuple(t.shape)}; allowed: a scalar, a 0-d tensor or shape ({batch},)")
    if not torch.isfinite(t).all():
        raise ValueError(f"t contains non-finite values {t[~torch.isfinite(t)].tolist()[:4]}; t must be finite")
    return t


def sinusoidal_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DDPM's sinusoidal timestep features: [sin(t·f_i), cos(t·f_i)], f_i = max_period^(-i/(dim/2-1)).

    Equals diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1)``.
    """
    check_positive("dim", dim)
    if dim % 2 or dim < 4:
        raise ValueError(f"dim={dim} is not allowed; sinusoidal features need an even dim >= 4")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1).to(t.dtype if t.is_floating_point() else torch.float32)


def init_bias_(module: M, policy: str) -> M:
    """Apply a bias-init policy to every bias in ``module``: "zero" zeroes them, "default" keeps PyTorch's.

    Fix 2 of the paper names two policies, one per branch: zero on the operand convs, default
    (non-zero) on the timestep branch, so the time terms start relatively large.
    """
    if policy not in ("zero", "default"):
        raise ValueError(f"bias policy {policy!r} is not allowed; choose one of zero, default")
    if policy == "zero":
        for sub in module.modules():
            bias = getattr(sub, "bias", None)
            if isinstance(bias, torch.Tensor):
                nn.init.zeros_(bias)
    return module


class TimestepMLP(nn.Module):
    """DDPM's timestep embedding: sinusoidal features → Linear → act → Linear.

    ``t_scale`` multiplies t before the features, so that t in [0, 1] (an ODE) uses the same
    frequencies as integer diffusion steps in [0, 1000).
    """

    def __init__(self, features: int, out_dim: int, config: TimeAware, t_scale: float = 1.0) -> None:
        super().__init__()
        check_positive("out_dim", out_dim)
        self.features, self.t_scale = features, t_scale
        self.net = nn.Sequential(nn.Linear(features, out_dim), make_activation(config.activation),
                                 nn.Linear(out_dim, out_dim))
        init_bias_(self.net, config.time_bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(sinusoidal_features(t * self.t_scale, self.features))


class LinearTimeMap(nn.Module):
    """Positional timestep embedding, linear form: p(t) = t·P with a learned H×W map P shared by all channels.

    ``init_std`` = 0 starts from an unchanged network (for fine-tuning a trained model).
    """

    def __init__(self, size: tuple[int, int], init_std: float = 0.1) -> None:
        super().__init__()
        h, w = _check_size(size)
        self.weight = nn.Parameter(torch.randn(h, w) * init_std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, None, None, None] * self.weight


class MLPTimeMap(nn.Module):
    """Positional timestep embedding, MLP form: sinusoidal(t) → Linear → act → Linear → H×W map.

    The paper's parallel branch next to the usual per-channel embedding (its Figure 5).
    ``sinusoidal=False`` takes an existing timestep embedding (B, features) instead of t, as a block
    of a diffusers U-Net receives it. ``zero_init`` zeroes the last layer so the map starts at 0
    (output-preserving, for fine-tuning a trained model).
    """

    def __init__(self, size: tuple[int, int], config: TimeAware, features: int = 64, hidden: int = 64,
                 t_scale: float = 1.0, zero_init: bool = False, sinusoidal: bool = True) -> None:
        super().__init__()
        self.size = _check_size(size)
        check_positive("hidden", hidden)
        self.features, self.t_scale, self.sinusoidal = features, t_scale, sinusoidal
        act, out = config.activation, nn.Linear(hidden, self.size[0] * self.size[1])
        self.net = nn.Sequential(*([] if sinusoidal else [make_activation(act)]), nn.Linear(features, hidden),
                                 make_activation(act), out)
        init_bias_(self.net, config.time_bias)
        if zero_init:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = sinusoidal_features(t * self.t_scale, self.features) if self.sinusoidal else t
        return self.net(x).view(-1, 1, *self.size)


def make_time_map(config: TimeAware, size: tuple[int, int] | None, t_scale: float = 1.0,
                  zero_init: bool = False) -> nn.Module | None:
    """The positional timestep embedding ``config.positional`` asks for, or None.

    ``zero_init`` starts either form at a zero map (output-preserving, for fine-tuning a trained model).
    """
    if config.positional == "none":
        return None
    if size is None:
        raise ValueError(f"positional={config.positional!r} needs the feature map size (H, W)")
    if config.positional == "linear":
        return LinearTimeMap(size, init_std=0.0) if zero_init else LinearTimeMap(size)
    return MLPTimeMap(size, config, t_scale=t_scale, zero_init=zero_init)


def make_activation(name: str) -> nn.Module:
    """The activation named in the config."""
    table = {"relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU, "softplus": nn.Softplus, "sigmoid": nn.Sigmoid}
    if name not in table:
        raise ValueError(f"activation={name!r} is not allowed; choose one of {', '.join(table)}")
    return table[name]()


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2:
        raise ValueError(f"size={size!r} is not allowed; it must be (H, W)")
    for v in size:
        check_positive("size", v)
    return int(size[0]), int(size[1])
