"""``timeaware audit``: the paper's NODE verdicts, JSON and PNG outputs, one-line errors with exit code 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from timeaware import TimeAware, TimeConv2d
from timeaware.cli import main

SMALL = ["--samples", "4", "--timesteps", "3"]


class Tiny(nn.Module):
    """A factory target for import paths: TimeConv2d (per-channel offset) then InstanceNorm, model(x, t)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = TimeConv2d(channels, channels, config=TimeAware(), offset="linear")
        self.norm = nn.InstanceNorm2d(channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x, t))


def tiny(channels: str = "4") -> nn.Module:
    return Tiny(int(channels))


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["audit", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object
    return json.loads(out)


def test_node_func_batchnorm_vanishes_and_positional_map_keeps_it_alive(capsys: pytest.CaptureFixture[str]) -> None:
    plain = {a["name"]: a for a in _json(capsys, "node-func", "--set", "norm=batch")["layers"]}
    assert plain["norm1"]["verdict"] == "no time" and plain["norm1"]["survival"] is None
    assert plain["norm2"]["verdict"] == "vanished"
    assert plain["norm2"]["survival"] > plain["norm2"]["interior_survival"]  # the zero-padding border leak
    fixed = _json(capsys, "node-func", "--set", "norm=batch", "--set", "positional=linear", "--samples", "8")
    assert [a["verdict"] for a in fixed["layers"]] == ["no time", "alive", "alive"]
    assert all(s["protected"] for s in fixed["sites"]) and len(fixed["sites"]) == 2
    for layer in fixed["layers"]:
        assert {"name", "type", "survival", "time_share", "verdict"} <= set(layer)
    assert fixed["summary"]["mode"] == "train" and fixed["summary"]["batching"] == "shared"


def test_table_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plot = tmp_path / "survival.png"
    assert main(["audit", "node-func-mlp", "--set", "norm=layer", *SMALL, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "where t enters: 2 site(s)" in out and "norm2" in out and "3 layers:" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_import_path_gets_set_pairs_as_keyword_strings(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, f"{__name__}:tiny", "--set", "channels=3", "--input-shape", "3,5,5", *SMALL)
    assert [a["name"] for a in data["layers"]] == ["norm"]
    assert data["layers"][0]["verdict"] == "vanished" and data["call"]["convention"] == "xt"


@pytest.mark.parametrize(("argv", "message"), [
    (["bogus-model"], "MODEL 'bogus-model' is neither a built-in (node-func, node-func-mlp)"),
    (["runs/bn"], "MODEL runs/bn: no such file or folder"),
    (["node-func", "--set", "norm=bogus"], "norm='bogus' is not allowed"),
    (["os.path:"], "MODEL 'os.path:' is not allowed"),
    (["no_such_module_xyz:build", "--input-shape", "3,4,4"], "cannot import 'no_such_module_xyz'"),
    ([f"{__name__}:tiny", "--input-shape", "4,5"], "calling Tiny as model(x, t=t) on inputs of shape (4, 5) failed"),
    (["node-func", "--timesteps", "1"], "argument --timesteps: '1' is not allowed"),
    (["node-func", "--samples", "100000000"], "--samples 100000000 inputs of shape 64,8,8 needs about"),
    (["node-func", "--plot", "x.jpg"], "--plot 'x.jpg' is not allowed"),
    (["node-func", "--batching", "random"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    try:
        code = main(["audit", *argv])
    except SystemExit as exit_:  # argparse's own errors (bad choices) exit from the parser
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_module_entry_point_reports_bad_model_in_one_line() -> None:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "timeaware", "audit", "nope:"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("timeaware: error:")


def test_a_ddpm_run_folder_is_audited_with_its_ema_unet_image_shape_and_integer_steps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from timeaware.awareness import audit
    from timeaware.diffusion.sampling import load_unet
    from timeaware.diffusion.train import preset, train

    unet_cfg, cfg = preset("quick", ["channels=8", "groups=4", "data_limit=32", "batch_size=16", "steps=2",
                                     "checkpoint_every=2", "warmup=1"])
    train(tmp_path, unet_cfg, cfg, progress=False)
    got = _json(capsys, str(tmp_path), *SMALL)
    torch.manual_seed(0)  # as the CLI: seed, build the model, draw the inputs
    unet = load_unet(tmp_path, device="cpu")[0]  # the EMA weights, as sampling uses them
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    want = audit(unet, x, torch.tensor([0, 500, 999]), mode="eval")
    assert got["summary"]["mode"] == "eval" and got["summary"]["output_dt"] is None  # integer steps: no d/dt
    survival = [math.nan if a["survival"] is None else a["survival"] for a in got["layers"]]
    assert survival == pytest.approx([a.survival for a in want.layers], rel=1e-9, nan_ok=True)
    assert len(got["layers"]) == sum(isinstance(m, nn.GroupNorm) for m in unet.modules())


def test_a_node_run_folder_is_audited_through_its_trained_ode_function(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from timeaware.node import preset, train_classifier
    from timeaware.specs import load_model

    cfg = preset("quick").with_overrides({"limit": 32, "test_limit": 16, "channels": 8, "groups": 4,
                                          "batch_size": 16, "epochs": 1, "padding": 0, "t1": 0.5})
    trained = train_classifier(cfg, tmp_path, progress=False).model.block.func
    func, record = load_model(str(tmp_path))
    call = func.timeaware_call()
    assert record["kind"] == "timeaware-node-func" and call.input_shape == (8, 4, 4)  # 16x16 digits, two stride-2
    assert all(torch.equal(a, b) for a, b in zip(func.state_dict().values(), trained.state_dict().values()))
    got = _json(capsys, str(tmp_path), *SMALL)
    assert got["summary"]["mode"] == "train" and got["call"]["convention"] == "tx"
    assert [a["name"] for a in got["layers"]] == ["norm1", "norm2", "norm3"]
    assert (call.domain.low, call.domain.high) == (0.0, 0.5)  # audited over the interval it was trained on
    assert main(["audit", str(tmp_path), "--set", "norm=batch"]) == 2
    assert "--set norm=... is not allowed with the run folder" in capsys.readouterr().err
    assert main(["fix", str(tmp_path), "--groups", "1", "--out", str(tmp_path / "fixed")]) == 2  # inside the run
    assert "is inside the run folder" in capsys.readouterr().err
    outside = tmp_path.with_name(tmp_path.name + "-fixed")
    assert main(["fix", str(tmp_path), "--groups", "1", "--out", str(outside)]) == 0
    capsys.readouterr()
    from timeaware.repair import load_fixed

    fixed = load_fixed(outside)
    assert [m.num_groups for m in (fixed.norm1, fixed.norm2, fixed.norm3)] == [1, 1, 1]
    state_file = next((tmp_path / "checkpoints").glob("step-*")) / "state.json"
    meta = json.loads(state_file.read_text())
    del meta["state"]["input_shape"]  # a checkpoint from before the shape was recorded
    state_file.write_text(json.dumps(meta))
    assert main(["audit", str(tmp_path)]) == 2
    assert "does not record its input shape" in capsys.readouterr().err
