"""Real DDP on CPU: a 2-process gloo run of `timeaware train node` equals one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import timeaware.training.common
from launch import cli_args, free_port, subprocess_env
from timeaware.io import load_tensors
from timeaware.node import preset, train_classifier
from timeaware.training import latest_checkpoint, make_accelerator

# GroupNorm, no dropout, crops drawn for the whole global batch on every rank, a fixed-step solver: fast.
# 40 images in global batches of 16: 16, 16, 8 -> each of 2 ranks gets 8, 8, 4.
TINY = {"limit": 40, "test_limit": 16, "channels": 8, "groups": 4, "batch_size": 16, "padding": 1, "dropout": 0.0,
        "epochs": 2, "method": "rk4", "options": {"step_size": 0.5}}


@pytest.mark.processes  # real processes, several seconds: CI runs these after the default suite
def test_two_process_gloo_run_equals_one_process_with_the_same_global_batch(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "timeaware", "train", "node", "--out", str(out),
           *cli_args(TINY)]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1, done.stdout  # only rank 0 prints the summary

    single = train_classifier(preset("quick").with_overrides(TINY), tmp_path / "one", progress=False)
    ddp = load_tensors(latest_checkpoint(out) / "model.safetensors")
    diff = max((ddp[k].double() - v.double()).abs().max().item() for k, v in single.model.state_dict().items())
    print(f"DDP (2 x gloo) vs 1 process, max abs weight difference: {diff:.3g}")
    assert diff < 1e-5

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone writes: one line per epoch
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, one, strict=True):  # metrics are reduced over ranks: the same as one process
        assert a["train_acc"] == b["train_acc"] and a["test_acc"] == b["test_acc"] and a["lr"] == b["lr"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoints", "metrics.jsonl"]  # rank 0 locks, writes


def test_a_launch_whose_process_count_differs_from_world_size_fails_loudly(monkeypatch):
    class Alone:  # what accelerate builds when the process group was not set up: one independent copy
        num_processes = 1

        def __init__(self, **kwargs):
            pass

    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", Alone)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="launcher started 2 processes but accelerate sees 1"):
        make_accelerator(cpu=True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert isinstance(make_accelerator(cpu=True), Alone)
    assert timeaware.training.common.make_accelerator is make_accelerator


def test_a_global_batch_too_small_for_the_processes_is_refused_before_training():
    from timeaware.node.train import _check_batches, rank_slice

    assert [rank_slice(5, r, 2) for r in range(2)] == [slice(0, 3), slice(3, 5)]
    assert [rank_slice(16, r, 2) for r in range(2)] == [slice(0, 8), slice(8, 16)]
    _check_batches(40, 16, 2)
    with pytest.raises(ValueError, match="leaves a batch of 1 for 2 processes"):
        _check_batches(33, 16, 2)
    with pytest.raises(ValueError, match="batch_size=1"):
        _check_batches(40, 1, 2)
    assert torch.equal(torch.cat([torch.arange(7)[rank_slice(7, r, 3)] for r in range(3)]), torch.arange(7))


@pytest.mark.processes  # real processes, several seconds: CI runs these after the default suite
def test_a_solver_failure_under_ddp_ends_the_job_and_each_rank_says_why(tmp_path):
    failing = {**TINY, "method": "dopri5", "options": {"max_num_steps": 1}}  # every rank's first solve gives up
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "timeaware", "train", "node", "--out", str(tmp_path / "ddp"),
           *cli_args(failing)]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)  # no hang
    assert done.returncode != 0
    assert "timeaware: error: ODE solve failed" in done.stderr, done.stderr[-3000:]
    assert "timeaware: error (rank 1): ODE solve failed" in done.stderr, done.stderr[-3000:]
