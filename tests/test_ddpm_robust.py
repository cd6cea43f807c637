"""DDPM: SIGKILL then --resume is bitwise, a NaN loss is one line + exit 2, a 2-process gloo run resumes exactly."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch import error_line, free_port, kill_during_the_run, subprocess_env
from timeaware.cli import main
from timeaware.diffusion import train as train_module
from timeaware.diffusion.train import preset, train
from timeaware.io import load_tensors
from timeaware.training import latest_checkpoint

# dropout and flips draw random numbers every step; checkpoint every step so a kill lands between two of them
TINY = ["channels=8", "groups=4", "data_limit=64", "batch_size=8", "log_every=1", "warmup=2", "checkpoint_every=1"]
STEPS = 10


def _set(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _cli(out: Path, *extra: str) -> list[str]:
    return ["-m", "timeaware", "train", "ddpm", "--out", str(out), *_set(TINY), "--steps", str(STEPS), *extra]


def _same(a: Path, b: Path) -> None:
    for name in ("model", "ema", "optimizer", "rng"):
        ta, tb = load_tensors(a / f"{name}.safetensors"), load_tensors(b / f"{name}.safetensors")
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    ma, mb = (json.loads((p / "state.json").read_text()) for p in (a, b))
    assert {k: ma[k] for k in ("step", "optimizer", "scheduler", "rng")} == {
        k: mb[k] for k in ("step", "optimizer", "scheduler", "rng")}


@pytest.mark.processes  # real processes, several seconds: CI runs these after the default suite
def test_sigkill_then_resume_equals_a_straight_run(tmp_path):
    unet_cfg, cfg = preset("quick", TINY)
    train(tmp_path / "straight", unet_cfg, cfg.replace(steps=STEPS), progress=False)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *_cli(out)], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    rng = random.Random(11)
    step = kill_during_the_run(proc, out, rng.randint(1, STEPS - 3), rng.uniform(0.0, 1.0))
    assert step < STEPS, "the kill came after the last checkpoint: nothing left to resume"
    done = subprocess.run([sys.executable, *_cli(out, "--resume", "latest")], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"DDPM killed with step {step} as the latest checkpoint, resumed to step {STEPS}: bitwise equal")
    _same(latest_checkpoint(out), latest_checkpoint(tmp_path / "straight"))
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()


def test_nan_loss_is_one_line_exit_2_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    args = ["train", "ddpm", "--out", str(tmp_path), *_set(TINY)]
    assert main([*args, "--steps", "2"]) == 0
    kept = load_tensors(latest_checkpoint(tmp_path) / "ema.safetensors")
    monkeypatch.setattr(train_module, "simple_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    capsys.readouterr()
    assert main([*args, "--steps", "4", "--resume"]) == 2
    captured = capsys.readouterr()
    assert "loss is nan at step 3" in error_line(captured.err) and captured.out == ""
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    after = load_tensors(latest_checkpoint(tmp_path) / "ema.safetensors")
    assert after.keys() == kept.keys() and all(torch.equal(after[k], kept[k]) for k in kept)


@pytest.mark.processes  # real processes, several seconds: CI runs these after the default suite
def test_two_process_gloo_run_resumes_exactly(tmp_path):
    """4 steps on 2 processes; then resume the same launch from step 2: every rank's stream is restored."""
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    ddp_set = [*TINY[:-1], "checkpoint_every=2", "dropout=0"]

    def run(*extra: str) -> subprocess.CompletedProcess:
        cmd = [*launch, "--master-port", str(free_port()), "-m", "timeaware", "train", "ddpm", "--out", str(out),
               *_set(ddp_set), "--steps", "4", *extra]
        done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    first = run()
    assert first.stdout.count("trained 4 steps") == 1  # rank 0 alone prints
    shutil.copytree(out / "checkpoints" / "step-00000004", tmp_path / "straight-4")
    rng = load_tensors(out / "checkpoints" / "step-00000004" / "rng.safetensors")
    assert not torch.equal(rng["gen.data"], rng["gen.data.rank1"])  # both ranks' streams are in the checkpoint
    metrics = (out / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in metrics.splitlines()] == [1, 2, 3, 4]
    run("--resume", str(out / "checkpoints" / "step-00000002"))
    _same(out / "checkpoints" / "step-00000004", tmp_path / "straight-4")
    assert (out / "metrics.jsonl").read_text() == metrics


def test_resume_with_another_number_of_processes_is_refused(tmp_path, capsys):
    args = ["train", "ddpm", "--out", str(tmp_path), *_set(TINY), "--steps", "1"]
    assert main(args) == 0
    state = latest_checkpoint(tmp_path) / "state.json"
    meta = json.loads(state.read_text())
    assert meta["state"]["processes"] == 1
    meta["state"]["processes"] = 2
    state.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main([*args[:-1], "2", "--resume"]) == 2
    assert "was trained on 2 processes, not 1" in error_line(capsys.readouterr().err)
