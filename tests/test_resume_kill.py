"""Exact resume after SIGKILL at a random moment, and after a crash in the middle of writing a checkpoint."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timeaware.training.checkpoint
from launch import cli_args, kill_during_the_run, subprocess_env
from timeaware.io import load_tensors
from timeaware.node import preset, train_classifier
from timeaware.node.train import build_model, load_run_data
from timeaware.training import latest_checkpoint, load_checkpoint

# dropout and random crops draw random numbers every step: resume must restore the RNG states exactly.
TINY = {"limit": 48, "test_limit": 16, "channels": 4, "groups": 2, "batch_size": 16, "padding": 2, "dropout": 0.5,
        "epochs": 6, "method": "rk4", "options": {"step_size": 0.25}}
TRIALS = 3


def _cfg(**changes):
    return preset("quick").with_overrides({**TINY, **changes})


def _train_cli(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "timeaware", "train", "node", "--out", str(out), *cli_args(TINY), *extra]
    return subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final_state(run: Path) -> dict:
    """Everything that must match bitwise: weights, optimizer (tensors and JSON), scheduler, RNG, metrics."""
    ckpt = latest_checkpoint(run)
    meta = json.loads((ckpt / "state.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"name": ckpt.name, "model": load_tensors(ckpt / "model.safetensors"),
            "optimizer": load_tensors(ckpt / "optimizer.safetensors"), "rng": load_tensors(ckpt / "rng.safetensors"),
            "meta": {k: meta[k] for k in ("step", "optimizer", "scheduler", "rng")},
            "state": {k: v for k, v in meta["state"].items() if k != "metrics"},
            "metrics": [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]}


def _assert_same(a: dict, b: dict) -> None:
    for part in ("model", "optimizer", "rng"):
        assert a[part].keys() == b[part].keys(), part
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert (a["name"], a["meta"], a["state"], a["metrics"]) == (b["name"], b["meta"], b["state"], b["metrics"])


def _loadable(run: Path) -> int:
    cfg = _cfg()
    model = build_model(cfg, load_run_data(cfg)[0])
    return load_checkpoint(run, modules={"model": model}, generators={"data": torch.Generator()})["step"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight")
    train_classifier(_cfg(), out, progress=False)
    return _final_state(out)


@pytest.mark.processes  # real processes, several seconds: CI runs these after the default suite
def test_sigkill_at_a_random_moment_then_resume_equals_a_straight_run(tmp_path, straight):
    rng = random.Random(5)
    killed_at = []
    for trial, resume in enumerate([["--resume"], ["--resume", "latest"], ["--resume", "CHECKPOINT"]]):
        out = tmp_path / f"trial{trial}"
        after = rng.randint(1, TINY["epochs"] - 3)  # killed during epoch after + 2 at most
        step = kill_during_the_run(_train_cli(out), out, after, rng.uniform(0.0, 1.0))
        assert step < TINY["epochs"], "the kill came after the last checkpoint: nothing left to resume"
        assert _loadable(out) == step  # the latest checkpoint is whole, whatever the moment of the kill
        killed_at.append(step)
        if resume[-1] == "CHECKPOINT":
            resume = ["--resume", str(latest_checkpoint(out))]
        proc = _train_cli(out, *resume)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]
        _assert_same(_final_state(out), straight)
    print(f"{TRIALS} SIGKILL trials, killed with the checkpoint of epoch {killed_at} as the latest: "
          "all resumed bitwise")
    assert len(killed_at) == TRIALS


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one_and_resumes_bitwise(tmp_path, monkeypatch,
                                                                                      straight):
    real = timeaware.training.checkpoint.save_tensors
    calls = []

    def crash_in_second_checkpoint(path, tensors, metadata=None):
        calls.append(Path(path).name)
        if calls.count("optimizer.safetensors") == 2:
            raise KeyboardInterrupt("killed while writing")
        return real(path, tensors, metadata)

    monkeypatch.setattr(timeaware.training.checkpoint, "save_tensors", crash_in_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(_cfg(), tmp_path, progress=False)
    monkeypatch.setattr(timeaware.training.checkpoint, "save_tensors", real)
    assert latest_checkpoint(tmp_path).name == "step-00000001" and _loadable(tmp_path) == 1
    assert not (tmp_path / "checkpoints" / ".step-00000002.partial").exists()  # the torn one, removed on the error
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # epoch 2 logged, not checkpointed
    train_classifier(_cfg(), tmp_path, resume="latest", progress=False)
    _assert_same(_final_state(tmp_path), straight)
    assert not list((tmp_path / "checkpoints").glob(".*partial"))


def test_resume_from_an_older_checkpoint_rewinds_the_run(tmp_path, straight):
    train_classifier(_cfg(epochs=3), tmp_path, progress=False)
    older = tmp_path / "checkpoints" / "step-00000002"
    train_classifier(_cfg(), tmp_path, resume=older, progress=False)
    _assert_same(_final_state(tmp_path), straight)


def test_resume_latest_on_an_empty_folder_starts_the_run(tmp_path):
    train_classifier(_cfg(epochs=1), tmp_path, resume="latest", progress=False)
    assert latest_checkpoint(tmp_path).name == "step-00000001"
