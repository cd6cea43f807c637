"""The paper's NODE function: [N–Act–ConcatConv–N–Act–ConcatConv–N], called as ``func(t, x)``."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..calling import ModelCall
from ..config import TimeAware
from ..embeddings import (
    MAX_TIME,
    TimeDomain,
    TimestepMLP,
    as_time,
    check_features,
    check_map_size,
    init_bias_,
    make_activation,
    make_time_map,
)
from ..layers import ConcatConv2d, TimeConv2d, check_input, make_norm
from ..validate import check_number, check_type, check_width, choice

TIME_INPUTS = ("concat", "mlp")


class ODEFunc(nn.Module):
    """dz/dt = f(z, t): two time-dependent convs, each followed by a normalization (paper section 2.1).

    time     "concat": ConcatConv2d (the NODE pipeline, t enters as a channel; zero padding leaks a
             little t at the borders); "mlp": conv + additive MLP timestep embedding (the paper's Table 2).
    size     (H, W) of the state, needed for the positional timestep embedding.
    t1       the end of the interval [0, t1] it is integrated over: its time domain.
    The positional map (fix 1) is added right after each conv, before its norm. Modules are
    registered in the order they run.
    """

    def __init__(self, channels: int = 64, config: TimeAware | None = None, *, time: str = "concat",
                 size: tuple[int, int] | None = None, emb_dim: int = 64, t1: float = 1.0) -> None:
        super().__init__()
        config = TimeAware() if config is None else config
        check_type("config", config, TimeAware)
        check_width("channels", channels)
        choice("time", time, TIME_INPUTS)
        check_features("emb_dim", emb_dim)
        check_number("t1", t1, 0.0, MAX_TIME, low_open=True)
        self.config, self.time, self.channels = config, time, channels
        self.size = None if size is None else cast(tuple[int, int], check_map_size(size, 2))
        self.domain = TimeDomain("continuous", 0.0, float(t1))
        self.embed = TimestepMLP(emb_dim, emb_dim, config, self.domain) if time == "mlp" else None
        self.act = make_activation(config.activation)
        self.norm1 = make_norm(config, channels)
        self.conv1, self.map1 = self._time_conv(emb_dim)
        self.norm2 = make_norm(config, channels)
        self.conv2, self.map2 = self._time_conv(emb_dim)
        self.norm3 = make_norm(config, channels)

    def _time_conv(self, emb_dim: int) -> tuple[nn.Module, nn.Module | None]:
        """One time-dependent conv (ConcatConv, or conv + embedding) and its positional map (or None)."""
        config, c = self.config, self.channels
        if self.time == "concat":
            conv: nn.Module = init_bias_(ConcatConv2d(c, c, 3, 1, 1), config.operand_bias)
        else:
            conv = TimeConv2d(c, c, 3, config=config, offset="embedding", emb_dim=emb_dim)
        return conv, make_time_map(config, self.size, self.domain)

    def timeaware_call(self) -> ModelCall:
        """Called ``func(t, x)`` over [0, t1] with the norms in train mode, as during training's solves."""
        shape = None if self.size is None else (self.channels, *self.size)
        return ModelCall(convention="tx", domain=self.domain, input_shape=shape, mode="train")

    def _conv_time(self, conv: nn.Module, tmap: nn.Module | None, t: torch.Tensor, x: torch.Tensor,
               emb: torch.Tensor | None) -> torch.Tensor:
        y = conv(t, x) if emb is None else conv(x, t, emb)
        return y if tmap is None else y + tmap(t)

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, size=self.size if self.map1 is not None else None)
        tb = as_time(t, x.shape[0], x)
        emb = self.embed(tb) if self.embed is not None else None
        h = self.act(self.norm1(x))
        h = self.act(self.norm2(self._conv_time(self.conv1, self.map1, tb, h, emb)))
        return self.norm3(self._conv_time(self.conv2, self.map2, tb, h, emb))
