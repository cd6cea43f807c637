"""Results of a sweep: one JSON file per cell, merged into ``results.jsonl`` and a mean ± std table.

A cell — one (setting, seed) run — is identified by its ``key``. It writes its own result file
``cells/<slug>.json`` atomically, so cells running at once on one machine or on many (Slurm, Ray) never
share a file; the sweep's driver merges whatever is done into ``results.jsonl``. While a cell runs it
keeps ``cells/<slug>.running`` fresh (a heartbeat), which is how ``--status`` tells running cells from
ones whose process was killed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import statistics
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, dumps, write_json
from ..metadata import CELL_RECORD, RUNNING_MARK, read_checked

HEARTBEAT_S = 30.0  # a running cell touches its marker this often; three missed beats mean it was killed


@dataclass(frozen=True)
class CellState:
    """Where a cell stands: pending, running, done or failed, and one line of detail."""

    key: str
    state: str
    detail: str = ""


def slug(key: str) -> str:
    """A file name for a run key (the run folder and the cell's result file share it)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", key)

# Every paper number beside ours comes from the paper's full-scale CIFAR-10 runs, whatever our preset and data.
PAPER_LABEL = "paper, CIFAR-10 full scale"


class ResultStore:
    """A sweep folder's per-cell result files, keyed by run identity."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.cells = self.folder / "cells"

    def _path(self, key: str, suffix: str = ".json") -> Path:
        return self.cells / f"{slug(key)}{suffix}"

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of cell ``key`` (done or failed), or None."""
        path = self._path(key)
        if not path.is_file():
            return None
        record = read_checked(path, CELL_RECORD)
        if record.get("key") != key:
            raise ValueError(f"{path}: holds run {record.get('key')!r}, not {key!r} (two keys share a file name)")
        return dict(record)

    def put(self, record: dict[str, Any]) -> Path:
        if "key" not in record:
            raise ValueError("a result record needs a 'key' naming the run")
        return write_json(self._path(record["key"]), record)

    def done(self, key: str, config: dict[str, Any] | None = None) -> bool:
        """Whether cell ``key`` finished without error; refuses one recorded with a different ``config``.

        A sweep rerun with other settings into the same folder would otherwise skip its runs and report
        the old numbers as the new ones.
        """
        record = self.get(key)
        if record is None:
            return False
        if config is not None and record.get("config") != json.loads(dumps(config)):
            raise ValueError(f"{self._path(key)}: run {key!r} was recorded with a different configuration; "
                             "choose another --out or remove that result file")
        return "error" not in record

    def records(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The records of ``keys`` that exist, in that order (all cells' records when None)."""
        if keys is None:
            return [dict(read_checked(p, CELL_RECORD)) for p in sorted(self.cells.glob("*.json"))]
        return [r for r in (self.get(k) for k in keys) if r is not None]

    def merge(self, keys: Sequence[str]) -> Path:
        """Rewrite ``results.jsonl``: the records of ``keys`` in order, then any other cells in the folder."""
        first = self.records(keys)
        rest = [r for r in self.records() if r["key"] not in set(keys)]
        return atomic_write_text(self.folder / "results.jsonl", "".join(dumps(r) + "\n" for r in first + rest))

    def state(self, key: str) -> CellState:
        record = self.get(key)
        if record is not None:
            if "error" in record:
                return CellState(key, "failed", record["error"])
            return CellState(key, "done")
        marker = self._path(key, ".running")
        try:
            info, age = read_checked(marker, RUNNING_MARK), time.time() - marker.stat().st_mtime
        except (FileNotFoundError, ValueError):
            return CellState(key, "pending")
        if age < 3 * HEARTBEAT_S and _alive(info):
            return CellState(key, "running", f"{info.get('where', '?')}, since {info.get('since', '?')}")
        return CellState(key, "pending", f"interrupted ({info.get('where', '?')}); resumes from its checkpoint")

    @contextlib.contextmanager
    def running(self, key: str, where: str) -> Iterator[None]:
        """Mark cell ``key`` as running here (``where``: the job or process) and keep the mark fresh."""
        marker = self._path(key, ".running")
        write_json(marker, {"where": where, "host": socket.gethostname(), "pid": os.getpid(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(FileNotFoundError):
                    os.utime(marker)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            marker.unlink(missing_ok=True)


def _alive(info: dict[str, Any]) -> bool:
    """False when the marker's process ran on this host and is gone (killed before it could clean up)."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return True
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mean_std(values: Iterable[float | None]) -> str:
    """'m ± s' over the finite values (just 'm' for one value, '–' for none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "–"
    m = statistics.fmean(vals)
    return f"{m:.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{m:.2f}"


def markdown_table(records: Sequence[dict[str, Any]], *, group: str, metrics: dict[str, str],
                   order: Sequence[str] | None = None, paper: dict[str, dict[str, float]] | None = None,
                   title: str = "") -> str:
    """One row per ``record[group]`` value with mean ± std of each metric over seeds.

    ``metrics`` maps record keys to column titles; ``paper`` maps a row name to the paper's numbers
    for some of those keys, shown beside ours in a column titled "LABEL (PAPER_LABEL)".
    """
    names = list(order) if order else list(dict.fromkeys(r[group] for r in records))
    header = ["setting", "seeds"]
    for key, label in metrics.items():
        header.append(label)
        if paper and any(key in row for row in paper.values()):
            header.append(f"{label} ({PAPER_LABEL})")
    lines = [f"# {title}\n" if title else "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for name in names:
        rows = [r for r in records if r[group] == name]
        if not rows:
            continue
        cells = [str(name), str(len(rows))]
        for key in metrics:
            cells.append(mean_std(r.get(key) for r in rows))
            if paper and any(key in row for row in paper.values()):
                ref = paper.get(str(name), {}).get(key)
                cells.append("–" if ref is None else f"{ref:g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line != "") + "\n"


def write_table(path: str | Path, text: str) -> Path:
    return atomic_write_text(path, text)
