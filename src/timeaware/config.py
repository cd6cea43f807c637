"""One frozen config for the paper's knobs, shared by every time-dependent block.

An ablation is a change of one field: ``TimeAware(norm="batch")``, ``cfg.replace(groups=1)``.
Validation happens here, once, so every block can trust its config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .io import loads
from .parsing import split_pair
from .validate import check_number, check_type, check_width, choice

NORMS = ("batch", "instance", "group", "layer", "none")
POSITIONAL = ("none", "linear", "mlp")
BIAS_INITS = ("zero", "default")
INJECTIONS = ("add", "scale_shift")
ACTIVATIONS = ("relu", "silu", "elu", "softplus", "sigmoid")
MAX_INIT_STD = 1e6  # an initial std: 10^30 overflowed float32 when the map was built


@dataclass(frozen=True)
class TimeAware:
    """How time enters a block and what normalizes it afterwards.

    norm          normalization after the time addition: batch | instance | group | layer | none
    groups        GroupNorm groups G (used when norm="group"); G = 1 was best in the paper (fix 3)
    positional    positional timestep embedding (fix 1): none | linear (t·P) | mlp (sinusoidal → MLP → H×W)
    operand_bias  bias init of the operand convs: zero (fix 2) | default (PyTorch's)
    time_bias     bias init of the timestep branch: default (fix 2) | zero
    injection     add (time added before the norm, the paper's site) | scale_shift (after the norm)
    activation    relu | silu | elu | softplus | sigmoid
    positional_init  initial std of the linear positional map P (0 starts it at zero)
    """

    norm: str = "group"
    groups: int = 32
    positional: str = "none"
    operand_bias: str = "default"
    time_bias: str = "default"
    injection: str = "add"
    activation: str = "relu"
    positional_init: float = 0.1

    def __post_init__(self) -> None:
        choice("norm", self.norm, NORMS)
        check_width("groups", self.groups)  # more groups than MAX_WIDTH could divide no width
        choice("positional", self.positional, POSITIONAL)
        choice("operand_bias", self.operand_bias, BIAS_INITS)
        choice("time_bias", self.time_bias, BIAS_INITS)
        choice("injection", self.injection, INJECTIONS)
        choice("activation", self.activation, ACTIVATIONS)
        check_number("positional_init", self.positional_init, 0, MAX_INIT_STD)

    def replace(self, **changes: Any) -> TimeAware:
        """A copy with some fields changed (validated like the original)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown TimeAware field {unknown[0]!r}; allowed: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def check_channels(self, channels: int) -> None:
        """Raise unless this config can normalize ``channels`` channels."""
        check_width("channels", channels)
        if self.norm == "group" and channels % self.groups:
            raise ValueError(
                f"groups={self.groups} does not divide channels={channels}; "
                f"allowed groups: {', '.join(str(g) for g in divisors(channels))}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimeAware:
        check_type("TimeAware config", data, dict)
        return cls().replace(**data)

    @classmethod
    def from_strings(cls, pairs: list[str], base: TimeAware | None = None) -> TimeAware:
        """Parse ``key=value`` strings (the CLI's ``--set``) onto ``base``."""
        base = base or cls()
        changes: dict[str, Any] = {}
        for pair in pairs:
            key, value = split_pair("--set", pair)
            changes[key] = parse_setting(key, value, getattr(base, key, ""))
        return base.replace(**changes)


def parse_setting(key: str, value: Any, current: Any) -> Any:
    """A ``--set key=value`` string parsed by the type of the field's current value; non-strings pass through.

    str: as given; none or null: None (the field's own check refuses it where it is not optional);
    bool: true/false/1/0; tuple: comma-separated ints; float: a number; anything else (int, an optional
    field now None, a dict of solver options): JSON.
    """
    if not isinstance(value, str) or isinstance(current, str):
        return value
    if value.lower() in ("none", "null"):
        return None
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if isinstance(current, tuple):
            return tuple(int(v) for v in value.split(",") if v)
        if isinstance(current, float):
            return float(value)
        return loads(value)
    except ValueError:  # json.JSONDecodeError is one, as is a NaN or an overflowing number
        if current is None:
            expected = "a number, true, false, none or JSON"
        elif isinstance(current, tuple):
            expected = f"comma-separated ints like {','.join(map(str, current)) or '1,2'}"
        else:
            expected = f"{type(current).__name__} like {current!r}"
        raise ValueError(f"--set {key}={value!r} is not allowed; expected {expected}") from None


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TimeAware)]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
