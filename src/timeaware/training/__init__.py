"""Training infrastructure shared by the NODE and diffusion loops."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .common import MetricsLog, NonFiniteLoss, check_finite, make_accelerator, seed_everything

__all__ = ["MetricsLog", "NonFiniteLoss", "check_finite", "latest_checkpoint", "load_checkpoint",
           "make_accelerator", "save_checkpoint", "seed_everything"]
