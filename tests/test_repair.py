import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from timeaware.awareness import audit
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
        if hasattr(m, "time_map"):
            nn.init.normal_(m.time_map.net[-1].weight, std=0.5)
    report = audit(result.model, x8, torch.linspace(0, 999, 8).long(), call="xt")
    after = {row.name: row.survival for row in report.layers}
    for name, before, _ in result.survival():
        assert after[f"{name}.norm"] > before.survival, name


def test_unet_regroup_to_one_group_raises_survival(x8):
    unet = small_unet().eval()
    result = fix(unet, x8, groups=1)
    assert all(m.num_groups == 1 for m in result.model.modules() if isinstance(m, nn.GroupNorm))
    rows = result.survival()
    assert rows and all(after.survival > before.survival for _, before, after in rows)
    assert all(m.num_groups == 8 for m in unet.modules() if isinstance(m, nn.GroupNorm))  # original untouched


def test_regroup_copies_affine_parameters(x8):
    unet = small_unet()
    for m in unet.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight)
    fixed = fix(unet, x8, groups=2, check=False).model
    old = {n: m for n, m in unet.named_modules() if isinstance(m, nn.GroupNorm)}
    for name, m in fixed.named_modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.equal(m.weight, old[name].weight) and m.num_groups == 2


def test_zero_operand_bias_hits_exactly_the_resnet_convs(x8):
    fixed = fix(small_unet(), x8, zero_operand_bias=True, check=False).model
    for module in fixed.modules():
        if isinstance(module, ResnetBlock2D):
            assert torch.count_nonzero(module.conv1.bias) == 0 and torch.count_nonzero(module.conv2.bias) == 0
            assert torch.count_nonzero(module.time_emb_proj.bias) > 0
    assert torch.count_nonzero(fixed.conv_in.bias) > 0


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
    (name, before, after), = result.survival()
    assert name == "norm2" and before.survival < 1e-6 < 0.05 < after.survival


def test_odefunc_fix_preserves_output_then_learns_time():
    func = make_odefunc()
    x = torch.randn(4, 8, 8, 8)
    result = fix(func, x, positional="linear", preserve_output=True)
    with torch.no_grad():
        torch.testing.assert_close(result.model(0.3, x), func(0.3, x), rtol=0, atol=0)
    assert {s for s, _, _ in result.survival()} == {"norm2", "norm3"}
    regrouped = fix(func, x, groups=1)
    assert all(after.survival > before.survival for _, before, after in regrouped.survival())


def test_factory_models_save_and_load(tmp_path):
    model, base = load_model("tests.test_repair:make_odefunc", {"dim": "8", "groups": "4"})
    x = torch.randn(2, 8, 8, 8)
    result = fix(model, x, positional=True, preserve_output=False, check=False)
    save_fixed(result, tmp_path, base)
    loaded = load_fixed(tmp_path)
    torch.testing.assert_close(loaded(0.7, x), result.model(0.7, x), rtol=0, atol=0)


def test_unsupported_models_are_refused_without_change():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"fix\(\) found no time injection it understands in Sequential"):
        fix(model, torch.randn(2, 3, 8, 8), groups=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"positional": "sinusoid"}, "positional='sinusoid' is not allowed"),
    ({"groups": 0}, "groups=0 is not allowed"),
    ({}, "nothing to fix"),
    ({"groups": 3}, "groups=3 does not divide the channels"),
])
def test_bad_fix_options(kwargs, message, x8):
    with pytest.raises(ValueError, match=message):
        fix(small_unet(), x8, check=False, **kwargs)


def test_fix_cli_writes_model_and_report(tmp_path, capsys):
    from timeaware.cli import main
    from timeaware.io import read_json

    small_unet().save_pretrained(tmp_path / "unet")
    code = main(["fix", str(tmp_path / "unet"), "--positional", "mlp", "--groups", "1", "--out", str(tmp_path / "f")])
    assert code == 0
    report = read_json(tmp_path / "f" / "report.json")
    assert report["sites"] and all(s["survival_after"] > s["survival_before"] for s in report["sites"])
    assert load_fixed(tmp_path / "f") is not None
    assert "survival before -> after" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["fix", "nowhere/config.json", "--groups", "1", "--out", "o"], "nowhere/config.json: no such file"),
    (["fix", "torch.nn:Identity", "--groups", "1", "--input-shape", "3,8,8", "--out", "o"], "found no time injection"),
    (["fix", "tests.test_repair:make_odefunc", "--groups", "1", "--out", "o"], "--input-shape C,H,W is needed"),
    (["fix", "tests.test_repair:make_odefunc", "--groups", "1", "--input-shape", "8,x", "--out", "o"],
     "--input-shape '8,x' is not allowed"),
    (["fix", "no_such_module:f", "--groups", "1", "--out", "o"], "cannot import 'no_such_module' from MODEL"),
])
def test_fix_cli_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    from timeaware.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parents[1]))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_audit_cli_reads_a_diffusers_folder_and_names_its_norms(tmp_path, capsys):
    import json

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
    assert "conv1 -> norm2 (GroupNorm): exact, 1 ch/unit" in out and "vanished" in out
