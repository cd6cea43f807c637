"""The DDPM U-Net: published size, the fixes as config fields, JSON round trip."""

import pytest
import torch
from torch import nn

from timeaware.diffusion.unet import UNet, UNetConfig, count_parameters, ddpm_time_config

DDPM_CIFAR10_PARAMS = 35.7e6  # Ho et al. 2020; diffusers' UNet2DModel of this configuration: 35,746,307


def tiny(**time_changes) -> UNetConfig:
    return UNetConfig(image_size=8, in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(4,), time=ddpm_time_config().replace(**{"groups": 4, **time_changes}))


def meta_count(config: UNetConfig) -> int:
    with torch.device("meta"):  # no memory, no forward pass
        return count_parameters(UNet(config))


def test_ddpm_cifar10_configuration_has_the_published_parameter_count():
    assert abs(meta_count(UNetConfig()) / DDPM_CIFAR10_PARAMS - 1) < 0.005


def test_positional_branch_adds_under_one_percent():
    base = meta_count(UNetConfig())
    grown = meta_count(UNetConfig(time=ddpm_time_config().replace(positional="mlp")))
    assert 0 < grown / base - 1 < 0.01


@pytest.mark.parametrize("changes", [{}, {"positional": "mlp"}, {"injection": "scale_shift"}, {"groups": 1}])
def test_forward_shape_with_integer_and_float_timesteps(changes):
    model = UNet(tiny(**changes))
    x = torch.randn(3, 1, 8, 8)
    assert model(x, torch.tensor([0, 500, 999])).shape == x.shape
    assert model(x, torch.tensor([0.5, 10.0, 999.0])).shape == x.shape


def test_output_depends_on_t_through_each_injection():
    for changes in ({}, {"positional": "mlp"}, {"injection": "scale_shift"}):
        model = UNet(tiny(**changes)).eval()
        x = torch.randn(2, 1, 8, 8)
        assert (model(x, torch.tensor([1, 1])) - model(x, torch.tensor([900, 900]))).abs().max() > 1e-4


def test_operand_bias_zero_zeroes_exactly_the_operand_convs():
    torch.manual_seed(0)
    model = UNet(tiny(operand_bias="zero", positional="mlp"))
    blocks = model.res_blocks()
    operand = {id(c.bias) for b in blocks for c in b.operand_convs()}
    assert len(operand) == 3 * len(blocks) - sum(isinstance(b.skip, nn.Identity) for b in blocks)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            zero = bool((module.bias == 0).all())
            assert zero == (id(module.bias) in operand), name  # time branch, attention, in/out: default


def test_scale_shift_moves_time_after_the_norm():
    model = UNet(tiny(injection="scale_shift"))
    block = model.res_blocks()[0]
    assert block.conv1.offset is None and block.scale_shift is not None


def test_groups_reach_every_norm():
    model = UNet(tiny(groups=1))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(n.num_groups == 1 for n in norms)


def test_config_round_trips_through_json():
    import json

    cfg = tiny(positional="mlp", operand_bias="zero")
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(("changes", "message"), [
    ({"image_size": 9}, "image_size=9 is not allowed"),
    ({"channel_mult": ()}, "channel_mult=()"),
    ({"dropout": 1.0}, "dropout=1.0"),
])
def test_bad_config_is_a_one_line_error(changes, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**{**tiny().__dict__, **changes})


def test_linear_positional_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="choose one of none, mlp"):
        tiny(positional="linear")


def test_wrong_input_shape_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"expects \(1, 8, 8\)"):
        UNet(tiny())(torch.randn(1, 3, 8, 8), torch.tensor([1]))
