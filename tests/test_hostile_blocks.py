"""Property: the public blocks refuse sizes and inputs they cannot serve with one line naming the argument and
what is allowed (never a torch error from deep inside, a multi-GB allocation or a silently broadcast t), and
accept every legal edge value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from timeaware import ConcatConv2d, TimeAware, TimeConv2d
from timeaware.diffusion.unet import UNetConfig
from timeaware.embeddings import LinearTimeMap, MLPTimeMap, TimestepMLP, sinusoidal_features
from timeaware.layers import ScaleShift, make_norm

X = torch.randn(2, 2, 5, 5)
BAD: list[tuple[str, Callable[[], Any], str]] = [
    ("kernel 0", lambda: ConcatConv2d(2, 4, kernel_size=0), r"kernel_size=0 is not allowed"),
    ("stride 0", lambda: ConcatConv2d(2, 4, stride=0), r"stride=0 is not allowed"),
    ("padding -1", lambda: ConcatConv2d(2, 4, padding=-1), r"padding=-1 is not allowed"),
    ("a terabyte conv", lambda: ConcatConv2d(10**6, 10**6), r"in_channels=1000000 .* from 1 to 65536"),
    ("float channels", lambda: ConcatConv2d(2.5, 4), r"in_channels=2\.5 is not allowed"),  # type: ignore[arg-type]
    ("t of another batch", lambda: ConcatConv2d(2, 4)(torch.ones(3), X), r"t has shape \(3,\); .* shape \(2,\)"),
    ("t of rank 2", lambda: ConcatConv2d(2, 4)(torch.ones(2, 1), X), r"t has shape \(2, 1\)"),
    ("t a string", lambda: ConcatConv2d(2, 4)("soon", X), r"t must be float or Tensor, not str"),  # type: ignore[arg-type]
    ("x of rank 3", lambda: ConcatConv2d(2, 4)(0.5, X[0]), r"x has shape \(2, 5, 5\); .* \(N, 2, H, W\)"),
    ("x of other channels", lambda: TimeConv2d(3, 4, config=TimeAware())(X, 0.5), r"x has shape \(2, 2, 5, 5\)"),
    ("norm of 10^12 channels", lambda: make_norm(TimeAware(norm="group", groups=2), 10**12), r"channels=10{12}"),
    ("groups not dividing", lambda: make_norm(TimeAware(norm="group", groups=3), 4), r"allowed groups: 1, 2, 4"),
    ("odd features", lambda: sinusoidal_features(torch.ones(2), 5), r"dim=5 .* even width from 4"),
    ("10^12 features", lambda: sinusoidal_features(torch.ones(2), 10**12), r"dim=1000000000000"),
    ("NaN t", lambda: sinusoidal_features(torch.tensor([float("nan")]), 8), r"non-finite values \[nan\]"),
    ("period 0", lambda: sinusoidal_features(torch.ones(2), 8, max_period=0), r"max_period=0 .* > 1"),
    ("t of rank 2 for features", lambda: sinusoidal_features(torch.ones(2, 3), 8), r"t has shape \(2, 3\)"),
    ("MLP of odd features", lambda: TimestepMLP(5, 8, TimeAware()), r"features=5"),
    ("MLP of 10^9 outputs", lambda: TimestepMLP(64, 10**9, TimeAware()), r"out_dim=1000000000"),
    ("map of 10^12 positions", lambda: LinearTimeMap((10**6, 10**6)), r"at most 16,777,216 positions"),
    ("map std NaN", lambda: LinearTimeMap((4, 4), init_std=float("nan")), r"init_std=nan"),
    ("map t of rank 2", lambda: LinearTimeMap((4, 4))(torch.ones(2, 2)), r"t has shape \(2, 2\)"),
    ("MLP map of 10^8 hidden", lambda: MLPTimeMap((4, 4), TimeAware(), hidden=10**8), r"hidden=100000000"),
    ("emb_dim 0", lambda: TimeConv2d(2, 4, config=TimeAware(), offset="embedding", emb_dim=0), r"emb_dim=0"),
    ("scale-shift of 0 channels", lambda: ScaleShift(0, 8, TimeAware()), r"channels=0"),
    ("attention at resolution 0", lambda: UNetConfig(attn_resolutions=(0,)), r"attn_resolutions=0"),
    ("U-Net of 10^6 channels", lambda: UNetConfig(channels=10**6), r"channels=1000000"),
]


@pytest.mark.parametrize(("make", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_size_or_input_a_block_cannot_serve_is_one_line(make: Callable[[], Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_legal_edge_values_still_work() -> None:
    layer = ConcatConv2d(1, 1, kernel_size=1, padding=0)
    x = torch.randn(3, 1, 4, 4)
    for t in (0.5, 1, torch.tensor(0.5), torch.tensor([0.1, 0.2, 0.3])):
        assert layer(t, x).shape == (3, 1, 4, 4)
    assert make_norm(TimeAware(norm="group", groups=1), 1)(torch.randn(2, 1, 3, 3)).shape == (2, 1, 3, 3)
    assert sinusoidal_features(torch.arange(3), 4).shape == (3, 4)  # integer steps, the smallest width
    assert LinearTimeMap((1, 1), init_std=0.0)(torch.tensor(0.3)).shape == (1, 1, 1, 1)  # one t for the batch
    assert UNetConfig(image_size=8, channels=4, channel_mult=(1,), attn_resolutions=(),
                      time=UNetConfig().time.replace(groups=2)).resolutions == [8]
