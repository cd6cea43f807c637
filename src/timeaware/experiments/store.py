"""Results of a sweep: one JSON line per finished run, and a mean ± std table over seeds.

A run is identified by its ``key`` (setting name, seed and whatever else defines it). A sweep skips
keys already in ``results.jsonl``, so an interrupted sweep continues where it stopped; each line is
appended whole and fsynced, and a torn last line (a crash mid-write) is ignored on reading.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, dumps

# Every paper number beside ours comes from the paper's full-scale CIFAR-10 runs, whatever our preset and data.
PAPER_LABEL = "paper, CIFAR-10 full scale"


class ResultStore:
    """Append-only ``results.jsonl`` keyed by run identity."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line from a crash: that run is simply redone
        return out

    def done(self, key: str, config: dict[str, Any] | None = None) -> bool:
        """Whether run ``key`` is recorded; refuses one recorded with a different ``config``.

        A sweep rerun with other settings into the same folder would otherwise skip its runs and report
        the old numbers as the new ones.
        """
        for record in self.records():
            if record.get("key") != key:
                continue
            if config is not None and record.get("config") != json.loads(dumps(config)):
                raise ValueError(f"{self.path}: run {key!r} was recorded with a different configuration; "
                                 "choose another --out or remove that results file")
            return True
        return False

    def append(self, record: dict[str, Any]) -> None:
        if "key" not in record:
            raise ValueError("a result record needs a 'key' naming the run")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


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
