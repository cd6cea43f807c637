"""Memory a job will need, estimated from its config before anything is allocated, checked against what is free.

A config typed by mistake (``block_out_channels [1000000]``, ``--num 100000000``) would otherwise grow
memory until the machine stops. Estimates are rough (within a factor of about two for the U-Nets, see
tests/test_hostile.py) and err high; ``--no-memory-check`` or ``TIMEAWARE_NO_MEMORY_CHECK=1`` skips the
check for people who know better (swap, a machine whose free memory is misreported).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

NO_CHECK_ENV = "TIMEAWARE_NO_MEMORY_CHECK"
FLOAT = 4  # bytes per float32 value
_disabled = False


def launch_rank() -> int:
    """This process's rank under torchrun / accelerate launch, 0 without one.

    RANK counts only beside a WORLD_SIZE above 1: a RANK left over in a shell must not silence every error
    nor skip the run-folder lock. A malformed WORLD_SIZE or RANK is a one-line ValueError naming it.
    """
    world, rank = os.environ.get("WORLD_SIZE", ""), os.environ.get("RANK", "0") or "0"
    if not world:
        return 0
    if not world.isdigit() or int(world) < 1:
        raise ValueError(f"WORLD_SIZE={world!r} is not allowed; it must be an integer >= 1 (set by torchrun or "
                         "accelerate launch)")
    if int(world) == 1:
        return 0
    if not rank.isdigit() or int(rank) >= int(world):
        raise ValueError(f"RANK={rank!r} is not allowed; it must be an integer from 0 to {int(world) - 1}")
    return int(rank)


def available_memory() -> int:
    """Bytes the OS can give without swapping (``MemAvailable``; free pages where /proc is missing)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def memory_check_disabled() -> Iterator[None]:
    """Skip ``check_memory`` inside the block (what ``--no-memory-check`` does)."""
    global _disabled
    before, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = before


def check_memory(need: float, what: str, device: object = None) -> None:
    """A one-line ``ValueError`` (input too large for this machine) when ``need`` bytes exceed the free memory
    (of ``device`` when it is a GPU)."""
    if _disabled or os.environ.get(NO_CHECK_ENV, "") not in ("", "0"):
        return
    free, where = available_memory(), "memory"
    if str(device).startswith("cuda"):
        import torch

        free, where = torch.cuda.mem_get_info(torch.device(str(device)))[0], f"{device} memory"
    if need > free:
        raise ValueError(f"{what} needs about {_gib(need)} of {where} but {_gib(free)} is free; make it smaller, or "
                          f"pass --no-memory-check (or set {NO_CHECK_ENV}=1) if you know better")


def unet_size(widths: Sequence[int], blocks: int, image_size: int, in_channels: int,
              spatial_dims: int = 2) -> tuple[int, int]:
    """(parameters, activation bytes kept for backward per sample) of a DDPM-style U-Net.

    ``widths``: channels per resolution; ``blocks``: residual blocks per resolution on the way down (one
    more on the way up, with the skip concatenated). Each block is two 3×3 convs plus a time projection.
    ``spatial_dims``: 2 for images (side²  positions), 1 for sequences (a 1-D U-Net's ``sample_size`` is a length).
    """
    params = 9 * in_channels * widths[0] * 2
    activations = 0
    for level, width in enumerate(widths):
        params += 45 * (blocks + 1) * width * width + (2 * blocks + 1) * 4 * widths[0] * width
        side = max(1, image_size >> level)
        activations += (3 * blocks + 2) * 8 * width * side ** spatial_dims * FLOAT
    params += 40 * widths[-1] * widths[-1]  # middle: two residual blocks and attention
    return params, activations


def training_bytes(params: int, activations_per_sample: int, batch: int) -> int:
    """Weights, gradients, two Adam moments and an EMA copy, plus the activations of one batch."""
    return 5 * params * FLOAT + batch * activations_per_sample


def sampling_bytes(params: int, activations_per_sample: int, batch: int, num: int, image_values: int) -> int:
    """Weights, one batch's activations (no graph: a quarter of training's), and the ``num`` images kept, twice
    (the batches and their concatenation)."""
    return params * FLOAT + batch * activations_per_sample // 4 + 2 * num * image_values * FLOAT


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes < 2**50 else f"{nbytes / 2**40:,.0f} TiB"
