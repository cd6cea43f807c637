"""Repair the models people already have: the paper's fixes applied where the tracer finds a time offset."""

from ..specs import load_model
from .fix import FixResult, fix
from .persist import load_fixed, save_fixed

__all__ = ["FixResult", "fix", "load_fixed", "load_model", "save_fixed"]
