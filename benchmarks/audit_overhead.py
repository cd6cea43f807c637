"""Audit overhead: the audit's wall time against the K+1 plain forward passes it makes (goal: ratio <= 1.10).

Anchors measured in the same run: the paper's NODE function (C=64, 8x8, BatchNorm, train mode) on 2
inputs and on a CIFAR-10 training batch, and diffusers' UNet2DModel in the DDPM CIFAR-10
configuration (35.7M parameters, 32x32, eval mode), built offline from its config. Float timesteps
are used for all, so the audit makes K passes plus one for the time derivative, the same K+1 as the
anchor. Each time is the best of ``--repeats`` interleaved runs, as wall time and as this thread's
CPU time (steadier when other processes compete for the cores); "paired" is the median over the
repeats of each audit's CPU time over that of the passes run just before it, and "faults" the fewest
minor page faults of one audit (fresh memory the audit touches: about 2 us each on the development VM).
``--split`` also prints the CPU time of the statistics inside the audit (folding each capture in, summaries)
and the paired ratio of an audit whose statistics are no-ops (what the hooks and bookkeeping cost).

Allocator: glibc hands large blocks back to the OS when they are freed, so each pass's activations, and
the running means the audit holds, come back as fresh pages that fault in one by one (about 2 us per
4 KiB page on the development VM, up to 150 ms per audit, varying from run to run with what the heap
looks like). Unless ``--system-malloc`` is given, the script restarts itself with glibc's trim and mmap
thresholds raised (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``), for the plain passes and the
audit alike, so that the ratios compare computation, not the kernel's page-fault path.

    PYTHONPATH=src python benchmarks/audit_overhead.py [--samples 2] [--node-batch 128] [--timesteps 3]
        [--repeats 5] [--threads 1] [--models all|node|unet] [--split] [--system-malloc]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from timeaware import TimeAware
from timeaware.awareness import audit
from timeaware.awareness.metrics import Moments, Summary
from timeaware.node import ODEFunc

# freed memory stays in the heap (no trimming, no per-block mmap): see "Allocator" above
KEEP_HEAP = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}


def ddpm_cifar10_unet() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                       layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                             "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1,
                       norm_num_groups=32)


def timed(repeats: int, *fns: Callable[[], object]) -> list[list[tuple[float, float, int]]]:
    """(wall, CPU, page faults) of each run of each function, run interleaved so that load hits all alike.

    The CPU time of this thread leaves out the time the process waits for a core, so on a loaded
    machine it is the steadier of the two; it still includes the caches and memory bandwidth that
    other processes take.
    """
    times: list[list[tuple[float, float, int]]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start, cpu = time.perf_counter(), time.thread_time()
            fn()
            spent.append((time.perf_counter() - start, time.thread_time() - cpu,
                          resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return times


def statistics_time(repeats: int, run_audit: Callable[[], object]) -> dict[str, float]:
    """This thread's CPU time inside ``Moments.add`` and ``Moments.summary`` during one audit, best of ``repeats``."""
    spent: dict[str, float] = {}
    originals = {name: getattr(Moments, name) for name in ("add", "summary")}

    def timed_method(name: str) -> Callable[..., object]:
        def method(self: Moments, *args: object) -> object:
            start = time.thread_time()
            try:
                return originals[name](self, *args)
            finally:
                spent[name] += time.thread_time() - start
        return method

    best = {name: float("inf") for name in originals}
    try:
        for name in originals:
            setattr(Moments, name, timed_method(name))
        for _ in range(repeats):
            spent.update(dict.fromkeys(originals, 0.0))
            run_audit()
            best = {name: min(best[name], spent[name]) for name in originals}
    finally:
        for name, method in originals.items():
            setattr(Moments, name, method)
    return best


def hooks_only(repeats: int, run_plain: Callable[[], object], run_audit: Callable[[], object]) -> float:
    """Median paired CPU ratio of the audit with ``Moments.add`` and ``summary`` made no-ops: hooks and bookkeeping."""
    originals = (Moments.add, Moments.summary)

    def count(self: Moments, y: torch.Tensor) -> None:
        self.k, self.shape = self.k + 1, tuple(y.shape[1:])

    try:
        Moments.add, Moments.summary = count, lambda self: Summary(snr=1.0, time_share=0.5)  # type: ignore[method-assign]
        runs = timed(repeats, run_plain, run_audit)
    finally:
        Moments.add, Moments.summary = originals  # type: ignore[method-assign]
    return statistics.median(a[1] / p[1] for p, a in zip(*runs))


def plain_passes(model: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, call: str) -> None:
    """What the audit runs, without hooks: one shared-t call per timestep plus one at t_mid + h."""
    with torch.no_grad():
        for t in [*timesteps, timesteps[len(timesteps) // 2] + 1e-3]:
            if call == "tx":
                model(t, x)
            else:
                model(x, t.expand(x.shape[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2, help="U-Net inputs N (default 2)")
    parser.add_argument("--node-batch", type=int, default=128,
                        help="NODE inputs N of the second NODE row (default 128, a CIFAR-10 training batch)")
    parser.add_argument("--timesteps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", choices=("all", "node", "unet"), default="all", help="which rows to time")
    parser.add_argument("--split", action="store_true",
                        help="also time the statistics inside the audit: folding the captures in, summaries")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared CPU, spinning intra-op threads swamp the timings)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default trim/mmap thresholds (timings then include page faults)")
    args = parser.parse_args()
    if not args.system_malloc and KEEP_HEAP.keys() - os.environ.keys():
        os.execve(sys.executable, [sys.executable, *sys.argv], {**KEEP_HEAP, **os.environ})
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    k = args.timesteps
    node = ODEFunc(64, TimeAware(norm="batch"))
    cases = [
        ("NODE func (BN, 64x8x8)", node, 2, (64, 8, 8), "tx", "train", torch.linspace(0.0, 1.0, k)),
        ("NODE func (BN, 64x8x8)", node, args.node_batch, (64, 8, 8), "tx", "train", torch.linspace(0.0, 1.0, k)),
        ("UNet2DModel DDPM CIFAR-10", ddpm_cifar10_unet(), args.samples, (3, 32, 32), "xt", "eval",
         torch.linspace(0.0, 999.0, k)),
    ]
    cases = [c for c in cases if args.models == "all" or c[0].lower().startswith(args.models)]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    heap = ", ".join(f"{k}={os.environ[k]}" for k in KEEP_HEAP if k in os.environ) or "glibc defaults"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}, load {load}, "
          f"malloc: {heap}")
    head = (f"{'model':26} {'params':>11} {'N':>4} {'K':>3} {'K+1 passes [s]':>15} {'audit [s]':>10} {'ratio':>6}"
            f" {'CPU: passes':>12} {'audit':>6} {'ratio':>6} {'paired':>6} {'faults':>7}")
    print(head)
    print("-" * len(head))
    for name, model, n, shape, call, mode, timesteps in cases:
        model.train(mode == "train")
        x = torch.randn(n, *shape)
        plain_passes(model, x, timesteps, call)  # warm-up
        runs = timed(args.repeats, lambda m=model, x=x, ts=timesteps, c=call: plain_passes(m, x, ts, c),
                     lambda m=model, x=x, ts=timesteps, c=call, md=mode: audit(m, x, ts, call=c, mode=md))
        plain, audited = ([min(run[i] for run in spent) for i in range(3)] for spent in runs)
        paired = statistics.median(a[1] / p[1] for p, a in zip(*runs))  # each audit against the passes beside it
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:26} {params:>11,} {n:>4} {k:>3} {plain[0]:>15.3f} {audited[0]:>10.3f}"
              f" {audited[0] / plain[0]:>6.2f} {plain[1]:>12.3f} {audited[1]:>6.3f} {audited[1] / plain[1]:>6.2f}"
              f" {paired:>6.2f} {audited[2]:>7}")
        if args.split:
            spent = statistics_time(args.repeats, lambda m=model, x=x, ts=timesteps, c=call, md=mode: audit(
                m, x, ts, call=c, mode=md))
            bare = hooks_only(args.repeats, lambda m=model, x=x, ts=timesteps, c=call: plain_passes(m, x, ts, c),
                              lambda m=model, x=x, ts=timesteps, c=call, md=mode: audit(m, x, ts, call=c, mode=md))
            print(f"{'':26}   statistics (CPU, best of {args.repeats}): folding in {spent['add'] * 1e3:.1f} ms,"
                  f" summaries {spent['summary'] * 1e3:.1f} ms; paired ratio without them (hooks only) {bare:.2f}")


if __name__ == "__main__":
    main()
