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
def test_integer_steps_are_float_steps_and_each_sample_gets_its_own_t(changes):
    model = UNet(tiny(**changes)).double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    steps = torch.tensor([0, 500, 999])
    batched = model(x, steps)
    torch.testing.assert_close(batched, model(x, steps.double()), rtol=0, atol=0)
    alone = torch.cat([model(x[i:i + 1], steps[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-12)  # GroupNorm: no mixing across the batch
    assert (batched - model(x, steps.flip(0))).abs().amax() > 1e-4  # and it is each sample's own t that counts


def test_output_depends_on_t_through_each_injection():
    for changes in ({}, {"positional": "mlp"}, {"injection": "scale_shift"}):
        model = UNet(tiny(**changes)).eval()
        x = torch.randn(2, 1, 8, 8)
        assert (model(x, torch.tensor([1, 1])) - model(x, torch.tensor([900, 900]))).abs().max() > 1e-4


def test_operand_bias_zero_zeroes_exactly_the_convs_of_the_residual_blocks():
    """The operand branch of a residual block is all of its convs (its time branch is Linear layers);
    every other layer (time branch, positional map, attention, in/out convs, resampling) keeps its bias."""
    model = UNet(tiny(operand_bias="zero", positional="mlp"))
    in_blocks = {id(m) for block in model.res_blocks() for m in block.modules() if isinstance(m, nn.Conv2d)}
    skips = sum(isinstance(block.skip, nn.Conv2d) for block in model.res_blocks())
    assert len(in_blocks) == 2 * len(model.res_blocks()) + skips > 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            zero = bool((module.bias == 0).all())
            assert zero == (id(module) in in_blocks), name
    default = UNet(tiny(positional="mlp"))
    assert all(bool((m.bias != 0).all()) for m in default.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize(("injection", "norm_input_moves"), [("add", True), ("scale_shift", False)])
def test_scale_shift_moves_time_after_the_norm(injection, norm_input_moves):
    """The norm after the first conv sees t only with "add"; with "scale_shift" t arrives after it."""
    model = UNet(tiny(injection=injection)).eval()
    block, norm_inputs = model.res_blocks()[0], []
    block.norm2.register_forward_pre_hook(lambda module, args: norm_inputs.append(args[0]))
    x = torch.randn(2, 8, 8, 8)
    outputs = [block(x, t, model.time_embed(t)) for t in (torch.tensor([10, 10]), torch.tensor([900, 900]))]
    assert ((norm_inputs[1] - norm_inputs[0]).abs().amax() > 1e-4) == norm_input_moves
    assert (outputs[1] - outputs[0]).abs().amax() > 1e-4  # either way the block's output depends on t


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
    with pytest.raises(ValueError, match=r"^x has shape \(1, 3, 8, 8\); this layer takes \(N, 1, 8, 8\)$"):
        UNet(tiny())(torch.randn(1, 3, 8, 8), torch.tensor([1]))
