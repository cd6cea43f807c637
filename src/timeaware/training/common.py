"""Pieces every training loop shares: the distributed engine, seeding, metrics log, loss guard.

Loops run on Hugging Face accelerate, so the same code runs on one CPU, one GPU, or DDP launched with
``accelerate launch`` / ``torchrun`` (gloo on CPUs, NCCL on GPUs). Only the main process writes files.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..io import atomic_write_text, dumps
from ..metadata import METRICS_RECORD, parse_record
from ..resources import launch_rank

if TYPE_CHECKING:
    from accelerate import Accelerator


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def make_accelerator(cpu: bool | None = None, **kwargs: Any) -> Accelerator:
    """An ``accelerate.Accelerator``, on the CPU when no GPU is present, checked against the launcher.

    accelerate can silently run independent copies when its process group is not set up; we fail
    loudly instead when the launcher's WORLD_SIZE differs from the number of processes it found.
    """
    from accelerate import Accelerator

    if cpu is None:
        cpu = not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu, **kwargs)
    launch_rank()  # a malformed WORLD_SIZE / RANK is one line naming it
    expected = int(os.environ.get("WORLD_SIZE") or 1)
    if acc.num_processes != expected:
        raise RuntimeError(f"launcher started {expected} processes but accelerate sees {acc.num_processes}; "
                           "launch with `accelerate launch` or `torchrun` and a reachable MASTER_ADDR/PORT")
    return acc


def is_main_process() -> bool:
    """True on rank 0 (or without a distributed launch): the one process that prints and writes."""
    from accelerate import PartialState

    return PartialState().is_main_process


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stop with a message naming the step when the loss is NaN or infinite."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(f"loss is {loss.item()} at step {step}; stopped, the last good checkpoint is kept. "
                            "Lower the learning rate or enable gradient clipping")


class MetricsLog:
    """Append-only JSONL metrics (one object per line); truncated to ``step`` on resume."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_after(self, key: str, value: int) -> None:
        """Drop records written after the checkpoint we resume from (they will be written again)."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            rec = parse_record(line, METRICS_RECORD, f"{self.path}, line {number}")
            if rec is not None and rec.get(key, 0) <= value:  # None: a line torn by a crash
                keep.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in keep))
