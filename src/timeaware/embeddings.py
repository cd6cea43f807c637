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
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from .config import MAX_INIT_STD, TimeAware
from .validate import (
    MAX_MAP,
    MAX_WIDTH,
    check_int,
    check_number,
    check_parameters,
    check_type,
    check_width,
    choice,
)

TIME_KINDS = ("steps", "continuous", "sigma")


MAX_TIME = float(2**53)  # the largest a time may be: integer steps up to it are exact in float64


@dataclass(frozen=True)
class TimeDomain:
    """Where a model's t lives, and so how t is scaled before a positional map sees it.

    kind   "steps": integer diffusion steps low..high (DDPM: 0..999); "continuous": an interval [low, high]
           (an ODE's [0, t1], flow matching's [0, 1]); "sigma": a noise level σ in [low, high] (EDM, NCSN++),
           spread on a log scale.
    ``unit(t)`` is O(1) over the domain (the linear map's input, t·P); ``phase(t)`` spans ~1000 over it
    (the sinusoidal features' input, as DDPM's integer steps), so one positional map suits every domain.
    """

    kind: str = "continuous"
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        choice("kind", self.kind, TIME_KINDS)
        for name in ("low", "high"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or abs(value) > MAX_TIME):
                raise ValueError(f"time domain {name}={value!r} is not allowed; it must be a finite number of "
                                 f"magnitude at most {MAX_TIME:g}")
        if not self.low < self.high:
            raise ValueError(f"time domain [{self.low}, {self.high}] is not allowed; it needs low < high")
        if self.kind == "steps" and (self.low != int(self.low) or self.high != int(self.high) or self.low < 0):
            raise ValueError(f"steps {self.low}..{self.high} are not allowed; give non-negative integers")
        if self.kind == "sigma" and self.low <= 0:
            raise ValueError(f"sigma range [{self.low}, {self.high}] is not allowed; noise levels must be > 0")

    def grid(self, k: int) -> torch.Tensor:
        """K timesteps spread over the domain: integer steps, evenly spaced t, or log-spaced σ."""
        check_int("K", k, 1, MAX_MAP)
        if self.kind == "sigma":
            return torch.logspace(math.log10(self.low), math.log10(self.high), k, dtype=torch.float64).float()
        if self.kind == "continuous":
            return torch.linspace(self.low, self.high, k)
        steps = torch.linspace(self.low, self.high, k, dtype=torch.float64).round().long()
        if steps.unique().numel() < k:
            raise ValueError(f"steps {int(self.low)}..{int(self.high)} hold fewer than K={k} integers; widen the "
                             "range, lower K, or use a continuous domain")
        return steps

    def unit(self, t: torch.Tensor) -> torch.Tensor:
        """t on an O(1) scale: steps / (T), t itself, or EDM's c_noise = ln(σ)/4."""
        t = time_tensor(t)
        t = t if t.is_floating_point() else t.float()
        if self.kind == "steps":
            return t / (self.high + 1)
        return torch.log(t) / 4 if self.kind == "sigma" else t

    def phase(self, t: torch.Tensor) -> torch.Tensor:
        """t on DDPM's step scale (~1000 over the domain), for sinusoidal features."""
        t = time_tensor(t)
        t = t if t.is_floating_point() else t.float()
        if self.kind == "steps":
            return t
        if self.kind == "sigma":
            return torch.log(t) * 250
        return t * (1000.0 / (self.high - self.low))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TimeDomain:
        if not isinstance(data, dict) or set(data) - {"kind", "low", "high"}:
            raise ValueError(f"time domain {data!r} is not allowed; give {{kind, low, high}}")
        return cls(**data)


DDPM_STEPS = TimeDomain("steps", 0, 999)
UNIT_INTERVAL = TimeDomain("continuous", 0.0, 1.0)

M = TypeVar("M", bound=nn.Module)


def as_time(t: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Return t as a (batch,) tensor on ``like``'s device and dtype.

    Accepts a Python number, a 0-d tensor (one t shared by the batch, as in an ODE solve) or a
    per-sample tensor of shape (batch,) (as in diffusion training).
    """
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    # a Python float is made in ``dtype`` directly, so it never rounds via float32
    t = torch.as_tensor(time_tensor(t, dtype, like.device), dtype=dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(batch)
    elif t.shape != (batch,):
        raise ValueError(f"t has shape {tuple(t.shape)}; allowed: a scalar, a 0-d tensor or shape ({batch},)")
    if not torch.isfinite(t).all():
        raise ValueError(f"t contains non-finite values {t[~torch.isfinite(t)].tolist()[:4]}; t must be finite")
    return t


def time_tensor(t: float | torch.Tensor, dtype: torch.dtype | None = None,
                device: torch.device | None = None) -> torch.Tensor:
    """t as a real tensor: a Python number becomes a 0-d tensor (of ``dtype`` on ``device``), a tensor passes
    as it is; anything else (a string, a list, a bool, a complex or bool tensor) is a one-line TypeError. O(1)."""
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t has dtype {t.dtype}; allowed: a real number or a real tensor")
        return t
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        check_type("t", t, float | torch.Tensor)
    if abs(t) > MAX_TIME and t not in (math.inf, -math.inf):  # 10**400 overflowed; inf and NaN: "non-finite"
        big = isinstance(t, int) and t.bit_length() > 64  # repr of 10**5000 is itself an error
        shown = f"about {'-' * (t < 0)}2**{int(t).bit_length() - 1}" if big else repr(t)
        raise ValueError(f"t={shown} is not allowed; it must be a finite number of magnitude at most {MAX_TIME:g}")
    return torch.tensor(t, dtype=dtype or torch.get_default_dtype(), device=device)


def sinusoidal_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DDPM's sinusoidal timestep features: [sin(t·f_i), cos(t·f_i)], f_i = max_period^(-i/(dim/2-1)).

    Equals diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1)``.
    """
    check_features("dim", dim)
    check_number("max_period", max_period, 1.0, low_open=True)
    t = time_tensor(t)
    if t.ndim != 1:
        raise ValueError(f"t has shape {tuple(t.shape)}; sinusoidal features take one t per sample, shape (B,)")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"t contains non-finite values {t[~torch.isfinite(t)].tolist()[:4]}; t must be finite")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1).to(t.dtype if t.is_floating_point() else torch.float32)


def check_features(name: str, dim: Any) -> None:
    """A sinusoidal feature width: an even integer from 4 to ``MAX_WIDTH``."""
    check_width(name, dim)
    if dim % 2 or dim < 4:
        raise ValueError(f"{name}={dim} is not allowed; sinusoidal features need an even width from 4 to {MAX_WIDTH}")


def init_bias_(module: M, policy: str) -> M:
    """Apply a bias-init policy to every bias in ``module``: "zero" zeroes them, "default" keeps PyTorch's.

    Fix 2 of the paper names two policies, one per branch: zero on the operand convs, default
    (non-zero) on the timestep branch, so the time terms start relatively large.
    """
    check_type("module", module, nn.Module)
    choice("bias policy", policy, ("zero", "default"))
    if policy == "zero":
        for sub in module.modules():
            bias = getattr(sub, "bias", None)
            if isinstance(bias, torch.Tensor):
                nn.init.zeros_(bias)
    return module


class TimestepMLP(nn.Module):
    """DDPM's timestep embedding: sinusoidal features → Linear → act → Linear.

    t enters on DDPM's step scale (``TimeDomain.phase``), so an ODE's t in [0, 1] uses the same
    frequencies as integer diffusion steps in [0, 1000).
    """

    def __init__(self, features: int, out_dim: int, config: TimeAware, domain: TimeDomain = DDPM_STEPS) -> None:
        super().__init__()
        check_features("features", features)
        check_width("out_dim", out_dim)
        check_time_config(config, domain)
        check_parameters(features * out_dim + out_dim * out_dim, "TimestepMLP")
        self.features, self.domain = features, domain
        self.net = nn.Sequential(nn.Linear(features, out_dim), make_activation(config.activation),
                                 nn.Linear(out_dim, out_dim))
        init_bias_(self.net, config.time_bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(sinusoidal_features(self.domain.phase(t), self.features))


class LinearTimeMap(nn.Module):
    """Positional timestep embedding, linear form: p(t) = u(t)·P with a learned map P shared by all channels.

    P has the feature map's spatial shape (H×W, or L for 1-D models); u(t) is t on an O(1) scale
    (``TimeDomain.unit``). ``init_std`` = 0 starts from an unchanged network (for fine-tuning).
    """

    def __init__(self, size: tuple[int, ...], init_std: float = 0.1, domain: TimeDomain = UNIT_INTERVAL) -> None:
        super().__init__()
        self.size, self.domain = check_map_size(size), domain
        check_number("init_std", init_std, 0, MAX_INIT_STD)
        check_type("domain", domain, TimeDomain)
        self.weight = nn.Parameter(torch.randn(self.size) * init_std)

    def forward(self, t: float | torch.Tensor) -> torch.Tensor:
        t = time_tensor(t, self.weight.dtype, self.weight.device)
        if t.ndim > 1:
            raise ValueError(f"t has shape {tuple(t.shape)}; a positional map takes a scalar t or shape (B,)")
        u = self.domain.unit(t).to(self.weight.dtype)
        return u.view(-1, 1, *([1] * len(self.size))) * self.weight


class MLPTimeMap(nn.Module):
    """Positional timestep embedding, MLP form: sinusoidal(t) → Linear → act → Linear → spatial map.

    The paper's parallel branch next to the usual per-channel embedding (its Figure 5); t enters on
    DDPM's step scale (``TimeDomain.phase``). ``sinusoidal=False`` takes an existing timestep embedding
    (B, features) instead of t, as a block that receives a time embedding. ``zero_init`` zeroes the
    last layer so the map starts at 0 (output-preserving, for fine-tuning a trained model).
    """

    def __init__(self, size: tuple[int, ...], config: TimeAware, features: int = 64, hidden: int = 64,
                 domain: TimeDomain = DDPM_STEPS, zero_init: bool = False, sinusoidal: bool = True) -> None:
        super().__init__()
        self.size = check_map_size(size)
        (check_features if sinusoidal else check_width)("features", features)
        check_width("hidden", hidden)
        check_time_config(config, domain)
        check_parameters((features + 1) * hidden + (hidden + 1) * math.prod(self.size), "MLPTimeMap")
        self.features, self.domain, self.sinusoidal = features, domain, sinusoidal
        act, out = config.activation, nn.Linear(hidden, math.prod(self.size))
        self.net = nn.Sequential(*([] if sinusoidal else [make_activation(act)]), nn.Linear(features, hidden),
                                 make_activation(act), out)
        init_bias_(self.net, config.time_bias)
        if zero_init:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.sinusoidal:
            x = sinusoidal_features(self.domain.phase(t), self.features)
        else:
            x = check_embedding(t, self.features)
        return self.net(x).view(-1, 1, *self.size)


def make_time_map(config: TimeAware, size: tuple[int, ...] | None, domain: TimeDomain = UNIT_INTERVAL, *,
                  zero_init: bool = False, embedding_dim: int | None = None) -> nn.Module | None:
    """The positional timestep embedding (fix 1) ``config.positional`` asks for, or None: the one factory.

    size           spatial shape of the feature map it is added to (H, W), or (L,) for 1-D models
    domain         the model's time domain, which scales t for the map
    zero_init      start at 0, so adding the map leaves the output unchanged (fixing a trained model)
    embedding_dim  read a timestep embedding of this width instead of t (an MLP map on a block's embedding)
    The time-branch biases follow ``config.time_bias``; the linear map's initial std is
    ``config.positional_init``.
    """
    check_time_config(config, domain)
    if config.positional == "none":
        return None
    if embedding_dim is not None:
        check_width("embedding_dim", embedding_dim)
    if size is None:
        raise ValueError(f"positional={config.positional!r} needs the feature map size (H, W)")
    if config.positional == "linear" and embedding_dim is None:
        return LinearTimeMap(size, init_std=0.0 if zero_init else config.positional_init, domain=domain)
    if embedding_dim is not None:
        return MLPTimeMap(size, config, features=embedding_dim, zero_init=zero_init, sinusoidal=False)
    return MLPTimeMap(size, config, domain=domain, zero_init=zero_init)


def make_activation(name: str) -> nn.Module:
    """The activation named in the config."""
    table = {"relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU, "softplus": nn.Softplus, "sigmoid": nn.Sigmoid}
    choice("activation", name, tuple(table))
    return table[name]()


def check_time_config(config: Any, domain: Any = UNIT_INTERVAL) -> None:
    """A block's ``config`` is a TimeAware and its ``domain`` a TimeDomain, else a one-line TypeError."""
    check_type("config", config, TimeAware)
    check_type("domain", domain, TimeDomain)


def check_embedding(emb: Any, width: int, batch: int | None = None) -> torch.Tensor:
    """``emb`` is a timestep embedding of shape (B, ``width``) (B = ``batch`` when given); O(1), no data read."""
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[1] != width or batch not in (None, emb.shape[0]):
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(f"emb has shape {shape}; allowed: a timestep embedding of shape "
                         f"({'B' if batch is None else batch}, {width})")
    return emb


SHAPES = {1: "(L,)", 2: "(H, W)", 3: "(D, H, W)"}


def check_map_size(size: Any, rank: int | None = None) -> tuple[int, ...]:
    """A spatial shape of positive integers, (L,), (H, W) or (D, H, W) (only ``rank`` dims when given), of at
    most ``MAX_MAP`` positions, as a tuple; else a one-line ValueError."""
    ranks = (1, 2, 3) if rank is None else (rank,)
    if not isinstance(size, tuple | list) or len(size) not in ranks:
        shapes = " or ".join(SHAPES[r] for r in ranks).replace(" or ", ", ", len(ranks) - 2)
        raise ValueError(f"size={size!r} is not allowed; it must be a spatial shape {shapes}")
    for v in size:
        check_int("size", v, 1, MAX_MAP)
    if math.prod(size) > MAX_MAP:
        raise ValueError(f"size={tuple(size)} is not allowed; a map holds at most {MAX_MAP:,} positions (4096×4096)")
    return tuple(int(v) for v in size)
