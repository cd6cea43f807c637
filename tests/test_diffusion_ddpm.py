"""DDPM maths on diffusers' schedulers, checked against the formulas of Ho et al. (2020) written out."""

import pytest
import torch

from test_diffusion_unet import tiny
from timeaware.diffusion.ddpm import diffusion_batch, make_scheduler, simple_loss
from timeaware.diffusion.sampling import grid, sample
from timeaware.diffusion.unet import UNet


def alphas_bar() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def test_training_noise_is_sqrt_alpha_bar_x0_plus_sqrt_one_minus_alpha_bar_eps():
    x0 = torch.rand(5, 1, 4, 4) * 2 - 1
    x_t, t, eps = diffusion_batch(make_scheduler("ddpm"), x0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(t, torch.randint(0, 1000, (5,), generator=g))
    assert torch.equal(eps, torch.randn(x0.shape, generator=g))
    ab = alphas_bar()[t].float()[:, None, None, None]
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=0, atol=1e-5)


def test_simple_loss_targets_the_noise():
    class Oracle(torch.nn.Module):  # knows ε exactly, so L_simple is 0
        def forward(self, x_t, t):
            ab = alphas_bar()[t].float()[:, None, None, None]
            return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    assert simple_loss(Oracle(), make_scheduler("ddpm"), x0) < 1e-8


def test_one_ancestral_step_matches_the_posterior_formula():
    scheduler = make_scheduler("ddpm")
    scheduler.set_timesteps(1000)
    t = 500
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    out = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    ab, betas = alphas_bar(), torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    a_t, ab_t, ab_prev, b_t = 1 - betas[t], ab[t], ab[t - 1], betas[t]
    x0 = ((x.double() - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-1, 1)
    mean = ab_prev.sqrt() * b_t / (1 - ab_t) * x0 + a_t.sqrt() * (1 - ab_prev) / (1 - ab_t) * x.double()
    var = b_t  # fixed_large, as in Ho et al.'s CIFAR-10 runs
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).double()
    torch.testing.assert_close(out.double(), mean + var.sqrt() * z, rtol=0, atol=1e-5)


def test_unknown_sampler_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="sampler='euler' is not allowed; choose one of ddpm, ddim, dpm"):
        make_scheduler("euler")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm"])
def test_sampling_is_reproducible_by_seed(sampler):
    model = UNet(tiny())
    a = sample(model, 3, sampler=sampler, steps=3, seed=0)
    b = sample(model, 3, sampler=sampler, steps=3, seed=0)
    c = sample(model, 3, sampler=sampler, steps=3, seed=1)
    assert a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_grid_tiles_images_with_padding():
    g = grid(torch.zeros(5, 3, 4, 4), ncols=3, pad=1)
    assert g.shape == (3, 2 * 5 + 1, 3 * 5 + 1) and g[:, 1:5, 1:5].eq(0).all() and g[:, 0].eq(1).all()


def test_few_step_samplers_start_from_the_last_timestep():
    for sampler in ("ddpm", "ddim", "dpm"):
        scheduler = make_scheduler(sampler)
        scheduler.set_timesteps(2)
        assert int(scheduler.timesteps[0]) == 999, sampler
