"""Ctrl-C (SIGINT, ``timeout -s INT``) ends a command with one line: "interrupted" and how to continue."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import timeaware.node.train
from launch import cli_args, error_line, subprocess_env
from timeaware.cli import main
from timeaware.training import latest_checkpoint

TINY = {"limit": 48, "test_limit": 16, "channels": 4, "groups": 2, "batch_size": 16, "padding": 0,
        "epochs": 50, "method": "rk4", "options": {"step_size": 0.5}}


def test_sigint_after_a_checkpoint_names_it_and_says_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "timeaware", "train", "node", "--out", str(out), *cli_args(TINY)],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while latest_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr[-2000:]
    line = error_line(stderr)
    assert line.startswith("timeaware: error: interrupted; rerun the command with --resume")
    assert line.endswith(str(latest_checkpoint(out)))


def test_interrupt_before_any_checkpoint_says_the_run_starts_again(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(timeaware.node.train, "augment", interrupted)  # Ctrl-C in the first batch
    assert main(["train", "node", "--out", str(tmp_path / "run"), *cli_args(TINY)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"timeaware: error: interrupted; no checkpoint in {tmp_path / 'run'} yet, so rerunning the " \
                  "command starts the run again"
    assert "--resume" not in err


def test_interrupted_reproduce_says_the_same_command_continues(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(timeaware.node.train, "train_classifier", interrupted)
    assert main(["reproduce", "node-norm", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("timeaware: error: interrupted; rerun the same command to continue")
