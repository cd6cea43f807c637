"""The paper's claims as properties on random inputs, in float64 wherever the claim is exact.

* A per-channel offset o_c(t) is cancelled exactly by BatchNorm (train mode, one t per batch), InstanceNorm
  and GroupNorm with one channel per group (paper eq. 5); ConcatConv2d is conv(x) + t·s_c on interior pixels
  (eqs. 2-4), so it is such an offset.
* A positional map p(t), one H×W map shared by all channels (eq. 6), survives each of those norms.
* GroupNorm with m channels per group keeps (m − 1)/m of the variance of i.i.d. per-channel offsets.
* A scale-shift after the norm survives it.
* The ODE block's dopri5 + adjoint value and gradients are those of a closed-form solution.
* The DDIM sampling loop is Song et al.'s update (η = 0), written out here from the DDPM schedule.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from timeaware import ConcatConv2d, LinearTimeMap, MLPTimeMap, ScaleShift, TimeAware, TimeConv2d, make_norm
from timeaware.embeddings import TimestepMLP
from timeaware.node import ODEBlock, SolverOptions

F64 = torch.float64
FEW = settings(max_examples=6, deadline=None, derandomize=True)  # reproducible in CI, still several shapes
EXACT = 1e-12  # float64 rounding of O(1) values, with room for the reductions inside the norms

# the per-channel normalizations: one channel per normalization unit
CHANNEL_WISE = ("batch", "instance", "group G=C")
shapes = st.tuples(st.integers(2, 4), st.integers(1, 6), st.integers(2, 6), st.integers(2, 6))  # N, C, H, W
seeds = st.integers(0, 2**16)


def channel_wise_norm(kind: str, channels: int) -> nn.Module:
    """The project's norm for ``kind`` in train mode, float64, with a non-trivial affine."""
    config = TimeAware(norm="group", groups=channels) if kind == "group G=C" else TimeAware(norm=kind)
    norm = make_norm(config, channels).double().train()
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    return norm


def rms(x: torch.Tensor) -> float:
    return float(x.detach().pow(2).mean().sqrt())


@pytest.mark.parametrize("kind", CHANNEL_WISE)
@FEW
@given(shape=shapes, seed=seeds)
def test_a_channel_wise_norm_cancels_a_per_channel_offset_exactly(kind, shape, seed):
    torch.manual_seed(seed)
    n, c, _, _ = shape
    h = torch.randn(shape, dtype=F64)
    w, b = torch.randn(c, dtype=F64), torch.randn(c, dtype=F64)  # o_c(t) = w_c·t + b_c, one t for the batch
    norm = channel_wise_norm(kind, c)
    plain = norm(h)
    for t in (0.0, 0.3, 1.0, 5.0):
        torch.testing.assert_close(norm(h + (w * t + b)[None, :, None, None]), plain, rtol=0, atol=EXACT)
    # InstanceNorm and GroupNorm(G = C) normalise each sample alone: a per-sample t cancels too
    per_sample = (w[None] * torch.linspace(0, 2, n, dtype=F64)[:, None] + b)[:, :, None, None]
    changed = rms(norm(h + per_sample) - plain)
    if kind == "batch":  # BatchNorm's unit spans the batch: only one shared t cancels
        assert n > 1 and changed > 1e-3
    else:
        assert changed < EXACT


@FEW
@given(shape=shapes, seed=seeds)
def test_batchnorm_in_eval_mode_keeps_the_offset(shape, seed):
    """Eval mode normalises with fixed running statistics, so the offset passes through unchanged."""
    torch.manual_seed(seed)
    h, c = torch.randn(shape, dtype=F64), shape[1]
    norm = channel_wise_norm("batch", c).eval()
    offset = torch.randn(c, dtype=F64)[None, :, None, None]
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    torch.testing.assert_close(norm(h + offset) - norm(h), (scale[None, :, None, None] * offset).expand(shape),
                               rtol=0, atol=EXACT)


@FEW
@given(shape=shapes, seed=seeds, t=st.floats(-3, 3))
def test_concatconv_is_a_conv_plus_t_times_s_c_on_interior_pixels(shape, seed, t):
    torch.manual_seed(seed)
    n, c, h, w = shape
    layer = ConcatConv2d(c, 3).double()
    x = torch.randn(n, c, h + 2, w + 2, dtype=F64)  # at least one interior pixel
    inner = (layer(t, x) - layer(0.0, x))[..., 1:-1, 1:-1]
    torch.testing.assert_close(inner, (t * layer.time_offset)[None, :, None, None].expand_as(inner), rtol=0,
                               atol=EXACT)


@pytest.mark.parametrize("kind", CHANNEL_WISE)
@FEW
@given(shape=shapes, seed=seeds)
def test_concatconv_time_vanishes_after_a_channel_wise_norm_without_a_border(kind, shape, seed):
    """padding=0 leaves only interior pixels, so t enters as t·s_c alone; zero padding leaks it at the border."""
    torch.manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h + 2, w + 2, dtype=F64)
    layer, norm = ConcatConv2d(c, 4, padding=0).double(), channel_wise_norm(kind, 4)
    torch.testing.assert_close(norm(layer(0.9, x)), norm(layer(0.1, x)), rtol=0, atol=EXACT)
    padded = ConcatConv2d(c, 4, padding=1).double()
    assert rms(norm(padded(0.9, x)) - norm(padded(0.1, x))) > 1e-3


def time_maps(size: tuple[int, int]) -> dict[str, nn.Module]:
    return {"linear": LinearTimeMap(size, init_std=1.0), "mlp": MLPTimeMap(size, TimeAware())}


@pytest.mark.parametrize("kind", CHANNEL_WISE)
@pytest.mark.parametrize("map_kind", ["linear", "mlp"])
@FEW
@given(seed=seeds)
def test_a_positional_map_survives_a_channel_wise_norm(kind, map_kind, seed):
    """One H×W map for all channels varies inside every normalisation unit, so the norm cannot remove it.

    The per-channel offset is added too: it is cancelled, the map is not, so the output still moves with t
    by a fair share of the map's own change (the norms here divide by a std near 1).
    """
    torch.manual_seed(seed)
    n, c, size = 3, 4, (5, 6)
    h = torch.randn(n, c, *size, dtype=F64)
    offset = nn.Linear(1, c).double()
    time_map, norm = time_maps(size)[map_kind].double(), channel_wise_norm(kind, c)
    with torch.no_grad():  # the norm's affine scales the output; unit gain makes the ratio below readable
        for p in norm.parameters():
            p.fill_(1.0)

    def block(t: float) -> torch.Tensor:
        tb = torch.full((n,), t, dtype=F64)
        return norm(h + offset(tb[:, None])[:, :, None, None] + time_map(tb))

    def map_change(t0: float, t1: float) -> float:
        return rms(time_map(torch.tensor([t1], dtype=F64)) - time_map(torch.tensor([t0], dtype=F64)))

    with torch.no_grad():
        for t0, t1 in ((0.1, 0.9), (0.0, 0.5)):
            assert rms(block(t1) - block(t0)) > 0.2 * map_change(t0, t1) > 1e-4


@pytest.mark.parametrize("m", [2, 4, 8])
def test_groupnorm_keeps_m_minus_1_over_m_of_iid_offset_variance(m):
    """GroupNorm subtracts each group's mean: of offsets o_c it keeps o_c − ō_group, exactly.

    For i.i.d. normal offsets the kept fraction Σ(o_c − ō)² / Σo_c² of one group is Beta((m − 1)/2, 1/2),
    mean (m − 1)/m and variance 2(m − 1)/(m²(m + 2)); the mean of D·G such ratios lies within 5 standard
    errors of (m − 1)/m unless GroupNorm grouped or centred the channels differently (chance < 1e-6).
    """
    torch.manual_seed(m)
    groups, draws, size = 4, 500, 4
    c = m * groups
    norm = nn.GroupNorm(groups, c, affine=False).double()
    h = torch.randn(draws, c, size, size, dtype=F64)  # each sample is one draw: GroupNorm works per sample
    o = 1e-3 * torch.randn(draws, c, 1, 1, dtype=F64)  # small, i.i.d. per channel

    def centred(x: torch.Tensor) -> torch.Tensor:
        """GroupNorm's output times the std it divided by: x minus its group mean."""
        std = (x.view(draws, groups, -1).var(-1, unbiased=False) + norm.eps).sqrt()
        return (norm(x).view(draws, groups, -1) * std[..., None]).view_as(x)

    kept = (centred(h + o) - centred(h)).mean((-1, -2)).view(draws, groups, m)  # what is left of each o_c
    ratios = kept.pow(2).sum(-1) / o.view(draws, groups, m).pow(2).sum(-1)
    expected, var = (m - 1) / m, 2 * (m - 1) / (m * m * (m + 2))
    assert abs(float(ratios.mean()) - expected) < 5 * math.sqrt(var / ratios.numel())
    # and it is the within-group part exactly, not just on average
    o_within = (o.view(draws, groups, m) - o.view(draws, groups, m).mean(-1, keepdim=True)).view(draws, c)
    torch.testing.assert_close(kept.view(draws, c), o_within, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", CHANNEL_WISE)
@FEW
@given(seed=seeds)
def test_scale_shift_after_a_channel_wise_norm_survives_where_the_same_embedding_before_it_vanishes(kind, seed):
    torch.manual_seed(seed)
    n, c, emb_dim = 3, 4, 16
    config = TimeAware()
    embed = TimestepMLP(emb_dim, emb_dim, config).double()
    before = TimeConv2d(c, c, config=config, offset="embedding", emb_dim=emb_dim).double()
    after, norm = ScaleShift(c, emb_dim, config).double(), channel_wise_norm(kind, c)
    x = torch.randn(n, c, 5, 5, dtype=F64)

    def emb(t: int) -> torch.Tensor:
        return embed(torch.full((n,), t, dtype=F64))

    with torch.no_grad():
        for t0, t1 in ((10, 900), (400, 401)):
            torch.testing.assert_close(norm(before(x, t1, emb(t1))), norm(before(x, t0, emb(t0))), rtol=0,
                                       atol=EXACT)
            normed = norm(before.conv(x))
            # the change is the scale and shift's own change, undiminished: more than 1e-3 of the features
            assert rms(after(normed, emb(t1)) - after(normed, emb(t0))) > 1e-3 * rms(normed)


class Exponential(nn.Module):
    """dz/dt = a·z, one rate per feature: z(T) = z0·exp(a·T)."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.a * z


@FEW
@given(a=st.lists(st.floats(-2, 1), min_size=3, max_size=3), t1=st.sampled_from([0.5, 1.0, 2.0]), seed=seeds)
def test_dopri5_adjoint_value_and_gradients_are_the_closed_form(a, t1, seed):
    torch.manual_seed(seed)
    func = Exponential(torch.tensor(a, dtype=F64))
    block = ODEBlock(func, SolverOptions(method="dopri5", rtol=1e-9, atol=1e-9, adjoint=True, t1=t1))
    z0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    weights = torch.randn(2, 3, dtype=F64)
    z1 = block(z0)
    growth = torch.exp(func.a * t1)
    torch.testing.assert_close(z1, z0 * growth, rtol=1e-7, atol=1e-8)
    dz0, da = torch.autograd.grad((weights * z1).sum(), (z0, func.a))
    torch.testing.assert_close(dz0, (weights * growth).expand_as(z0), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(da, (weights * z0 * t1 * growth).sum(0), rtol=1e-7, atol=1e-8)
    assert block.stats.nfe_backward > 0  # the gradients came from the adjoint solve


def test_dopri5_adjoint_passes_gradcheck():
    func = Exponential(torch.tensor([-1.0, 0.3, 0.7], dtype=F64))
    block = ODEBlock(func, SolverOptions(method="dopri5", rtol=1e-9, atol=1e-9, adjoint=True))

    def solve(z0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # ``a`` is the parameter itself: gradcheck perturbs it in place, and the adjoint's backward solve,
        # which runs after this returns, sees the same tensor
        assert a is func.a
        return block(z0)

    z0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (z0, func.a), atol=1e-7, rtol=1e-6, fast_mode=True)


def tiny_eps() -> nn.Module:
    """A small deterministic ε-model (timeaware's U-Net, no dropout, in eval mode) that depends on x and t."""
    from timeaware.diffusion import UNet, UNetConfig

    torch.manual_seed(3)
    cfg = UNetConfig(image_size=4, in_channels=2, channels=8, channel_mult=(1,), num_res_blocks=1,
                     attn_resolutions=(), dropout=0.0, time=UNetConfig().time.replace(groups=4))
    return UNet(cfg).double().eval()  # float64, so the model's own rounding does not enter the comparison


def ddim_reference(model: nn.Module, num: int, steps: int, seed: int, batch_size: int) -> torch.Tensor:
    """DDIM, η = 0 (Song et al. 2021, eq. 12), in float64 on Ho et al.'s linear β schedule, T = 1000.

    x̂0 = (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t clipped to [−1, 1];  x_prev = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev)·ε.
    Timesteps "trailing": round(T − i·T/S) − 1 for i < S, so the first is T − 1; prev = t − ⌊T/S⌋,
    with ᾱ = 1 below 0. x_T is drawn batch by batch from one generator seeded with ``seed``.
    """
    big_t = 1000
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, big_t, dtype=F64), 0)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        x = torch.randn((n, 2, 4, 4), generator=generator).double()
        for i in range(steps):
            t = round(big_t - i * big_t / steps) - 1
            prev = t - big_t // steps
            ab, ab_prev = alpha_bar[t], alpha_bar[prev] if prev >= 0 else torch.tensor(1.0, dtype=F64)
            eps = model(x, torch.full((n,), t)).detach()
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        out.append(((x + 1) / 2).clamp(0, 1))
    return torch.cat(out)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(steps=st.sampled_from([1, 2, 3, 7, 10, 20]), seed=seeds, num=st.integers(1, 4), batch_size=st.integers(1, 3))
def test_ddim_sampling_loop_matches_the_written_out_update(steps, seed, num, batch_size):
    """To 1e-6, plus what float32 sampling adds at the first step.

    The sampler runs in float32, as users run it, and diffusers keeps ᾱ and 1 − ᾱ in float32. At t = T − 1
    x̂0 divides by √ᾱ ≈ 0.0064, so it carries about one float32 ulp (of 1 − ᾱ) / √ᾱ_{T−1}; the update then scales x̂0
    by √ᾱ_prev, which is 1 for a single step and below 0.03 from 3 steps on (measured: ≤ 3e-7 there).
    """
    from timeaware.diffusion.sampling import sample

    model = tiny_eps()
    got = sample(model, num, sampler="ddim", steps=steps, seed=seed, batch_size=batch_size)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    prev = 999 - 1000 // steps
    first = torch.finfo(torch.float32).eps * float((alpha_bar[prev] if prev >= 0 else 1.0) / alpha_bar[999]) ** 0.5
    want = ddim_reference(model, num, steps, seed, batch_size)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6 + first)
