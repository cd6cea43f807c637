"""In-place surgery that applies the paper's fixes at the sites the tracer found, for any model family.

* fix 1: the site's normalization is wrapped as ``NormWithPositionalMap``: ``norm(h + p(t))`` with p from the one
  positional-map factory (``embeddings.make_time_map``), one map per spatial size shared by the sites of
  that size (as timeaware's U-Net shares one per resolution), t scaled by the model's time domain. t comes
  from a ``TimeClock``: a forward pre-hook on the whole model reads it from each call as the model's
  ``ModelCall`` says (argument, keyword, torchdyn attribute, concatenated column, or time embedding).
* fix 2: the bias of the site's operand conv (the conv whose output meets the time offset) starts at zero.
* fix 3: every group normalization (``norms.groups_of``: torch's GroupNorm and subclasses, or a norm with a
  ``num_groups`` attribute, as EDM's) is regrouped in place: its class, eps and affine parameters stay, only
  the number of groups changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..awareness.norms import groups_of
from ..calling import ModelCall, model_dtype
from ..config import TimeAware, divisors
from ..embeddings import as_time, make_time_map


class TimeClock:
    """Holds the t (or time embedding) of the model call in progress, for the positional maps inside it.

    Kept in the fixed model's ``__dict__`` (not a child module: an ``nn.Sequential`` would call it), so
    copies of the model (EMA, ``deepcopy``) carry their own clock and hook.
    """

    def __init__(self, call: ModelCall) -> None:
        self.call = call
        self.now: torch.Tensor | None = None

    def read(self, root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.now = self.call.time_from_call(root, args, kwargs)


def _tick(root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    clock = root.__dict__["timeaware_clock"]
    assert isinstance(clock, TimeClock)
    clock.read(root, args, kwargs)


class NormWithPositionalMap(nn.Module):
    """``norm(h + p(t))``: a normalization with a positional timestep embedding added to its input (fix 1)."""

    def __init__(self, norm: nn.Module, time_map: nn.Module, clock: TimeClock) -> None:
        super().__init__()
        self.norm, self.time_map = norm, time_map
        self.__dict__["clock"] = clock  # not a child: one clock for the whole model, registered on it

    def forward(self, h: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        clock: TimeClock = self.__dict__["clock"]
        t = clock.now
        if t is None:
            raise RuntimeError("this positional map has no t: call the whole fixed model, not one of its blocks")
        if t.ndim and t.shape[0] and h.shape[0] != t.shape[0] and h.shape[0] % t.shape[0] == 0:
            t = t.repeat_interleave(h.shape[0] // t.shape[0], dim=0)  # frames folded into the batch: B·F rows
        time = t if t.ndim == 2 else as_time(t, h.shape[0], h)
        weight = next(self.time_map.parameters(), None)  # the map's own dtype: h may be float16 in a float32 model
        time = time if weight is None else time.to(weight.dtype)
        return self.norm(h + self.time_map(time).to(h.dtype), *args, **kwargs)


def install_clock(model: nn.Module, call: ModelCall) -> TimeClock:
    """Register the clock and its pre-hook on ``model`` (once)."""
    clock = model.__dict__.get("timeaware_clock")
    if isinstance(clock, TimeClock):
        return clock
    clock = TimeClock(call)
    model.__dict__["timeaware_clock"] = clock
    model.register_forward_pre_hook(_tick, with_kwargs=True)
    return clock


def add_positional(model: nn.Module, norms: dict[str, tuple[int, ...]], call: ModelCall, form: str,
                   preserve: bool) -> list[str]:
    """Wrap each named norm as ``NormWithPositionalMap``; ``norms`` maps a norm's name to its input's spatial size.

    One map per size, shared by the norms of that size. With ``preserve`` each map starts at zero, so the
    output is unchanged at the moment of the fix.
    """
    clock = install_clock(model, call)
    config = TimeAware(positional=form, activation="silu")
    embedding_dim = call.embedding_dim if call.convention == "embedding" else None
    maps: dict[tuple[int, ...], nn.Module] = {}
    done = []
    for name, size in norms.items():
        if size not in maps:
            made = make_time_map(config, size, call.domain, zero_init=preserve, embedding_dim=embedding_dim)
            assert made is not None
            maps[size] = made
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        norm = parent.get_submodule(child)
        weight = next(iter((*norm.parameters(), *norm.buffers())), None)
        maps[size].to(device=None if weight is None else weight.device, dtype=model_dtype(model))
        setattr(parent, child, NormWithPositionalMap(norm, maps[size], clock))
        done.append(name)
    return done


def zero_operand_bias(model: nn.Module, operands: list[str]) -> list[str]:
    """Zero the bias of each named operand conv (fix 2); returns the names whose bias it zeroed."""
    zeroed = []
    for name in operands:
        bias = getattr(model.get_submodule(name), "bias", None)
        if isinstance(bias, torch.Tensor):
            with torch.no_grad():
                bias.zero_()
            zeroed.append(name)
    return zeroed


def regroup(model: nn.Module, groups: int) -> list[str]:
    """Set every group normalization (``groups_of``) to ``groups`` groups in place; returns the names it changed."""
    norms = [(n, m, grouped) for n, m in model.named_modules() if (grouped := groups_of(m)) is not None]
    bad = [(n, channels) for n, _, (_, channels) in norms if channels % groups]
    if bad:
        name, channels = bad[0]
        raise ValueError(f"groups={groups} does not divide the {channels} channels of {name}; allowed: "
                         f"{', '.join(map(str, divisors(channels)))} (a divisor of every GroupNorm's channels)")
    changed = [n for n, _, (had, _) in norms if had != groups]
    for _, norm, _ in norms:
        norm.num_groups = groups
    return changed
