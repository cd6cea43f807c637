"""Which modules are normalizations, and how many per-channel offsets one normalization unit sees.

Every family is hooked by default: torch's BatchNorm / InstanceNorm / GroupNorm / LayerNorm / RMSNorm and
their subclasses (guided-diffusion's ``GroupNorm32``), and other libraries' normalization modules found
by their class name (lucidrains' ``RMSNorm`` / ``PixelNorm`` / ``ChanLayerNorm``, diffusers' ``AdaGroupNorm``,
``AdaLayerNorm*``, ``RMSNorm``), but not wrappers that apply a norm and then something else (``PreNorm``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import torch
from torch import nn

TORCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm,
    nn.LocalResponseNorm,
)
# a class whose name ends in Norm / Normalize / Normalization (maybe with 1d/2d/3d or a number), not a wrapper
NORM_NAME = re.compile(r"^(?!Pre|Post)\w*(Norm(Zero|Continuous)?|Normalize|Normalization)(\d+d?|\d*D)?$")


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer of any library."""
    return isinstance(module, TORCH_NORMS) or bool(NORM_NAME.match(type(module).__name__))


def channels_per_unit(module: nn.Module) -> int | None:
    """How many channels share one normalization unit, i.e. how many distinct per-channel offsets it sees.

    1 cancels a per-channel offset exactly (BatchNorm, InstanceNorm, GroupNorm with G = C); None when the
    norm does not subtract a mean over space per channel group (RMSNorm, PixelNorm, LayerNorm over
    features) or is unknown.
    """
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return 1
    grouped = groups_of(module)
    if grouped is not None:
        return grouped[1] // grouped[0]
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) >= 3:
        return int(module.normalized_shape[-3])  # normalizes (C, H, W): one unit holds all C channels
    return None


def groups_of(module: nn.Module) -> tuple[int, int] | None:
    """(groups, channels) of a group normalization: torch's GroupNorm and its subclasses, or any normalization
    that keeps an integer ``num_groups`` and its channel count (EDM's own ``GroupNorm``); None for others."""
    if isinstance(module, nn.GroupNorm):
        return module.num_groups, module.num_channels
    groups = getattr(module, "num_groups", None)
    if not is_norm(module) or isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        return None
    channels = getattr(module, "num_channels", None)
    weight = getattr(module, "weight", None)
    if not isinstance(channels, int) and isinstance(weight, torch.Tensor) and weight.ndim == 1:
        channels = int(weight.numel())
    return (groups, channels) if isinstance(channels, int) and channels >= groups else None


def select_layers(model: nn.Module, layers: Sequence[str] | str | None = None, *,
                  only: bool = False) -> list[tuple[str, nn.Module]]:
    """The modules an audit hooks: every normalization, plus (or, with ``only``, just) the modules ``layers``
    names: module names, class names, or shell patterns of either (``down.*.norm2``, ``*Norm32``)."""
    wanted = [layers] if isinstance(layers, str) else list(layers or ())  # one pattern, not its characters
    named = list(model.named_modules())
    for pattern in wanted:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"--layers {pattern!r} is not allowed; give a module name, class name or shell pattern")
        if not any(_matches(pattern, name, module) for name, module in named):
            sample = ", ".join(sorted({type(m).__name__ for _, m in named})[:8])
            raise ValueError(f"--layers {pattern!r} matches no module name or class; classes here include {sample}")
    return [(name, m) for name, m in named  # the model itself is never one of its layers
            if name and ((not only and is_norm(m)) or any(_matches(p, name, m) for p in wanted))]


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    cls = type(module).__name__
    return pattern in (name, cls) or fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(cls, pattern)
