"""timeaware: time-dependent networks (neural ODEs, diffusion models) that stay time-aware.

Implements Kim, Kawahara & Kim (2024), *The Disappearance of Timestep Embedding in Modern
Time-Dependent Neural Networks*: blocks with the paper's three fixes, and an audit that measures,
layer by layer, how much of t survives each normalization.
"""

from .awareness import AuditReport, audit, find_vanishing_sites
from .config import TimeAware
from .embeddings import LinearTimeMap, MLPTimeMap, TimestepMLP, sinusoidal_features
from .layers import ConcatConv2d, ScaleShift, TimeConv2d, init_bias_, make_norm
from .repair import FixResult, fix

__all__ = [
    "AuditReport",
    "ConcatConv2d",
    "FixResult",
    "LinearTimeMap",
    "MLPTimeMap",
    "ScaleShift",
    "TimeAware",
    "TimeConv2d",
    "TimestepMLP",
    "audit",
    "find_vanishing_sites",
    "fix",
    "init_bias_",
    "make_norm",
    "sinusoidal_features",
]
__version__ = "0.1.0"
