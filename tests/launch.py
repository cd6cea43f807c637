"""Helpers for tests that run the command line in subprocesses (trainers killed, DDP launches)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from timeaware.training import latest_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


def subprocess_env() -> dict[str, str]:
    """The test's environment with this checkout's ``src`` first on PYTHONPATH and one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def cli_args(changes: dict) -> list[str]:
    """``--set key=value`` for every setting (values JSON-encoded unless they are strings)."""
    args = []
    for key, value in changes.items():
        args += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def error_line(stderr: str) -> str:
    """The one error line of a failed command; progress-bar lines (redrawn with \\r) may precede it, nothing else."""
    lines = [seg for line in stderr.splitlines() for seg in line.split("\r") if seg.strip()]
    bars = [line for line in lines if re.search(r"\| *\d+/\d+ \[", line)]  # tqdm: "epoch 1/3: 33%|█ | 1/3 [..."
    rest = [line for line in lines if line not in bars]
    assert len(rest) == 1 and rest[0].startswith("timeaware: error:") and "Traceback" not in stderr, stderr
    return rest[0]


def kill_during_the_run(proc: subprocess.Popen, out: Path, after: int, fraction: float) -> int:
    """SIGKILL ``proc`` ``fraction`` of a checkpoint interval after checkpoint ``after + 1`` appeared.

    The interval is measured on the run itself (checkpoints ``after`` to ``after + 1``), so the kill lands
    inside the next step or epoch (or while its checkpoint is written) whatever the machine's load.
    Returns the step of the latest checkpoint after the kill.
    """
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and after + 1 not in seen:
        pointer = out / "checkpoints" / "latest"
        if pointer.is_file():
            step = int(pointer.read_text().strip().split("-")[1])
            seen.setdefault(step, time.monotonic())
        time.sleep(0.002)
    if after in seen and after + 1 in seen:
        time.sleep(fraction * (seen[after + 1] - seen[after]))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    return int(latest_checkpoint(out).name.split("-")[1])
