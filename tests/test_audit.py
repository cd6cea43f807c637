"""The audit's maths: cancellation where the paper says it is exact, survival where it says it is not."""

from __future__ import annotations

import itertools
import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from timeaware import ConcatConv2d, LinearTimeMap, TimeAware, TimeConv2d
from timeaware.awareness import AuditReport, audit, metrics
from timeaware.awareness.metrics import Moments, snr, summarize, time_share, verdict
from timeaware.embeddings import as_time

C, H, N, K = 8, 6, 8, 6
T = torch.linspace(0.0, 1.0, K, dtype=torch.float64)


class OffsetThenNorm(nn.Module):
    """conv(x) + e(t), then a norm: the paper's Conv–Emb–N without an edge effect, called as model(x, t)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv = TimeConv2d(C, C, 3, config=TimeAware(), offset="linear")
        self.norm = norm

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x, t))


class ConcatThenNorm(nn.Module):
    """torchdiffeq's ConcatConv2d [+ the positional map t·P], then a norm, called as model(t, x)."""

    def __init__(self, norm: nn.Module, padding_mode: str = "zeros", positional: bool = False) -> None:
        super().__init__()
        self.conv = ConcatConv2d(C, C, 3, 1, 1, padding_mode=padding_mode)
        self.map = LinearTimeMap((H, H)) if positional else None
        self.norm = norm

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(t, x)
        return self.norm(y if self.map is None else y + self.map(as_time(t, x.shape[0], x)))


def _x(size: int = H, n: int = N) -> torch.Tensor:
    return torch.randn(n, C, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _survival(model: nn.Module, call: str = "xt", mode: str = "train", batching: str = "shared",
              size: int = H) -> float:
    torch.manual_seed(0)
    report = audit(model.double(), _x(size), T, call=call, mode=mode, batching=batching)
    (layer,) = [a for a in report.layers if a.name == "norm"]
    return layer.survival


EXACT_NORMS = {"batch": lambda: nn.BatchNorm2d(C), "instance": lambda: nn.InstanceNorm2d(C, affine=True),
               "group G=C": lambda: nn.GroupNorm(C, C)}


@pytest.mark.parametrize("norm", EXACT_NORMS)
def test_channelwise_norm_cancels_a_per_channel_offset(norm: str) -> None:
    torch.manual_seed(0)
    assert _survival(OffsetThenNorm(EXACT_NORMS[norm]())) < 1e-6
    assert _survival(ConcatThenNorm(EXACT_NORMS[norm](), padding_mode="circular"), call="tx") < 1e-6


def test_zero_padding_leaks_part_of_t_at_the_border() -> None:
    torch.manual_seed(0)
    report = audit(ConcatThenNorm(nn.BatchNorm2d(C)).double(), _x(8), T, call="tx", mode="train")
    norm = report.layers[0]
    assert 0 < norm.survival < 0.5
    assert norm.interior_survival < norm.survival  # the leak sits on the border ring
    assert norm.verdict == "vanished"


def test_groupnorm_survival_rises_as_groups_fall() -> None:
    values = []
    for groups in (C, C // 2, C // 4, 1):
        torch.manual_seed(0)
        values.append(_survival(ConcatThenNorm(nn.GroupNorm(groups, C), padding_mode="circular"), call="tx"))
    assert values[0] < 1e-6
    assert all(a < b for a, b in itertools.pairwise(values)), values


def test_layernorm_over_chw_matches_groupnorm_with_one_group() -> None:
    torch.manual_seed(0)
    model = OffsetThenNorm(nn.GroupNorm(1, C))
    as_group = _survival(model)
    model.norm = nn.LayerNorm([C, H, H])
    assert _survival(model) == pytest.approx(as_group, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_positional_embedding_restores_survival(norm: str) -> None:
    torch.manual_seed(0)
    model = ConcatThenNorm(EXACT_NORMS[norm](), padding_mode="circular", positional=True)
    assert _survival(model, call="tx") > 0.1


def test_batchnorm_eval_keeps_the_offset_and_mixed_batches_keep_much_of_it() -> None:
    torch.manual_seed(0)
    model = OffsetThenNorm(nn.BatchNorm2d(C))
    assert _survival(model, mode="eval") == pytest.approx(1.0, abs=1e-9)  # a per-channel affine map
    assert _survival(model, mode="train", batching="mixed") > 0.5  # the batch mean averages over many t
    assert _survival(model, mode="train", batching="shared") < 1e-6


def test_audit_leaves_model_state_untouched() -> None:
    torch.manual_seed(0)
    model = OffsetThenNorm(nn.BatchNorm2d(C)).double().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    audit(model, _x(), T, mode="train", batching="mixed")
    assert not model.training and not model.norm.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert not model.norm._forward_hooks


def test_hooks_removed_and_state_restored_on_error() -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(C)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self.norm(x)
            raise RuntimeError("boom")

    model = Boom().eval()
    with pytest.raises(ValueError, match=r"calling the model on inputs of shape .* failed: RuntimeError: boom") as err:
        audit(model, _x().float(), T, mode="train")
    assert isinstance(err.value.__cause__, RuntimeError)  # the model's own error stays chained for debugging
    assert not model.training and not model.norm._forward_hooks
    assert torch.equal(model.norm.running_mean, torch.zeros(C))


def test_a_model_that_changes_its_input_in_place_is_refused() -> None:
    class Scribbler(nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x.add_(1.0)  # later timesteps would see other inputs

    x = _x()
    with pytest.raises(ValueError, match="changed its input x in place") as err:
        audit(Scribbler(), x, T)
    assert "\n" not in str(err.value)
    mixed = _x()
    audit(Scribbler(), mixed, T, batching="mixed", derivative=False)  # mixed batches are gathered copies
    assert torch.equal(mixed, _x())


def test_inputs_made_in_inference_mode_are_audited() -> None:
    with torch.inference_mode():
        x = _x()  # no version counter: sampling code often makes its inputs this way
    model = OffsetThenNorm(nn.GroupNorm(2, C)).double()
    assert audit(model, x, T).layers[0].survival == pytest.approx(audit(model, _x(), T).layers[0].survival)


class Linear(nn.Module):
    """out = x + 3·t with a hooked identity: everything in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.probe = nn.Identity()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.probe(input=x + 3.0 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)))  # hooked via kwargs


def test_derivative_costs_one_extra_pass_and_is_exact_for_a_linear_model() -> None:
    model = Linear()
    report = audit(model, _x(), T, layers=["probe"])
    assert model.calls == K + 1
    assert report.output_dt == pytest.approx(3.0, rel=1e-6)
    assert report.layers[0].name == "probe" and report.layers[0].verdict == "alive"


def test_integer_timesteps_skip_the_derivative() -> None:
    model = Linear()
    report = audit(model, _x(), [0, 10, 500, 999])
    assert report.output_dt is None and model.calls == 4


def test_mixed_batching_regroups_pairs_and_chunking_changes_nothing() -> None:
    shared = audit(Linear(), _x(), T, layers=["probe"]).to_dict()
    as_tuple = lambda m, x, t: (m(x, t), "extra")  # noqa: E731  a callable call; tuple outputs are unwrapped
    for kwargs in ({"batching": "mixed"}, {"chunk_size": 3}, {"batching": "mixed", "chunk_size": 5},
                   {"call": as_tuple}):
        other = audit(Linear(), _x(), T, layers=["probe"], **kwargs).to_dict()
        for key in ("survival", "time_share", "snr_in", "snr_out"):
            assert other["layers"][0][key] == pytest.approx(shared["layers"][0][key], rel=1e-12)


def test_time_share_and_snr_in_closed_form() -> None:
    k = torch.arange(4, dtype=torch.float64)[:, None, None]
    n = torch.arange(5, dtype=torch.float64)[None, :, None]
    only_time, only_sample = k.expand(4, 5, 7), n.expand(4, 5, 7)
    assert time_share(only_time) == pytest.approx(1.0, abs=1e-12)
    assert time_share(only_sample) == pytest.approx(0.0, abs=1e-12)
    y = 2 * k + n  # Var_k = 4·1.25 = 5, Var_n = 2 for every unit
    assert snr(y.expand(4, 5, 7)) == pytest.approx(5.0 / 2.0)
    assert time_share(y.expand(4, 5, 7)) == pytest.approx(5.0 / 7.0)


def _definitions(y: np.ndarray, eps: float = 0.0) -> tuple[float, float, float]:
    """SNR, interior SNR and η² of a (K, N, C, H, W) array straight from docs/audit.md, in float64 numpy.

    A unit counts for η² when Var_{k,n} > eps²·(Var_{k,n} + mean²), eps that of the captured dtype.
    """
    y = y.astype(np.float64)
    snr = lambda v: v.var(axis=0).mean() / v.var(axis=1).mean()  # noqa: E731  E_{n,u}[Var_k] / E_{k,u}[Var_n]
    units = y.reshape(*y.shape[:2], -1)
    total, between = units.var(axis=(0, 1)), units.mean(axis=1).var(axis=0)
    varies = total > eps**2 * (total + units.mean(axis=(0, 1)) ** 2)
    return float(snr(y)), float(snr(y[..., 1:-1, 1:-1])), float((between[varies] / total[varies]).mean())


def _field(k: int, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(K, N, C, H, W) with units of every kind: constant, time only, inputs only, t on the border only, mixed."""
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(k, n, 6, 5, 7, dtype=torch.float64, generator=gen) * 3 + 100  # a level far above the spread
    t = torch.linspace(0, 1, k, dtype=torch.float64)[:, None, None, None]
    y[:, :, 0] = 7.25                                                     # constant
    y[:, :, 1] = torch.randn(k, 1, 5, 7, dtype=torch.float64, generator=gen)  # time only
    y[:, :, 2] = y[:1, :, 2]                                              # inputs only
    y[:, :, 3, 0] += 5 * t[..., 0]                                        # t on the top border row
    y[:, :, 4:] += t[..., None]                                           # everywhere
    return y.to(dtype)


@pytest.mark.parametrize("n", [2, 3, 16], ids=["two inputs", "three", "sixteen"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_moments_match_the_definitions_in_any_order(n: int, dtype: torch.dtype) -> None:
    y = _field(5, n, dtype)
    kept = y.clone()
    want = _definitions(y.double().numpy(), torch.finfo(dtype).eps)  # the captured values, exactly
    rel = 1e-12 if dtype == torch.float64 else 1e-6  # float32 (and half, upcast per call) sums
    shuffled = y[torch.randperm(5, generator=torch.Generator().manual_seed(0))]
    last = torch.stack([step.contiguous(memory_format=torch.channels_last) for step in y])
    for data in (y, shuffled, last):
        got = summarize(data)
        assert (got.snr, got.interior_snr, got.time_share) == pytest.approx(want, rel=rel)
    assert torch.equal(y, kept)  # the data is not shifted in place
    inputs = Moments(dtype, share=False)  # a layer input: no η², the same SNRs
    for step in y:
        inputs.add(step)
    assert (inputs.summary().snr, inputs.summary().interior_snr) == pytest.approx(want[:2], rel=rel)
    assert math.isnan(inputs.summary().time_share)


def _layouts(y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same (K, N, C, H, W) values as a map, a channels-last map, flat units and flat units two apart."""
    flat = y.flatten(2)
    return {"map": y, "channels last": torch.stack([s.contiguous(memory_format=torch.channels_last) for s in y]),
            "flat": flat, "strided": torch.stack([flat, -flat], dim=-1)[..., 0]}


def _fold_all(y: torch.Tensor, share: bool) -> Moments:
    moments = Moments(y.dtype, share)
    for step in y:
        moments.add(step)
    return moments


@pytest.mark.parametrize("n", [2, 3, 4], ids=lambda n: f"N={n}")  # metrics.MAX_FUSED_ROWS at most
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_the_one_pass_kernel_gives_the_sums_of_the_torch_update(n: int, dtype: torch.dtype,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """fused.Sums (numba, CPU) against Moments' torch update: each call's sums, M, S, B and the summary.

    The torch update sums in the compute dtype (float32 for float32 and half models), the kernel in float64.
    """
    rel = 1e-12 if dtype == torch.float64 else 1e-6
    for layout, data in _layouts(_field(5, n, dtype)).items():
        for share in (True, False):
            fast = _fold_all(data, share)
            with monkeypatch.context() as patch:
                patch.setattr(metrics, "_fused", lambda: None)
                torch_update = _fold_all(data, share)
            assert fast.fused is not None and torch_update.fused is None, layout
            torch.testing.assert_close(torch.cat(fast.sums), torch.cat(torch_update.sums).double(),
                                       rtol=rel, atol=0)
            torch.testing.assert_close(fast.mean, torch_update.mean, rtol=rel, atol=0)
            if share:
                for mine, theirs in ((fast.total_sample, torch_update.total_sample),
                                     (fast.between, torch_update.between)):
                    torch.testing.assert_close(mine, theirs, rtol=rel, atol=1e-30)
            got, want = fast.summary(), torch_update.summary()
            assert (got.snr, got.interior_snr, got.time_share) == pytest.approx(
                (want.snr, want.interior_snr, want.time_share), rel=rel, nan_ok=True)
            assert math.isnan(got.time_share) != share


def test_more_inputs_per_call_and_no_numba_use_the_torch_update(monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = (_fold_all(_field(3, n, torch.float32), True) for n in (2, metrics.MAX_FUSED_ROWS + 1))
    assert small.fused is not None and large.fused is None
    y = _field(5, 2, torch.float32)
    with_numba = summarize(y)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.delitem(sys.modules, "timeaware.awareness.fused")
    metrics._fused.cache_clear()
    try:
        assert _fold_all(y, True).fused is None
        without = summarize(y)
    finally:
        metrics._fused.cache_clear()
    assert (without.snr, without.interior_snr, without.time_share) == pytest.approx(
        (with_numba.snr, with_numba.interior_snr, with_numba.time_share), rel=1e-6)


def test_nothing_that_depends_on_t_gives_exactly_zero() -> None:
    for dtype in (torch.float64, torch.float32, torch.float16):
        same_t = _field(1, 4, dtype).expand(5, -1, -1, -1, -1)  # not rounding noise: the "no time" floor needs 0
        got = summarize(same_t)
        assert got.snr == 0.0 and got.interior_snr == 0.0 and got.time_share == 0.0
    same_x = _field(5, 1).expand(-1, 3, -1, -1, -1)  # inputs agree: no sample variance, only time
    assert summarize(same_x).snr == math.inf


class BorderRow(nn.Module):
    """Triples the top row of a map: survival and interior survival differ."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([3 * y[..., :1, :], y[..., 1:, :]], dim=-2)


class Field(nn.Module):
    """y(x, t) per sample, then ``BorderRow``: the tensors the hooks capture are known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.border = BorderRow()

    @staticmethod
    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * x[:, :1] + torch.sin(7 * t).reshape(-1, 1, 1, 1) * x[:, 1:2] + t.reshape(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.border(self.field(x, t))


@pytest.mark.parametrize("kwargs", [{}, {"chunk_size": 3}, {"batching": "mixed"},
                                    {"batching": "mixed", "chunk_size": 5}],
                         ids=["shared", "chunked", "mixed", "mixed chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_every_way_of_batching_matches_the_definitions(kwargs: dict[str, object], dtype: torch.dtype) -> None:
    model, x, t = Field(), _x().to(dtype), T.to(dtype)
    report = audit(model, x, t, layers=["border"], **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        y_in = torch.stack([Field.field(x, s.expand(x.shape[0])) for s in t])
        y_out = torch.stack([model.border(y) for y in y_in])
    eps = torch.finfo(dtype).eps
    (snr_in, inner_in, _), (snr_out, inner_out, eta2) = (_definitions(v.numpy(), eps) for v in (y_in, y_out))
    row = next(layer for layer in report.to_dict()["layers"] if layer["name"] == "border")
    rel = 1e-12 if dtype == torch.float64 else 1e-6
    assert (row["snr_in"], row["snr_out"], row["time_share"]) == pytest.approx((snr_in, snr_out, eta2), rel=rel)
    assert (row["survival"], row["interior_survival"]) == pytest.approx(
        (snr_out / snr_in, inner_out / inner_in), rel=2 * rel)
    assert abs(row["survival"] - row["interior_survival"]) > 0.01  # the border matters here


def test_report_formats() -> None:
    report = audit(ConcatThenNorm(nn.BatchNorm2d(C)).double(), _x(), T, call="tx", mode="train")
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert {"name", "type", "survival", "time_share", "verdict"} <= set(data["layers"][0])
    assert data["summary"]["batching"] == "shared" and data["summary"]["mode"] == "train"
    text = str(report)
    assert "norm" in text and text.splitlines()[-1].startswith("1 layers")
    assert isinstance(report, AuditReport)


def test_plot_is_written_atomically(tmp_path: object) -> None:
    report = audit(OffsetThenNorm(nn.GroupNorm(2, C)).double(), _x(), T)
    path = report.plot(tmp_path / "s.png")  # type: ignore[operator]
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in path.parent.iterdir()] == ["s.png"]


def test_verdict_thresholds() -> None:
    assert verdict(math.nan) == "no time"
    assert [verdict(s) for s in (1e-9, 0.09, 0.1, 0.49, 0.5, 3.0)] == [
        "vanished", "vanished", "weak", "weak", "alive", "alive"]
    assert verdict(0.3, interior=0.01) == "vanished"  # a border-only leak


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"call": "yx"}, "call='yx' is not allowed"),
    ({"batching": "random"}, "batching='random'"),
    ({"mode": "test"}, "mode='test'"),
    ({"timesteps": []}, "2 <= K <= 10,000"),
    ({"timesteps": [0.0, float("nan")]}, "non-finite"),
    ({"x": [[1.0, 2.0]]}, "x is a list"),
    ({"x": torch.ones(2, 1, dtype=torch.long)}, "x has dtype torch.int64"),
    ({"x": torch.tensor([[1.0], [float("nan")]])}, "x holds NaN or inf .first in input 1"),
    ({"layers": ["nope"]}, "--layers 'nope' matches no module name or class"),
    ({"chunk_size": 0}, "chunk_size=0"),
    ({"chunk_size": True}, "chunk_size=True is not allowed; it must be a positive integer"),
    ({"x": torch.tensor([[1.0], [float("-inf")]])}, "x holds NaN or inf .first in input 1"),
])
def test_bad_arguments_raise_one_line_value_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"x": _x(), "timesteps": T, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message) as err:  # TypeError: a wrong type or dtype
        audit(Linear(), args.pop("x"), args.pop("timesteps"), **args)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
