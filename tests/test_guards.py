"""Guards through the command line: NaN loss, failing ODE solves, unsafe or broken checkpoints -> one line, exit 2."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from launch import cli_args, error_line
from timeaware.cli import main
from timeaware.node import NodeClassifier, preset
from timeaware.node.train import build_model, load_run_data
from timeaware.training import latest_checkpoint, load_checkpoint

TINY = {"limit": 48, "test_limit": 16, "channels": 4, "groups": 2, "batch_size": 16, "padding": 0, "dropout": 0.0,
        "method": "rk4", "options": {"step_size": 0.5}}


def _train(out: Path, *extra: str) -> int:
    return main(["train", "node", "--out", str(out), *cli_args(TINY), *extra])


def _one_line(capsys) -> str:
    return error_line(capsys.readouterr().err)


def _loadable_step(run: Path) -> int:
    cfg = preset("quick").with_overrides(TINY)
    model = build_model(cfg, load_run_data(cfg)[0])
    return load_checkpoint(run, modules={"model": model}, generators={"data": torch.Generator()})["step"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    assert _train(tmp_path, "--epochs", "1") == 0
    good = (latest_checkpoint(tmp_path) / "model.safetensors").read_bytes()
    forward, calls = NodeClassifier.forward, []

    def poisoned(self, images):
        out = forward(self, images)
        if self.training:
            calls.append(1)
            if len(calls) == 2:  # epoch 2, second batch: global step 3 + 2 = 5
                return out * float("nan")
        return out

    monkeypatch.setattr(NodeClassifier, "forward", poisoned)
    capsys.readouterr()
    assert _train(tmp_path, "--epochs", "3", "--resume") == 2
    line = _one_line(capsys)
    assert "loss is nan at step 5" in line and "last good checkpoint is kept" in line
    assert latest_checkpoint(tmp_path).name == "step-00000001" and _loadable_step(tmp_path) == 1
    assert (latest_checkpoint(tmp_path) / "model.safetensors").read_bytes() == good
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_solve_that_blows_up_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "node", "--out", str(out), *cli_args({**TINY, "method": "dopri5", "options": {}}),
                 "--set", 'options={"max_num_steps": 1}'])
    assert code == 2
    assert "ODE solve failed (max_num_steps exceeded) with dopri5" in _one_line(capsys)
    assert not out.exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.fixture
def run(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1") == 0
    capsys.readouterr()
    return out


def test_a_checkpoint_that_would_run_code_is_refused_and_does_not_run(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = latest_checkpoint(run)
    evil = pickle.dumps({"weight": _Evil()})
    (ckpt / "model.safetensors").write_bytes(evil)  # a pickle disguised as weights
    (ckpt / "model.pt").write_bytes(evil)  # and one beside them: never looked at
    assert _train(run, "--epochs", "2", "--resume") == 2
    assert "model.safetensors: corrupted or truncated safetensors file" in _one_line(capsys)
    assert not (tmp_path / "pwned").exists()
    assert main(["train", "node", "--out", str(tmp_path / "new"), "--resume", str(ckpt / "model.pt")]) == 2
    assert "expected a checkpoint folder" in _one_line(capsys)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "new").exists()


@pytest.mark.parametrize(("damage", "names"), [
    (lambda c: (c / "optimizer.safetensors").write_bytes((c / "optimizer.safetensors").read_bytes()[:30]),
     "optimizer.safetensors: corrupted or truncated"),
    (lambda c: (c / "rng.safetensors").unlink(), "rng.safetensors: no such file"),
    (lambda c: (c / "state.json").write_text('{"step": 1, "state"'), "state.json: corrupted checkpoint metadata"),
    (lambda c: (c / "state.json").write_text('{"step": 1, "state": {"epoch": 1}}'), "state.json: corrupted"),
    (lambda c: (c.parent / "latest").write_text("step-00000009\n"), "points to step-00000009, which is missing"),
])
def test_a_broken_checkpoint_is_a_one_line_error_naming_the_file(run, capsys, damage, names):
    damage(latest_checkpoint(run) if (run / "checkpoints" / "latest").is_file() else None)
    before = sorted(p.name for p in run.rglob("*"))
    assert _train(run, "--epochs", "2", "--resume") == 2
    assert names in _one_line(capsys)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written
