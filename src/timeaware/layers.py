"""Time-dependent blocks: where time enters a network and what normalizes it afterwards.

* ``ConcatConv2d``: the torchdiffeq / ANODE layer (a constant t channel concatenated, then a conv).
  On interior pixels it is conv(x) + t·s_c with s_c the spatial sum of the t-slice of the kernel:
  a per-channel offset (paper eqs. 2-4). Zero padding makes border pixels see a partial sum.
* ``TimeConv2d``: the same idea written out, operand conv + per-channel time offset
  (+ positional timestep embedding), with each branch's bias init from the config (fix 2).
* ``ScaleShift``: time applied after the norm (improved-diffusion's ``use_scale_shift_norm``).
* ``make_norm``: the validated normalization factory (fix 3 is ``groups``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .config import TimeAware
from .embeddings import (
    UNIT_INTERVAL,
    TimeDomain,
    as_time,
    check_embedding,
    check_time_config,
    init_bias_,
    make_activation,
    make_time_map,
)
from .validate import MAX_KERNEL, check_int, check_parameters, check_type, check_width, choice

OFFSETS = ("linear", "embedding", "none")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

__all__ = ["ConcatConv2d", "ScaleShift", "TimeConv2d", "init_bias_", "make_activation", "make_norm"]


def make_norm(config: TimeAware, channels: int) -> nn.Module:
    """The normalization ``config.norm`` names, for ``channels`` channels of an (N, C, H, W) map.

    "layer" normalizes over (C, H, W) with a per-channel affine, i.e. GroupNorm with one group,
    so it works at any resolution.
    """
    check_type("config", config, TimeAware)
    config.check_channels(channels)
    if config.norm == "batch":
        return nn.BatchNorm2d(channels)
    if config.norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if config.norm == "group":
        return nn.GroupNorm(config.groups, channels)
    if config.norm == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def check_conv(what: str, in_channels: int, out_channels: int, kernel_size: int, stride: int,
               padding: int | None) -> None:
    """A conv's sizes: widths up to ``MAX_WIDTH``, kernel and stride 1 to ``MAX_KERNEL``, padding 0 to
    ``MAX_KERNEL``, and weights that fit in memory."""
    check_width("in_channels", in_channels)
    check_width("out_channels", out_channels)
    check_int("kernel_size", kernel_size, 1, MAX_KERNEL)
    check_int("stride", stride, 1, MAX_KERNEL)
    check_int("padding", padding, 0, MAX_KERNEL)
    check_parameters(in_channels * out_channels * kernel_size**2, f"{what}({in_channels}, {out_channels}, "
                     f"kernel_size={kernel_size})")


def check_input(x: torch.Tensor, channels: int, *, conv: nn.Conv2d | None = None,
                size: tuple[int, int] | None = None, name: str = "x", dtype: torch.dtype | None = None) -> None:
    """x is a floating-point (N, ``channels``, H, W) tensor of the layer's dtype (``conv``'s weights' or
    ``dtype``), with H×W = ``size`` when given and large enough for ``conv``'s kernel and padding; O(1), no data
    read (these run inside ODE solvers)."""
    least = 1 if conv is None else min_input_size(conv)
    if (not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels or min(x.shape[-2:]) < least
            or (size is not None and x.shape[-2:] != size)):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        spatial = "H, W" if size is None else f"{size[0]}, {size[1]}"
        raise ValueError(f"{name} has shape {shape}; this layer takes (N, {channels}, {spatial})"
                         + (f" with H, W >= {least}" if least > 1 and size is None else ""))
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype}; this layer takes a floating-point tensor")
    want = conv.weight.dtype if conv is not None else dtype
    if want is not None and x.dtype != want:
        raise ValueError(f"{name} has dtype {x.dtype}; this layer's weights are {want} (convert one to the other, "
                         f"e.g. x.to({want}) or layer.to({x.dtype}))")


def min_input_size(conv: nn.Conv2d) -> int:
    """The smallest H (and W) ``conv`` takes: one output pixel, and padding that does not wrap (reflect needs
    H > padding, circular H >= padding)."""
    pad = int(conv.padding[0])  # an int pair: check_conv refuses "same" and "valid"
    wrap = {"reflect": pad + 1, "circular": pad}.get(conv.padding_mode, 1)
    return max(1, conv.kernel_size[0] - 2 * pad, wrap)


class ConcatConv2d(nn.Module):
    """Conv2d over [t·1, x]: torchdiffeq's example ``ConcatConv2d`` / ANODE's ``Conv2dTime``.

    Called as ``layer(t, x)`` like torchdiffeq. The t channel comes first, is built before padding,
    so zero padding gives border pixels a partial kernel sum: the edge effect the paper discusses.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, bias: bool = True,
                 padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros") -> None:
        super().__init__()
        check_conv("ConcatConv2d", in_channels, out_channels, kernel_size, stride, padding)
        check_type("bias", bias, bool)
        choice("padding_mode", padding_mode, PADDING_MODES)
        self.conv = nn.Conv2d(in_channels + 1, out_channels, kernel_size, stride, padding, bias=bias,
                              padding_mode=padding_mode)

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.conv.in_channels - 1, conv=self.conv)
        tt = torch.ones_like(x[:, :1]) * as_time(t, x.shape[0], x)[:, None, None, None]
        return self.conv(torch.cat([tt, x], dim=1))

    @property
    def time_offset(self) -> torch.Tensor:
        """s_c: what one unit of t adds to channel c on interior pixels (paper eq. 4)."""
        return self.conv.weight[:, 0].sum(dim=(-1, -2))


class TimeConv2d(nn.Module):
    """Operand conv plus time: y = conv(x) + e(t) [+ p(t)], the paper's Conv–Emb.

    offset   "linear": e_c(t) = w_c·t + b_c from the raw t (ConcatConv without the edge effect, same scale);
             "embedding": e(t) = Linear(act(emb)) from a timestep embedding (DDPM, needs ``emb_dim``);
             "none": no per-channel offset (used with ``ScaleShift`` after the norm).
    The positional map p(t) (fix 1) is given as ``time_map``, a module ``t -> (B, 1, H, W)`` that several
    convs may share (a U-Net's blocks at one resolution), or, when ``size`` = (H, W) of the output is given,
    built here by the one factory from ``config.positional`` and ``domain``. Operand and timestep branches
    get their own bias policies (fix 2).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, config: TimeAware,
                 offset: str = "linear", emb_dim: int | None = None, size: tuple[int, int] | None = None,
                 stride: int = 1, padding: int | None = None, domain: TimeDomain = UNIT_INTERVAL,
                 time_map: nn.Module | None = None) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None and isinstance(kernel_size, int) else padding
        check_conv("TimeConv2d", in_channels, out_channels, kernel_size, stride, padding)
        choice("offset", offset, OFFSETS)
        check_time_config(config, domain)
        if emb_dim is not None:  # a size, checked even where this offset does not use it
            check_width("emb_dim", emb_dim)
        check_type("time_map", time_map, nn.Module | None)
        self.conv = init_bias_(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
                               config.operand_bias)
        self.offset: nn.Module | None = None  # "none"
        if offset == "linear":
            self.offset = nn.Linear(1, out_channels)
            # as large as ConcatConv's s_c (a sum of k² weights of a conv with in+1 channels), not Linear's
            # U(-1, 1) for one input, so the two are interchangeable at initialisation
            nn.init.normal_(self.offset.weight, std=(3 * (in_channels + 1)) ** -0.5)
        elif offset == "embedding":
            if emb_dim is None:
                raise ValueError("offset='embedding' needs emb_dim, the size of the timestep embedding")
            check_parameters(emb_dim * out_channels, f"TimeConv2d's embedding offset ({emb_dim} -> {out_channels})")
            self.offset = nn.Sequential(make_activation(config.activation), nn.Linear(emb_dim, out_channels))
        self.offset_kind, self.emb_dim = offset, emb_dim or 0
        if self.offset is not None:
            init_bias_(self.offset, config.time_bias)
        if time_map is None and size is not None:
            time_map = make_time_map(config, size, domain)
        self.time_map = time_map

    def forward(self, x: torch.Tensor, t: float | torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, self.conv.in_channels, conv=self.conv)
        tb = as_time(t, x.shape[0], x)
        if self.offset_kind == "embedding":
            if emb is None:
                raise ValueError("this TimeConv2d adds a timestep embedding: call it as layer(x, t, emb)")
            check_embedding(emb, self.emb_dim, x.shape[0])
        y = self.conv(x)
        if self.offset is not None:  # "linear" from the raw t, "embedding" from the timestep embedding
            y = y + self.offset(tb[:, None] if self.offset_kind == "linear" else emb)[:, :, None, None]
        if self.time_map is not None:
            p = self.time_map(tb)
            if p.shape[-2:] != y.shape[-2:]:
                raise ValueError(f"positional map is {tuple(p.shape[-2:])} but the feature map is "
                                 f"{tuple(y.shape[-2:])}; pass size=(H, W) of the conv output")
            y = y + p
        return y


class ScaleShift(nn.Module):
    """Time after the norm: h·(1 + s(emb)) + b(emb), as improved-diffusion's ``use_scale_shift_norm``.

    The compared variant: a per-channel scale survives any norm that precedes it.
    """

    def __init__(self, channels: int, emb_dim: int, config: TimeAware) -> None:
        super().__init__()
        check_width("channels", channels)
        check_width("emb_dim", emb_dim)
        check_type("config", config, TimeAware)
        check_parameters(emb_dim * 2 * channels, f"ScaleShift({channels}, {emb_dim})")
        self.channels, self.emb_dim = channels, emb_dim
        self.proj = init_bias_(nn.Sequential(make_activation(config.activation), nn.Linear(emb_dim, 2 * channels)),
                               config.time_bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        check_input(h, self.channels, name="h")
        check_embedding(emb, self.emb_dim, h.shape[0])
        scale, shift = self.proj(emb)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + scale) + shift

