"""Training infrastructure shared by the NODE and diffusion loops."""

from .checkpoint import (
    checkpoint_root,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_state,
    resolve_resume,
    resume_hint,
    rewind_to,
    save_checkpoint,
    state_field,
)
from .common import (
    MetricsLog,
    NonFiniteLoss,
    check_finite,
    is_main_process,
    make_accelerator,
    seed_everything,
)
from .run_folder import claim_run_folder

__all__ = ["MetricsLog", "NonFiniteLoss", "check_finite", "checkpoint_root",
           "claim_run_folder",
           "find_checkpoint", "is_main_process", "latest_checkpoint", "load_checkpoint", "make_accelerator",
           "read_checkpoint_state", "resolve_resume", "resume_hint", "rewind_to", "save_checkpoint", "seed_everything",
           "state_field"]
