"""The DDPM U-Net (Ho et al. 2020) with the paper's three fixes as fields of one shared ``TimeAware`` config.

Every residual block is GN–Act–Conv–Emb–GN–Act–Dropout–Conv (+skip), the pipeline the paper shows to
lose its timestep embedding in the second GroupNorm. The knobs, all read from ``UNetConfig.time``:

* ``positional="mlp"`` (fix 1): the paper's Figure 5 parallel branch, sinusoidal features → MLP → H×W map,
  added next to the per-channel embedding. One branch per resolution, shared by the blocks at that
  resolution, so the parameter count grows by well under 1%.
* ``operand_bias="zero"`` (fix 2): zero bias on the convs of the operand branch of every residual block.
* ``groups`` (fix 3): the groups of every GroupNorm.
* ``injection="scale_shift"``: the compared variant, time applied after the norm (h·(1+s) + b).

The default ``UNetConfig()`` is the DDPM CIFAR-10 model (35.7M parameters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from ..calling import ModelCall
from ..config import TimeAware
from ..embeddings import DDPM_STEPS, TimestepMLP, as_time, make_activation, make_time_map
from ..layers import ScaleShift, TimeConv2d, check_input, make_norm
from ..resources import unet_size
from ..validate import MAX_WIDTH, check_int, check_number, check_parameters, check_type, check_width


def ddpm_time_config() -> TimeAware:
    """DDPM's defaults: GroupNorm(32), Swish, time added before the norm, PyTorch's bias init."""
    return TimeAware(norm="group", groups=32, activation="silu")


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the U-Net; ``time`` holds the paper's knobs. Defaults: DDPM CIFAR-10 (Ho et al. 2020)."""

    image_size: int = 32                       # H = W of the input
    in_channels: int = 3                       # 3 for RGB, 1 for digits
    channels: int = 128                        # base width
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)  # width multiplier per resolution
    num_res_blocks: int = 2                    # residual blocks per resolution on the way down
    attn_resolutions: tuple[int, ...] | None = None  # resolutions with self-attention; None: DDPM's 16 if reached
    dropout: float = 0.1
    time: TimeAware = field(default_factory=ddpm_time_config)

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "channels", "num_res_blocks"):
            check_width(name, getattr(self, name))
        check_type("channel_mult", self.channel_mult, tuple | list)
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))  # a list from JSON becomes a tuple
        if not self.channel_mult:
            raise ValueError("channel_mult=() is not allowed; give at least one multiplier")
        for m in self.channel_mult:  # every width channels·m must be one a block can have
            check_int("channel_mult", m, 1, MAX_WIDTH // self.channels)
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"image_size={self.image_size} is not allowed with {len(self.channel_mult)} "
                             f"resolutions; it must be divisible by {2 ** (len(self.channel_mult) - 1)}")
        attn = self.attn_resolutions
        if attn is None:  # the default: DDPM's 16×16, where the net reaches it
            attn = (16,) if 16 in self.resolutions else ()
        check_type("attn_resolutions", attn, tuple | list)
        object.__setattr__(self, "attn_resolutions", tuple(attn))
        for r in attn:  # 0, -1, 2.5 are typos; a size the net does not reach has no attention (saved runs keep it)
            check_int("attn_resolutions", r, 1, self.image_size)
        check_number("dropout", self.dropout, 0.0, 1.0)
        if isinstance(self.time, dict):
            object.__setattr__(self, "time", TimeAware.from_dict(self.time))
        check_type("time", self.time, TimeAware)
        if self.time.positional == "linear":
            raise ValueError("positional='linear' is not allowed in the U-Net: t·P is the NODE form for t in [0, 1] "
                             "and would swamp the features at t ~ 1000; choose one of none, mlp")
        for c in sorted({self.channels * m for m in self.channel_mult}):
            self.time.check_channels(c)

    def size(self) -> tuple[int, int]:
        """(parameters, activation bytes per training sample), estimated without building the model."""
        widths = [self.channels * m for m in self.channel_mult]
        return unet_size(widths, self.num_res_blocks, self.image_size, self.in_channels)

    @property
    def resolutions(self) -> list[int]:
        return [self.image_size // 2**i for i in range(len(self.channel_mult))]

    def replace(self, **changes: Any) -> UNetConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channel_mult"], data["attn_resolutions"] = list(self.channel_mult), list(self.attn_resolutions or ())
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown UNetConfig field {unknown[0]!r}; allowed: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**data)


class ResBlock(nn.Module):
    """GN–Act–Conv–Emb–GN–Act–Dropout–Conv (+skip): DDPM's residual block, built from ``config`` alone.

    With ``injection="add"`` the per-channel embedding is added right after the first conv (the paper's
    site, followed by GroupNorm); with ``"scale_shift"`` it is applied after that GroupNorm instead.
    The positional map ``time_map`` (fix 1) is the U-Net's, shared by the blocks at one resolution.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, config: TimeAware,
                 time_map: nn.Module | None = None) -> None:
        super().__init__()
        check_number("dropout", dropout, 0.0, 1.0)
        check_type("config", config, TimeAware)
        scale_shift = config.injection == "scale_shift"
        self.norm1, self.act = make_norm(config, in_ch), make_activation(config.activation)
        self.conv1 = TimeConv2d(in_ch, out_ch, 3, config=config,
                                offset="none" if scale_shift else "embedding", emb_dim=emb_dim, time_map=time_map)
        self.norm2 = make_norm(config, out_ch)
        self.scale_shift = ScaleShift(out_ch, emb_dim, config) if scale_shift else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        if config.operand_bias == "zero":
            for conv in (self.conv2, self.skip):
                if isinstance(conv, nn.Conv2d) and conv.bias is not None:
                    nn.init.zeros_(conv.bias)

    def operand_convs(self) -> list[nn.Conv2d]:
        """The convs of the operand branch (those fix 2 starts at zero bias)."""
        return [c for c in (self.conv1.conv, self.conv2, self.skip) if isinstance(c, nn.Conv2d)]

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.norm2(self.conv1(self.act(self.norm1(x)), t, emb))
        if self.scale_shift is not None:
            h = self.scale_shift(h, emb)
        h = self.conv2(self.dropout(self.act(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over pixels (DDPM's AttnBlock), fused via ``scaled_dot_product_attention``."""

    def __init__(self, channels: int, config: TimeAware) -> None:
        super().__init__()
        self.norm = make_norm(config, channels)
        check_parameters(4 * channels * channels, f"Attention({channels})")
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Stage(nn.Module):
    """The blocks at one resolution: residual blocks, each followed by attention where configured."""

    def __init__(self, blocks: list[ResBlock], attn: list[Attention | None]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(a if a is not None else nn.Identity() for a in attn)


class UNet(nn.Module):
    """ε-prediction U-Net: ``model(x_t, t)`` with t a (B,) tensor of integer or float timesteps."""

    def timeaware_call(self) -> ModelCall:
        """Called ``model(x_t, t)`` on images with integer steps 0..T-1, in eval mode as when sampling."""
        cfg = self.config
        return ModelCall(convention="xt", domain=DDPM_STEPS, input_shape=(cfg.in_channels, cfg.image_size,
                                                                           cfg.image_size))

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        check_type("config", cfg, UNetConfig)
        check_parameters(cfg.size()[0], "UNet")
        tc, ch, emb_dim = cfg.time, cfg.channels, 4 * cfg.channels
        self.time_embed = TimestepMLP(ch, emb_dim, tc)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.time_maps = nn.ModuleDict({str(r): m for r in cfg.resolutions
                                        if (m := make_time_map(tc, (r, r), DDPM_STEPS))})

        def res(i: int, o: int, r: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, cfg.dropout, tc, self.time_maps[str(r)] if self.time_maps else None)

        def attn(r: int, c: int) -> Attention | None:
            return Attention(c, tc) if r in (cfg.attn_resolutions or ()) else None

        widths, skips, c = [ch * m for m in cfg.channel_mult], [ch], ch
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for level, (r, w) in enumerate(zip(cfg.resolutions, widths)):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(res(c, w, r))
                c = w
                skips.append(c)
            self.down.append(Stage(blocks, [attn(r, c) for _ in blocks]))
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)
        r_low = cfg.resolutions[-1]
        self.mid = Stage([res(c, c, r_low), res(c, c, r_low)], [Attention(c, tc), None])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            r, w, blocks = cfg.resolutions[level], widths[level], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(res(c + skips.pop(), w, r))
                c = w
            self.up.append(Stage(blocks, [attn(r, c) for _ in blocks]))
            self.upsample.append(nn.Identity() if level == 0 else nn.Conv2d(c, c, 3, padding=1))
        self.out = nn.Sequential(make_norm(tc, c), make_activation(tc.activation),
                                 nn.Conv2d(c, cfg.in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        cfg = self.config
        check_input(x, cfg.in_channels, size=(cfg.image_size, cfg.image_size), dtype=self.conv_in.weight.dtype)
        t = as_time(t, x.shape[0], x)
        emb = self.time_embed(t)
        h = self.conv_in(x)
        hs = [h]
        for stage, down in zip(cast(Iterable[Stage], self.down), self.downsample):
            for block, attn in zip(stage.blocks, stage.attn):
                h = attn(block(h, t, emb))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        for block, attn in zip(self.mid.blocks, self.mid.attn):
            h = attn(block(h, t, emb))
        for stage, up in zip(cast(Iterable[Stage], self.up), self.upsample):
            for block, attn in zip(stage.blocks, stage.attn):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), t, emb))
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)

    def res_blocks(self) -> list[ResBlock]:
        return [m for m in self.modules() if isinstance(m, ResBlock)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
