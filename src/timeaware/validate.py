"""The one home of argument checks: each raises a one-line error naming the bad value and what is allowed.

Configs, blocks, training loops and the audit call these instead of writing their own messages, so the
same mistake reads the same everywhere. ``bool`` is refused where a number is wanted (``True`` is an int).
"""

from __future__ import annotations

import math
from typing import Any


def choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """One of the ``allowed`` names, else a one-line ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")


INT64_MAX = 2**63 - 1  # what torch (seeds, sizes, step counts) can hold
MAX_LR = 1e3  # learning rate and weight decay: far above any that trains (1e308 overflowed the optimizer's float32)


def check_int(name: str, value: Any, low: int, high: int = INT64_MAX) -> None:
    """An integer (not a bool) in [``low``, ``high``], else a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= {low}")
    if value > high:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer from {low} to {high}")


MAX_WIDTH = 1 << 16          # channels, features, hidden units: wider is a typo or an attack, not a model
MAX_KERNEL = 64              # a conv's kernel size, stride and padding
MAX_MAP = 4096 * 4096        # positions of one spatial map: a 4096×4096 image


def check_width(name: str, value: Any) -> None:
    """A width (channels, features, hidden units): an integer from 1 to ``MAX_WIDTH``."""
    check_int(name, value, 1, MAX_WIDTH)


def check_parameters(count: int, what: str) -> None:
    """A one-line ValueError when ``count`` float32 parameters (with their gradients) do not fit in memory.

    Only a module of 256 MiB or more is worth asking the system about; nothing is checked while building on
    the meta device, where ``specs.build_checked`` sizes a whole model at once.
    """
    import torch

    from .resources import check_memory

    if 2 * 4 * count >= 1 << 28 and torch.get_default_device().type != "meta":
        check_memory(2 * 4 * count, f"{what} with {count:,} parameters")


def check_positive(name: str, value: object) -> None:
    """A positive integer (not a bool), else a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a positive integer")


def check_number(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """A finite real number in [low, high) (or (low, high) with ``low_open``), else a one-line ValueError."""
    ok = (not isinstance(value, bool) and isinstance(value, int | float) and abs(value) < 1e308  # ints: no float()
          and math.isfinite(value) and (value > low if low_open else value >= low) and value < high)
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and < {high:g}" if math.isfinite(high) else "")
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:24]}... ({len(repr(value))} characters)"
        raise ValueError(f"{name}={shown} is not allowed; it must be a finite number {bounds}")


def check_type(name: str, value: Any, allowed: Any) -> None:
    """A one-line TypeError naming the argument when ``value`` is not an instance of ``allowed``."""
    if not isinstance(value, allowed) or (isinstance(value, bool) and allowed in (int, float)):
        raise TypeError(f"{name} must be {_type_names(allowed)}, not {type(value).__name__} ({str(value)[:40]!r})")


def _type_names(allowed: Any) -> str:
    parts = getattr(allowed, "__args__", None) or (allowed if isinstance(allowed, tuple) else (allowed,))
    return " or ".join(getattr(t, "__name__", str(t)) for t in parts)
