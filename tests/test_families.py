"""The replicas in families.py behave like the originals where the audit and fix depend on it."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from families import (
    DIFFUSERS_CONFIGS,
    FAMILIES,
    DEFunc,
    DepthCat,
    GroupNorm32,
    ResBlock,
    RMSNorm,
    Unet,
    UNetModel,
    make_adm_unet,
    make_cfm_unet,
    make_diffusers,
    make_edm2_unet,
    make_karras_unet,
    make_torchdiffeq_func,
    make_torchdyn_vf,
    timestep_embedding,
)
from timeaware.specs import load_model


def _outputs(name: str, model: nn.Module, seeds: tuple[int, int] = (1, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """The family's model on one x at two different times, called the way its library calls it."""
    info = FAMILIES[name]
    x, t, extra = info.example(2, torch.Generator().manual_seed(seeds[0]))
    t2 = info.sample_time(2, torch.Generator().manual_seed(seeds[1]))
    assert not torch.equal(t, t2)
    with torch.no_grad():
        return info.run(model.eval(), x, t, extra), info.run(model, x, t2, extra)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_runs_with_its_call_convention_and_t_reaches_the_output_as_registered(name: str) -> None:
    info = FAMILIES[name]
    a, b = _outputs(name, info.factory())
    expected = (2, *info.input_shape)
    assert a.shape == expected and torch.isfinite(a).all()
    assert (not torch.equal(a, b)) == info.t_reaches_output_at_init
    params = [p for p in inspect.signature(type(info.factory()).forward).parameters if p != "self"]
    if info.call == "positional":  # t's place in forward is where the registry says
        assert params[int(info.time_arg)] in ("t", "timesteps", "time", "noise_labels")
    if info.call == "keyword":
        assert {str(info.time_arg), *(name.split(".")[0] for name in info.extra)} <= set(params)


@pytest.mark.parametrize("name", sorted(n for n, i in FAMILIES.items() if i.zero_init))
def test_zero_init_parameters_are_zero_and_perturbing_them_lets_t_reach_the_output(name: str) -> None:
    info = FAMILIES[name]
    model = info.factory()
    zeroed = [p for n, p in model.named_parameters() if any(fnmatch.fnmatch(n, pat) for pat in info.zero_init)]
    assert zeroed and not any(p.any() for p in zeroed)
    a, b = _outputs(name, info.factory(perturb="true"))
    assert not torch.equal(a, b)


def test_adm_resblock_adds_emb_before_out_layers_norm_and_zero_conv_keeps_it_from_the_output() -> None:
    block = ResBlock(32, 16, dropout=0.0, out_channels=64)
    assert isinstance(block.out_layers[0], GroupNorm32) and block.out_layers[0].num_groups == 32
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    seen = []
    block.out_layers[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    out = block(x, emb)
    expected = block.in_layers(x) + block.emb_layers(emb)[:, :, None, None]
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(out, block.skip_connection(x))  # zero_module(out conv): the branch adds 0 at init


def test_adm_scale_shift_applies_emb_after_the_norm() -> None:
    block = ResBlock(32, 16, dropout=0.0, use_scale_shift_norm=True)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    norm_in, act_in = [], []
    block.out_layers[0].register_forward_pre_hook(lambda _m, args: norm_in.append(args[0]))
    block.out_layers[1].register_forward_pre_hook(lambda _m, args: act_in.append(args[0]))
    block(x, emb)
    torch.testing.assert_close(norm_in[0], block.in_layers(x))  # the norm never sees emb
    scale, shift = block.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
    torch.testing.assert_close(act_in[0], block.out_layers[0](norm_in[0]) * (1 + scale) + shift)


def test_groupnorm32_is_a_groupnorm_computed_in_float32() -> None:
    norm, x = GroupNorm32(4, 8), torch.randn(2, 8, 3, 3, dtype=torch.float64)
    assert isinstance(norm, nn.GroupNorm)
    out = norm(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, nn.functional.group_norm(x.float(), 4).double())


def test_cfm_wrapper_takes_t_first_repeats_a_scalar_t_and_is_the_adm_unet() -> None:
    torch.manual_seed(0)
    model = make_cfm_unet(perturb=True)
    x, t = torch.randn(3, 3, 8, 8), torch.tensor(0.3)
    with torch.no_grad():
        torch.testing.assert_close(model(t, x), model(t.repeat(3), x))
        torch.testing.assert_close(model(t, x), UNetModel.forward(model, x, t.repeat(3)))


def test_adm_unet_takes_class_labels_only_when_class_conditional_and_strings_from_the_cli() -> None:
    model = make_adm_unet(num_classes="10", channel_mult="1,2", attention_resolutions="2")
    with pytest.raises(ValueError, match="class-conditional"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([5]))
    assert model.label_emb.num_embeddings == 10
    with pytest.raises(ValueError, match="'maybe' is not a boolean"):
        make_adm_unet(use_scale_shift_norm="maybe")


def test_factories_load_through_the_cli_import_path() -> None:
    model, record = load_model("families:make_adm_unet", {"use_scale_shift_norm": "true"})
    assert record["kwargs"] == {"use_scale_shift_norm": "true"}
    assert all(m.use_scale_shift_norm for m in model.modules() if isinstance(m, ResBlock))
    assert type(load_model("families:make_diffusers", {"name": "dit"})[0]).__name__ == "DiTTransformer2DModel"


def test_timestep_embedding_is_cos_then_sin_of_integer_steps() -> None:
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb[1, 0] == torch.cos(torch.tensor(7.0))


def test_lucid_unet_uses_its_own_rmsnorm_and_scale_shifts_after_it() -> None:
    model = Unet(8, (1, 2), channels=3)
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert norms and not any(isinstance(m, (nn.GroupNorm, nn.RMSNorm)) for m in model.modules())
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(norms[0](x), nn.functional.normalize(x, dim=1) * 8**0.5)
    block = model.downs[0][0]
    h, t_emb = torch.randn(2, 8, 4, 4), torch.randn(2, 32)
    seen = []
    block.block1.act.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    block(h, t_emb)
    scale, shift = block.mlp(t_emb)[:, :, None, None].chunk(2, dim=1)
    torch.testing.assert_close(seen[0], block.block1.norm(block.block1.proj(h)) * (scale + 1) + shift)


@pytest.mark.parametrize("factory", [make_karras_unet, make_edm2_unet])
def test_mp_unets_keep_t_out_through_the_zero_embedding_gain_alone(factory: Callable[[], nn.Module]) -> None:
    """With only the output gain non-zero the output varies with x but not t: the embedding gains block t."""
    name = "karras_unet" if factory is make_karras_unet else "edm2_unet"
    model = factory()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in ("out_gain", "output_block.1.gain"):
                p.fill_(1.0)
    a, b = _outputs(name, model)
    assert a.abs().max() > 0.1
    torch.testing.assert_close(a, b)


def test_torchdyn_defunc_sets_t_on_every_depthcat_and_appends_it_as_a_channel() -> None:
    vf = make_torchdyn_vf(channels=4, hidden=8, norm="batch").eval()
    func, x, t = DEFunc(vf), torch.randn(2, 4, 8, 8), torch.tensor(0.7)
    out = func(t, x)
    cats = [m for m in vf.modules() if isinstance(m, DepthCat)]
    assert len(cats) == 3 and all(m.t is t for m in cats)
    torch.testing.assert_close(cats[0](x)[:, -1], torch.full((2, 8, 8), 0.7))
    torch.testing.assert_close(out, vf(x))
    with pytest.raises(ValueError, match="'layer' is not allowed"):
        make_torchdyn_vf(norm="layer")


def test_torchdiffeq_concatconv_and_anode_conv2dtime_put_t_first_and_agree() -> None:
    concat, anode = make_torchdiffeq_func(8), make_torchdiffeq_func(8, conv="anode")
    assert all(getattr(concat, f"norm{i}").num_groups == 8 for i in (1, 2, 3))
    assert isinstance(anode.conv1, nn.Conv2d) and concat.conv1._layer.in_channels == 9
    anode.load_state_dict({k.replace("._layer", ""): v for k, v in concat.state_dict().items()})
    x, t = torch.randn(2, 8, 4, 4), torch.tensor(0.25)
    seen = []
    concat.conv1._layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    torch.testing.assert_close(concat(t, x), anode(t, x))
    torch.testing.assert_close(seen[0][:, 0], torch.full((2, 4, 4), 0.25))


def test_cfm_mlp_takes_t_as_its_last_input_feature() -> None:
    info, model = FAMILIES["cfm_mlp"], FAMILIES["cfm_mlp"].factory()
    assert model.net[0].in_features == info.input_shape[0] + 1
    x, t = torch.randn(3, 2), torch.rand(3)
    torch.testing.assert_close(info.run(model, x, t), model(torch.cat([x, t[:, None]], -1)))


@pytest.mark.parametrize("name", sorted(DIFFUSERS_CONFIGS))
def test_each_diffusers_replica_loads_from_the_config_json_it_saves(name: str, tmp_path: Path) -> None:
    """The folder a user passes: save_config writes every field (out_channels null for Flux, as in the hub's)."""
    model = make_diffusers(name)
    model.save_config(tmp_path)
    loaded, record = load_model(str(tmp_path))
    assert record["class"] == DIFFUSERS_CONFIGS[name]["_class_name"]  # from_config may build a successor class
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_diffusers_conditional_unet_needs_its_encoder_states_and_ada_norm_a_scalar_t() -> None:
    with pytest.raises(TypeError, match="encoder_hidden_states"):
        make_diffusers("unet2d_condition")(torch.randn(1, 3, 8, 8), torch.tensor([3]))
    with pytest.raises(RuntimeError):
        make_diffusers("transformer2d_ada_norm")(torch.randn(2, 8, 4, 4), timestep=torch.tensor([3, 5]))
    with pytest.raises(ValueError, match="'nope' is not known"):
        make_diffusers("nope")


def test_families_that_need_a_fix_have_a_norm_and_those_without_norms_need_none() -> None:
    norm_types = (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm, RMSNorm)
    for name, info in FAMILIES.items():
        has_norm = any(isinstance(m, norm_types) for m in info.factory().modules())
        if info.needs_fix:
            assert has_norm, name
        if name in ("cfm_mlp", "anode_func"):
            assert not has_norm and not info.needs_fix, name


def test_diffusers_configs_as_the_hub_writes_them_pass_and_a_nan_does_not(tmp_path: Path) -> None:
    """A 1-D U-Net's sample_size is a length (65,536 samples, not a 65,536² image: it was refused as 7,200 GiB),
    StableCascade gives a dropout per block, UVit2D one width; a NaN dropout passed every range check."""
    from diffusers import UNet1DModel

    from timeaware.metadata import check_diffusers_config

    UNet1DModel().save_config(tmp_path)  # the class defaults: sample_size 65536
    model, _ = load_model(str(tmp_path))
    assert sum(p.numel() for p in model.parameters()) > 0
    check_diffusers_config({"_class_name": "StableCascadeUNet", "dropout": [0.0, 0.1]}, "c.json")
    check_diffusers_config({"_class_name": "UVit2DModel", "block_out_channels": 768}, "c.json")
    with pytest.raises(ValueError, match=r"c\.json: field dropout: nan is not allowed; give a finite number"):
        check_diffusers_config({"_class_name": "UNet2DModel", "dropout": float("nan")}, "c.json")
    with pytest.raises(ValueError, match=r"c\.json: field dropout\.1: nan is not allowed"):  # inside a list too
        check_diffusers_config({"_class_name": "StableCascadeUNet", "dropout": [0.0, float("nan")]}, "c.json")
