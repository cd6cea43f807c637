"""Measure and repair models people already have (diffusers U-Nets, torchdiffeq-style ODE functions)."""

from .fix import FixResult, detect_call, fix
from .persist import load_fixed, load_model, save_fixed

__all__ = ["FixResult", "detect_call", "fix", "load_fixed", "load_model", "save_fixed"]
