"""Reproduce one of the paper's experiments: results.jsonl, table.md and plots in --out."""

from __future__ import annotations

import argparse
from pathlib import Path

from .registry import EXPERIMENTS, PRESETS, get_experiment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help=f"one of: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--preset", default="quick", help=f"scale: {' | '.join(PRESETS)} (default quick)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per setting (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/EXPERIMENT-PRESET)")
    parser.add_argument("--data", default=None,
                        help="dataset: digits (built in), cifar10 (the .npz named by TIMEAWARE_CIFAR10), "
                             "or a path to a .npz")


def run(args: argparse.Namespace) -> int:
    if args.preset not in PRESETS:
        raise ValueError(f"--preset {args.preset!r} is not allowed; choose one of {', '.join(PRESETS)}")
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds} is not allowed; it must be a positive integer")
    experiment = get_experiment(args.experiment)
    out = args.out or Path("runs") / f"{args.experiment}-{args.preset}"
    try:
        print(experiment(args.preset, args.seeds, out, args.data))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"rerun the same command to continue: finished runs are kept in {out / 'results.jsonl'}"
                                " and the interrupted one resumes from its last checkpoint, if it wrote one") from None
    return 0
