"""Name → experiment. An experiment is ``run(preset, seeds, out, data, executor=None) -> table text``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from .sweep import Executor


class Experiment(Protocol):
    """A sweep of the paper's: its cells run on ``executor`` (None: here, one by one); returns the table."""

    def __call__(self, preset: str, seeds: int, out: Path, data: str | None, *,
                 executor: Executor | None = None) -> str: ...


EXPERIMENTS: dict[str, str] = {
    "node-norm": "timeaware.experiments.node:node_norm",  # Table 1: GN, BN, GN + positional
    "node-bias": "timeaware.experiments.node:node_bias",  # Table 2: zero bias per branch
    "node-groups": "timeaware.experiments.node:node_groups",  # Figure 7: groups sweep
    "node-activation": "timeaware.experiments.node:node_activation",  # Table 4: activations vs NFE
    "ddpm-fixes": "timeaware.experiments.ddpm:ddpm_fixes",  # Table 3: +positional, +zero bias, +fewer groups
    "ddpm-time": "timeaware.experiments.ddpm_time:ddpm_time",  # a time-blind U-Net beside Table 3: time use
    "node-needs-time": "timeaware.experiments.needs_time:node_needs_time",  # does a vanished t matter? (NODE)
}
PRESETS = ("quick", "paper")


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment {name!r} is unknown; choose one of {', '.join(EXPERIMENTS)}")
    module, _, attr = EXPERIMENTS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ModuleNotFoundError, AttributeError):
        raise ValueError(f"experiment {name!r} is not available in this version") from None
