"""Training infrastructure shared by the NODE and diffusion loops."""

from .checkpoint import (
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_state,
    rewind_to,
    save_checkpoint,
)
from .common import MetricsLog, NonFiniteLoss, check_finite, make_accelerator, seed_everything

__all__ = ["MetricsLog", "NonFiniteLoss", "check_finite", "checkpoint_root", "latest_checkpoint", "load_checkpoint",
           "make_accelerator", "read_checkpoint_state", "rewind_to", "save_checkpoint", "seed_everything"]
