"""Measure and repair models people already have (diffusers U-Nets, torchdiffeq-style ODE functions)."""

from ..specs import load_model
from .fix import FixResult, fix
from .persist import load_fixed, save_fixed

__all__ = ["FixResult", "fix", "load_fixed", "load_model", "save_fixed"]
