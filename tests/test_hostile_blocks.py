"""Property: the public blocks refuse sizes and inputs they cannot serve with one line naming the argument and
what is allowed (never a torch error from deep inside, a multi-GB allocation or a silently broadcast t), and
accept every legal edge value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from timeaware import ConcatConv2d, TimeAware, TimeConv2d, resources
from timeaware.diffusion.unet import Attention, ResBlock, UNet, UNetConfig
from timeaware.embeddings import (
    LinearTimeMap,
    MLPTimeMap,
    TimeDomain,
    TimestepMLP,
    make_time_map,
    sinusoidal_features,
)
from timeaware.layers import ScaleShift, init_bias_, make_norm
from timeaware.node.func import ODEFunc

X = torch.randn(2, 2, 5, 5)
G2 = TimeAware(groups=2)
EMB = TimeConv2d(2, 4, config=TimeAware(), offset="embedding", emb_dim=8)
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
    # sizes: zero, bool, float, absurd
    ("0 out channels", lambda: ConcatConv2d(2, 0), r"^out_channels=0 is not allowed; it must be an integer >= 1$"),
    ("bool channels", lambda: ConcatConv2d(True, 4), r"^in_channels=True is not allowed"),
    ("kernel 1000", lambda: ConcatConv2d(2, 4, kernel_size=1000), r"^kernel_size=1000 .* from 1 to 64$"),
    ("kernel (3, 3)", lambda: TimeConv2d(2, 4, (3, 3), config=TimeAware()), r"^kernel_size=\(3, 3\) is not allowed"),  # type: ignore[arg-type]
    ("bias a string", lambda: ConcatConv2d(2, 4, bias="no"), r"^bias must be bool, not str"),  # type: ignore[arg-type]
    ("padding_mode mirror", lambda: ConcatConv2d(2, 4, padding_mode="mirror"),  # type: ignore[arg-type]
     r"^padding_mode='mirror' is not allowed; choose one of zeros, reflect, replicate, circular$"),
    ("norm of 0 channels", lambda: make_norm(TimeAware(), 0), r"^channels=0 is not allowed"),
    ("norm of 4.0 channels", lambda: make_norm(G2, 4.0), r"^channels=4\.0 is not allowed"),  # type: ignore[arg-type]
    ("groups above channels", lambda: make_norm(TimeAware(groups=8), 4), r"^groups=8 does not divide channels=4; "
     r"allowed groups: 1, 2, 4$"),
    ("norm without a config", lambda: make_norm(None, 4), r"^config must be TimeAware, not NoneType"),  # type: ignore[arg-type]
    ("features 0", lambda: sinusoidal_features(torch.ones(2), 0), r"^dim=0 is not allowed"),
    ("features 2", lambda: sinusoidal_features(torch.ones(2), 2), r"^dim=2 .* even width from 4 to 65536$"),
    ("features True", lambda: sinusoidal_features(torch.ones(2), True), r"^dim=True is not allowed"),
    ("inf t for features", lambda: sinusoidal_features(torch.tensor([0.0, float("inf")]), 8), r"non-finite .*\[inf\]"),
    ("scalar t for features", lambda: sinusoidal_features(0.5, 8), r"^t has shape \(\); .* shape \(B,\)$"),  # type: ignore[arg-type]
    ("MLP of 0 outputs", lambda: TimestepMLP(8, 0, TimeAware()), r"^out_dim=0 is not allowed"),
    ("MLP without a config", lambda: TimestepMLP(8, 8, None), r"^config must be TimeAware"),  # type: ignore[arg-type]
    ("MLP of a string domain", lambda: TimestepMLP(8, 8, TimeAware(), "steps"), r"^domain must be TimeDomain"),  # type: ignore[arg-type]
    ("map size an int", lambda: LinearTimeMap(4), r"^size=4 is not allowed; it must be a spatial shape"),  # type: ignore[arg-type]
    ("map size 0", lambda: LinearTimeMap((0, 4)), r"^size=0 is not allowed"),
    ("map of embedding width 0", lambda: make_time_map(TimeAware(positional="mlp"), (4, 4), embedding_dim=0),
     r"^embedding_dim=0 is not allowed"),
    ("10^12 timesteps", lambda: TimeDomain().grid(10**12), r"^K=1000000000000 .* from 1 to 16777216$"),
    # forward-time inputs: O(1) shape and type checks
    ("x smaller than the kernel", lambda: ConcatConv2d(2, 4, kernel_size=5, padding=0)(0.5, torch.randn(1, 2, 3, 3)),
     r"^x has shape \(1, 2, 3, 3\); this layer takes \(N, 2, H, W\) with H, W >= 5$"),
    ("complex t", lambda: ConcatConv2d(2, 4)(torch.ones(2, dtype=torch.complex64), X), r"^t has dtype torch.complex64"),
    ("bool t", lambda: ConcatConv2d(2, 4)(torch.ones(2, dtype=torch.bool), X), r"^t has dtype torch.bool"),
    ("emb of another width", lambda: EMB(X, 0.5, torch.ones(2, 3)), r"^emb has shape \(2, 3\); .* \(2, 8\)$"),
    ("emb of another batch", lambda: EMB(X, 0.5, torch.ones(3, 8)), r"^emb has shape \(3, 8\)"),
    ("scale-shift emb", lambda: ScaleShift(4, 8, TimeAware())(torch.ones(2, 4, 3, 3), torch.ones(2, 3)),
     r"^emb has shape \(2, 3\)"),
    ("scale-shift h", lambda: ScaleShift(4, 8, TimeAware())(torch.ones(2, 3, 3, 3), torch.ones(2, 8)),
     r"^h has shape \(2, 3, 3, 3\)"),
    ("MLP map emb", lambda: MLPTimeMap((4, 4), TimeAware(), features=8, sinusoidal=False)(torch.ones(2, 3)),
     r"^emb has shape \(2, 3\)"),
    ("x too small for reflect padding",
     lambda: ConcatConv2d(2, 4, padding=3, padding_mode="reflect")(0.5, X[:1, :, :2, :2]),
     r"^x has shape \(1, 2, 2, 2\); this layer takes \(N, 2, H, W\) with H, W >= 4$"),
    ("x too small for circular padding",
     lambda: ConcatConv2d(2, 4, padding=3, padding_mode="circular")(0.5, X[..., :2, :2]),
     r"^x has shape \(2, 2, 2, 2\); .* with H, W >= 3$"),
    ("integer x", lambda: TimeConv2d(2, 4, config=G2)(X.long(), 0.5), r"^x has dtype torch.int64; this layer takes a "
     r"floating-point tensor$"),
    ("t of 10^400", lambda: ConcatConv2d(2, 4)(10**400, X), r"^t=about 2\*\*1328 is not allowed; it must be a finite "
     r"number of magnitude at most 9\.0072e\+15$"),
    ("t of 1e300", lambda: LinearTimeMap((2, 2))(1e300), r"^t=1e\+300 is not allowed"),
    ("groups 10^30", lambda: TimeAware(groups=10**30), r"^groups=10{30} is not allowed; it must be an integer from 1 "
     r"to 65536$"),
    ("map std 1e300", lambda: LinearTimeMap((2, 2), init_std=1e300), r"^init_std=1e\+300 .* >= 0 and < 1e\+06$"),
    ("positional_init 1e7", lambda: TimeAware(positional_init=1e7), r"^positional_init=10000000\.0 .* < 1e\+06$"),
    ("unused emb_dim -3", lambda: TimeConv2d(2, 4, config=G2, offset="linear", emb_dim=-3),
     r"^emb_dim=-3 is not allowed"),
    ("time_map a string", lambda: TimeConv2d(2, 4, config=G2, time_map="P"), r"^time_map must be Module or NoneType, "  # type: ignore[arg-type]
     r"not str"),
    ("bias init of a string", lambda: init_bias_("conv", "zero"), r"^module must be Module, not str"),  # type: ignore[type-var]
    ("res block without a config", lambda: ResBlock(4, 4, 8, 0.1, None), r"^config must be TimeAware, not NoneType"),  # type: ignore[arg-type]
    # the NODE function
    ("ODE of 0 channels", lambda: ODEFunc(0), r"^channels=0 is not allowed"),
    ("ODE of odd emb_dim", lambda: ODEFunc(4, G2, time="mlp", emb_dim=3), r"^emb_dim=3 .* even width"),
    ("ODE size an int", lambda: ODEFunc(4, G2, size=4), r"^size=4 .* spatial shape \(H, W\)$"),  # type: ignore[arg-type]
    ("ODE size 2.5", lambda: ODEFunc(4, G2, size=(2.5, 4)), r"^size=2\.5 is not allowed"),  # type: ignore[arg-type]
    ("ODE t1 0", lambda: ODEFunc(4, G2, t1=0), r"^t1=0 is not allowed; it must be a finite number > 0"),
    ("ODE config a dict", lambda: ODEFunc(4, {"groups": 2}), r"^config must be TimeAware, not dict"),  # type: ignore[arg-type]
    ("ODE x of other channels", lambda: ODEFunc(4, G2)(0.5, torch.randn(2, 3, 5, 5)), r"^x has shape \(2, 3, 5, 5\)"),
    ("ODE x of another size",
     lambda: ODEFunc(4, G2.replace(positional="linear"), size=(5, 5))(0.5, torch.randn(2, 4, 6, 6)),
     r"^x has shape \(2, 4, 6, 6\); this layer takes \(N, 4, 5, 5\)$"),
    # the U-Net's config
    ("attention above the image", lambda: UNetConfig(attn_resolutions=(64,)),
     r"^attn_resolutions=64 is not allowed; it must be an integer from 1 to 32"),
    ("attention at 16.0", lambda: UNetConfig(attn_resolutions=(16.0,)), r"^attn_resolutions=16\.0 is not allowed"),  # type: ignore[arg-type]
    ("attention a string", lambda: UNetConfig(attn_resolutions="16"), r"^attn_resolutions must be tuple or list"),  # type: ignore[arg-type]
    ("channel_mult 2.5", lambda: UNetConfig(channel_mult=(1, 2.5)), r"^channel_mult=2\.5 is not allowed"),  # type: ignore[arg-type]
    ("channel_mult True", lambda: UNetConfig(channel_mult=(True, 2)), r"^channel_mult=True is not allowed"),
    ("channel_mult 10^6", lambda: UNetConfig(channel_mult=(1, 10**6)), r"^channel_mult=1000000 .* from 1 to 512$"),
    ("channel_mult an int", lambda: UNetConfig(channel_mult=2), r"^channel_mult must be tuple or list"),  # type: ignore[arg-type]
    ("dropout a string", lambda: UNetConfig(dropout="0.1"), r"^dropout='0\.1' is not allowed"),  # type: ignore[arg-type]
    ("time a string", lambda: UNetConfig(time="group"), r"^time must be TimeAware, not str"),  # type: ignore[arg-type]
    ("block dropout 1.5", lambda: ResBlock(4, 4, 8, 1.5, G2), r"^dropout=1\.5 .* >= 0 and < 1$"),
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


@pytest.mark.parametrize(("make", "what"), [
    (lambda: ScaleShift(60000, 60000, TimeAware()), r"ScaleShift\(60000, 60000\) with 7,200,000,000 parameters"),
    (lambda: TimeConv2d(1, 65536, 1, config=TimeAware(), offset="embedding", emb_dim=65536),
     r"TimeConv2d's embedding offset \(65536 -> 65536\) with 4,294,967,296 parameters"),
    (lambda: Attention(16384, TimeAware(groups=1)), r"Attention\(16384\) with 1,073,741,824 parameters"),
    (lambda: UNet(UNetConfig(channels=4096, channel_mult=(1, 2))), r"UNet with [\d,]+ parameters"),
], ids=["scale-shift", "embedding offset", "attention", "unet"])
def test_a_block_too_large_for_memory_is_refused_before_it_allocates(monkeypatch: pytest.MonkeyPatch,
                                                                     make: Callable[[], Any], what: str) -> None:
    monkeypatch.setattr(resources, "available_memory", lambda: 2**20)
    with pytest.raises(ValueError, match=rf"^{what} needs about .* GiB of memory") as err:
        make()
    assert "\n" not in str(err.value)


def test_legal_edge_values_of_time_inputs_and_configs_still_work() -> None:
    x = torch.randn(3, 1, 4, 4)
    for t in (0.5, 1, torch.tensor(0.5), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1, 2, 3])):
        assert ConcatConv2d(1, 1, kernel_size=4, padding=0)(t, x).shape == (3, 1, 1, 1)  # a kernel as large as x
    assert LinearTimeMap((2, 2))(0.5).shape == (1, 1, 2, 2)  # a Python float t
    emb = TimeConv2d(1, 2, config=TimeAware(groups=1), offset="embedding", emb_dim=4)
    assert emb(x, torch.tensor(0.5), torch.randn(3, 4)).shape == (3, 2, 4, 4)
    assert ScaleShift(1, 1, TimeAware())(torch.randn(2, 1, 3, 3), torch.randn(2, 1)).shape == (2, 1, 3, 3)
    func = ODEFunc(2, TimeAware(groups=1, positional="linear"), time="mlp", size=(3, 3), emb_dim=4, t1=0.5)
    assert func(torch.tensor(0.25), torch.randn(2, 2, 3, 3)).shape == (2, 2, 3, 3)
    assert TimeDomain().grid(1).shape == (1,)
    for mode, side in (("reflect", 4), ("circular", 3), ("replicate", 1)):  # the smallest x each padding takes
        assert ConcatConv2d(1, 1, padding=3, padding_mode=mode)(0.5, torch.randn(1, 1, side, side)).shape[0] == 1
    for t in (2**53, -(2**53), 7):  # Python ints up to MAX_TIME, the largest exact step
        assert ConcatConv2d(1, 1).double()(t, x.double()).dtype == torch.float64
    assert TimeAware(groups=65536).groups == 65536 and LinearTimeMap((1,), init_std=1e5).size == (1,)


def test_the_default_attention_is_ddpms_16_where_the_net_reaches_it() -> None:
    assert UNetConfig().attn_resolutions == (16,)
    small = UNetConfig(image_size=8, channels=4, channel_mult=(1, 2), time=TimeAware(groups=2))
    assert small.attn_resolutions == ()  # not an error: the user never named 16
    assert UNetConfig.from_dict(small.to_dict()) == small
    assert UNetConfig(image_size=8, channel_mult=[1, 2], attn_resolutions=[4, 8]).attn_resolutions == (4, 8)  # JSON


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_an_input_of_another_float_dtype_than_the_weights_is_one_line_naming_both(dtype: torch.dtype) -> None:
    """Integers were refused; a float64 x against float32 weights reached torch's conv as a raw error."""
    blocks = [(TimeConv2d(8, 8, 3, config=TimeAware(groups=1)), lambda m, x: m(x, 0.5)),
              (ConcatConv2d(8, 8), lambda m, x: m(0.5, x)),
              (UNet(UNetConfig(image_size=8, channels=32, channel_mult=(1,), num_res_blocks=1, attn_resolutions=())),
               lambda m, x: m(x[:, :3], torch.tensor([1, 2])))]
    for block, run in blocks:
        with pytest.raises(ValueError, match=rf"^x has dtype {dtype}; this layer's weights are torch\.float32"):
            run(block, torch.ones(2, 8, 8, 8, dtype=dtype))
