import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn
from torch.nn import functional as F

from timeaware import ConcatConv2d, LinearTimeMap, MLPTimeMap, ScaleShift, TimeAware, TimeConv2d, make_norm
from timeaware.embeddings import as_time, make_time_map, sinusoidal_features
from timeaware.node import ODEFunc


def test_concatconv_is_conv_plus_per_channel_offset_on_interior_pixels():
    layer = ConcatConv2d(4, 6).double()
    x, t = torch.randn(2, 4, 8, 8, dtype=torch.float64), 0.7
    w = layer.conv.weight
    plain = F.conv2d(x, w[:, 1:], layer.conv.bias, padding=1)
    expected = plain + t * w[:, 0].sum(dim=(-1, -2))[None, :, None, None]
    out = layer(t, x)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=0, atol=1e-12)
    # zero padding: border pixels see only part of the t-kernel (the edge effect)
    assert (out[..., 0, :] - expected[..., 0, :]).abs().max() > 1e-3


def test_concatconv_matches_torchdiffeq_example_semantics():
    layer = ConcatConv2d(3, 5)
    x, t = torch.randn(2, 3, 6, 6), torch.tensor(0.3)
    ref = layer.conv(torch.cat([torch.ones_like(x[:, :1]) * t, x], 1))  # torchdiffeq's odenet_mnist
    torch.testing.assert_close(layer(t, x), ref)


@pytest.mark.parametrize(("t", "want"), [(0.1, [0.1, 0.1]), (torch.tensor(0.1, dtype=torch.float64), [0.1, 0.1]),
                                         (torch.tensor([0.1, 0.7], dtype=torch.float64), [0.1, 0.7])])
def test_time_is_broadcast_or_kept_per_sample_in_the_inputs_dtype(t, want):
    x = torch.randn(2, 3, dtype=torch.float64)
    got = as_time(t, 2, x)
    assert got.dtype == torch.float64 and got.tolist() == want  # exact: a float never rounds through float32
    assert as_time(t, 2, x.float()).tolist() == torch.tensor(want, dtype=torch.float32).tolist()


def test_time_rejects_bad_shapes_and_non_finite():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"t has shape \(3,\); allowed: a scalar, a 0-d tensor or shape \(2,\)"):
        as_time(torch.zeros(3), 2, x)
    with pytest.raises(ValueError, match="non-finite"):
        as_time(float("nan"), 2, x)


def test_per_sample_time_gives_each_sample_its_own_offset():
    layer = TimeConv2d(2, 3, config=TimeAware())
    x = torch.randn(1, 2, 5, 5).expand(2, -1, -1, -1)
    out = layer(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out[1] - out[0], layer.offset.weight[:, 0][:, None, None].expand(3, 5, 5))


def test_sinusoidal_features_match_diffusers_ddpm_convention():
    t = torch.tensor([0.0, 3.0, 999.0])
    ref = get_timestep_embedding(t, 32, flip_sin_to_cos=False, downscale_freq_shift=1)
    torch.testing.assert_close(sinusoidal_features(t, 32), ref)


def test_bias_policies_zero_exactly_the_operand_branch():
    cfg = TimeAware(operand_bias="zero", time_bias="default", positional="mlp")
    layer = TimeConv2d(4, 8, config=cfg, offset="embedding", emb_dim=16, size=(6, 6))
    assert torch.count_nonzero(layer.conv.bias) == 0
    time_biases = [m.bias for m in [*layer.offset.modules(), *layer.time_map.modules()] if isinstance(m, nn.Linear)]
    assert time_biases and all(torch.count_nonzero(b) == b.numel() for b in time_biases)
    flipped = TimeConv2d(4, 8, config=cfg.replace(operand_bias="default", time_bias="zero"), offset="embedding",
                         emb_dim=16, size=(6, 6))
    assert torch.count_nonzero(flipped.conv.bias) == 8
    assert all(torch.count_nonzero(m.bias) == 0 for m in flipped.modules() if isinstance(m, nn.Linear))


def test_node_func_bias_policy_reaches_concatconv():
    func = ODEFunc(8, TimeAware(groups=4, operand_bias="zero"))
    assert torch.count_nonzero(func.conv1.conv.bias) == 0 and torch.count_nonzero(func.conv2.conv.bias) == 0


def test_batchnorm_cancels_per_channel_offset_and_positional_map_survives():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    layer = TimeConv2d(3, 5, config=TimeAware(norm="batch"), padding=1).double()
    bn = make_norm(TimeAware(norm="batch"), 5).double().train()
    torch.testing.assert_close(bn(layer(x, 0.1)), bn(layer(x, 0.9)), rtol=0, atol=1e-10)
    mapped = TimeConv2d(3, 5, config=TimeAware(norm="batch", positional="linear"), size=(6, 6)).double()
    assert (bn(mapped(x, 0.1)) - bn(mapped(x, 0.9))).abs().max() > 1e-2


def test_linear_time_map_is_t_times_one_learned_map():
    t = torch.tensor([0.0, 2.0])
    lin = LinearTimeMap((4, 5))
    out = lin(t)
    assert out.shape == (2, 1, 4, 5) and torch.count_nonzero(out[0]) == 0
    torch.testing.assert_close(out[1], 2 * lin.weight[None])


@pytest.mark.parametrize("positional", ["linear", "mlp"])
def test_the_positional_map_adds_one_map_to_every_channel_that_varies_over_space_and_t(positional):
    layer = TimeConv2d(2, 3, config=TimeAware(positional=positional), size=(4, 5)).double()
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    t = torch.tensor([0.2, 0.9], dtype=torch.float64)
    added = layer(x, t) - layer.conv(x) - layer.offset(t[:, None])[:, :, None, None]
    torch.testing.assert_close(added, added[:, :1].expand_as(added), rtol=0, atol=1e-12)  # shared by channels
    assert added[:, 0].flatten(1).std(1).amin() > 1e-3  # not constant over space (a norm would cancel that)
    assert (added[0] - added[1]).abs().amax() > 1e-3  # it moves with t


def test_zero_init_mlp_map_starts_at_zero_and_can_learn():
    mlp = MLPTimeMap((4, 5), TimeAware(), zero_init=True)
    t = torch.tensor([0.0, 2.0])
    assert torch.count_nonzero(mlp(t)) == 0
    mlp(t).pow(2).add(mlp(t)).sum().backward()
    assert mlp.net[-1].weight.grad.abs().amax() > 0  # output-preserving, not a dead branch: it gets gradients


@pytest.mark.parametrize("form", ["linear", "mlp"])
def test_make_time_map_zero_init_starts_either_form_at_zero(form):
    # the factory once took form-specific **kwargs typed as float: zero_init only worked for "mlp"
    t = torch.tensor([0.3, 2.0])
    fresh = make_time_map(TimeAware(positional=form), (4, 5), zero_init=True)
    assert fresh is not None and torch.count_nonzero(fresh(t)) == 0
    trained = make_time_map(TimeAware(positional=form), (4, 5))
    assert trained is not None and trained(t)[1].std() > 0


def test_positional_map_size_mismatch_is_a_clear_error():
    layer = TimeConv2d(2, 2, config=TimeAware(positional="linear"), size=(4, 4))
    with pytest.raises(ValueError, match=r"positional map is \(4, 4\) but the feature map is \(5, 5\)"):
        layer(torch.randn(1, 2, 5, 5), 0.5)


def test_scale_shift_is_a_per_channel_affine_map_chosen_by_the_embedding():
    ss = ScaleShift(3, 8, TimeAware()).double()
    h1, h2 = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64)
    emb = torch.randn(2, 8, dtype=torch.float64)
    # affine in h with one gain per (sample, channel): the slope is the same at every pixel
    slope = (ss(h1, emb) - ss(h2, emb)) / (h1 - h2)
    torch.testing.assert_close(slope, slope[..., :1, :1].expand_as(slope), rtol=1e-9, atol=1e-9)
    intercept = ss(h1, emb) - slope * h1
    torch.testing.assert_close(intercept, intercept[..., :1, :1].expand_as(intercept), rtol=1e-9, atol=1e-9)
    # chosen by the embedding: the same features with another sample's embedding get another gain and shift
    assert (slope[0] - slope[1]).abs().amin() > 1e-6 and (intercept[0] - intercept[1]).abs().amin() > 1e-6
    with torch.no_grad():  # a zero projection is the identity (h·(1 + 0) + 0)
        ss.proj[-1].weight.zero_()
        ss.proj[-1].bias.zero_()
    assert torch.equal(ss(h1, emb), h1)


@pytest.mark.parametrize(("norm", "unit"), [
    ("batch", lambda y: y.transpose(0, 1).reshape(4, -1)),      # per channel, over the batch and pixels
    ("instance", lambda y: y.reshape(3 * 4, -1)),               # per sample and channel
    ("group", lambda y: y.reshape(3 * 2, -1)),                  # per sample and group of 2 channels
    ("layer", lambda y: y.reshape(3, -1)),                      # per sample, over all channels and pixels
])
def test_norm_factory_normalises_over_the_named_unit(norm, unit):
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 3 + torch.randn(3, 4, 1, 1, dtype=torch.float64)
    y = unit(make_norm(TimeAware(norm=norm, groups=2), 4).double().train()(x))
    torch.testing.assert_close(y.mean(1), torch.zeros(len(y), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(len(y), dtype=torch.float64), rtol=1e-3, atol=0)
    x = torch.randn(3, 4, 5, 5)
    assert make_norm(TimeAware(norm="none"), 4)(x) is x


def test_ode_func_both_time_inputs_run_and_depend_on_t():
    for time in ("concat", "mlp"):
        func = ODEFunc(8, TimeAware(groups=2, norm="group"), time=time)
        x = torch.randn(2, 8, 6, 6)
        assert not torch.allclose(func(0.1, x), func(0.9, x))
    with pytest.raises(ValueError, match="time='sde' is not allowed"):
        ODEFunc(8, time="sde")


def test_readme_fixes_snippet_runs_and_the_map_keeps_t_through_batchnorm():
    from timeaware import audit

    class Block(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.conv, self.norm = TimeConv2d(8, 8, 3, config=cfg, size=(6, 6)), make_norm(cfg, 8)

        def forward(self, x, t):
            return self.norm(self.conv(x, t))

    def survival(positional):
        cfg = TimeAware(norm="batch", groups=1, positional=positional, operand_bias="zero", time_bias="default")
        block = Block(cfg).double()
        x = torch.randn(6, 8, 6, 6, dtype=torch.float64)
        return audit(block, x, torch.linspace(0, 1, 5, dtype=torch.float64), mode="train").layers[0].survival

    assert survival("none") < 1e-6 < 0.1 < survival("linear")


def test_linear_offset_starts_at_concatconv_scale():
    layer, cc = TimeConv2d(64, 64, config=TimeAware()), ConcatConv2d(64, 64)
    ratio = layer.offset.weight.detach().std() / cc.time_offset.detach().std()
    assert 0.7 < float(ratio) < 1.4
