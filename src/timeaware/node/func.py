"""The paper's NODE function: [N–Act–ConcatConv–N–Act–ConcatConv–N], called as ``func(t, x)``."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TimeAware, check_positive
from ..embeddings import TimestepMLP, as_time, init_bias_, make_activation, make_time_map
from ..layers import ConcatConv2d, TimeConv2d, make_norm

TIME_INPUTS = ("concat", "mlp")


class ODEFunc(nn.Module):
    """dz/dt = f(z, t): two time-dependent convs, each followed by a normalization (paper section 2.1).

    time     "concat": ConcatConv2d (the NODE pipeline, t enters as a channel; zero padding leaks a
             little t at the borders); "mlp": conv + additive MLP timestep embedding (the paper's Table 2).
    size     (H, W) of the state, needed for the positional timestep embedding.
    The positional map (fix 1) is added right after each conv, before its norm.
    """

    time_range = (0.0, 1.0)  # the interval it is integrated over (NodeClassifier sets its solver's); the audit's t

    def __init__(self, channels: int = 64, config: TimeAware | None = None, *, time: str = "concat",
                 size: tuple[int, int] | None = None, emb_dim: int = 64) -> None:
        super().__init__()
        config = config or TimeAware()
        check_positive("channels", channels)
        if time not in TIME_INPUTS:
            raise ValueError(f"time={time!r} is not allowed; choose one of {', '.join(TIME_INPUTS)}")
        self.config, self.time, self.channels = config, time, channels
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.norm1, self.norm2, self.norm3 = (make_norm(config, channels) for _ in range(3))
        self.act = make_activation(config.activation)
        self.conv1: ConcatConv2d | TimeConv2d
        self.conv2: ConcatConv2d | TimeConv2d
        if time == "concat":
            self.conv1, self.conv2 = (ConcatConv2d(channels, channels, 3, 1, 1) for _ in range(2))
            for conv in (self.conv1, self.conv2):
                init_bias_(conv, config.operand_bias)
            self.map1, self.map2 = (make_time_map(config, size, t_scale=1000.0) for _ in range(2))
            self.embed = None
        else:
            self.embed = TimestepMLP(emb_dim, emb_dim, config, t_scale=1000.0)
            self.conv1, self.conv2 = (TimeConv2d(channels, channels, 3, config=config, offset="embedding",
                                                 emb_dim=emb_dim, size=size, t_scale=1000.0) for _ in range(2))

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) of one state when the size is known (the audit's default input shape)."""
        return None if self.size is None else (self.channels, *self.size)

    def _conv(self, i: int, t: torch.Tensor, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        conv = self.conv1 if i == 1 else self.conv2
        if self.time == "mlp":
            return conv(x, t, emb)
        y = conv(t, x)
        tmap = self.map1 if i == 1 else self.map2
        return y if tmap is None else y + tmap(t)

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tb = as_time(t, x.shape[0], x)
        emb = self.embed(tb) if self.embed is not None else None
        h = self.act(self.norm1(x))
        h = self.act(self.norm2(self._conv(1, tb, h, emb)))
        return self.norm3(self._conv(2, tb, h, emb))
