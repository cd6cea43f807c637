"""The paper's experiments as named sweeps over configs × seeds, with presets per scale."""

from .registry import EXPERIMENTS, get_experiment

__all__ = ["EXPERIMENTS", "get_experiment"]
