"""Sweeps on executors: local processes, a real single-node Slurm cluster, Ray; status; resubmission.

The cluster tests start real daemons from ../shared/slurm (the tested recipe; read there, never
copied) and skip, saying why, where that cannot be done. Every executor's table must equal, number for
number, the same tiny sweep run here one cell after another — only the wall-time column may differ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from timeaware.cli import main
from timeaware.experiments.executors import Local, Ray, Slurm
from timeaware.experiments.node import Setting, sweep
from timeaware.experiments.store import ResultStore, slug
from timeaware.experiments.sweep import format_status, status
from timeaware.node.run_config import preset

REPO = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = Path(os.environ.get("TIMEAWARE_SLURM_SCRIPTS", REPO.parent / "shared" / "slurm"))
SLURM_PACKAGES = ["slurm-wlm", "munge", "slurmdbd", "mariadb-server"]
SLURM_COMMANDS = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct"]
TINY = {"limit": 48, "test_limit": 32, "channels": 4, "groups": 2, "epochs": 3, "batch_size": 16, "padding": 0}
SETTINGS = [Setting("GN"), Setting("BN", {"norm": "batch"})]
CHECKOUT = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)


def tiny_sweep(out: Path, executor=None) -> str:
    """Two NODE cells (GN, BN), three epochs each: a checkpoint per epoch to resume from."""
    return sweep("tiny", "two cells", SETTINGS, {}, "quick", 1, out, "digits", TINY, executor)


def key(setting: str) -> str:
    return f"{setting}/seed=0/quick/digits"


def numbers(folder: Path) -> tuple[str, list[dict]]:
    """The table without its wall-time column, and the records without wall times (the rest must be equal)."""
    table = (folder / "table.md").read_text()
    table = "\n".join(re.sub(r" [^|]+ \|$", "", line) if line.startswith("|") else line for line in table.splitlines())
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return table, [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[str, list[dict]]:
    """The tiny sweep run here, one cell after another: what every executor must reproduce."""
    folder = tmp_path_factory.mktemp("sequential")
    tiny_sweep(folder)
    return numbers(folder)


@pytest.mark.processes  # real processes, several seconds: CI runs these after the default suite
def test_local_jobs_give_the_sequential_numbers(reference, tmp_path):
    table, records = reference
    assert [r["setting"] for r in records] == ["GN", "BN"] and "error" not in records[0]
    tiny_sweep(tmp_path, Local(jobs=2))
    assert numbers(tmp_path) == (table, records)


def test_status_shows_each_cell_and_the_table_so_far(tmp_path, capsys):
    """The CLI's --status on a sweep with a cell done, one running, one failed, one killed: no training."""
    store = ResultStore(tmp_path)
    base = preset("quick")

    def config(**changes) -> dict:
        return json.loads(json.dumps(base.with_overrides({**changes, "seed": 0}).to_dict()))

    labels = {"seed": 0, "preset": "quick", "data": "digits"}
    store.put({"key": key("GN"), "setting": "GN", **labels, "config": config(), "test_acc": 50.0, "nfe_forward": 26})
    store.put({"key": key("BN"), "setting": "BN", **labels, "config": config(norm="batch"),
               "error": "SolverError: max_num_steps exceeded"})
    (tmp_path / "sweep.json").write_text(json.dumps({"cells": [key(s) for s in ("GN", "BN", "GN + positional")]}))
    with store.running(key("GN + positional"), "slurm job 7_2"):
        assert main(["reproduce", "node-norm", "--out", str(tmp_path), "--status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"done +GN/seed=0/quick/digits\n", out)
    assert re.search(r"failed +BN/seed=0/quick/digits +SolverError: max_num_steps exceeded", out)
    assert re.search(r"running +GN \+ positional/seed=0/quick/digits +slurm job 7_2, since", out)
    assert "1 done, 1 running, 0 pending, 1 failed" in out
    assert "| GN | 1 | 50.00 |" in out and "failed: BN/seed=0/quick/digits (SolverError" in out
    # its process killed before it could clean up: pending, and a resubmission runs it again
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "cells" / f"{slug(key('GN + positional'))}.running").write_text(json.dumps(
        {"where": "slurm job 7_2", "host": socket.gethostname(), "pid": dead.pid, "since": "then"}))
    assert [s.state for s in status(tmp_path)] == ["done", "failed", "pending"]
    assert "interrupted (slurm job 7_2)" in format_status(status(tmp_path))


def test_status_of_a_folder_that_holds_no_sweep_is_an_error_and_writes_nothing(tmp_path, capsys):
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        if folder.name == "empty":
            folder.mkdir()
        assert main(["reproduce", "node-norm", "--out", str(folder), "--status"]) == 2
        assert f"{folder}: no sweep.json" in capsys.readouterr().err
    assert [p.name for p in tmp_path.rglob("*")] == ["empty"]


@pytest.mark.parametrize("argv, message", [
    (["--executor", "pbs"], "--executor 'pbs' is not allowed; choose one of local, slurm, ray"),
    (["--jobs", "0"], "timeaware reproduce: argument --jobs: '0' is not allowed; give an integer from 1 to 1024"),
    (["--executor", "slurm", "--jobs", "2"], "executor setting 'jobs' does not apply to slurm"),
    (["--executor", "slurm", "--sbatch", "qos"], "--sbatch 'qos' is not of the form key=value, e.g. --sbatch qos=high"),
    (["--executor-config", "missing.json"], "--executor-config missing.json: no such file"),
])
def test_bad_executor_options_are_one_line_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "node-norm", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"timeaware: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_executor_config_file_gives_slurm_its_request(tmp_path):
    import argparse

    from timeaware.experiments.cli import add_arguments, executor_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = tmp_path / "slurm.json"
    config.write_text(json.dumps({"partition": "gpu", "gpus": 1, "time_min": 2880, "sbatch": {"qos": "low"}}))
    args = parser.parse_args(["node-norm", "--executor", "slurm", "--executor-config", str(config),
                              "--account", "lab", "--sbatch", "constraint=a100", "--sbatch", "qos=high"])
    params = executor_from(args).parameters()  # type: ignore[attr-defined]
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 1 and params["timeout_min"] == 2880
    assert params["slurm_account"] == "lab"
    assert params["slurm_additional_parameters"] == {"qos": "high", "constraint": "a100"}  # flags over the file


# ---------------------------------------------------------------- a real single-node Slurm cluster


def _slurm_unavailable() -> str | None:
    """Why this machine cannot run the cluster (None: it can, after installing what is missing)."""
    if not (SLURM_SCRIPTS / "slurm-start.sh").is_file():
        return f"no Slurm recipe at {SLURM_SCRIPTS} (set TIMEAWARE_SLURM_SCRIPTS)"
    if os.geteuid() != 0:
        return "starting the Slurm, munge and MariaDB daemons needs root"
    for port in (6817, 6818, 6819):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return f"port {port} is taken (another Slurm running?)"
    if all(shutil.which(c, path="/usr/sbin:/usr/bin:/sbin:/bin") for c in SLURM_COMMANDS):
        return None
    if not shutil.which("apt-get"):
        return f"Slurm is not installed ({', '.join(SLURM_PACKAGES)}) and there is no apt-get"
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *SLURM_PACKAGES], capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    return None if done.returncode == 0 else f"apt-get install {' '.join(SLURM_PACKAGES)} failed: {done.stderr[-200:]}"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node cluster (slurmctld, slurmd, slurmdbd on a private MariaDB) for the session."""
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="timeaware-slurm-"))
    base.chmod(0o755)  # mariadbd runs as mysql and must reach its datadir inside
    env = {**os.environ, "BASE": str(base), "SLURM_CONF": str(base / "etc" / "slurm.conf")}
    before = os.environ.get("SLURM_CONF")
    try:
        for script in ("slurm-setup.sh", "slurm-start.sh"):
            done = subprocess.run(["bash", str(SLURM_SCRIPTS / script)], env=env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, f"{script} failed: {done.stderr[-500:]}"
        os.environ["SLURM_CONF"] = env["SLURM_CONF"]  # sbatch, sacct, scancel read it (submitit calls them)
        yield base
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPTS / "slurm-stop.sh")], env=env, capture_output=True, timeout=120)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        shutil.rmtree(base, ignore_errors=True)


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _running_job(store: ResultStore, folder: Path, setting: str) -> str:
    """Wait until ``setting``'s cell runs in a Slurm job and has saved its first epoch; its job id."""
    checkpoint = folder / "runs" / slug(key(setting)) / "checkpoints" / "step-00000001"
    _wait_for(lambda: checkpoint.is_dir() and store.state(key(setting)).state == "running",
              f"{setting} to checkpoint epoch 1")
    where = store.state(key(setting)).detail
    assert where.startswith("slurm job "), where
    return where.split()[2].rstrip(",")


@pytest.mark.processes  # real processes, several seconds: CI runs these after the default suite
def test_slurm_array_survives_a_kill_and_a_requeue_and_a_resubmission_gives_the_sequential_table(
        slurm_cluster, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", CHECKOUT)  # the jobs import this checkout (sbatch exports the environment)
    store = ResultStore(tmp_path)
    driver = threading.Thread(target=tiny_sweep, args=(tmp_path, Slurm(cpus=1, time_min=10, poll_s=0.5)))
    driver.start()  # submits the job array and waits for it, as `timeaware reproduce --executor slurm` does
    try:
        cancelled = _running_job(store, tmp_path, "GN")
        # killed mid-run: scancel alone gives the job a grace period (submitit ignores SIGTERM) in which a
        # tiny cell may finish, so its process is SIGKILLed first, as a node failure or the OOM killer would
        marker = json.loads((tmp_path / "cells" / f"{slug(key('GN'))}.running").read_text())
        os.kill(marker["pid"], signal.SIGKILL)
        subprocess.run(["scancel", cancelled], check=False)  # the job may already be ending
        requeued = _running_job(store, tmp_path, "BN")
        subprocess.run(["scontrol", "requeue", requeued], check=True)  # restarts, resumes from its checkpoint
    finally:
        driver.join(timeout=300)
    assert not driver.is_alive()
    gn, bn = store.get(key("GN")), store.get(key("BN"))
    assert gn is not None
    assert re.match(rf"slurm job {cancelled} ended (CANCELLED|FAILED).* without a result", gn["error"])
    assert bn is not None and "error" not in bn
    assert [s.state for s in status(tmp_path)] == ["failed", "done"]

    run = tmp_path / "runs" / slug(key("GN"))
    saved = int((run / "checkpoints" / "latest").read_text().strip().split("-")[1])
    before = (run / "metrics.jsonl").read_text().splitlines()[:saved]
    assert saved >= 1 and len(before) == saved

    tiny_sweep(tmp_path, Slurm(cpus=1, time_min=10, poll_s=0.5))  # resubmit: GN alone
    assert numbers(tmp_path) == reference
    # it resumed from its checkpoint: the epochs saved before the kill were not trained again (each line
    # carries its measured wall time, so a retrained epoch would differ)
    assert (run / "metrics.jsonl").read_text().splitlines()[:saved] == before


# ---------------------------------------------------------------- Ray: a local cluster of two workers


def test_ray_local_cluster_retries_a_killed_worker_and_gives_the_sequential_table(reference, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is optional (pip install 'timeaware[ray]')")
    monkeypatch.setenv("PYTHONPATH", CHECKOUT)  # Ray's workers import this checkout
    ray.init(num_cpus=2, include_dashboard=False)  # a local cluster: two worker processes at once
    store = ResultStore(tmp_path)
    driver = threading.Thread(target=tiny_sweep, args=(tmp_path, Ray(cpus=1)))
    driver.start()
    try:
        _wait_for(lambda: (tmp_path / "runs" / slug(key("GN")) / "checkpoints" / "step-00000001").is_dir()
                  and store.state(key("GN")).state == "running", "GN to checkpoint epoch 1")
        marker = json.loads((tmp_path / "cells" / f"{slug(key('GN'))}.running").read_text())
        os.kill(marker["pid"], signal.SIGKILL)  # the worker dies mid-run; Ray retries the task
    finally:
        driver.join(timeout=300)
        ray.shutdown()
    assert not driver.is_alive()
    assert numbers(tmp_path) == reference
