import json

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from timeaware.awareness import audit
from timeaware.calling import ModelCall
from timeaware.diffusion import UNet, UNetConfig
from timeaware.embeddings import DDPM_STEPS, MLPTimeMap
from timeaware.io import read_json, write_json
from timeaware.repair import fix, load_fixed, load_model, save_fixed


def small_unet(groups: int = 8) -> UNet2DModel:
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=groups, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)


class ConcatConv2d(nn.Module):
    """torchdiffeq's example layer, copied as users do (t channel first, conv in ``_layer``)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self._layer = nn.Conv2d(dim_in + 1, dim_out, 3, 1, 1)

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1, :, :]) * t
        return self._layer(torch.cat([tt, x], 1))


class ODEfunc(nn.Module):
    """torchdiffeq's odenet_mnist ODEfunc, with GroupNorm of one channel per group (the worst case)."""

    def __init__(self, dim=8, groups=8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = ConcatConv2d(dim, dim)
        self.norm2 = nn.GroupNorm(groups, dim)
        self.conv2 = ConcatConv2d(dim, dim)
        self.norm3 = nn.GroupNorm(groups, dim)

    def forward(self, t, x):
        out = self.relu(self.norm1(x))
        out = self.relu(self.norm2(self.conv1(t, out)))
        return self.norm3(self.conv2(t, out))


def make_odefunc(dim: str = "8", groups: str = "8") -> ODEfunc:
    return ODEfunc(int(dim), int(groups))


@pytest.fixture
def x8():
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _norm2_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, ResnetBlock2D)]


def test_unet_fix_positional_raises_survival_and_preserves_output(x8):
    unet = small_unet().eval()
    result = fix(unet, x8, positional="mlp", preserve_output=True)
    names = {s for s, _, _ in result.survival()}
    assert names == {f"{n}.norm2" for n in _norm2_names(unet)}  # every resnet's norm after the time add
    t = torch.tensor([10, 500, 900, 990])
    with torch.no_grad():
        torch.testing.assert_close(result.model(x8, t).sample, unet(x8, t).sample, rtol=0, atol=1e-6)
    # output-preserving maps start at zero, so survival rises once they are trained: give them weights
    for m in result.model.modules():
        if isinstance(m, MLPTimeMap):
            nn.init.normal_(m.net[-1].weight, std=0.5)
    report = audit(result.model, x8, torch.linspace(0, 999, 8).long(), call=result.call)
    after = {row.name: row.survival for row in report.layers}
    for name, before, _ in result.survival():
        assert after[f"{name}.norm"] > before.survival, name


def test_fix_on_timeawares_own_unet_builds_the_maps_of_positional_mlp():
    """One factory for fix 1: fixing the project's U-Net gives the maps it is built with under positional=mlp."""
    cfg = UNetConfig(image_size=8, in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attn_resolutions=(), dropout=0.0, time=UNetConfig().time.replace(groups=4))
    built = UNet(cfg.replace(time=cfg.time.replace(positional="mlp")))
    fixed = fix(UNet(cfg).eval(), positional="mlp", check=False, samples=2).model

    def maps(model: nn.Module) -> list[tuple]:
        unique = {id(m): m for m in model.modules() if isinstance(m, MLPTimeMap)}.values()
        return sorted((m.size, m.domain, m.features, tuple(p.shape for p in m.parameters())) for m in unique)

    assert maps(fixed) == maps(built)  # same shapes, one per resolution, same time scaling
    assert {m.domain for m in fixed.modules() if isinstance(m, MLPTimeMap)} == {DDPM_STEPS}
    sites = [n for n, m in fixed.named_modules() if type(m).__name__ == "NormWithPositionalMap"]
    blocks = [n for n, m in UNet(cfg).named_modules() if type(m).__name__ == "ResBlock"]
    assert sorted(sites) == sorted(f"{b}.norm2" for b in blocks)


def test_unet_regroup_to_one_group_raises_survival(x8):
    unet = small_unet().eval()
    result = fix(unet, x8, groups=1)
    assert all(m.num_groups == 1 for m in result.model.modules() if isinstance(m, nn.GroupNorm))
    rows = result.survival()
    assert rows and all(after.survival > before.survival for _, before, after in rows)
    assert all(m.num_groups == 8 for m in unet.modules() if isinstance(m, nn.GroupNorm))  # original untouched


class GroupNorm32(nn.GroupNorm):
    """guided-diffusion's GroupNorm subclass (computes in float32)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def test_regroup_keeps_subclasses_and_their_affine_parameters():
    func = ODEfunc(8, 4)
    func.norm2 = GroupNorm32(4, 8)
    nn.init.normal_(func.norm2.weight)
    weight = func.norm2.weight.detach().clone()
    fixed = fix(func, torch.randn(4, 8, 6, 6), groups=1, check=False).model
    assert type(fixed.norm2) is GroupNorm32 and fixed.norm2.num_groups == 1
    assert torch.equal(fixed.norm2.weight, weight) and func.norm2.num_groups == 4


def test_zero_operand_bias_hits_exactly_the_convs_whose_output_meets_the_offset(x8):
    fixed = fix(small_unet(), x8, zero_operand_bias=True, check=False).model
    conv1 = {f"{n}.conv1" for n, m in fixed.named_modules() if isinstance(m, ResnetBlock2D)}
    for name, module in fixed.named_modules():
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            assert (torch.count_nonzero(module.bias) == 0) == (name in conv1), name


def test_fixed_unet_saves_and_loads_back_identically(tmp_path, x8):
    unet = small_unet()
    unet.save_pretrained(tmp_path / "unet")
    model, base = load_model(str(tmp_path / "unet"))
    result = fix(model, x8, positional="mlp", groups=1, preserve_output=False, check=False)
    save_fixed(result, tmp_path / "fixed", base)
    loaded = load_fixed(tmp_path / "fixed").eval()
    t = torch.tensor([1, 2, 300, 999])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x8, t).sample, result.model.eval()(x8, t).sample, rtol=0, atol=0)


def test_diffusers_block_alone_is_audited_and_fixed():
    block = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=16, groups=8).eval()
    x = torch.randn(4, 8, 6, 6)
    result = fix(block, x, positional="mlp", preserve_output=False, timesteps=torch.arange(0, 800, 100))
    assert result.call.convention == "embedding" and result.call.embedding_dim == 16
    (name, before, after), = result.survival()
    assert name == "norm2" and before.survival < 1e-6 < 0.05 < after.survival


def test_odefunc_fix_preserves_output_then_regroup_raises_survival():
    func = make_odefunc()
    x = torch.randn(4, 8, 8, 8)
    result = fix(func, x, positional="linear", preserve_output=True)
    with torch.no_grad():
        torch.testing.assert_close(result.model(0.3, x), func(0.3, x), rtol=0, atol=0)
    assert {s for s, _, _ in result.survival()} == {"norm2", "norm3"}
    regrouped = fix(func, x, groups=1)
    assert all(after.survival > before.survival for _, before, after in regrouped.survival())


def test_a_factory_named_in_fix_json_runs_only_when_trusted(tmp_path):
    model, base = load_model("tests.test_repair:make_odefunc", {"dim": "8", "groups": "4"})
    x = torch.randn(2, 8, 8, 8)
    result = fix(model, x, positional=True, preserve_output=False, check=False)
    save_fixed(result, tmp_path, base)
    with pytest.raises(ValueError, match=r"fix.json: refusing to import and call 'tests.test_repair:make_odefunc'"):
        load_fixed(tmp_path)
    loaded = load_fixed(tmp_path, trust_code=True)
    torch.testing.assert_close(loaded(0.7, x), result.model(0.7, x), rtol=0, atol=0)


def test_a_hostile_fix_json_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    write_json(tmp_path / "fix.json", {"base": {"kind": "factory", "target": "os:system",
                                                "kwargs": {"command": f"touch {marker}"}},
                                       "call": ModelCall().to_dict(), "fix": {"groups": 1}})
    with pytest.raises(ValueError, match="refusing to import and call 'os:system'"):
        load_fixed(tmp_path)
    assert not marker.exists()


def test_pickle_only_diffusers_weights_are_refused(tmp_path):
    small_unet().save_pretrained(tmp_path / "unet", safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(ValueError, match="pickle weights are never loaded"):
        load_model(str(tmp_path / "unet"))


def test_a_nan_weight_is_an_error_naming_it_not_no_time(x8):
    unet = small_unet()
    with torch.no_grad():
        unet.down_blocks[0].resnets[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"down_blocks.0.resnets.0.conv1.weight holds NaN"):
        audit(unet, x8, [0, 500, 999])


class IgnoresTime(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))

    def forward(self, x, t):
        return self.net(x)


def test_a_model_without_a_time_site_needs_no_fix_and_is_unchanged():
    model = IgnoresTime()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fix(model, torch.randn(2, 3, 8, 8), groups=1, call=ModelCall(convention="xt"))
    assert result.trace.explain() == "t reaches no normalization"
    assert not result.needed and result.changes == [] and result.model is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"positional": "sinusoid"}, "positional='sinusoid' is not allowed"),
    ({"groups": 0}, "groups=0 is not allowed"),
    ({}, "nothing to fix"),
    ({"groups": 3}, "groups=3 does not divide the 16 channels"),
])
def test_bad_fix_options(kwargs, message, x8):
    with pytest.raises(ValueError, match=message):
        fix(small_unet(), x8, check=False, **kwargs)


def test_fix_cli_writes_model_and_report(tmp_path, capsys):
    from timeaware.cli import main

    small_unet().save_pretrained(tmp_path / "unet")
    argv = [str(tmp_path / "unet"), "--positional", "mlp", "--groups", "1", "--samples", "4", "--timesteps", "4"]
    assert main(["fix", *argv, "--out", str(tmp_path / "f")]) == 0
    report = read_json(tmp_path / "f" / "report.json")
    assert report["sites"] and all(s["survival_after"] > s["survival_before"] for s in report["sites"])
    out = capsys.readouterr().out
    assert "norms in eval mode" in out  # the mode the audit used is said
    fixed = load_fixed(tmp_path / "f").eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    assert fixed.conv_in.weight.shape == small_unet().conv_in.weight.shape
    with torch.no_grad():
        assert torch.isfinite(fixed(x, t).sample).all()
    assert main(["audit", str(tmp_path / "f"), "--json", "--samples", "4", "--timesteps", "4"]) == 0
    audited = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in audited["layers"]} >= {f"{s['norm']}.norm" for s in report["sites"]}


@pytest.mark.parametrize(("argv", "message"), [
    (["fix", "nowhere/config.json", "--groups", "1", "--out", "o"], "nowhere/config.json: no such file"),
    (["fix", "tests.test_repair:make_odefunc", "--groups", "1", "--input-shape", "8,x", "--out", "o"],
     "--input-shape '8,x' is not allowed"),
    (["fix", "no_such_module:f", "--groups", "1", "--out", "o"], "cannot import 'no_such_module' from MODEL"),
    (["fix", "tests.test_repair:make_odefunc", "--groups", "3", "--input-shape", "8,6,6", "--out", "o"],
     "groups=3 does not divide the 8 channels of norm1"),
])
def test_fix_cli_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    from timeaware.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parents[1]))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_fix_cli_says_no_fix_is_needed_for_scale_shift_and_writes_nothing(tmp_path, capsys):
    from timeaware.cli import main

    cfg = {**small_unet().config, "resnet_time_scale_shift": "scale_shift"}
    (tmp_path / "ss.json").write_text(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}
                                                 | {"_class_name": "UNet2DModel"}))
    argv = ["fix", str(tmp_path / "ss.json"), "--positional", "mlp", "--samples", "4", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no fix needed: time enters after the normalizations" in out and out.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_audit_cli_reads_a_diffusers_folder_and_names_its_norms(tmp_path, capsys):
    from timeaware.cli import main

    unet = small_unet()
    unet.save_pretrained(tmp_path / "unet")
    assert main(["audit", str(tmp_path / "unet"), "--json", "--samples", "4", "--timesteps", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    resnets = {f"{n}.norm2" for n in _norm2_names(unet)}
    assert {s["norm"] for s in out["sites"]} == resnets
    assert resnets <= {row["name"] for row in out["layers"]}
    assert all(row["survival"] is not None for row in out["layers"] if row["name"] in resnets)


def test_audit_cli_detects_torchdiffeq_style_calls(capsys):
    from timeaware.cli import main

    assert main(["audit", "tests.test_repair:make_odefunc", "--input-shape", "8,8,8", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "called as model(t, x), scalar t" in out
    assert "t -> norm2 (GroupNorm): exact, 1 ch/unit" in out and "vanished" in out


def test_mixed_batching_calls_a_scalar_t_function_once_per_t(capsys):
    from timeaware.cli import main

    argv = ["audit", "tests.test_repair:make_odefunc", "--input-shape", "8,8,8", "--samples", "4", "--batching",
            "mixed", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["batching"] == "mixed" and len(data["layers"]) == 3
