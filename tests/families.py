"""Small, faithful replicas of the third-party model families people train, for testing the audit and ``fix``.

Each replica keeps the original's block structure, module types and attribute names where the audit or a fix
could depend on them, its call convention and its time domain, at a size that runs on a CPU in milliseconds.
The code is written here, not vendored: each class cites the file it follows. diffusers models are used
directly (``DIFFUSERS_CONFIGS``). Every factory takes plain keyword values, also as the strings the CLI's
``--set key=value`` passes, e.g. ``timeaware audit families:make_adm_unet --set use_scale_shift_norm=1`` with
``tests/`` on ``PYTHONPATH``. ``FAMILIES`` says per family how the model is called and what to expect.
"""

from __future__ import annotations

import functools
import itertools
import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------------------
# keyword values from the CLI arrive as strings


def _int(value: int | str) -> int:
    return int(value)


def _flag(value: bool | int | str) -> bool:
    """``True``/``1``/``"true"``/``"1"``/``"yes"`` → True; the CLI passes strings."""
    if isinstance(value, str):
        if value.lower() not in ("0", "1", "true", "false", "yes", "no"):
            raise ValueError(f"{value!r} is not a boolean; allowed: 0, 1, true, false, yes, no")
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _ints(value: tuple[int, ...] | list[int] | str) -> tuple[int, ...]:
    """``(1, 2)`` or ``"1,2"`` → ``(1, 2)``."""
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    return tuple(int(v) for v in value)


def _unzero(modules: list[nn.Module]) -> None:
    """Give zero-initialised layers a default (non-zero) init, so that t reaches the output at init."""
    for module in modules:
        if isinstance(module, Gain):
            nn.init.constant_(module.gain, 1.0)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.reset_parameters()
        else:
            raise TypeError(f"cannot perturb {type(module).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# 1-2. ADM / guided-diffusion / improved-diffusion U-Net, and torchcfm's copy of it
#      (openai/improved-diffusion improved_diffusion/unet.py + nn.py; atong01/conditional-flow-matching
#      torchcfm/models/unet/unet.py)


class GroupNorm32(nn.GroupNorm):
    """improved_diffusion/nn.py: a GroupNorm subclass computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """improved_diffusion/nn.py: always 32 groups."""
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """improved_diffusion/nn.py: zero a module's parameters (its output is 0 at init)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """improved_diffusion/nn.py: [cos | sin] of timesteps (N,) at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepBlock(nn.Module):
    """improved_diffusion/unet.py: a module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor: ...


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """improved_diffusion/unet.py: passes ``emb`` only to the children that are ``TimestepBlock``s."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """improved_diffusion/unet.py ResBlock: ``emb_layers(emb)`` is added to ``in_layers(x)`` right before
    ``out_layers[0]`` (a GroupNorm32), or, with ``use_scale_shift_norm``, applied as scale-shift after it."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, dims: int = 2) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       conv_nd(dims, channels, self.out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if self.out_channels == channels
                                else conv_nd(dims, channels, self.out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while emb_out.dim() < h.dim():
            emb_out = emb_out[..., None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """improved_diffusion/unet.py: GroupNorm32 → 1-D qkv conv → attention → zero-initialised projection."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x)).reshape(b * self.num_heads, -1, x.shape[2])
        q, k, v = torch.split(qkv, qkv.shape[1] // 3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        h = self.proj_out(torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, x.shape[-1]))
        return (x + h).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """improved_diffusion/unet.py: stride-2 conv (``conv_resample=True``)."""

    def __init__(self, channels: int, dims: int = 2) -> None:
        super().__init__()
        self.op = conv_nd(dims, channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """improved_diffusion/unet.py: nearest ×2, then a conv."""

    def __init__(self, channels: int, dims: int = 2) -> None:
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetModel(nn.Module):
    """improved_diffusion/unet.py UNetModel: ``forward(x, timesteps, y=None)``, integer timesteps (N,)."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 attention_resolutions: tuple[int, ...], dropout: float = 0.0, channel_mult: tuple[int, ...] = (1, 2),
                 dims: int = 2, num_classes: int | None = None, num_heads: int = 1,
                 use_scale_shift_norm: bool = False) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.num_classes = num_classes
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)
        res = functools.partial(ResBlock, emb_channels=time_embed_dim, dropout=dropout, dims=dims,
                                use_scale_shift_norm=use_scale_shift_norm)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3,
                                                                           padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, out_channels=mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, dims)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch), AttentionBlock(ch, num_heads=num_heads), res(ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), out_channels=model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, dims))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("must specify y if and only if the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class UNetModelWrapper(UNetModel):
    """torchcfm/models/unet/unet.py UNetModelWrapper: ``dim=(C, H, W)``, ``forward(t, x, y=None)`` with
    continuous t in [0, 1] fed straight to ``timestep_embedding``; a 0-d t is repeated over the batch."""

    def __init__(self, dim: tuple[int, int, int], num_channels: int, num_res_blocks: int,
                 channel_mult: tuple[int, ...] = (1, 2), class_cond: bool = False, num_classes: int = 10,
                 attention_resolutions: str = "4", use_scale_shift_norm: bool = False, dropout: float = 0.0) -> None:
        image_size = dim[-1]
        super().__init__(in_channels=dim[0], model_channels=num_channels, out_channels=dim[0],
                         num_res_blocks=num_res_blocks,
                         attention_resolutions=tuple(image_size // int(r) for r in attention_resolutions.split(",")),
                         dropout=dropout, channel_mult=channel_mult, num_classes=num_classes if class_cond else None,
                         use_scale_shift_norm=use_scale_shift_norm)

    def forward(self, t: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None,  # type: ignore[override]
                *args: Any, **kwargs: Any) -> torch.Tensor:
        timesteps = t.repeat(x.shape[0]) if t.dim() == 0 else t
        return super().forward(x, timesteps, y=y)


def _adm_zero_modules(model: nn.Module) -> list[nn.Module]:
    """The layers ``zero_module`` zeroed: each ResBlock's ``out_layers[3]``, attention ``proj_out``, ``out[2]``."""
    found: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, ResBlock):
            found.append(module.out_layers[3])
        elif isinstance(module, AttentionBlock):
            found.append(module.proj_out)
    if isinstance(model, UNetModel):
        found.append(model.out[2])
    return found


def make_adm_unet(in_channels: int | str = 3, model_channels: int | str = 32, num_res_blocks: int | str = 1,
                  channel_mult: str | tuple[int, ...] = (1, 2), attention_resolutions: str | tuple[int, ...] = (2,),
                  num_classes: int | str | None = None, use_scale_shift_norm: bool | str = False,
                  perturb: bool | str = False) -> UNetModel:
    """An improved-diffusion ``UNetModel`` for 8×8 inputs; ``perturb`` re-initialises the ``zero_module``
    layers so that t reaches the output at init (the faithful init gives an all-zero output)."""
    model = UNetModel(_int(in_channels), _int(model_channels), _int(in_channels), _int(num_res_blocks),
                      _ints(attention_resolutions), channel_mult=_ints(channel_mult),
                      num_classes=None if num_classes in (None, "", "none") else _int(num_classes),  # type: ignore[arg-type]
                      use_scale_shift_norm=_flag(use_scale_shift_norm))
    if _flag(perturb):
        _unzero(_adm_zero_modules(model))
    return model


def make_cfm_unet(channels: int | str = 3, size: int | str = 8, num_channels: int | str = 32,
                  num_res_blocks: int | str = 1, use_scale_shift_norm: bool | str = False,
                  perturb: bool | str = False) -> UNetModelWrapper:
    """torchcfm's ``UNetModelWrapper`` for (C, size, size) inputs, attention at resolution size/2."""
    size = _int(size)
    model = UNetModelWrapper((_int(channels), size, size), _int(num_channels), _int(num_res_blocks),
                             attention_resolutions=str(size // 2), use_scale_shift_norm=_flag(use_scale_shift_norm))
    if _flag(perturb):
        _unzero(_adm_zero_modules(model))
    return model


# ---------------------------------------------------------------------------------------------------------------
# 3. lucidrains denoising-diffusion-pytorch Unet and Unet1D
#    (lucidrains/denoising-diffusion-pytorch denoising_diffusion_pytorch/denoising_diffusion_pytorch.py and
#    denoising_diffusion_pytorch_1d.py; the 1-D file is the same design with Conv1d)


class RMSNorm(nn.Module):
    """lucidrains: ``F.normalize`` over channels times a learnt per-channel ``g`` and √dim (not torch's RMSNorm)."""

    def __init__(self, dim: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.g = nn.Parameter(torch.ones(1, dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.g * self.scale


class SinusoidalPosEmb(nn.Module):
    """lucidrains: [sin | cos] of the (B,) time at geometric frequencies."""

    def __init__(self, dim: int, theta: int = 10000) -> None:
        super().__init__()
        self.dim, self.theta = dim, theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=x.device) * -(math.log(self.theta) / (half - 1)))
        emb = x[:, None] * freqs[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


def _conv(spatial_dims: int) -> type[nn.Conv1d] | type[nn.Conv2d]:
    return nn.Conv1d if spatial_dims == 1 else nn.Conv2d


class Block(nn.Module):
    """lucidrains: ``proj`` conv → ``norm`` (RMSNorm) → scale-shift from time → ``act`` (SiLU) → dropout."""

    def __init__(self, dim: int, dim_out: int, spatial_dims: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = _conv(spatial_dims)(dim, dim_out, 3, padding=1)
        self.norm = RMSNorm(dim_out, spatial_dims)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.dropout(self.act(x))


class ResnetBlock(nn.Module):
    """lucidrains: ``mlp`` = SiLU → Linear(time_emb_dim, 2·dim_out), split into scale and shift for ``block1``."""

    def __init__(self, dim: int, dim_out: int, *, time_emb_dim: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, spatial_dims)
        self.block2 = Block(dim_out, dim_out, spatial_dims)
        self.res_conv = _conv(spatial_dims)(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        emb = self.mlp(time_emb).reshape(*time_emb.shape[:1], -1, *([1] * (x.dim() - 2)))
        scale, shift = emb.chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift=(scale, shift)))
        return h + self.res_conv(x)


class Attention(nn.Module):
    """lucidrains: RMSNorm → 1×1 qkv conv → full attention over positions → 1×1 out conv (residual outside)."""

    def __init__(self, dim: int, heads: int = 2, dim_head: int = 8, spatial_dims: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm = RMSNorm(dim, spatial_dims)
        self.to_qkv = _conv(spatial_dims)(dim, heads * dim_head * 3, 1, bias=False)
        self.to_out = _conv(spatial_dims)(heads * dim_head, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, *spatial = x.shape
        q, k, v = (z.reshape(b, self.heads, -1, math.prod(spatial)).transpose(-1, -2)
                   for z in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, -1, *spatial)
        return self.to_out(out)


class Unet(nn.Module):
    """lucidrains ``Unet``: ``forward(x, time, x_self_cond=None)``, integer steps (B,); time enters every
    ResnetBlock as scale-shift after ``block1.norm``. Full attention at every level (the original uses
    linear attention above the innermost level; both are RMSNorm → qkv)."""

    spatial_dims = 2

    def __init__(self, dim: int, dim_mults: tuple[int, ...] = (1, 2), channels: int = 3,
                 self_condition: bool = False, attn_heads: int = 2, attn_dim_head: int = 8) -> None:
        super().__init__()
        sd, conv = self.spatial_dims, _conv(self.spatial_dims)
        self.channels, self.self_condition = channels, self_condition
        self.init_conv = conv(channels * (2 if self_condition else 1), dim, 7, padding=3)
        dims = [dim, *(dim * m for m in dim_mults)]
        in_out = list(itertools.pairwise(dims))
        time_dim = dim * 4
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))

        def resnet(a: int, b: int) -> ResnetBlock:
            return ResnetBlock(a, b, time_emb_dim=time_dim, spatial_dims=sd)

        def attn(d: int) -> Attention:
            return Attention(d, attn_heads, attn_dim_head, sd)

        down: Callable[[int, int], nn.Module] = (  # the 2-D original space-to-depths, the 1-D one strides
            (lambda a, b: nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(a * 4, b, 1))) if sd == 2
            else (lambda a, b: nn.Conv1d(a, b, 4, 2, 1)))
        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(nn.ModuleList([resnet(d_in, d_in), resnet(d_in, d_in), attn(d_in),
                                             conv(d_in, d_out, 3, padding=1) if last else down(d_in, d_out)]))
        self.mid_block1, self.mid_attn, self.mid_block2 = resnet(dims[-1], dims[-1]), attn(dims[-1]), resnet(
            dims[-1], dims[-1])
        self.ups = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(reversed(in_out)):
            last = i == len(in_out) - 1
            up = conv(d_out, d_in, 3, padding=1) if last else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), conv(d_out, d_in, 3, padding=1))
            self.ups.append(nn.ModuleList([resnet(d_out + d_in, d_out), resnet(d_out + d_in, d_out), attn(d_out), up]))
        self.final_res_block = resnet(dim * 2, dim)
        self.final_conv = conv(dim, channels, 1)

    def forward(self, x: torch.Tensor, time: torch.Tensor, x_self_cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.self_condition:
            x = torch.cat((x_self_cond if x_self_cond is not None else torch.zeros_like(x), x), dim=1)
        x = self.init_conv(x)
        r = x.clone()
        t = self.time_mlp(time)
        h = []
        for stage in self.downs:
            block1, block2, attn, downsample = list(stage)  # type: ignore[call-overload]
            x = block1(x, t)
            h.append(x)
            x = block2(x, t)
            x = attn(x) + x
            h.append(x)
            x = downsample(x)
        x = self.mid_block1(x, t)
        x = self.mid_block2(self.mid_attn(x) + x, t)
        for stage in self.ups:
            block1, block2, attn, upsample = list(stage)  # type: ignore[call-overload]
            x = block1(torch.cat((x, h.pop()), dim=1), t)
            x = block2(torch.cat((x, h.pop()), dim=1), t)
            x = upsample(attn(x) + x)
        return self.final_conv(self.final_res_block(torch.cat((x, r), dim=1), t))


class Unet1D(Unet):
    """lucidrains ``Unet1D``: the same design on (C, L) inputs with Conv1d and a (1, C, 1) RMSNorm gain."""

    spatial_dims = 1


def make_lucid_unet(dim: int | str = 8, channels: int | str = 3, dim_mults: str | tuple[int, ...] = (1, 2)) -> Unet:
    return Unet(_int(dim), _ints(dim_mults), _int(channels))


def make_lucid_unet1d(dim: int | str = 8, channels: int | str = 3, dim_mults: str | tuple[int, ...] = (1, 2)) -> Unet1D:
    return Unet1D(_int(dim), _ints(dim_mults), _int(channels))


# ---------------------------------------------------------------------------------------------------------------
# 4. EDM2 (NVlabs/edm2 training/networks_edm2.py) and lucidrains' KarrasUnet
#    (lucidrains/denoising-diffusion-pytorch denoising_diffusion_pytorch/karras_unet.py): magnitude-preserving
#    layers, no biases, no GroupNorm; time scales features by ``1 + gain·linear(emb)`` with the gain 0 at init.


def normalize(x: torch.Tensor, dim: int | list[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """EDM2: unit magnitude over ``dim`` (all but the first by default); EDM2's pixel norm is this over dim 1."""
    dims = list(range(1, x.dim())) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([c / math.sqrt(na) * (1 - t) * a, c / math.sqrt(nb) * t * b], dim=dim)


class MPFourier(nn.Module):
    """EDM2: cos(2π·f·x + φ)·√2 with fixed random frequencies and phases (buffers)."""

    freqs: torch.Tensor
    phases: torch.Tensor

    def __init__(self, num_channels: int, bandwidth: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float().ger(self.freqs) + self.phases).cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """EDM2: bias-free conv (kernel (k, k)) or linear (kernel ()) with forced weight normalisation in training;
    lucidrains' ``Conv2d``/``Linear`` in karras_unet.py are the same layer with gain 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        w = self.weight.float()
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = (normalize(w) * (gain / math.sqrt(w[0].numel()))).to(x.dtype)
        return x @ w.t() if w.dim() == 2 else F.conv2d(x, w, padding=w.shape[-1] // 2)


class EDM2Block(nn.Module):
    """EDM2 ``Block`` (Figure 21): ``c = emb_linear(emb, gain=emb_gain) + 1`` scales the residual branch;
    ``emb_gain`` is a scalar Parameter initialised to 0, so t has no effect at init."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", attention: bool = False, channels_per_head: int = 8,
                 res_balance: float = 0.3, attn_balance: float = 0.3, clip_act: float = 256) -> None:
        super().__init__()
        self.out_channels, self.flavor, self.resample_mode = out_channels, flavor, resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.res_balance, self.attn_balance, self.clip_act = res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=(3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=())
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=(3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, kernel=(1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=(1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=(1, 1)) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample_mode == "down":  # EDM2's [1, 1] filter: a 2×2 box filter / nearest upsampling
            x = F.avg_pool2d(x, 2)
        elif self.resample_mode == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = self.conv_res1(mp_silu(y * c[:, :, None, None].to(y.dtype)))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.attn_qkv is not None and self.attn_proj is not None:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)
            w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
            y = self.attn_proj(torch.einsum("nhqk,nhck->nhcq", w, v).reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)
        return x.clip(-self.clip_act, self.clip_act)


class EDM2UNet(nn.Module):
    """EDM2 ``UNet``: ``forward(x, noise_labels, class_labels)`` with noise_labels = ln(σ)/4 (N,), as EDM2's
    ``Precond`` computes them; ``out_gain`` (0 at init) makes the output 0 at init."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, model_channels: int = 8,
                 channel_mult: tuple[int, ...] = (1, 2), num_blocks: int = 1,
                 attn_resolutions: tuple[int, ...] = (4,), label_balance: float = 0.5,
                 concat_balance: float = 0.5) -> None:
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise, cemb = cblock[0], max(cblock)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=())
        self.emb_label = MPConv(label_dim, cemb, kernel=()) if label_dim else None
        self.enc = nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=(3, 3))
            else:
                self.enc[f"{res}x{res}_down"] = EDM2Block(cout, cout, cemb, flavor="enc", resample_mode="down")
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = EDM2Block(cin, cout, cemb, flavor="enc",
                                                                attention=res in attn_resolutions)
        self.dec = nn.ModuleDict()
        skips: list[int] = [block.out_channels for block in self.enc.values()]  # type: ignore[misc]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = EDM2Block(cout, cout, cemb, flavor="dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = EDM2Block(cout, cout, cemb, flavor="dec")
            else:
                self.dec[f"{res}x{res}_up"] = EDM2Block(cout, cout, cemb, flavor="dec", resample_mode="up")
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = EDM2Block(cin, cout, cemb, flavor="dec",
                                                                attention=res in attn_resolutions)
        self.out_conv = MPConv(cout, img_channels, kernel=(3, 3))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None and class_labels is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Gain(nn.Module):
    """lucidrains karras_unet.py: multiply by a scalar Parameter initialised to 0."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


class PixelNorm(nn.Module):
    """lucidrains karras_unet.py: L2-normalise over ``dim`` and scale by √size (EDM2's pixel norm as a module)."""

    def __init__(self, dim: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=self.dim, eps=self.eps) * math.sqrt(x.shape[self.dim])


class MPSiLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mp_silu(x)


class MPFourierEmbedding(nn.Module):
    """lucidrains karras_unet.py: [sin | cos](2π·w·x)·√2 with fixed random w (a Parameter without grad)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freqs = x[:, None] * self.weights[None] * 2 * math.pi
        return torch.cat((freqs.sin(), freqs.cos()), dim=-1) * math.sqrt(2)


class KarrasAttention(nn.Module):
    """lucidrains karras_unet.py ``Attention``: qkv 1×1 conv, PixelNorm(dim=-1) on q, k, v, MP residual
    (without the original's memory key/values)."""

    def __init__(self, dim: int, heads: int = 2, dim_head: int = 8, mp_add_t: float = 0.3) -> None:
        super().__init__()
        self.heads, self.mp_add_t = heads, mp_add_t
        self.pixel_norm = PixelNorm(dim=-1)
        self.to_qkv = MPConv(dim, heads * dim_head * 3, kernel=(1, 1))
        self.to_out = MPConv(heads * dim_head, dim, kernel=(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (self.pixel_norm(z.reshape(b, self.heads, -1, h * w).transpose(-1, -2))
                   for z in self.to_qkv(x).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, -1, h, w)
        return mp_sum(self.to_out(out), x, t=self.mp_add_t)


class KarrasBlock(nn.Module):
    """lucidrains karras_unet.py ``Encoder`` (``encoder=True``: optional downsample, ``pixel_norm``, MP residual
    around block1 → ×(``to_emb(emb)`` + 1) → block2) and ``Decoder`` (optional upsample, ``res_conv``, no norm).
    ``to_emb`` = Linear → Gain(), so t has no effect at init."""

    def __init__(self, dim: int, dim_out: int, emb_dim: int, encoder: bool, resample: bool = False,
                 has_attn: bool = False, mp_add_t: float = 0.3, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder, self.resample = encoder, resample
        self.needs_skip = encoder or not resample
        cur = dim
        self.downsample_conv = MPConv(dim, dim_out, kernel=(1, 1)) if encoder and resample else None
        if self.downsample_conv is not None:
            cur = dim_out
        self.pixel_norm = PixelNorm(dim=1) if encoder else None
        self.to_emb = nn.Sequential(MPConv(emb_dim, dim_out, kernel=()), Gain())
        self.block1 = nn.Sequential(MPSiLU(), MPConv(cur, dim_out, kernel=(3, 3)))
        self.block2 = nn.Sequential(MPSiLU(), nn.Dropout(dropout), MPConv(dim_out, dim_out, kernel=(3, 3)))
        self.res_conv = MPConv(dim, dim_out, kernel=(1, 1)) if not encoder and dim != dim_out else nn.Identity()
        self.mp_add_t = mp_add_t
        self.attn = KarrasAttention(dim_out) if has_attn else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample:
            size = tuple(s // 2 if self.encoder else s * 2 for s in x.shape[-2:])
            x = F.interpolate(x, size, mode="bilinear")
        if self.downsample_conv is not None:
            x = self.downsample_conv(x)
        if self.pixel_norm is not None:
            x = self.pixel_norm(x)
        res = x.clone() if self.encoder else self.res_conv(x)
        x = self.block1(x) * (self.to_emb(emb) + 1)[:, :, None, None]
        x = mp_sum(self.block2(x), res, t=self.mp_add_t)
        return self.attn(x) if self.attn is not None else x


class KarrasUnet(nn.Module):
    """lucidrains ``KarrasUnet``: ``forward(x, time, self_cond=None, class_labels=None)`` with time = ln(σ)/4
    (ElucidatedDiffusion's ``c_noise``); output block Conv → Gain(), so the output is 0 at init."""

    def __init__(self, *, image_size: int, dim: int = 8, dim_max: int = 16, channels: int = 3,
                 num_downsamples: int = 1, num_blocks_per_stage: int = 1, attn_res: tuple[int, ...] = (4,),
                 fourier_dim: int = 8) -> None:
        super().__init__()
        self.channels, self.image_size = channels, image_size
        self.input_block = MPConv(channels + 1, dim, kernel=(3, 3))  # the original concatenates a ones channel
        self.output_block = nn.Sequential(MPConv(dim, channels, kernel=(3, 3)), Gain())
        emb_dim = dim * 4
        self.to_time_emb = nn.Sequential(MPFourierEmbedding(fourier_dim), MPConv(fourier_dim, emb_dim, kernel=()))
        self.emb_activation = MPSiLU()
        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()

        def block(a: int, b: int, encoder: bool, **kwargs: Any) -> KarrasBlock:
            return KarrasBlock(a, b, emb_dim, encoder, **kwargs)

        cur, res = dim, image_size
        self.ups.insert(0, block(dim * 2, dim, False))
        for _ in range(num_blocks_per_stage):
            self.downs.append(block(cur, cur, True))
            self.ups.insert(0, block(cur * 2, cur, False))
        for _ in range(num_downsamples):
            out = min(dim_max, cur * 2)
            upsample = block(out, cur, False, resample=True, has_attn=res in attn_res)
            res //= 2
            attn = res in attn_res
            self.downs.append(block(cur, out, True, resample=True, has_attn=attn))
            self.ups.insert(0, upsample)
            self.ups.insert(0, block(out * 2, out, False, has_attn=attn))
            for _ in range(num_blocks_per_stage):
                self.downs.append(block(out, out, True, has_attn=attn))
                self.ups.insert(0, block(out * 2, out, False, has_attn=attn))
            cur = out
        self.mids = nn.ModuleList([block(cur, cur, False, has_attn=res in attn_res) for _ in range(2)])

    def forward(self, x: torch.Tensor, time: torch.Tensor, self_cond: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.emb_activation(self.to_time_emb(time))
        x = self.input_block(F.pad(x, (0, 0, 0, 0, 1, 0), value=1.0))
        skips = [x]
        for encoder in self.downs:
            x = encoder(x, emb)
            skips.append(x)
        for decoder in self.mids:
            x = decoder(x, emb)
        for decoder in self.ups:
            if decoder.needs_skip:
                x = mp_cat(x, skips.pop())
            x = decoder(x, emb)
        return self.output_block(x)


def make_edm2_unet(channels: int | str = 3, size: int | str = 8, model_channels: int | str = 8,
                   perturb: bool | str = False) -> EDM2UNet:
    """EDM2's U-Net for (C, size, size); ``perturb`` sets ``emb_gain``/``out_gain`` to 1 so t reaches the output."""
    model = EDM2UNet(_int(size), _int(channels), model_channels=_int(model_channels))
    if _flag(perturb):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("emb_gain", "out_gain")):
                    p.fill_(1.0)
    return model


def make_karras_unet(channels: int | str = 3, size: int | str = 8, dim: int | str = 8,
                     perturb: bool | str = False) -> KarrasUnet:
    """lucidrains' KarrasUnet for (C, size, size); ``perturb`` sets every ``Gain`` to 1."""
    model = KarrasUnet(image_size=_int(size), dim=_int(dim), channels=_int(channels))
    if _flag(perturb):
        _unzero([m for m in model.modules() if isinstance(m, Gain)])
    return model


# ---------------------------------------------------------------------------------------------------------------
# 5. torchdyn vector fields (DiffEqML/torchdyn torchdyn/nn/node_layers.py DepthCat; torchdyn/core/defunc.py DEFunc)


class DepthCat(nn.Module):
    """torchdyn: concatenate the attribute ``t`` (set from outside, a scalar) as one more channel at ``idx_cat``."""

    def __init__(self, idx_cat: int = 1) -> None:
        super().__init__()
        self.idx_cat = idx_cat
        self.t: torch.Tensor | float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = list(x.shape)
        shape[self.idx_cat] = 1
        if self.t is None:
            raise ValueError("DepthCat.t is not set; DEFunc (or the caller) sets it before each call")
        return torch.cat([x, self.t * torch.ones(shape).to(x)], self.idx_cat).to(x)


class DEFunc(nn.Module):
    """torchdyn ``DEFunc``: ``forward(t, x)`` sets ``.t`` on every submodule of ``vf`` that has one, then calls
    ``vf(x)`` (what ``NeuralODE`` does for a vector field without a t argument)."""

    def __init__(self, vector_field: nn.Module) -> None:
        super().__init__()
        self.vf, self.nfe = vector_field, 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        for module in self.vf.modules():
            if hasattr(module, "t"):
                module.t = t
        return self.vf(x)


def make_torchdyn_vf(channels: int | str = 4, hidden: int | str = 16, norm: str = "group") -> nn.Sequential:
    """A torchdyn-tutorial-style conv vector field: DepthCat → Conv2d → norm → Softplus, twice, then DepthCat →
    Conv2d. ``norm`` is "group" (GroupNorm(4, hidden)) or "batch" (BatchNorm2d)."""
    c, h = _int(channels), _int(hidden)
    norms = {"group": lambda: nn.GroupNorm(4, h), "batch": lambda: nn.BatchNorm2d(h)}
    if norm not in norms:
        raise ValueError(f"norm {norm!r} is not allowed; allowed: group, batch")
    return nn.Sequential(DepthCat(1), nn.Conv2d(c + 1, h, 3, padding=1), norms[norm](), nn.Softplus(),
                         DepthCat(1), nn.Conv2d(h + 1, h, 3, padding=1), norms[norm](), nn.Softplus(),
                         DepthCat(1), nn.Conv2d(h + 1, c, 3, padding=1))


def make_torchdyn_defunc(channels: int | str = 4, hidden: int | str = 16, norm: str = "group") -> DEFunc:
    return DEFunc(make_torchdyn_vf(channels, hidden, norm))


# ---------------------------------------------------------------------------------------------------------------
# 6. torchcfm MLP (atong01/conditional-flow-matching torchcfm/models/models.py); callers concatenate t as the
#    last feature: ``model(torch.cat([xt, t[:, None]], dim=-1))`` (its tutorials; torchcfm/utils.py torch_wrapper)


class MLP(nn.Module):
    """torchcfm ``MLP``: Linear/SELU stack whose input has one extra feature, t, when ``time_varying``."""

    def __init__(self, dim: int, out_dim: int | None = None, w: int = 64, time_varying: bool = False) -> None:
        super().__init__()
        self.time_varying = time_varying
        out_dim = out_dim or dim
        self.net = nn.Sequential(nn.Linear(dim + (1 if time_varying else 0), w), nn.SELU(), nn.Linear(w, w),
                                 nn.SELU(), nn.Linear(w, w), nn.SELU(), nn.Linear(w, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_cfm_mlp(dim: int | str = 2, w: int | str = 64) -> MLP:
    return MLP(_int(dim), w=_int(w), time_varying=True)


# ---------------------------------------------------------------------------------------------------------------
# 7. torchdiffeq's example ODE function (rtqichen/torchdiffeq examples/odenet_mnist.py) and ANODE's Conv2dTime
#    (EmilienDupont/augmented-neural-odes anode/conv_models.py)


class ConcatConv2d(nn.Module):
    """torchdiffeq example: a t channel (first) concatenated to x, then the conv ``_layer``; scalar t."""

    def __init__(self, dim_in: int, dim_out: int, ksize: int = 3, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self._layer = nn.Conv2d(dim_in + 1, dim_out, kernel_size=ksize, stride=stride, padding=padding)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1, :, :]) * t
        return self._layer(torch.cat([tt, x], 1))


class Conv2dTime(nn.Conv2d):
    """ANODE: an ``nn.Conv2d`` subclass taking ``(t, x)`` that prepends a t channel itself."""

    def __init__(self, in_channels: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(in_channels + 1, *args, **kwargs)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([torch.ones_like(x[:, :1, :, :]) * t, x], 1))


def norm(dim: int) -> nn.GroupNorm:
    """torchdiffeq example: GroupNorm with min(32, dim) groups (one channel per group below 32 channels)."""
    return nn.GroupNorm(min(32, dim), dim)


class ODEfunc(nn.Module):
    """torchdiffeq odenet_mnist ``ODEfunc``: norm1 → ReLU → conv1(t, ·) → norm2 → ReLU → conv2(t, ·) → norm3;
    ``conv="anode"`` uses ANODE's ``Conv2dTime`` in place of ``ConcatConv2d`` (the same t channel)."""

    def __init__(self, dim: int, conv: Literal["concat", "anode"] = "concat") -> None:
        super().__init__()
        layer: Callable[[], nn.Module] = ((lambda: ConcatConv2d(dim, dim, 3, 1, 1)) if conv == "concat"
                                          else (lambda: Conv2dTime(dim, dim, kernel_size=3, stride=1, padding=1)))
        self.norm1 = norm(dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = layer()
        self.norm2 = norm(dim)
        self.conv2 = layer()
        self.norm3 = norm(dim)
        self.nfe = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = self.conv1(t, self.relu(self.norm1(x)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.norm3(out)


class ConvODEFunc(nn.Module):
    """ANODE ``ConvODEFunc`` (time_dependent=True): three Conv2dTime layers with ReLU and no normalization."""

    def __init__(self, channels: int, num_filters: int, augment_dim: int = 0) -> None:
        super().__init__()
        c = channels + augment_dim
        self.conv1 = Conv2dTime(c, num_filters, kernel_size=1, stride=1, padding=0)
        self.conv2 = Conv2dTime(num_filters, num_filters, kernel_size=3, stride=1, padding=1)
        self.conv3 = Conv2dTime(num_filters, c, kernel_size=1, stride=1, padding=0)
        self.non_linearity = nn.ReLU(inplace=True)
        self.nfe = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = self.non_linearity(self.conv1(t, x))
        out = self.non_linearity(self.conv2(t, out))
        return self.conv3(t, out)


def make_torchdiffeq_func(dim: int | str = 8, conv: str = "concat") -> ODEfunc:
    if conv not in ("concat", "anode"):
        raise ValueError(f"conv {conv!r} is not allowed; allowed: concat, anode")
    return ODEfunc(_int(dim), conv)  # type: ignore[arg-type]


def make_anode_func(channels: int | str = 1, num_filters: int | str = 8) -> ConvODEFunc:
    return ConvODEFunc(_int(channels), _int(num_filters))


# ---------------------------------------------------------------------------------------------------------------
# 9. Latent diffusion's U-Net with cross-attention to a context (CompVis/latent-diffusion
#    ldm/modules/diffusionmodules/openaimodel.py, ldm/modules/attention.py), and DiT (facebookresearch/DiT models.py)


class CrossAttention(nn.Module):
    """ldm/modules/attention.py: ``to_q`` over x, ``to_k``/``to_v`` over the context (x itself when None)."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 2, dim_head: int = 8) -> None:
        super().__init__()
        inner, context_dim = heads * dim_head, context_dim or query_dim
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (f(a).unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for f, a in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        weight = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out((weight @ v).transpose(1, 2).flatten(2))


class BasicTransformerBlock(nn.Module):
    """ldm/modules/attention.py: self-attention, cross-attention to the context, feed-forward; pre-LayerNorm."""

    def __init__(self, dim: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.attn2 = CrossAttention(dim, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """ldm/modules/attention.py: GroupNorm(32) → 1×1 proj_in → transformer blocks on tokens → zero 1×1 proj_out."""

    def __init__(self, channels: int, context_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, context_dim)])
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, context=context)
        return self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w)) + x


class LDMSequential(nn.Sequential, TimestepBlock):
    """openaimodel.py TimestepEmbedSequential: emb to the ResBlocks, the context to the SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = (layer(x, emb) if isinstance(layer, TimestepBlock) else
                 layer(x, context) if isinstance(layer, SpatialTransformer) else layer(x))
        return x


class LDMUNet(nn.Module):
    """openaimodel.py UNetModel with ``use_spatial_transformer``: ``forward(x, timesteps=None, context=None,
    y=None)``; ADM's ResBlocks (emb added before ``out_layers[0]``), one level here."""

    def __init__(self, in_channels: int, model_channels: int, context_dim: int) -> None:
        super().__init__()
        self.model_channels, mc = model_channels, model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, 4 * mc), nn.SiLU(), nn.Linear(4 * mc, 4 * mc))
        res = functools.partial(ResBlock, emb_channels=4 * mc, dropout=0.0)
        self.input_blocks = nn.ModuleList([LDMSequential(nn.Conv2d(in_channels, mc, 3, padding=1)),
                                           LDMSequential(res(mc), SpatialTransformer(mc, context_dim))])
        self.middle_block = LDMSequential(res(mc), SpatialTransformer(mc, context_dim), res(mc))
        self.output_blocks = nn.ModuleList([LDMSequential(res(2 * mc, out_channels=mc),
                                                          SpatialTransformer(mc, context_dim)),
                                            LDMSequential(res(2 * mc, out_channels=mc))])
        self.out = nn.Sequential(normalization(mc), nn.SiLU(), zero_module(nn.Conv2d(mc, in_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        assert timesteps is not None and y is None
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


def make_ldm_unet(in_channels: int | str = 4, model_channels: int | str = 32, context_dim: int | str = 16,
                  perturb: bool | str = False) -> LDMUNet:
    model = LDMUNet(_int(in_channels), _int(model_channels), _int(context_dim))
    if _flag(perturb):
        _unzero([m.out_layers[3] for m in model.modules() if isinstance(m, ResBlock)]
                + [m.proj_out for m in model.modules() if isinstance(m, SpatialTransformer)] + [model.out[2]])
    return model


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """DiT: sinusoidal features of t (256, [cos | sin]) → Linear → SiLU → Linear."""

    def __init__(self, hidden: int, frequencies: int = 256) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequencies))


class LabelEmbedder(nn.Module):
    """DiT: an embedding table of num_classes + 1 rows (the last is the null class of classifier-free guidance)."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """DiT: adaLN-Zero: LayerNorm without affine → modulate(shift, scale) → attention / MLP → gate."""

    def __init__(self, hidden: int, heads: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * hidden, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1.unsqueeze(1) * self.attn(h, h, h, need_weights=False)[0]
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """facebookresearch/DiT models.py: ``forward(x, t, y)``, integer steps (N,), labels (N,); patches of a fixed
    input size (timm's PatchEmbed refuses others); adaLN-Zero and a zero final layer at init."""

    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 32,
                 depth: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        tokens = (input_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(timestep_embedding(torch.arange(tokens), hidden_size)[None], requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size) for _ in range(depth)])
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.final_linear = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        for layer in [*(b.adaLN_modulation[-1] for b in self.blocks), self.final_adaLN[-1], self.final_linear]:
            zero_module(layer)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise AssertionError(f"Input height ({x.shape[-2]}) doesn't match model ({self.input_size}).")
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_adaLN(c).chunk(2, dim=1)
        h = self.final_linear(modulate(self.norm_final(h), shift, scale))
        p, side = self.patch_size, self.input_size // self.patch_size
        h = h.reshape(x.shape[0], side, side, p, p, self.in_channels)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(x.shape)


def make_dit(input_size: int | str = 8, in_channels: int | str = 4, num_classes: int | str = 10,
             perturb: bool | str = False) -> DiT:
    model = DiT(_int(input_size), in_channels=_int(in_channels), num_classes=_int(num_classes))
    if _flag(perturb):
        _unzero([*(b.adaLN_modulation[-1] for b in model.blocks), model.final_adaLN[-1], model.final_linear])
    return model


# ---------------------------------------------------------------------------------------------------------------
# 8. diffusers models, used directly: the smallest configs that build and run (checked with diffusers 0.42)

DIFFUSERS_CONFIGS: dict[str, dict[str, Any]] = {
    # forward(sample, timestep, encoder_hidden_states, class_labels=None, ...): needs encoder_hidden_states (B, S, 8)
    "unet2d_condition": {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 3,
                         "out_channels": 3, "block_out_channels": [8, 16], "layers_per_block": 1,
                         "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                         "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 8,
                         "attention_head_dim": 4, "norm_num_groups": 4},
    # forward(hidden_states, timestep=None, class_labels=None, ...): adaLN-Zero; class_labels in [0, 10)
    "dit": {"_class_name": "DiTTransformer2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
            "patch_size": 2, "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8,
            "num_embeds_ada_norm": 10},
    # forward(hidden_states, encoder_hidden_states=None, timestep=None, ..., class_labels=None): patch input needs
    # norm_type ada_norm_zero (or ada_norm_single); class_labels in [0, 10)
    "transformer2d_patch": {"_class_name": "Transformer2DModel", "sample_size": 8, "in_channels": 3,
                            "out_channels": 3, "patch_size": 2, "num_layers": 1, "num_attention_heads": 2,
                            "attention_head_dim": 8, "num_embeds_ada_norm": 10, "norm_type": "ada_norm_zero"},
    # continuous input: GroupNorm → proj_in → blocks with AdaLayerNorm(Embedding(num_embeds_ada_norm)); the
    # timestep must be a 0-d integer < 100 (AdaLayerNorm chunks dim 0; a (B,) timestep fails)
    "transformer2d_ada_norm": {"_class_name": "Transformer2DModel", "in_channels": 8, "out_channels": 8,
                               "norm_num_groups": 4, "num_layers": 1, "num_attention_heads": 2,
                               "attention_head_dim": 8, "num_embeds_ada_norm": 100, "norm_type": "ada_norm"},
    # forward(sample, timestep): the RL (Diffuser) 1-D U-Net: ResidualTemporalBlock1D adds t after conv_in, before
    # conv_out's conv → GroupNorm(8); integer steps
    "unet1d": {"_class_name": "UNet1DModel", "sample_size": 16, "in_channels": 4, "out_channels": 4,
               "block_out_channels": [8, 16], "down_block_types": ["DownResnetBlock1D", "DownResnetBlock1D"],
               "up_block_types": ["UpResnetBlock1D"], "mid_block_type": "MidResTemporalBlock1D",
               "out_block_type": "OutConv1DBlock", "act_fn": "mish", "time_embedding_type": "positional",
               "use_timestep_embedding": True, "flip_sin_to_cos": False, "freq_shift": 1.0, "layers_per_block": 1,
               "norm_num_groups": 4},
    # forward(sample, timestep): Dance Diffusion's 1-D U-Net: Fourier features of t in [0, 1] broadcast and
    # concatenated as channels (extra_in_channels = 2·block_out_channels[0]); mid attention needs ≥ 32 channels
    "unet1d_dance": {"_class_name": "UNet1DModel", "sample_size": 32, "in_channels": 2, "out_channels": 2,
                     "block_out_channels": [16, 32], "down_block_types": ["DownBlock1DNoSkip", "DownBlock1D"],
                     "up_block_types": ["UpBlock1D", "UpBlock1DNoSkip"], "mid_block_type": "UNetMidBlock1D",
                     "extra_in_channels": 32, "layers_per_block": 1},
    # forward(sample, timestep, class_labels=None): NCSN++-like; the timestep is σ (log(σ) inside: σ = 0 is NaN)
    "unet2d_fourier": {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
                       "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                       "time_embedding_type": "fourier", "down_block_types": ["DownBlock2D", "DownBlock2D"],
                       "up_block_types": ["UpBlock2D", "UpBlock2D"]},
    # forward(sample, timestep): time as scale-shift after norm2
    "unet2d_scale_shift": {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
                           "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                           "resnet_time_scale_shift": "scale_shift",
                           "down_block_types": ["DownBlock2D", "DownBlock2D"],
                           "up_block_types": ["UpBlock2D", "UpBlock2D"]},
    # SDXL's U-Net: forward(sample, timestep, encoder_hidden_states, added_cond_kwargs={"text_embeds": (B, 8),
    # "time_ids": (B, 6)}): the pooled text and six sizes embedded and added to the time embedding
    "unet2d_sdxl": {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
                    "block_out_channels": [8, 16], "layers_per_block": 1,
                    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 8,
                    "attention_head_dim": 4, "norm_num_groups": 4, "addition_embed_type": "text_time",
                    "addition_time_embed_dim": 4, "projection_class_embeddings_input_dim": 32},
    # SD3's MMDiT: forward(hidden_states, encoder_hidden_states (B, S, 16), pooled_projections (B, 8), timestep):
    # adaLN-Zero on the image and the text stream
    "sd3": {"_class_name": "SD3Transformer2DModel", "sample_size": 8, "patch_size": 2, "in_channels": 4,
            "out_channels": 4, "num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2,
            "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 8,
            "pos_embed_max_size": 16},
    # Flux: forward(hidden_states (B, L, C) packed tokens, encoder_hidden_states, pooled_projections, timestep in
    # [0, 1], img_ids, txt_ids (RoPE positions)): adaLN-Zero in double- and single-stream blocks
    "flux": {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 8, "num_layers": 1,
             "num_single_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 16,
             "pooled_projection_dim": 8, "guidance_embeds": False, "axes_dims_rope": [2, 2, 4]},
    # PixArt-α: forward(hidden_states, encoder_hidden_states (B, S, caption_channels=12), timestep): adaLN-single
    "pixart": {"_class_name": "PixArtTransformer2DModel", "sample_size": 8, "patch_size": 2, "in_channels": 4,
               "out_channels": 4, "num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2,
               "cross_attention_dim": 16, "caption_channels": 12, "norm_type": "ada_norm_single",
               "use_additional_conditions": False},
    # forward(sample, timestep): DDPM's U-Net; time added to the features before norm2
    "unet2d": {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
               "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
               "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
               "attention_head_dim": 4},
}


def make_diffusers(name: str = "unet2d") -> nn.Module:
    """A diffusers model from ``DIFFUSERS_CONFIGS[name]`` (write that dict as config.json for the folder path)."""
    import diffusers

    if name not in DIFFUSERS_CONFIGS:
        raise ValueError(f"diffusers config {name!r} is not known; allowed: {', '.join(DIFFUSERS_CONFIGS)}")
    config = dict(DIFFUSERS_CONFIGS[name])
    model: nn.Module = getattr(diffusers, config.pop("_class_name"))(**config)
    return model


# ---------------------------------------------------------------------------------------------------------------
# The registry: how each family is called, its time domain, and what the audit and fix should find


@dataclass(frozen=True)
class Extra:
    """An extra model input: integer labels (B,) in [0, classes) when ``classes`` is set, else floats (B, *shape)."""

    shape: tuple[int, ...] = ()
    classes: int | None = None

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.classes is not None:
            return torch.randint(0, self.classes, (batch,), generator=generator)
        return torch.randn(batch, *self.shape, generator=generator)


Injection = Literal["add-before-norm", "scale-shift-after-norm", "adaln", "adaln-zero", "mp-scale",
                    "concat-channel", "concat-feature"]


@dataclass(frozen=True)
class FamilyInfo:
    """How one family's model is called and what to expect of it.

    ``call``: "positional" — t is positional argument ``time_arg`` (an int; x takes the other place);
    "keyword" — ``model(x, **{time_arg: t})``; "attr" — t is assigned to attribute ``time_arg`` of every
    submodule that has it, then ``model(x)``; "concat" — ``model(torch.cat([x, t[:, None]], -1))``.
    Extra inputs always go by keyword. ``time_shape``: t is (B,) ("batch") or 0-d ("scalar").
    ``domain``/``time_range``: integer "steps" in [a, b], "continuous" t in [a, b], or noise level "sigma" in
    [a, b]; the model receives ``noise_label`` of it ("t" itself, or "log_sigma/4" = ln(σ)/4 as EDM does).
    ``input_shape``: one sample of x, without the batch. ``injection``: how t enters; ``needs_fix``: t reaches a
    normalization's input as an offset that the norm removes (the paper's vanishing) — False where it enters
    after the norm (scale-shift, adaLN), by scaling without a following norm (EDM2), or where there is no norm.
    ``zero_init``: fnmatch patterns of the parameters that are zero at init and keep t out of later layers;
    ``t_reaches_output_at_init``: whether the output depends on t with the factory's default (faithful) init.
    ``output``: "sample" for diffusers' output objects. ``source``: the repository file the replica follows.
    """

    factory: Callable[..., nn.Module]
    call: Literal["positional", "keyword", "attr", "concat"]
    time_arg: int | str
    time_shape: Literal["batch", "scalar"]
    domain: Literal["steps", "continuous", "sigma"]
    time_range: tuple[float, float]
    input_shape: tuple[int, ...]
    injection: Injection
    needs_fix: bool
    extra: dict[str, Extra] = field(default_factory=dict)
    noise_label: Literal["t", "log_sigma/4"] = "t"
    zero_init: tuple[str, ...] = ()
    t_reaches_output_at_init: bool = True
    output: Literal["tensor", "sample"] = "tensor"
    source: str = ""

    def sample_time(self, batch: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
        """t in the family's domain: uniform integers, uniform floats, or log-uniform σ; (B,) or 0-d."""
        n = batch if self.time_shape == "batch" else 1
        lo, hi = self.time_range
        if self.domain == "steps":
            t = torch.randint(int(lo), int(hi) + 1, (n,), generator=generator)
        elif self.domain == "continuous":
            t = lo + (hi - lo) * torch.rand(n, generator=generator)
        else:
            t = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=generator))
        return t if self.time_shape == "batch" else t[0]

    def example(self, batch: int = 2, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(x, t, extra inputs) for one call."""
        x = torch.randn(batch, *self.input_shape, generator=generator)
        return x, self.sample_time(batch, generator), {k: e.sample(batch, generator) for k, e in self.extra.items()}

    def run(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor,
            extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Call ``model`` the way its library does; returns the output tensor."""
        extra = extra or {}
        label = t.log() / 4 if self.noise_label == "log_sigma/4" else t
        groups: dict[str, dict[str, torch.Tensor]] = {}  # "added_cond_kwargs.time_ids" goes in a dict keyword
        for name in [n for n in extra if "." in n]:
            group, key = name.split(".", 1)
            groups.setdefault(group, {})[key] = extra[name]
        extra = {**{n: v for n, v in extra.items() if "." not in n}, **groups}
        if self.call == "positional":
            args = (label, x) if self.time_arg == 0 else (x, label)
            out = model(*args, **extra)
        elif self.call == "keyword":
            out = model(x, **{str(self.time_arg): label}, **extra)
        elif self.call == "attr":
            for module in model.modules():
                if hasattr(module, str(self.time_arg)):
                    setattr(module, str(self.time_arg), label)
            out = model(x, **extra)
        else:
            out = model(torch.cat([x, label.expand(x.shape[0])[:, None]], -1), **extra)
        return out.sample if self.output == "sample" else out


def _diffusers_family(name: str, **kwargs: Any) -> FamilyInfo:
    config = DIFFUSERS_CONFIGS[name]
    source = f"huggingface/diffusers {config['_class_name']}"
    return FamilyInfo(factory=functools.partial(make_diffusers, name), call="keyword", time_arg="timestep",
                      output="sample", source=source, **kwargs)


_ADM_ZERO = ("*out_layers.3.*", "*proj_out.*", "out.2.*")
_ADM_SRC = "openai/improved-diffusion improved_diffusion/unet.py"
_LUCID_SRC = "lucidrains/denoising-diffusion-pytorch denoising_diffusion_pytorch/"
_TORCHDYN_SRC = "DiffEqML/torchdyn torchdyn/nn/node_layers.py DepthCat, torchdyn/core/defunc.py DEFunc"
_TORCHDIFFEQ_SRC = "rtqichen/torchdiffeq examples/odenet_mnist.py"

FAMILIES: dict[str, FamilyInfo] = {
    "adm_unet": FamilyInfo(make_adm_unet, "positional", 1, "batch", "steps", (0, 999), (3, 8, 8),
                           "add-before-norm", True, zero_init=_ADM_ZERO, t_reaches_output_at_init=False,
                           source=_ADM_SRC),
    "adm_unet_scale_shift": FamilyInfo(functools.partial(make_adm_unet, use_scale_shift_norm=True), "positional", 1,
                                       "batch", "steps", (0, 999), (3, 8, 8), "scale-shift-after-norm", False,
                                       zero_init=_ADM_ZERO, t_reaches_output_at_init=False, source=_ADM_SRC),
    "adm_unet_class": FamilyInfo(functools.partial(make_adm_unet, num_classes=10), "positional", 1, "batch", "steps",
                                 (0, 999), (3, 8, 8), "add-before-norm", True, extra={"y": Extra(classes=10)},
                                 zero_init=_ADM_ZERO, t_reaches_output_at_init=False, source=_ADM_SRC),
    "cfm_unet": FamilyInfo(make_cfm_unet, "positional", 0, "batch", "continuous", (0.0, 1.0), (3, 8, 8),
                           "add-before-norm", True, zero_init=_ADM_ZERO, t_reaches_output_at_init=False,
                           source="atong01/conditional-flow-matching torchcfm/models/unet/unet.py"),
    "lucid_unet": FamilyInfo(make_lucid_unet, "positional", 1, "batch", "steps", (0, 999), (3, 8, 8),
                             "scale-shift-after-norm", False, source=_LUCID_SRC + "denoising_diffusion_pytorch.py"),
    "lucid_unet1d": FamilyInfo(make_lucid_unet1d, "positional", 1, "batch", "steps", (0, 999), (3, 16),
                               "scale-shift-after-norm", False,
                               source=_LUCID_SRC + "denoising_diffusion_pytorch_1d.py"),
    "karras_unet": FamilyInfo(make_karras_unet, "positional", 1, "batch", "sigma", (0.002, 80.0), (3, 8, 8),
                              "mp-scale", False, noise_label="log_sigma/4",
                              zero_init=("*to_emb.1.gain", "output_block.1.gain"), t_reaches_output_at_init=False,
                              source=_LUCID_SRC + "karras_unet.py"),
    "edm2_unet": FamilyInfo(make_edm2_unet, "positional", 1, "batch", "sigma", (0.002, 80.0), (3, 8, 8),
                            "mp-scale", False, noise_label="log_sigma/4", zero_init=("*emb_gain", "out_gain"),
                            t_reaches_output_at_init=False, source="NVlabs/edm2 training/networks_edm2.py"),
    "torchdyn_vf": FamilyInfo(make_torchdyn_vf, "attr", "t", "scalar", "continuous", (0.0, 1.0), (4, 8, 8),
                              "concat-channel", True, source=_TORCHDYN_SRC),
    "torchdyn_defunc": FamilyInfo(make_torchdyn_defunc, "positional", 0, "scalar", "continuous", (0.0, 1.0),
                                  (4, 8, 8), "concat-channel", True, source=_TORCHDYN_SRC),
    "cfm_mlp": FamilyInfo(make_cfm_mlp, "concat", -1, "batch", "continuous", (0.0, 1.0), (2,), "concat-feature",
                          False, source="atong01/conditional-flow-matching torchcfm/models/models.py"),
    "torchdiffeq_func": FamilyInfo(make_torchdiffeq_func, "positional", 0, "scalar", "continuous", (0.0, 1.0),
                                   (8, 8, 8), "concat-channel", True, source=_TORCHDIFFEQ_SRC),
    "torchdiffeq_func_anode": FamilyInfo(functools.partial(make_torchdiffeq_func, conv="anode"), "positional", 0,
                                         "scalar", "continuous", (0.0, 1.0), (8, 8, 8), "concat-channel", True,
                                         source=_TORCHDIFFEQ_SRC + " with anode/conv_models.py Conv2dTime"),
    "anode_func": FamilyInfo(make_anode_func, "positional", 0, "scalar", "continuous", (0.0, 1.0), (1, 8, 8),
                             "concat-channel", False,
                             source="EmilienDupont/augmented-neural-odes anode/conv_models.py ConvODEFunc"),
    "ldm_unet": FamilyInfo(make_ldm_unet, "positional", 1, "batch", "steps", (0, 999), (4, 8, 8), "add-before-norm",
                           True, extra={"context": Extra(shape=(4, 16))}, zero_init=("*out_layers.3.*", "*proj_out.*",
                                                                                      "out.2.*"),
                           t_reaches_output_at_init=False, source="CompVis/latent-diffusion openaimodel.py"),
    "dit": FamilyInfo(make_dit, "positional", 1, "batch", "steps", (0, 999), (4, 8, 8), "adaln-zero", False,
                      extra={"y": Extra(classes=10)}, zero_init=("*adaLN_modulation.1.*", "final_adaLN.1.*",
                                                                 "final_linear.*"),
                      t_reaches_output_at_init=False, source="facebookresearch/DiT models.py"),
    "diffusers_unet2d": _diffusers_family("unet2d", time_shape="batch", domain="steps", time_range=(0, 999),
                                          input_shape=(3, 8, 8), injection="add-before-norm", needs_fix=True),
    "diffusers_unet2d_scale_shift": _diffusers_family(
        "unet2d_scale_shift", time_shape="batch", domain="steps", time_range=(0, 999), input_shape=(3, 8, 8),
        injection="scale-shift-after-norm", needs_fix=False),
    "diffusers_unet2d_fourier": _diffusers_family("unet2d_fourier", time_shape="batch", domain="sigma",
                                                  time_range=(0.01, 50.0), input_shape=(3, 8, 8),
                                                  injection="add-before-norm", needs_fix=True),
    "diffusers_unet2d_condition": _diffusers_family(
        "unet2d_condition", time_shape="batch", domain="steps", time_range=(0, 999), input_shape=(3, 8, 8),
        injection="add-before-norm", needs_fix=True, extra={"encoder_hidden_states": Extra(shape=(4, 8))}),
    "diffusers_dit": _diffusers_family("dit", time_shape="batch", domain="steps", time_range=(0, 999),
                                       input_shape=(3, 8, 8), injection="adaln-zero", needs_fix=False,
                                       extra={"class_labels": Extra(classes=10)}),
    "diffusers_transformer2d_patch": _diffusers_family(
        "transformer2d_patch", time_shape="batch", domain="steps", time_range=(0, 999), input_shape=(3, 8, 8),
        injection="adaln-zero", needs_fix=False, extra={"class_labels": Extra(classes=10)}),
    "diffusers_transformer2d_ada_norm": _diffusers_family(
        "transformer2d_ada_norm", time_shape="scalar", domain="steps", time_range=(0, 99), input_shape=(8, 4, 4),
        injection="adaln", needs_fix=False),
    "diffusers_unet2d_sdxl": _diffusers_family(
        "unet2d_sdxl", time_shape="batch", domain="steps", time_range=(0, 999), input_shape=(4, 8, 8),
        injection="add-before-norm", needs_fix=True,
        extra={"encoder_hidden_states": Extra(shape=(4, 8)), "added_cond_kwargs.text_embeds": Extra(shape=(8,)),
               "added_cond_kwargs.time_ids": Extra(shape=(6,))}),
    "diffusers_sd3": _diffusers_family("sd3", time_shape="batch", domain="steps", time_range=(0, 999),
                                       input_shape=(4, 8, 8), injection="adaln-zero", needs_fix=False,
                                       extra={"encoder_hidden_states": Extra(shape=(4, 16)),
                                              "pooled_projections": Extra(shape=(8,))}),
    "diffusers_flux": _diffusers_family("flux", time_shape="batch", domain="continuous", time_range=(0.0, 1.0),
                                        input_shape=(16, 8), injection="adaln-zero", needs_fix=False,
                                        extra={"encoder_hidden_states": Extra(shape=(4, 16)),
                                               "pooled_projections": Extra(shape=(8,)), "img_ids": Extra(shape=(16, 3)),
                                               "txt_ids": Extra(shape=(4, 3))}),
    "diffusers_pixart": _diffusers_family("pixart", time_shape="batch", domain="steps", time_range=(0, 999),
                                          input_shape=(4, 8, 8), injection="adaln", needs_fix=False,
                                          extra={"encoder_hidden_states": Extra(shape=(4, 12))}),
    "diffusers_unet1d": _diffusers_family("unet1d", time_shape="batch", domain="steps", time_range=(0, 999),
                                          input_shape=(4, 16), injection="add-before-norm", needs_fix=True),
    "diffusers_unet1d_dance": _diffusers_family("unet1d_dance", time_shape="batch", domain="continuous",
                                                time_range=(0.0, 1.0), input_shape=(2, 32),
                                                injection="concat-channel", needs_fix=True),
}
