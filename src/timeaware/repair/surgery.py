"""In-place surgery that applies the paper's fixes to models people already have.

Three kinds of time-injection site are understood (anything else is refused, never guessed):

* diffusers ``ResnetBlock2D`` with ``time_embedding_norm="default"``: ``conv1(h) + proj(temb)`` then ``norm2``;
* timeaware ``TimeConv2d`` with a per-channel offset, and ``ODEFunc``'s ConcatConv layers;
* torchdiffeq-style ``ConcatConv2d`` / ANODE ``Conv2dTime``: a module called ``layer(t, x)`` whose
  ``_layer`` (or ``conv``) convolves ``[t·1, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import TimeAware
from ..embeddings import LinearTimeMap, MLPTimeMap, as_time
from ..layers import ConcatConv2d, TimeConv2d


@dataclass
class Target:
    """A time-injection site resolved to the module the surgery changes."""

    name: str  # qualified name of the module changed (the resnet block, the TimeConv2d, the ConcatConv)
    kind: str  # "diffusers-resnet" | "timeconv" | "concat"
    module: nn.Module

    def operand_convs(self) -> list[nn.Conv2d]:
        """The convs of the operand branch (fix 2 zeroes their biases)."""
        if self.kind == "diffusers-resnet":
            block: Any = self.module  # a diffusers ResnetBlock2D (untyped)
            return [block.conv1, block.conv2]
        return [concat_conv(self.module)]


def resolve(model: nn.Module, injector: str) -> Target:
    """The surgery target for an injector name from the static check."""
    module = model.get_submodule(injector)
    parent_name = injector.rpartition(".")[0]
    if injector.endswith("time_emb_proj") and type(model.get_submodule(parent_name)).__name__ == "ResnetBlock2D":
        return Target(parent_name, "diffusers-resnet", model.get_submodule(parent_name))
    if isinstance(module, TimeConv2d):
        return Target(injector, "timeconv", module)
    if isinstance(module, ConcatConv2d) or type(module).__name__ in ("ConcatConv2d", "Conv2dTime"):
        return Target(injector, "concat", module)
    raise ValueError(f"{injector} ({type(module).__name__}) is a time injection fix() does not know how to change")


def concat_conv(module: nn.Module) -> nn.Conv2d:
    """The conv inside a ConcatConv-style layer or a TimeConv2d (timeaware ``conv``, torchdiffeq ``_layer``)."""
    conv = getattr(module, "conv", None) or getattr(module, "_layer", None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{type(module).__name__} looks like a ConcatConv but holds no Conv2d as .conv or ._layer")
    return conv


class EmbeddingMappedNorm(nn.Module):
    """``norm(h + p(temb))``: a diffusers resnet's norm2 with a positional map from its time embedding.

    The block's forward pre-hook hands over ``temb`` before ``norm2`` runs, so the block's own code is
    unchanged.
    """

    def __init__(self, norm: nn.Module, time_map: MLPTimeMap) -> None:
        super().__init__()
        self.norm, self.time_map = norm, time_map
        self._temb: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self._temb is None:
            raise RuntimeError("positional map has no time embedding: call the whole resnet block")
        return self.norm(h + self.time_map(self._temb).to(h.dtype))


class TimeMapped(nn.Module):
    """``layer(t, x) + p(t)``: a torchdiffeq-style time layer with a positional timestep embedding."""

    def __init__(self, layer: nn.Module, time_map: nn.Module) -> None:
        super().__init__()
        self.layer, self.time_map = layer, time_map

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(t, x)
        return y + self.time_map(as_time(t, x.shape[0], y))


def _stash_temb(module: nn.Module, args: tuple, kwargs: dict) -> None:
    temb = args[1] if len(args) > 1 else kwargs.get("temb")
    norm = module.get_submodule("norm2")
    assert isinstance(norm, EmbeddingMappedNorm)  # installed together with this hook
    norm._temb = temb


def add_positional(model: nn.Module, site: Target, size: tuple[int, int], *, form: str, preserve: bool) -> None:
    """Add a positional timestep embedding at ``site``; with ``preserve`` it starts at 0."""
    config = TimeAware(activation="silu", positional=form)
    if site.kind == "diffusers-resnet":
        block: Any = site.module  # a diffusers ResnetBlock2D (untyped)
        emb_dim = block.time_emb_proj.in_features
        emb_map = MLPTimeMap(size, config, features=emb_dim, hidden=64, zero_init=preserve, sinusoidal=False)
        block.norm2 = EmbeddingMappedNorm(block.norm2, emb_map)
        block.register_forward_pre_hook(_stash_temb, with_kwargs=True)
        return
    tmap = LinearTimeMap(size, init_std=0.0 if preserve else 0.1) if form == "linear" else MLPTimeMap(
        size, config, t_scale=1000.0, zero_init=preserve)
    if site.kind == "timeconv":
        site.module.time_map = tmap
        return
    parent_name, _, child = site.name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, TimeMapped(site.module, tmap))


def regroup(model: nn.Module, groups: int) -> list[str]:
    """Replace every GroupNorm by one with ``groups`` groups, copying eps and affine; returns their names."""
    changed = []
    norms = [(n, m) for n, m in model.named_modules() if type(m) is nn.GroupNorm]
    bad = [f"{n} ({m.num_channels} channels)" for n, m in norms if m.num_channels % groups]
    if bad:
        raise ValueError(f"groups={groups} does not divide the channels of {bad[0]}; choose a common divisor")
    for name, norm in norms:
        if norm.num_groups == groups:
            continue
        new = nn.GroupNorm(groups, norm.num_channels, norm.eps, norm.affine).to(
            device=norm.weight.device if norm.affine else None, dtype=norm.weight.dtype if norm.affine else None)
        if norm.affine:
            with torch.no_grad():
                new.weight.copy_(norm.weight)
                new.bias.copy_(norm.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        changed.append(name)
    return changed
