"""Where a sweep's cells run: here (one by one or N processes), on Slurm through submitit, or on Ray.

None of these schedules anything itself: the local pool is ``concurrent.futures``, Slurm gets a job
array from submitit, Ray one task per cell. Every cell runs :func:`timeaware.experiments.sweep.run_cell`,
which records its own result; an executor only records the cells whose job or process ended without
one (cancelled, killed, out of time), so that ``--status`` and the table say so.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from ..io import read_json
from .store import ResultStore
from .sweep import Cell, Executor, failure, run_cell

EXECUTORS = ("local", "slurm", "ray")
# A cell requeued at its time limit resumes from its checkpoint, so a run longer than the partition's limit
# simply takes several allocations (submitit's default stops after 3).
MAX_REQUEUES = 100


@dataclass(frozen=True)
class Local:
    """This machine: the cells one after another in this process (``jobs=1``), or ``jobs`` processes.

    Side by side, each process gets ``threads`` torch threads (default: the CPUs divided among the jobs).
    """

    jobs: int = 1
    threads: int | None = None

    def run(self, cells: Sequence[Cell], folder: Path) -> None:
        from tqdm.auto import tqdm

        # closed on the way out too (Ctrl-C), so the interrupted command's last line stays its error line
        with tqdm(total=len(cells), desc=f"{len(cells)} cells", unit="run") as bar:
            if self.jobs == 1:
                for cell in cells:
                    bar.set_postfix_str(cell.key)
                    run_cell(cell, folder)
                    bar.update()
                return
            threads = self.threads or max(1, (os.cpu_count() or 1) // self.jobs)
            # spawn, not fork: a forked child of a process that has used torch's thread pools can hang
            with ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(run_cell, cell, folder, threads): cell for cell in cells}
                for future in as_completed(futures):
                    cell = futures[future]
                    if future.exception() is not None:  # the worker died (killed, out of memory)
                        _record_lost(folder, cell, f"worker process ended without a result ({future.exception()!r})")
                    bar.update()


@dataclass(frozen=True)
class Slurm:
    """Slurm through submitit: one job array, one task per cell, each with ``cpus`` CPUs and ``gpus`` GPUs.

    A cell pre-empted or out of time is requeued by submitit and resumes from its checkpoint; one that
    an admin requeues (``scontrol requeue``) restarts and resumes the same way. With ``wait`` the call
    returns when every task has ended; without, it returns once the array is submitted.
    """

    partition: str | None = None
    time_min: int = 60 * 24
    account: str | None = None
    cpus: int = 1
    gpus: int = 0
    mem_gb: float | None = None
    array_parallelism: int = 256
    sbatch: dict[str, Any] = field(default_factory=dict)   # any other sbatch option, e.g. {"qos": "high"}
    wait: bool = True
    poll_s: float = 10.0

    def parameters(self) -> dict[str, Any]:
        """submitit's ``update_parameters`` for this request."""
        params: dict[str, Any] = {"timeout_min": self.time_min, "nodes": 1, "tasks_per_node": 1,
                                  "cpus_per_task": self.cpus, "slurm_array_parallelism": self.array_parallelism,
                                  "name": "timeaware-cell"}
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.account:
            params["slurm_account"] = self.account
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.sbatch:
            params["slurm_additional_parameters"] = dict(self.sbatch)
        return params

    def submit(self, cells: Sequence[Cell], folder: Path) -> list[Any]:
        """Submit the cells as one job array; returns submitit's jobs, in the order of ``cells``."""
        import submitit

        executor = submitit.AutoExecutor(folder=folder / "slurm" / "%j", cluster="slurm",
                                         slurm_max_num_timeout=MAX_REQUEUES)
        executor.update_parameters(**self.parameters())
        n = len(cells)
        jobs = executor.map_array(CellTask(), list(cells), [folder] * n, [self.cpus] * n)
        print(f"submitted {n} cells as Slurm job array {jobs[0].job_id.split('_')[0]} "
              f"(logs: {folder / 'slurm'}); follow with --status")
        return list(jobs)

    def run(self, cells: Sequence[Cell], folder: Path) -> None:
        jobs = self.submit(cells, folder)
        if self.wait:
            self.wait_for(jobs, cells, folder)

    def wait_for(self, jobs: Sequence[Any], cells: Sequence[Cell], folder: Path) -> None:
        """Poll Slurm (one sacct call per round) until every job has ended; record those that left no result."""
        pending = dict(zip(jobs, cells))
        watcher = jobs[0].watcher
        while pending:
            time.sleep(self.poll_s)
            watcher.update()
            for job in [j for j in pending if watcher.is_done(j.job_id, mode="cache")]:
                state = watcher.get_state(job.job_id, mode="cache")
                _record_lost(folder, pending.pop(job), f"slurm job {job.job_id} ended {state} without a result "
                             f"(log: {job.paths.stderr})")


class CellTask(Checkpointable):
    """``run_cell`` as a submitit task: on pre-emption or timeout submitit requeues it with the same cell."""

    def __call__(self, cell: Cell, folder: Path, threads: int | None) -> str:
        return run_cell(cell, folder, threads)


@dataclass(frozen=True)
class Ray:
    """Ray: one task per cell asking for ``cpus`` CPUs and ``gpus`` GPUs, retried ``retries`` times if its
    worker dies (the retry resumes from the checkpoint). Connects to ``address`` ("auto": the cluster this
    machine belongs to), or starts a local cluster when None — unless Ray is already initialised.
    """

    address: str | None = None
    cpus: int = 1
    gpus: int = 0
    retries: int = 3

    def run(self, cells: Sequence[Cell], folder: Path) -> None:
        try:
            import ray  # type: ignore[import-not-found,unused-ignore]
        except ModuleNotFoundError:
            raise ValueError("--executor ray needs Ray: pip install 'timeaware[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=self.address)
        task = ray.remote(run_cell).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries)
        refs = {task.remote(cell, str(folder), self.cpus): cell for cell in cells}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            cell = refs.pop(ready[0])
            try:
                ray.get(ready[0])
            except ray.exceptions.RayError as err:  # the task's worker died more often than it was retried
                _record_lost(folder, cell, f"ray task ended without a result ({type(err).__name__})")


SETTINGS = {"jobs": int, "threads": int, "partition": str, "time_min": int, "account": str, "cpus": int, "gpus": int,
            "mem_gb": float, "array_parallelism": int, "sbatch": dict, "wait": bool, "address": str, "retries": int}
# the range of each number: far beyond any real node or job, short of values that overflow a scheduler's fields
RANGES = {"jobs": (1, 1024), "threads": (1, 4096), "time_min": (1, 525_600), "cpus": (1, 4096), "gpus": (0, 64),
          "mem_gb": (1e-3, 1_048_576), "array_parallelism": (1, 1_000_000), "retries": (1, 1000)}
UNITS = {"time_min": " minutes (a year)", "mem_gb": " GB"}


def make_executor(name: str, settings: dict[str, Any]) -> Executor:
    """The executor ``name`` with ``settings`` (from the command line or a JSON file); unknown keys refused."""
    kinds: dict[str, Any] = {"local": Local, "slurm": Slurm, "ray": Ray}
    if name not in kinds:
        raise ValueError(f"--executor {name!r} is not allowed; choose one of {', '.join(EXECUTORS)}")
    allowed = {f.name for f in fields(kinds[name])} - {"poll_s"}
    for key, value in settings.items():
        if key not in allowed:
            raise ValueError(f"executor setting {key!r} does not apply to {name}; "
                             f"it takes {', '.join(sorted(allowed))}")
        kind = SETTINGS[key]
        number = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not (number if kind in (int, float) else isinstance(value, kind)):
            raise ValueError(f"executor setting {key}={value!r} is not allowed; it must be {kind.__name__}")
        low, high = RANGES.get(key, (1, 1))
        if number and not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"executor setting {key}={value!r} is not allowed; it must be from {low:g} to "
                             f"{high:,}{UNITS.get(key, '')}")
        if key == "sbatch" and not all(isinstance(k, str) and isinstance(v, str | int | float) and
                                       not isinstance(v, bool) for k, v in value.items()):
            raise ValueError(f"executor setting sbatch={str(value)[:60]} is not allowed; it must map sbatch options to "
                             "strings or numbers, e.g. {\"qos\": \"high\"}")
    return kinds[name](**settings)


def read_settings(path: str | Path) -> dict[str, Any]:
    """A JSON file of executor settings, e.g. ``{"partition": "gpu", "gpus": 1, "sbatch": {"qos": "high"}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--executor-config {path}: no such file")
    try:
        settings = read_json(path)  # size, depth and encoding checked there
    except ValueError as err:
        raise ValueError(f"--executor-config {err}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--executor-config {path}: must hold a JSON object of settings")
    return settings


def _record_lost(folder: Path, cell: Cell, line: str) -> None:
    """Record a cell whose job ended without writing its result, unless it did after all."""
    store = ResultStore(folder)
    if store.get(cell.key) is None:
        store.put(failure(cell, line))

