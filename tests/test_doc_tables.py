"""Every table in README.md and docs/ that claims to be reproducible is what the command beside it prints.

A claim is an HTML comment right before the table (or fenced output block), invisible when rendered:

    <!-- reproduce[ slow][ needs=ENV_VAR][ ignore="column, column"]: timeaware COMMAND -->

The test runs COMMAND in a fresh process (one thread, an empty working folder, so relative --out paths
land there) and compares: a fenced block with the whole stdout; a markdown table cell by cell with the
stdout table's cells of the same row (first column) and column title, so a doc may show fewer rows or
columns, but every one it shows must come out of the command. ``ignore`` names columns of measured
wall time, which no rerun repeats; ``slow`` puts the claim under ``pytest -m slow``; ``needs`` skips the
claim unless that environment variable names its data (e.g. TIMEAWARE_CIFAR10 for the CIFAR-10 .npz).
Bit-for-bit equality holds on the CPU with the same torch and thread count (the docs say which).
Tables of benchmark timings carry ``<!-- timings: COMMAND; not compared: REASON -->`` instead.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from launch import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- reproduce(?P<opts>[^:]*): (?P<cmd>.+?) -->")
TIMINGS = re.compile(r"<!-- timings: (?P<cmd>.+?); not compared: (?P<reason>.+?) -->")


@dataclass
class Claim:
    doc: Path
    line: int
    command: str
    slow: bool
    needs: str | None
    ignore: list[str]
    kind: str      # "table" or "block"
    text: list[str]

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def claims() -> list[Claim]:
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = MARKER.fullmatch(line.strip())
            if not m:
                continue
            opts = m["opts"]
            ignore = re.search(r'ignore="([^"]+)"', opts)
            needs = re.search(r"needs=(\w+)", opts)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if lines[j].startswith("```"):
                end = next(k for k in range(j + 1, len(lines)) if lines[k].startswith("```"))
                kind, text = "block", lines[j + 1:end]
            else:
                end = next((k for k in range(j, len(lines)) if not lines[k].startswith("|")), len(lines))
                kind, text = "table", lines[j:end]
            assert text, f"{doc}:{i + 1}: a reproduce marker must be followed by a table or a fenced block"
            found.append(Claim(doc, i + 1, m["cmd"], " slow" in f" {opts}", needs and needs[1],
                               [c.strip() for c in ignore[1].split(",")] if ignore else [], kind, text))
    return found


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table_differences(doc: list[str], printed: list[str], ignore: list[str]) -> list[str]:
    """Cells of the doc's table that differ from the printed table's cell of the same row and column."""
    header, *rows = [_cells(line) for line in doc if not re.fullmatch(r"\|[-|: ]+\|?", line.strip())]
    out_lines = [line for line in printed if line.startswith("|")]
    if not out_lines:
        return ["the command printed no table"]
    out_header, *out_rows = [_cells(line) for line in out_lines if not re.fullmatch(r"\|[-|: ]+\|?", line.strip())]
    by_name = {row[0]: row for row in out_rows}
    wrong = [f"column {title!r} is not in the printed table {out_header}" for title in header
             if title not in out_header]
    for row in rows:
        got = by_name.get(row[0])
        if got is None:
            wrong.append(f"row {row[0]!r} is not in the printed table")
            continue
        for title, cell in zip(header, row):
            if title in out_header and title not in ignore and got[out_header.index(title)] != cell:
                wrong.append(f"{row[0]} / {title}: doc {cell!r}, printed {got[out_header.index(title)]!r}")
    return wrong


_PRINTED: dict[str, list[str]] = {}  # command -> stdout lines: a command two docs share runs once per session


def _run(claim: Claim, cwd: Path) -> list[str]:
    if claim.command not in _PRINTED:
        _PRINTED[claim.command] = _execute(claim, cwd)
    return _PRINTED[claim.command]


def _execute(claim: Claim, cwd: Path) -> list[str]:
    words = shlex.split(claim.command)
    env = subprocess_env()
    while "=" in words[0]:  # leading VAR=value assignments
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "timeaware", f"{claim}: a reproduce command must run timeaware, not {words[0]!r}"
    proc = subprocess.run([sys.executable, "-m", "timeaware", *words[1:]], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=3600)
    assert proc.returncode == 0, f"{claim}: {claim.command} failed:\n{proc.stderr[-2000:]}"
    return proc.stdout.splitlines()


def _param(claim: Claim):
    return pytest.param(claim, id=str(claim), marks=[pytest.mark.slow] if claim.slow else [])


@pytest.mark.parametrize("claim", [_param(c) for c in claims()])
def test_doc_table_is_what_its_command_prints(claim, tmp_path):
    if claim.needs and not os.environ.get(claim.needs):
        pytest.skip(f"{claim.needs} is not set: no data for {claim.command}")
    printed = _run(claim, tmp_path)
    if claim.kind == "block":
        assert claim.text == printed, f"{claim}: regenerated output:\n" + "\n".join(printed)
    else:
        wrong = table_differences(claim.text, printed, claim.ignore)
        assert not wrong, f"{claim}: " + "; ".join(wrong) + "\nregenerated:\n" + "\n".join(printed)


def test_claims_are_found_and_timing_tables_say_why_they_are_not_compared():
    found = claims()
    assert any(not c.slow for c in found), "no cheap claim left for the default suite"
    assert {c.doc.name for c in found} >= {"README.md", "node.md", "diffusion.md"}
    for doc in DOCS:
        for m in TIMINGS.finditer(doc.read_text(encoding="utf-8")):
            script = next((w for w in shlex.split(m["cmd"]) if w.endswith(".py")), None)
            assert script and (ROOT / script).is_file(), f"{doc.name}: timings command {m['cmd']!r} names no script"
            assert len(m["reason"].split()) >= 3, f"{doc.name}: say why {m['cmd']!r} is not compared"


def test_the_comparison_catches_a_changed_cell_and_a_renamed_column():
    doc = ["| setting | acc | wall (s) |", "|---|---|---|", "| GN | 84.72 | 30.1 |"]
    printed = ["# title", "| setting | seeds | acc | wall (s) |", "|---|---|---|---|", "| GN | 1 | 84.72 | 47.2 |",
               "| BN | 1 | 87.78 | 69.6 |", "a note"]
    assert table_differences(doc, printed, ["wall (s)"]) == []  # fewer rows and columns, timing ignored
    assert table_differences(doc, printed, []) == ["GN / wall (s): doc '30.1', printed '47.2'"]
    assert table_differences([doc[0].replace("acc", "accuracy"), *doc[1:]], printed, ["wall (s)"]) == [
        "column 'accuracy' is not in the printed table ['setting', 'seeds', 'acc', 'wall (s)']"]
