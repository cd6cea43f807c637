"""Command-line text to values: one parser per kind of input (key=value pairs, shapes, number ranges, numbers).

Each raises a one-line ValueError naming the flag, the bad text and what is allowed. The argparse ``type``s
(``integer``, ``real``, ``SEED``, ``COUNT``, ``POSITIVE``) raise argparse's error instead, which argparse
prefixes with the flag ("argument --seed: '-1' is not allowed; ..."): a flag is checked as it is read,
before a command loads or runs anything.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from .validate import INT64_MAX


def split_pair(flag: str, pair: str, *, identifier: bool = True, hint: str = "") -> tuple[str, str]:
    """``"key=value"`` → ``("key", "value")``; the key must be an identifier unless ``identifier`` is False."""
    key, eq, value = pair.partition("=")
    if not eq or not key or (identifier and not key.isidentifier()):
        raise ValueError(f"{flag} {pair!r} is not of the form key=value{hint}")
    return key, value


def parse_pairs(pairs: list[str], flag: str = "--set") -> dict[str, str]:
    """``["k=v", ...]`` → ``{"k": "v"}``."""
    return dict(split_pair(flag, pair) for pair in pairs)


def parse_shape(flag: str, text: str) -> tuple[int, ...]:
    """``"3,32,32"`` (any rank) → ``(3, 32, 32)``; sizes must be positive integers."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"{flag} {text!r} is not allowed; give positive integers such as 3,32,32 or 2,64")
    return shape


def parse_range(flag: str, text: str) -> tuple[float, float, bool]:
    """``"A,B"`` → (A, B, both written as integers); two different finite numbers."""
    parts = text.split(",")
    try:
        ends = [float(p) for p in parts]
    except ValueError:
        ends = []
    if len(ends) != 2 or ends[0] == ends[1] or not all(math.isfinite(e) for e in ends):
        raise ValueError(f"{flag} {text!r} is not allowed; give two different finite numbers A,B, e.g. 0,1")
    integers = all(p.strip().lstrip("+-").isdigit() for p in parts)
    return ends[0], ends[1], integers


def integer(low: int = 1, high: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` to ``high`` ("1.5", "nan" and "1e3" are refused)."""
    def parse(text: str) -> int:
        try:
            value: int | None = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            wide = high == INT64_MAX and (value is None or value < low)  # an upper bound nobody meets goes unsaid
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not allowed; give an integer "
                                             + (f">= {low}" if wide else f"from {low} to {high}"))
        return value
    return parse


def real(low: float = 0.0, high: float = math.inf, low_open: bool = True) -> Callable[[str], float]:
    """An argparse ``type``: a finite number above ``low`` (or from it, unless ``low_open``) up to ``high``;
    "nan" and "inf" are floats to Python and are refused here."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not allowed; give a finite number {bounds}")
        return value
    return parse


def nonempty_path(text: str) -> Path:
    """An argparse ``type`` for a path: an empty one is refused (``Path("")`` is the current folder, which the
    user did not name)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a path")
    return Path(text)


def _shown(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


SEED = integer(0)      # a seed: 0 .. 2**63-1, what torch.manual_seed holds
COUNT = integer(1)     # a count (images, batch size, t-bins) bounded only by what the command checks itself
POSITIVE = real(0.0)   # a finite number > 0: a learning rate, a solver tolerance
