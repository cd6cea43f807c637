"""The audit and ``fix`` on bare third-party model families (replicas in ``families.py``), no wrapper code.

For each family: the call is detected from the model alone, the audit runs and reports its norms, the
tracer finds where t enters, and ``fix`` raises survival where a fix is needed and says so where not.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from families import FAMILIES
from timeaware.awareness import audit
from timeaware.awareness.trace import perturb_zero_init, trace_time
from timeaware.cli import main
from timeaware.repair import fix
from timeaware.specs import describe, probe

NAMES = [n for n in FAMILIES if n != "diffusers_transformer2d_ada_norm"]  # VQ tokens, needs 0-d integer t


def _ready(name: str):
    torch.manual_seed(0)
    info = FAMILIES[name]
    model = info.factory().eval()
    call = describe(model).replace(input_shape=info.input_shape)  # the families' small shapes keep this fast
    call = probe(model, call)
    x, extras = call.example(3, seed=1)
    return info, model, call, x, extras


@pytest.mark.parametrize("name", NAMES)
def test_the_call_is_detected_and_the_trace_agrees_with_the_family(name):
    info, model, call, x, extras = _ready(name)
    ts = call.timesteps(4)
    report = audit(model, x, ts, call=call, extras=extras, mode=call.mode)
    trace = trace_time(model, call, x, ts[[0, -1]], extras)
    assert trace.needs_fix == info.needs_fix, trace.explain()
    assert all(row.verdict in ("alive", "weak", "vanished", "no time") for row in report.layers)
    if info.injection in ("scale-shift-after-norm", "adaln", "adaln-zero"):
        assert not trace.sites and (trace.modulated or trace.blocked), trace.explain()
    if info.zero_init and not info.t_reaches_output_at_init:
        assert trace.zero_parameters, "zero-initialised parameters must be named"


@pytest.mark.parametrize("name", [n for n in NAMES if FAMILIES[n].needs_fix])
def test_fix_raises_survival_at_the_sites_of_families_that_need_it(name):
    _, model, call, x, extras = _ready(name)
    result = fix(model, x, positional="mlp", groups=1, preserve_output=False, call=call, extras=extras,
                 timesteps=call.timesteps(4))
    rows = [(n, b.judged_survival, a.judged_survival) for n, b, a in result.survival()]
    assert rows, result.trace.explain()
    gains = [a - b for _, b, a in rows if math.isfinite(a) and math.isfinite(b)]
    assert gains and sum(gains) / len(gains) > 0, rows
    t = call.timesteps(2)[1:].expand(2)  # one t: some families take a scalar t per call
    with torch.no_grad():
        assert torch.isfinite(call.invoke(result.model, x[:2], t, {k: v[:2] for k, v in extras.items()})).all()


def test_zero_init_blocked_models_are_named_and_perturbing_shows_their_structure():
    _, model, call, x, extras = _ready("adm_unet_scale_shift")
    ts = call.timesteps(4)
    blocked = trace_time(model, call, x, ts[[0, -1]], extras)
    assert "zero-valued parameters" in blocked.explain() and blocked.zero_parameters
    opened = trace_time(perturb_zero_init(model), call, x, ts[[0, -1]], extras)
    assert opened.modulated and not opened.needs_fix  # scale-shift: time after the norm


def test_every_normalization_family_is_hooked():
    _, model, call, x, extras = _ready("lucid_unet")
    types = {row.type for row in audit(model, x, call.timesteps(3), call=call, extras=extras).layers}
    assert "RMSNorm" in types
    _, model, call, x, extras = _ready("karras_unet")
    model = perturb_zero_init(model)
    types = {row.type for row in audit(model, x, call.timesteps(3), call=call, extras=extras).layers}
    assert "PixelNorm" in types
    _, model, call, x, extras = _ready("adm_unet")
    rows = audit(model, x, call.timesteps(3), call=call, extras=extras).layers
    assert {r.type for r in rows} == {"GroupNorm32"} and len(rows) > 4


@pytest.mark.parametrize(("factory", "extra", "expect"), [
    ("families:make_adm_unet", [], "site(s) where a time offset is added before a normalization"),
    ("families:make_adm_unet", ["--set", "use_scale_shift_norm=1"], "zero-valued parameters"),
    ("families:make_torchdyn_vf", [], "site(s) where a time offset is added"),
    ("families:make_lucid_unet1d", [], "time enters after the normalizations"),
    ("families:make_cfm_mlp", [], "t reaches no normalization"),
])
def test_the_cli_audits_bare_models_from_their_factory(factory, extra, expect, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    assert main(["audit", factory, *extra, "--samples", "2", "--timesteps", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert expect in data["trace"]


def test_the_cli_fixes_a_torchdyn_vector_field_and_says_no_fix_for_lucidrains(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    small = ["--samples", "2", "--timesteps", "3", "--input-shape", "4,8,8"]
    out = str(tmp_path / "f")
    assert main(["fix", "families:make_torchdyn_vf", *small, "--positional", "linear", "--out", out]) == 0
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    assert report["sites"] and report["call"]["convention"] == "attr"
    assert main(["fix", "families:make_lucid_unet", "--samples", "2", "--input-shape", "3,16,16", "--positional",
                 "mlp", "--out", str(tmp_path / "g")]) == 0
    assert "no fix needed" in capsys.readouterr().out and not (tmp_path / "g").exists()
