"""Models at the edge of what the audit and ``fix`` read: other dtypes, solver wrappers, shared norms, t that
only enters as a number, duck-typed group norms, NCSN's ``forward(x, y)``. Small in-test modules with the
block structure and call convention of the originals.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timeaware.awareness import audit
from timeaware.awareness.trace import trace_time
from timeaware.calling import Input, ModelCall
from timeaware.cli import main
from timeaware.repair import fix
from timeaware.specs import describe, probe


class OffsetNet(nn.Module):
    """conv(x) + Linear(t) per channel, then a norm with one channel per unit: the paper's vanishing site."""

    def __init__(self, channels: int = 8, norm: str = "group") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.time = nn.Linear(1, channels)
        self.norm = nn.GroupNorm(channels, channels) if norm == "group" else nn.InstanceNorm2d(channels, affine=True)
        self.out = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv(x) + self.time(t.to(x.dtype).view(-1, 1) / 1000)[:, :, None, None]
        return self.out(F.silu(self.norm(h)))


def offset_net() -> OffsetNet:  # a factory for the CLI
    torch.manual_seed(0)
    return OffsetNet()


def _site_verdicts(model: nn.Module, dtype: torch.dtype) -> tuple[str, bool]:
    call = describe(model).replace(input_shape=(3, 8, 8))
    x, _ = call.example(4, dtype=dtype)
    report = audit(model, x, call.timesteps(4), call=call)
    verdict = next(r.verdict for r in report.layers if r.name == "norm")
    return verdict, trace_time(model, call, x, call.timesteps(2)).needs_fix


def test_a_bfloat16_model_reads_as_its_float32_self_and_is_put_back_exactly() -> None:
    model = OffsetNet().eval()
    assert _site_verdicts(model, torch.float32) == ("vanished", True)
    half = OffsetNet().eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    before = {k: v.clone() for k, v in half.state_dict().items()}
    assert _site_verdicts(half, torch.bfloat16) == ("vanished", True)  # traced in float32, not "protected"
    after = half.state_dict()
    assert all(after[k].dtype == torch.bfloat16 and torch.equal(after[k], v) for k, v in before.items())


def test_the_cli_computes_in_float64_with_inputs_of_the_model_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    small = ["--samples", "2", "--timesteps", "3", "--dtype", "float64"]
    assert main(["audit", "node-func", *small, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["dtype"] == "float64"
    out = tmp_path / "fixed"
    assert main(["fix", "test_model_reach:offset_net", *small, "--input-shape", "3,8,8", "--positional", "mlp",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sites"] and report["after"]["summary"]["dtype"] == "float64"


@pytest.mark.parametrize("positional", ["linear", "mlp"])
def test_fix_builds_the_maps_in_the_dtype_of_a_float64_model(positional: str) -> None:
    model = OffsetNet().double().eval()
    result = fix(model, positional=positional, preserve_output=False, samples=4)  # inputs made in float64
    assert result.needed and result.changes
    assert {p.dtype for p in result.model.parameters()} == {torch.float64}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)  # the shape describe guessed for the fix
    assert result.model(x, torch.tensor([1, 500])).dtype == torch.float64


class Solver(nn.Module):
    """torchdyn's NeuralODE: forward(x, t_span) returns (t_eval, trajectory), not one output per input."""

    def __init__(self) -> None:
        super().__init__()
        self.vf = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(8, 8), nn.Conv2d(8, 3, 3, padding=1))
        self.t_span = torch.linspace(0, 1, 5)

    def forward(self, x: torch.Tensor, *_: object) -> tuple[torch.Tensor, torch.Tensor]:
        trajectory = [x]
        for a, b in zip(self.t_span[:-1], self.t_span[1:]):
            trajectory.append(trajectory[-1] + (b - a) * self.vf(trajectory[-1]))
        return self.t_span, torch.stack(trajectory)


def test_a_solver_wrapper_is_refused_in_one_line_naming_what_it_returned() -> None:
    model = Solver()
    call = ModelCall(convention="xt", input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"returns a tensor of shape \(5,\) for 2 inputs.*\.vf"):
        probe(model, call)
    with pytest.raises(ValueError, match=r"returned a tensor of shape \(5,\) for 3 inputs; the audit needs one"):
        audit(model, torch.randn(3, 3, 8, 8), [0.0, 1.0])


class Tied(nn.Module):
    """One block applied twice per pass (weight tying, a recurrent step): its norm is two sites, norm and norm#1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.time = nn.Linear(1, 4)
        self.norm = nn.GroupNorm(4, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        offset = self.time(t.float().view(-1, 1) / 1000)[:, :, None, None]
        for _ in range(2):
            x = x + F.silu(self.norm(self.conv(x) + offset))
        return x


def test_fix_wraps_a_norm_called_twice_once_and_both_calls_get_the_map() -> None:
    model = Tied().eval()
    call = describe(model).replace(input_shape=(4, 8, 8))
    result = fix(model, call=call, positional="linear", preserve_output=False, samples=4)
    assert sorted(s.norm for s in result.trace.sites) == ["norm", "norm#1"]
    assert [c.split(":")[0] for c in result.changes] == ["norm"]
    rows = {name: (before.survival, after.survival) for name, before, after in result.survival()}
    assert rows.keys() == {"norm", "norm#1"}
    assert all(before < 1e-9 and after > 0.01 for before, after in rows.values()), rows  # the map reaches both calls


class NumberTime(nn.Module):
    """t enters only as a number concatenated as a channel inside forward: no module depends on t alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.norm = nn.GroupNorm(8, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        column = (t.float() / 1000).view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return self.norm(self.conv(torch.cat([x, column], 1)))


def test_integer_steps_that_only_enter_as_a_number_are_traced_as_a_float() -> None:
    model = NumberTime().eval()
    call = describe(model).replace(input_shape=(3, 8, 8))
    assert call.domain.kind == "steps"
    trace = trace_time(model, call, call.example(2)[0], call.timesteps(2))
    assert [(s.norm, s.channels_per_unit) for s in trace.sites] == [("norm", 1)]


def test_a_model_that_is_not_finite_at_the_traced_t_is_one_line() -> None:
    class LogSigma(NumberTime):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return super().forward(x, torch.log(t.float() - t.float()))  # -inf at every t

    model = LogSigma().eval()
    call = describe(model).replace(input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"^the model produced NaN or inf at t = .*time domain"):
        trace_time(model, call, call.example(2)[0], call.timesteps(2))


class EDMGroupNorm(nn.Module):
    """NVlabs/edm's own GroupNorm: not a torch GroupNorm, a num_groups attribute read in forward."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 1) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, num_groups=self.num_groups, weight=self.weight, bias=self.bias, eps=1e-5)


def test_groups_reach_a_duck_typed_group_norm_and_a_norm_without_groups_is_named() -> None:
    model = OffsetNet().eval()
    model.norm = EDMGroupNorm(8)
    result = fix(model, groups=1, samples=4)
    assert result.changes == ["1 GroupNorm layer(s) regrouped to 1 group(s), parameters kept"]
    assert result.model.norm.num_groups == 1 and not result.skipped
    (_, before, after), = result.survival()
    assert (before.channels_per_unit, after.channels_per_unit) == (1, 8)
    assert before.verdict == "vanished" and after.verdict != "vanished"

    instance = fix(OffsetNet(norm="instance").eval(), groups=1, samples=4)
    assert instance.needed and instance.changes == []
    assert instance.skipped == ["norm: groups=1 does not apply to InstanceNorm2d (it has no groups)"]
    assert "not applied: norm: groups=1" in str(instance)


class NCSN(nn.Module):
    """NCSN's forward(x, y): y is the noise-level index (conditional instance norms), and num_classes is set."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 10
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gamma = nn.Embedding(10, 4)
        self.norm = nn.InstanceNorm2d(4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)) * self.gamma(y)[:, :, None, None]


def test_the_argument_t_goes_into_is_not_also_an_extra_input() -> None:
    model = NCSN()
    for call in (describe(model), describe(model, time_arg="y")):
        assert call.extras == ()
        call = probe(model, call.replace(input_shape=(3, 8, 8)))
        x, extras = call.example(2)
        assert extras == {} and call.invoke(model, x, torch.tensor([1, 2])).shape == (2, 4, 8, 8)


class Reprs(nn.Module):
    """A forward that fails with an error whose message starts with the module's repr, and one reading a
    missing input's attribute (SD3 without pooled_projections)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x) * pooled.dtype.itemsize  # type: ignore[union-attr]


def test_a_failed_call_is_one_line_with_the_message_not_a_repr_fragment() -> None:
    call = describe(Reprs()).replace(input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"failed: AttributeError: 'NoneType' object has no attribute 'dtype'"):
        probe(Reprs(), call)
    twice = call.replace(extras=(("timestep", Input(shape=(1,))),))  # model(x, timestep=t, timestep=…)
    with pytest.raises(ValueError, match=r"failed: TypeError: \) got multiple values for keyword argument") as err:
        probe(Reprs(), twice)
    assert "\n" not in str(err.value) and "Conv2d" not in str(err.value)


def test_fix_asks_for_a_model_call_not_a_function() -> None:
    with pytest.raises(TypeError, match=r"^call must be ModelCall, not function"):
        fix(OffsetNet(), call=lambda m, x, t: m(x, t), groups=1)  # type: ignore[arg-type]


class DictOut(nn.Module):
    """A net returning a dict: {"sample": out} as diffusers' return_dict, or one tensor under another key."""

    def __init__(self, key: str = "sample") -> None:
        super().__init__()
        self.key, self.net = key, OffsetNet()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: self.net(x, t)}


@pytest.mark.parametrize("key", ["sample", "eps"])
def test_a_dict_output_is_read_by_its_sample_or_its_one_tensor(key: str) -> None:
    model = DictOut(key).eval()
    report = audit(model, torch.randn(4, 3, 8, 8), [0, 500], call="xt")
    assert next(r.verdict for r in report.layers if r.name == "net.norm") == "vanished"


class KeywordStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = OffsetNet()

    def forward(self, x: torch.Tensor, *, step: torch.Tensor) -> torch.Tensor:
        return self.net(x, step)


def test_an_unknown_keyword_for_t_is_named_as_a_time_arg_and_time_arg_means_a_keyword(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    small = ["--input-shape", "3,8,8", "--samples", "2", "--timesteps", "2"]
    assert main(["audit", "test_model_reach:KeywordStep", *small]) == 2
    assert "if 'step' is t, give --time-arg step" in capsys.readouterr().err
    assert main(["audit", "test_model_reach:KeywordStep", *small, "--time-arg", "step", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["call"]["time_arg"] == "step"
    assert main(["audit", "test_model_reach:KeywordStep", *small, "--time-arg", "step", "--call", "tx"]) == 2
    assert "does not go with --call tx" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--layers", ""], "--layers '' is not allowed"),
    (["--t-range", "-1,5"], "written --flag=VALUE, e.g. --t-range=-1,5"),
    (["--call", "xt", "--input", "e=x.pt"], "pickle files such as .pt are never loaded"),
])
def test_command_line_slips_get_a_hint(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["audit", "node-func", "--samples", "2", "--timesteps", "2", *argv])
    except SystemExit as stop:  # argparse's own errors leave through SystemExit(2)
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


class TokenOffset(nn.Module):
    """DiT-like tokens (B, N, D) with a per-feature time offset before a LayerNorm over the features."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.time, self.norm = nn.Linear(4, 16), nn.Linear(1, 16), nn.LayerNorm(16)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x) + self.time(t.float().view(-1, 1, 1) / 1000))


def test_a_layernorm_over_features_is_not_said_to_be_protected_by_a_spatial_term() -> None:
    model = TokenOffset().eval()
    call = describe(model).replace(input_shape=(6, 4))
    trace = trace_time(model, call, call.example(2)[0], call.timesteps(2))
    (site,) = trace.sites
    assert not trace.needs_fix and "not cancelled: the time term varies along the axes LayerNorm" in str(site)
    report = audit(model, call.example(4)[0], call.timesteps(4), call=call)
    assert report.layers[0].verdict == "alive"


class InputScale(nn.Module):
    """EDM's preconditioning: the net sees c_in(σ)·x, and a per-channel norm removes that scale by design."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(4, 4)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_in = 1 / (0.25 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
        return self.norm(self.conv(c_in * x))


def test_a_vanished_layer_that_is_not_an_offset_site_is_named_apart(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main(["audit", "test_model_reach:InputScale", "--input-shape", "3,8,8", "--samples", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sites"] == [] and data["vanished_not_sites"] == ["norm"]
    assert main(["audit", "test_model_reach:InputScale", "--input-shape", "3,8,8", "--samples", "4"]) == 0
    assert "note: 1 vanished layer(s) are not sites of an added time offset (norm)" in capsys.readouterr().out


class Checkpointed(OffsetNet):
    """guided-diffusion's use_checkpoint: the block's forward runs under no_grad (a reentrant checkpoint)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return checkpoint(super().forward, x, t, use_reentrant=True)


def test_a_model_that_checkpoints_under_no_grad_is_refused_by_the_tracer_and_still_audited(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    model = Checkpointed().eval()
    call = describe(model).replace(input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"^norm runs under torch.no_grad inside the model's forward"):
        fix(model, call=call, groups=1, samples=4)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main(["audit", "test_model_reach:Checkpointed", "--input-shape", "3,8,8", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "where t enters: not traced: norm runs under torch.no_grad" in out and "vanished" in out


class Frames(nn.Module):
    """A video net folding F frames into the batch (diffusers' UNet3D): the site's norm sees B·F rows."""

    def __init__(self, frames: int = 3) -> None:
        super().__init__()
        self.frames, self.net = frames, OffsetNet()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, f = x.shape[0], self.frames
        folded = x.unsqueeze(1).expand(b, f, *x.shape[1:]).reshape(b * f, *x.shape[1:])
        return self.net(folded, t.repeat_interleave(f)).view(b, f, *x.shape[1:]).mean(1)


def test_a_positional_map_follows_frames_folded_into_the_batch() -> None:
    model = Frames().eval()
    call = describe(model).replace(input_shape=(3, 8, 8))
    result = fix(model, call=call, positional="linear", preserve_output=False, samples=4)
    assert result.changes == ["net.norm: positional timestep embedding 8x8 (linear)"]
    (_, before, after), = result.survival()
    assert before.verdict == "vanished" and after.survival > 1e3 * before.survival


class Functional(nn.Module):
    """The paper's site with the norm called as F.group_norm in forward: no module to hook or wrap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.time = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(1, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.group_norm(self.conv(x) + self.time(t.float().view(-1, 1))[:, :, None, None], 8)


def test_norms_called_as_functions_are_counted_and_fix_says_it_cannot_reach_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    model = Functional()
    call = describe(model).replace(input_shape=(3, 8, 8))
    trace = trace_time(model, call, call.example(2)[0], call.timesteps(2))
    assert trace.functional_norms == 1 and "1 normalization(s) called as torch.nn.functional" in trace.explain()
    assert trace_time(OffsetNet(), call, call.example(2)[0], call.timesteps(2)).functional_norms == 0  # in a module
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "f"
    assert main(["fix", "test_model_reach:Functional", "--input-shape", "3,8,8", "--samples", "2", "--groups", "1",
                 "--out", str(out)]) == 2
    assert "nothing fixed: the model has 1 normalization(s)" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("wrap", [torch.compile, nn.DataParallel], ids=["compile", "DataParallel"])
def test_a_wrapped_model_is_read_through_its_wrapper(wrap: object) -> None:
    inner = OffsetNet().eval()
    model = wrap(inner)  # type: ignore[operator]
    call = describe(model).replace(input_shape=(3, 8, 8))
    assert (call.convention, call.time_arg, call.domain.kind) == ("xt", "t", "steps")  # OffsetNet's, not (*args)
    report = audit(model, call.example(4)[0], call.timesteps(3), call=call)
    assert [(r.name, r.verdict) for r in report.layers] == [("norm", "vanished")]
    assert fix(model, call=call, groups=1, samples=4).changes  # on the module the wrapper runs


def test_a_fixed_token_grid_is_found_at_a_smaller_guessed_shape() -> None:
    class Tokens(OffsetNet):  # the output has the rows of a fixed 8x8 grid, whatever the input
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return super().forward(x.reshape(-1, 3, 8, 8), t.repeat_interleave(x.numel() // (x.shape[0] * 192)))

    call = probe(Tokens(), describe(Tokens()).replace(input_shape=(3, 16, 16)), guessed=True)
    assert call.input_shape == (3, 8, 8)


def test_a_model_that_makes_float32_inside_is_told_to_stay_in_float32() -> None:
    class Float32Features(OffsetNet):  # ADM-style: sinusoidal features built in float32 whatever the weights
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.out(self.norm(self.conv(x) + self.time(t.float().view(-1, 1))[:, :, None, None]))

    model = Float32Features().double()
    with pytest.raises(ValueError, match=r"makes float32 tensors inside its forward, so it cannot run in float64"):
        probe(model, describe(model).replace(input_shape=(3, 8, 8)))


@pytest.mark.parametrize(("config", "shape", "extra"), [
    ({"_class_name": "UNet3DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
      "block_out_channels": [8, 16], "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
      "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "cross_attention_dim": 8, "attention_head_dim": 4,
      "norm_num_groups": 8}, (4, 2, 8, 8), None),
    ({"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
      "block_out_channels": [8, 16], "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 8, "attention_head_dim": 4,
      "norm_num_groups": 8, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 12},
     (3, 8, 8), ("class_labels", (12,))),
    ({"_class_name": "UNetSpatioTemporalConditionModel", "sample_size": 8, "in_channels": 8, "out_channels": 4,
      "block_out_channels": [32, 64], "layers_per_block": 1,
      "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
      "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"], "cross_attention_dim": 8,
      "num_attention_heads": [2, 2], "addition_time_embed_dim": 4, "projection_class_embeddings_input_dim": 12,
      "transformer_layers_per_block": 1, "num_frames": 3}, (2, 8, 8, 8), ("added_time_ids", (3,))),
])
def test_diffusers_video_and_projected_class_models_are_called_from_their_config(
        config: dict[str, object], shape: tuple[int, ...], extra: tuple[str, tuple[int, ...]] | None,
        tmp_path: Path) -> None:
    import diffusers

    model = getattr(diffusers, str(config["_class_name"])).from_config(config).eval()
    call = probe(model, describe(model))
    assert call.input_shape == shape
    if extra is not None:
        assert call.inputs[extra[0]].shape == extra[1]


class PerFrameTime(nn.Module):
    """SVD's TemporalResnetBlock: the time embedding, repeated per frame, is projected as (B, F, D) and added as
    (B, C, F, 1, 1) before GroupNorm(C, C): the same offset for every frame, so it is cancelled exactly."""

    def __init__(self, c: int = 8, d: int = 32) -> None:
        super().__init__()
        self.d = d
        self.stem, self.conv = nn.Conv3d(4, c, 1), nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0))
        self.time_embedding = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.time_emb_proj, self.norm2 = nn.Linear(d, c), nn.GroupNorm(c, c)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:  # sample (B, F, C, H, W)
        b, f = sample.shape[:2]
        freqs = torch.exp(-math.log(10000) * torch.arange(self.d // 2) / (self.d // 2))
        args = timestep.float()[:, None] * freqs[None]
        emb = self.time_embedding(torch.cat([args.cos(), args.sin()], -1)).repeat_interleave(f, dim=0)
        offset = self.time_emb_proj(F.silu(emb.reshape(b, f, -1)))[:, :, :, None, None].permute(0, 2, 1, 3, 4)
        return self.norm2(self.conv(self.stem(sample.permute(0, 2, 1, 3, 4))) + offset)


def test_a_site_the_tracer_thinks_protected_but_the_audit_reads_vanished_is_fixed() -> None:
    torch.manual_seed(0)
    model = PerFrameTime().eval()
    call = ModelCall(time_arg="timestep", input_shape=(3, 4, 8, 8))
    result = fix(model, call=call, positional="linear", samples=4)
    (_, before, _), = result.survival()
    assert before.verdict == "vanished" and result.needed
    assert result.changes == ["norm2: positional timestep embedding 3x8x8 (linear, starts at 0)"]


class FourierFeatures(nn.Module):
    """score_sde's ``GaussianFourierProjection``: sin/cos of t at fixed random frequencies (continuous time)."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * 16, requires_grad=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = t[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class ContinuousNet(OffsetNet):
    """``forward(x, time_cond)`` (score_sde's NCSN++ argument name) with Fourier features of t ∈ [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.fourier = FourierFeatures()
        self.time = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor, time_cond: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = self.conv(x) + self.time(self.fourier(time_cond.to(x.dtype)))[:, :, None, None]
        return self.out(F.silu(self.norm(h)))


def test_the_time_domain_comes_from_what_the_model_keeps_not_only_its_argument_name() -> None:
    model = OffsetNet()
    assert describe(model).domain.to_dict() == {"kind": "steps", "low": 0, "high": 999}  # nothing said: DDPM's
    model.num_timesteps = 250  # a step count the model keeps (lucidrains' GaussianDiffusion-style attribute)
    assert describe(model).domain.to_dict() == {"kind": "steps", "low": 0, "high": 249}
    continuous = describe(ContinuousNet())
    assert continuous.time_arg == "time_cond"
    assert continuous.domain.to_dict() == {"kind": "continuous", "low": 0.0, "high": 1.0}
    flagged = OffsetNet()
    flagged.random_or_learned_sinusoidal_cond = True  # lucidrains' Unet built for continuous time
    assert describe(flagged).domain.kind == "continuous"
    ve = ContinuousNet()  # score_sde's NCSN++ keeps its noise levels; with Fourier features it takes σ itself
    ve.register_buffer("sigmas", torch.logspace(2, -2, 10))
    assert describe(ve).domain.to_dict() == {"kind": "sigma", "low": pytest.approx(0.01), "high": pytest.approx(100)}
    vp = OffsetNet()  # with a sinusoidal embedding it takes an index into them
    vp.register_buffer("sigmas", torch.linspace(1, 0.1, 50))
    assert describe(vp).domain.to_dict() == {"kind": "steps", "low": 0, "high": 49}


def test_labels_come_from_a_class_table_and_a_context_from_a_cross_attention() -> None:
    """DiT keeps no num_classes (its LabelEmbedder's table has one more row, the null class); LDM's U-Net
    reads its context through attn2.to_k, whose width differs from the query's."""
    from families import make_dit, make_ldm_unet

    dit = describe(make_dit(num_classes=7))
    assert dit.time_arg == "t" and dit.inputs["y"].kind == "labels" and dit.inputs["y"].high == 8
    edm = OffsetNet()  # EDM's EDMPrecond(x, sigma, class_labels) keeps label_dim: one-hot rows, not integers
    edm.label_dim = 5
    edm.forward = lambda x, sigma, class_labels=None: x  # type: ignore[method-assign]
    assert describe(edm).inputs["class_labels"].shape == (5,) and describe(edm).domain.kind == "sigma"
    ldm = describe(make_ldm_unet(context_dim=12))
    assert ldm.time_arg == "timesteps" and ldm.inputs["context"].shape == (8, 12) and "y" not in ldm.inputs


def test_modern_conditional_diffusers_models_get_their_conditioning_from_their_config() -> None:
    """SDXL's added_cond_kwargs (a dict keyword, given as group.key inputs), SD3's pooled projections, PixArt's
    caption width (not its cross-attention width): each is called without overrides."""
    from families import make_diffusers

    sdxl = describe(make_diffusers("unet2d_sdxl"))
    assert {n: i.shape for n, i in sdxl.extras} == {"encoder_hidden_states": (8, 8), "added_cond_kwargs.text_embeds":
                                                    (8,), "added_cond_kwargs.time_ids": (6,)}
    assert {n: i.shape for n, i in describe(make_diffusers("sd3")).extras} == {
        "encoder_hidden_states": (8, 16), "pooled_projections": (8,)}
    assert describe(make_diffusers("pixart")).inputs["encoder_hidden_states"].shape == (8, 12)
    flux = describe(make_diffusers("flux"))  # packed tokens, RoPE ids, t in [0, 1] (it scales by 1000 itself)
    assert flux.input_shape == (16, 8) and flux.domain.to_dict() == {"kind": "continuous", "low": 0.0, "high": 1.0}
    assert {"img_ids", "txt_ids", "pooled_projections", "encoder_hidden_states"} <= set(flux.inputs)
    seen: dict[str, object] = {}

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor, added_cond_kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
            seen.update(added_cond_kwargs)
            return x

    call = ModelCall(extras=(("added_cond_kwargs.time_ids", Input(shape=(6,))),), input_shape=(3,))
    x, extras = call.example(2)
    call.invoke(Spy(), x, torch.zeros(2), extras)
    assert list(seen) == ["time_ids"] and seen["time_ids"] is extras["added_cond_kwargs.time_ids"]


def test_a_shared_input_goes_in_without_a_batch_dimension_and_flux_is_audited_without_warnings(
        caplog: pytest.LogCaptureFixture) -> None:
    """Flux's RoPE ids are one (L, 3) grid for the batch (diffusers warns per call when given (B, L, 3)): made and
    sliced as N equal rows like any input, passed as one, and kept through the JSON a fixed model records."""
    from families import make_diffusers

    seen: list[tuple[int, ...]] = []

    class Grid(nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(ids.shape))
            return x + ids.sum()

    call = ModelCall(extras=(("ids", Input(shape=(4, 3), shared=True)),), input_shape=(3,))
    x, extras = call.example(3)
    assert extras["ids"].shape == (3, 4, 3) and bool((extras["ids"] == extras["ids"][:1]).all())
    audit(Grid(), x, [0, 1, 2], call=call, extras=extras, batching="mixed", chunk_size=2)
    assert seen and set(seen) == {(4, 3)}
    assert ModelCall.from_dict(json.loads(json.dumps(call.to_dict()))) == call
    flux = make_diffusers("flux").eval()
    found = describe(flux)
    assert found.inputs["img_ids"].shared and found.inputs["txt_ids"].shared
    x, extras = found.example(2)
    library = logging.getLogger("diffusers")  # it does not propagate to the root logger
    library.addHandler(caplog.handler)
    try:
        audit(flux, x, found.timesteps(3), call=found, extras=extras)
    finally:
        library.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


# Tiny configs of diffusers models whose inputs are not a plain (C, H, W) map: video latents (C, F, H, W) with a
# Conv3d patch (Wan), (F, C, H, W) with a per-frame patch (CogVideoX), a required text mask (Mochi), CLIP image
# embeddings in added_cond_kwargs (Kandinsky 2.2; with pooled text, 2.1), four RoPE axes (Flux.2), a caption
# width named cap_feat_dim with a required mask (Lumina 2), SDXL-style size inputs (CogView 4).
MODERN_DIFFUSERS = {
    "wan": {"_class_name": "WanTransformer3DModel", "attention_head_dim": 12, "ffn_dim": 32, "in_channels": 4,
            "num_attention_heads": 2, "num_layers": 1, "out_channels": 4, "patch_size": [1, 2, 2],
            "rope_max_seq_len": 32, "text_dim": 16},
    "cogvideox": {"_class_name": "CogVideoXTransformer3DModel", "attention_head_dim": 8, "in_channels": 4,
                  "max_text_seq_length": 8, "num_attention_heads": 2, "num_layers": 1, "out_channels": 4,
                  "patch_size": 2, "sample_frames": 8, "sample_height": 8, "sample_width": 8, "text_embed_dim": 8,
                  "time_embed_dim": 2},
    "mochi": {"_class_name": "MochiTransformer3DModel", "attention_head_dim": 8, "in_channels": 4,
              "max_sequence_length": 16, "num_attention_heads": 2, "num_layers": 1, "out_channels": None,
              "patch_size": 2, "pooled_projection_dim": 16, "text_embed_dim": 16, "time_embed_dim": 4},
    "kandinsky22": {"_class_name": "UNet2DConditionModel", "addition_embed_type": "image", "attention_head_dim": 2,
                    "block_out_channels": [8, 16], "cross_attention_dim": 16, "down_block_types": [
                        "DownBlock2D", "CrossAttnDownBlock2D"], "encoder_hid_dim": 12,
                    "encoder_hid_dim_type": "image_proj", "in_channels": 4, "layers_per_block": 1,
                    "norm_num_groups": 4, "out_channels": 4, "sample_size": 8,
                    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]},
    "kandinsky21": {"_class_name": "UNet2DConditionModel", "addition_embed_type": "text_image",
                    "attention_head_dim": 2, "block_out_channels": [8, 16], "cross_attention_dim": 16,
                    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "encoder_hid_dim": 12,
                    "encoder_hid_dim_type": "text_image_proj", "in_channels": 4, "layers_per_block": 1,
                    "norm_num_groups": 4, "out_channels": 4, "sample_size": 8,
                    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]},
    "cogview4": {"_class_name": "CogView4Transformer2DModel", "attention_head_dim": 4, "condition_dim": 4,
                 "in_channels": 4, "num_attention_heads": 4, "num_layers": 1, "out_channels": 4, "patch_size": 2,
                 "pos_embed_max_size": 64, "sample_size": 8, "text_embed_dim": 8, "time_embed_dim": 8},
    "flux2": {"_class_name": "Flux2Transformer2DModel", "attention_head_dim": 16, "axes_dims_rope": [4, 4, 4, 4],
              "guidance_embeds": True, "in_channels": 4, "joint_attention_dim": 32, "num_attention_heads": 2,
              "num_layers": 1, "num_single_layers": 1, "out_channels": None, "patch_size": 1},
    "lumina2": {"_class_name": "Lumina2Transformer2DModel", "axes_dim_rope": [4, 2, 2], "axes_lens": [128, 128, 128],
                "cap_feat_dim": 32, "hidden_size": 24, "in_channels": 4, "multiple_of": 2, "num_attention_heads": 3,
                "num_kv_heads": 1, "num_layers": 1, "num_refiner_layers": 1, "out_channels": None, "patch_size": 2,
                "sample_size": 8},
}


@pytest.mark.parametrize("name", sorted(MODERN_DIFFUSERS))
def test_modern_diffusers_models_are_audited_from_their_config_alone(name: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """What a user types: ``timeaware audit FOLDER`` with the config.json and nothing else; the input layout,
    the text width and the masks come from the config and the probe."""
    (tmp_path / "config.json").write_text(json.dumps(MODERN_DIFFUSERS[name]))
    assert main(["audit", str(tmp_path), "--samples", "2", "--timesteps", "2", "--json"]) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["layers"] and math.isfinite(report["summary"]["output_time_share"])
    call = report["call"]
    shape, extra = {"wan": ([4, 2, 8, 8], "encoder_hidden_states"),
                    "cogvideox": ([2, 4, 8, 8], "encoder_hidden_states"),
                    "mochi": ([4, 2, 8, 8], "encoder_attention_mask"),
                    "kandinsky22": ([4, 8, 8], "added_cond_kwargs.image_embeds"), "flux2": ([16, 4], "img_ids"),
                    "kandinsky21": ([4, 8, 8], "added_cond_kwargs.text_embeds"), "cogview4": ([4, 8, 8], "crop_coords"),
                    "lumina2": ([4, 8, 8], "encoder_attention_mask")}[name]
    assert call["input_shape"] == shape and extra in call["extras"]


def test_a_diffusers_model_without_a_timestep_is_refused_and_named_time_arguments_get_their_domain(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A VAE's config was audited with t appended as an input channel (exit 0); StableCascade's timestep_ratio
    is t / T in [0, 1]; a diffusers model with Fourier features of t (StableAudio's DiT) takes continuous t."""
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2).save_config(tmp_path)
    assert main(["audit", str(tmp_path)]) == 2
    assert "AutoencoderKL takes no timestep (its forward is (sample, " in capsys.readouterr().err

    class Cascade(nn.Module):
        def forward(self, sample: torch.Tensor, timestep_ratio: torch.Tensor) -> torch.Tensor:
            return sample * timestep_ratio[:, None]

    assert describe(Cascade()).domain.to_dict() == {"kind": "continuous", "low": 0.0, "high": 1.0}
    from diffusers import StableAudioDiTModel

    audio = StableAudioDiTModel(sample_size=16, in_channels=4, num_layers=1, attention_head_dim=4,
                                num_attention_heads=2, num_key_value_attention_heads=1, out_channels=4,
                                cross_attention_dim=8, time_proj_dim=8, global_states_input_dim=8,
                                cross_attention_input_dim=8)
    assert describe(audio).domain.to_dict() == {"kind": "continuous", "low": 0.0, "high": 1.0}


def test_a_model_that_refuses_integer_steps_is_called_with_them_as_floats() -> None:
    """HunyuanDiT's time embedding multiplies t with float weights: 'mat1 and mat2 must have the same dtype, but
    got Long and Float' for diffusion steps as int64. The probe retries them as floats and the call keeps that."""

    class FloatSteps(nn.Module):
        num_timesteps = 1000

        def __init__(self) -> None:
            super().__init__()
            self.proj, self.norm = nn.Linear(1, 4), nn.GroupNorm(2, 4)

        def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.norm(x + self.proj(timestep[:, None])[:, :, None, None])

    model = FloatSteps()
    call = probe(model, describe(model, input_shape=(4, 4, 4)))
    assert call.float_steps and call.domain.kind == "steps"
    assert call.timesteps(3).tolist() == [0.0, 500.0, 999.0] and call.timesteps(3).is_floating_point()
    assert ModelCall.from_dict(json.loads(json.dumps(call.to_dict()))) == call
    x, _ = call.example(2)
    assert audit(model, x, call.timesteps(3), call=call).layers[0].name == "norm"


def test_a_guided_diffusion_fp16_unet_is_audited_traced_and_fixed() -> None:
    """guided-diffusion's use_fp16: the blocks' convs in float16 (convert_module_to_f16), h cast to float16, the
    time embedding, the norms (GroupNorm32 computes in float32) and the output in float32. The positional map
    computes in its own dtype (it was handed float16 features of t for its float32 MLP)."""
    from families import UNetModel, timestep_embedding

    class FP16UNet(UNetModel):
        def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
            hs, h = [], x.half()
            for module in self.input_blocks:
                h = module(h, emb)
                hs.append(h)
            h = self.middle_block(h, emb)
            for module in self.output_blocks:
                h = module(torch.cat([h, hs.pop()], 1), emb)
            return self.out(h.float())

    torch.manual_seed(0)
    model = FP16UNet(3, 32, 3, 1, (2,))
    for block in (model.input_blocks, model.middle_block, model.output_blocks):
        for layer in block.modules():
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)):  # attention's qkv and proj_out are Conv1d
                layer.half()
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and not layer.weight.any():  # zero_module: let t through
                nn.init.normal_(layer.weight, std=0.02)
    model.eval()
    call = probe(model, describe(model, input_shape=(3, 8, 8)))
    x, extras = call.example(2)
    first = "input_blocks.1.0.out_layers.0"
    assert first in {s.norm for s in trace_time(model, call, x, call.timesteps(2), extras).sites}
    result = fix(model, x, positional="mlp", call=call, preserve_output=False)
    verdicts = {row.name: row.verdict for row in result.after.layers}
    assert {row.name: row.verdict for row in result.before.layers}[first] == "vanished"
    assert verdicts[f"{first}.norm"] != "vanished"  # the map's t survives the norm


def test_edm_networks_take_their_required_class_labels_as_none_or_as_vectors_of_the_label_layer() -> None:
    """EDM's SongUNet / DhariwalUNet and EDM2's UNet require ``class_labels`` (None when unconditional) and keep
    no label_dim; the width of conditional ones is the input of their label layer (``map_label``, ``emb_label``)."""

    class SongUNet(nn.Module):  # NVlabs/edm training/networks.py, reduced to how it reads its inputs
        def __init__(self, label_dim: int = 0) -> None:
            super().__init__()
            self.map_noise, self.norm = nn.Linear(1, 4), nn.GroupNorm(2, 4)
            self.map_label = nn.Linear(label_dim, 4) if label_dim else None

        def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                    augment_labels: torch.Tensor | None = None) -> torch.Tensor:
            emb = self.map_noise(noise_labels[:, None])
            if self.map_label is not None:
                emb = emb + self.map_label(class_labels)
            return self.norm(x + emb[:, :, None, None])

    unconditional = describe(SongUNet(), input_shape=(4, 4, 4))
    assert unconditional.inputs["class_labels"].kind == "none" and "augment_labels" not in unconditional.inputs
    x, extras = unconditional.example(2)
    assert "class_labels" not in extras  # never made: invoke passes None
    assert audit(SongUNet(), x, unconditional.timesteps(3), call=unconditional).layers[0].name == "norm"
    conditional = describe(SongUNet(label_dim=5), input_shape=(4, 4, 4))
    assert conditional.inputs["class_labels"].shape == (5,) and conditional.inputs["class_labels"].kind == "normal"
    assert ModelCall.from_dict(json.loads(json.dumps(unconditional.to_dict()))) == unconditional
