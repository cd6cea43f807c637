"""The static check finds per-channel offset → norm sites; the audit agrees on a diffusers U-Net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from families import FAMILIES
from timeaware import ConcatConv2d, TimeAware, TimeConv2d
from timeaware.awareness import audit, find_vanishing_sites
from timeaware.awareness.trace import trace_time
from timeaware.node import ODEFunc
from timeaware.specs import describe, probe

diffusers = pytest.importorskip("diffusers")


def _unet(channels: tuple[int, int], groups: int) -> nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=channels,
                                 layers_per_block=1, norm_num_groups=groups,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def test_odefunc_batchnorm_has_two_exact_sites() -> None:
    sites = find_vanishing_sites(ODEFunc(8, TimeAware(norm="batch")))
    assert [(s.injector, s.norm, s.kind, s.channels_per_unit, s.protected) for s in sites] == [
        ("conv1", "norm2", "exact", 1, False), ("conv2", "norm3", "exact", 1, False)]
    assert "train mode" in sites[0].note and "zero padding" in sites[0].note
    assert str(sites[0]).startswith("conv1 -> norm2 (BatchNorm2d): exact")


def test_positional_map_protects_the_sites() -> None:
    for time in ("concat", "mlp"):
        sites = find_vanishing_sites(ODEFunc(8, TimeAware(norm="batch", positional="linear"), time=time, size=(4, 4)))
        assert len(sites) == 2 and all(s.protected for s in sites)


def test_groupnorm_sites_are_partial_and_no_norm_means_no_site() -> None:
    sites = find_vanishing_sites(ODEFunc(8, TimeAware(norm="group", groups=2)))
    assert {(s.kind, s.channels_per_unit) for s in sites} == {("partial", 4)}
    assert find_vanishing_sites(ODEFunc(8, TimeAware(norm="none"))) == []


def test_registration_order_pairs_generic_injectors() -> None:
    model = nn.Sequential(ConcatConv2d(4, 4), nn.ReLU(), nn.InstanceNorm2d(4),
                          TimeConv2d(4, 4, config=TimeAware(), offset="none"), nn.GroupNorm(2, 4),
                          TimeConv2d(4, 4, config=TimeAware(), offset="linear"), nn.GroupNorm(4, 4))
    assert [(s.injector, s.norm, s.kind) for s in find_vanishing_sites(model)] == [
        ("0", "2", "exact"), ("5", "6", "exact")]  # offset="none" adds nothing before module 4


def test_static_check_finds_each_resnet_norm2_and_exact_when_groups_equal_channels() -> None:
    unet = _unet((16, 32), groups=8)
    resnets = [n for n, m in unet.named_modules() if type(m).__name__ == "ResnetBlock2D"]
    sites = find_vanishing_sites(unet)
    assert sorted(s.norm for s in sites) == sorted(f"{r}.norm2" for r in resnets)
    assert {s.kind for s in sites} == {"partial"}
    assert {s.kind for s in find_vanishing_sites(_unet((16, 16), groups=16))} == {"exact"}


def test_diffusers_unet_audit_with_integer_timesteps() -> None:
    unet = _unet((16, 16), groups=16)
    report = audit(unet, torch.randn(3, 3, 8, 8), [0, 300, 600, 999], call="xt")
    names = {a.name: a for a in report.layers}
    first = "down_blocks.0.resnets.0.norm2"
    assert all(f"{s.norm}" in names for s in find_vanishing_sites(unet))
    assert names[first].verdict == "vanished"  # its input's only time is the per-channel temb
    assert report.output_dt is None and report.settings["call"] == "model(x, t)"


REGISTERED_OUT_OF_ORDER = {"diffusers_unet1d", "diffusers_unet1d_dance"}  # t added after a later-registered norm


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "diffusers_transformer2d_ada_norm"])
def test_static_check_finds_what_the_tracer_finds_in_third_party_families(name: str) -> None:
    """Read by structure, not class names: ADM's emb_layers, diffusers' time_emb_proj, torchdiffeq's and
    ANODE's t-first convs, torchdyn's DepthCat are sites; a scale-shift (2C outputs) or attention Linear is not."""
    torch.manual_seed(0)
    info = FAMILIES[name]
    model = info.factory().eval()
    call = probe(model, describe(model).replace(input_shape=info.input_shape))
    x, extras = call.example(2, seed=1)
    traced = {s.norm for s in trace_time(model, call, x, call.timesteps(4)[[0, -1]], extras).sites}
    found = {s.norm for s in find_vanishing_sites(model)}
    assert found <= traced  # never a site the model does not have
    if name not in REGISTERED_OUT_OF_ORDER:
        assert found == traced
