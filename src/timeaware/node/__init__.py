"""Neural ODE models built from the shared time-aware config."""

from .func import ODEFunc

__all__ = ["ODEFunc"]
