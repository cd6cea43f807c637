"""Command-line text to values: one parser per kind of input (key=value pairs, shapes, number ranges).

Each raises a one-line ValueError naming the flag, the bad text and what is allowed.
"""

from __future__ import annotations

import math


def split_pair(flag: str, pair: str) -> tuple[str, str]:
    """``"key=value"`` → ``("key", "value")``; the key must be an identifier."""
    key, eq, value = pair.partition("=")
    if not eq or not key.isidentifier():
        raise ValueError(f"{flag} {pair!r} is not of the form key=value")
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
