"""A sweep as independent cells, handed to an executor (this machine, Slurm, Ray) and merged when done.

A cell is one (setting, seed) run: a key, the config that defines it, and a picklable function that
trains and scores it. :func:`run_cell` is the one thing every executor runs, wherever it runs: it
skips a cell that is already done (so a retried task or a requeued job is harmless), marks the cell
running, calls its function — which resumes from the run's latest checkpoint — and writes the cell's
result file, or its error line when it raised. :func:`run_sweep` skips done and running cells, hands
the rest to the executor, and merges whatever is done into ``results.jsonl``; the experiment then
makes its table from those records.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..io import write_json
from ..metadata import SWEEP_FILE, read_checked
from ..progress import say
from .store import CellState, ResultStore


@dataclass(frozen=True)
class Cell:
    """One run of a sweep. ``work`` must pickle (a module-level function, or a ``functools.partial`` of one)."""

    key: str
    config: dict[str, Any]                     # what defines the run; a record made with another is refused
    work: Callable[[], dict[str, Any]]         # trains and scores the run; returns the result's fields
    labels: dict[str, Any] = field(default_factory=dict)  # fields known beforehand (setting, seed, ...)


class Executor(Protocol):
    """Runs cells somewhere; each cell records its own result through :func:`run_cell`."""

    def run(self, cells: Sequence[Cell], folder: Path) -> None: ...


def run_cell(cell: Cell, folder: str | Path, threads: int | None = None) -> str:
    """Run one cell into the sweep ``folder`` and record its result or its error; returns its state.

    ``threads``: torch intra-op threads for this process (executors that run cells side by side set it).
    """
    store = ResultStore(folder)
    if store.done(cell.key, cell.config):
        return "done"
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with store.running(cell.key, where=_where()):
        try:
            fields = cell.work()
        except Exception as err:  # any failure is this cell's result; the other cells go on
            store.put(failure(cell, error_line(err), traceback.format_exc()))
            return "failed"
    store.put({"key": cell.key, **cell.labels, "config": cell.config, **fields})
    return "done"


def failure(cell: Cell, line: str, detail: str = "") -> dict[str, Any]:
    """The record of a failed cell: its error line (and a traceback or log path when there is one)."""
    return {"key": cell.key, **cell.labels, "config": cell.config, "error": line,
            **({"detail": detail} if detail else {})}


def error_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def run_sweep(folder: str | Path, cells: Sequence[Cell], executor: Executor | None = None, *, name: str = "sweep",
              progress: bool = True) -> ResultStore:
    """Run the cells of ``cells`` not done or running elsewhere on ``executor`` (None: here, one by one).

    Failed cells are run again (resuming from their checkpoint). Writes ``sweep.json`` (the cells, for
    ``--status``) first and ``results.jsonl`` (the merged records) last. With ``progress``, says on stderr
    each cell it skips, as ``name: key ...`` (the cells' own work says when each one starts).
    """
    from .executors import Local

    folder = Path(folder)
    store = ResultStore(folder)
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys):
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"a sweep's cells need distinct keys; repeated: {', '.join(repeated)}")
    write_json(folder / "sweep.json", {"cells": keys})
    todo = []
    for cell in cells:
        if store.done(cell.key, cell.config):
            say(f"{name}: {cell.key} is in results.jsonl, skipped", progress)
        elif (state := store.state(cell.key)).state == "running":
            say(f"{name}: {cell.key} is running elsewhere ({state.detail}), skipped", progress)
        else:
            todo.append(cell)
    if todo:
        (executor or Local()).run(todo, folder)
    store.merge(keys)
    return store


class StatusOnly:
    """An executor that runs nothing: the sweep then only merges and tables what is done (``--status``)."""

    def run(self, cells: Sequence[Cell], folder: Path) -> None:
        return None


def status(folder: str | Path) -> list[CellState]:
    """Every cell of the sweep in ``folder`` (from its ``sweep.json``) and where it stands."""
    path = Path(folder) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no sweep.json (not a sweep folder, or nothing submitted yet)")
    store = ResultStore(folder)
    return [store.state(key) for key in read_checked(path, SWEEP_FILE)["cells"]]


def format_status(states: Sequence[CellState]) -> str:
    counts = {s: sum(c.state == s for c in states) for s in ("done", "running", "pending", "failed")}
    width = max((len(c.key) for c in states), default=0)
    lines = [f"{c.state:<8} {c.key:<{width}}  {c.detail}".rstrip() for c in states]
    return "\n".join([*lines, ", ".join(f"{n} {s}" for s, n in counts.items())]) + "\n"


def _where() -> str:
    """The job or process a cell runs in, for the status (Slurm array task, job, or host:pid)."""
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm job {os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm job {os.environ['SLURM_JOB_ID']}"
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
