"""Reproduce one of the paper's experiments: results.jsonl, table.md and plots in --out.

Each (setting, seed) is a cell; --executor chooses where cells run: here one by one (default), here
in --jobs processes, on Slurm (a job array through submitit) or on Ray. Rerun the same command to
continue: done cells are skipped, the others resume from their checkpoints. --status shows each cell
(pending, running, done, failed with its error line) and the table so far, and runs nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..data import check_source
from ..parsing import integer, nonempty_path, real, split_pair
from ..paths import check_output
from .executors import EXECUTORS, RANGES, make_executor, read_settings
from .registry import EXPERIMENTS, PRESETS, get_experiment
from .sweep import Executor, StatusOnly, format_status, status

# command-line flag -> executor setting (each also a key of --executor-config's JSON object)
FLAGS = {"jobs": "jobs", "cpus_per_cell": "cpus", "gpus_per_cell": "gpus", "partition": "partition",
         "time": "time_min", "account": "account", "mem_gb": "mem_gb", "array_parallelism": "array_parallelism",
         "ray_address": "address"}
MAX_SEEDS = 1000  # runs per setting; each is a training run


def _bounded(setting: str) -> Any:
    """The argparse type of an integer executor setting, in its range (``executors.RANGES``)."""
    low, high = RANGES[setting]
    return integer(int(low), int(high))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help=f"one of: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--preset", default="quick", help=f"scale: {' | '.join(PRESETS)} (default quick)")
    parser.add_argument("--seeds", type=integer(1, MAX_SEEDS), default=1,
                        help=f"runs per setting, 1 to {MAX_SEEDS} (default 1)")
    parser.add_argument("--out", type=nonempty_path, default=None,
                        help="output folder (default runs/EXPERIMENT-PRESET)")
    parser.add_argument("--data", default=None,
                        help="dataset: digits (built in), cifar10 (the .npz named by TIMEAWARE_CIFAR10), "
                             "or a path to a .npz")
    parser.add_argument("--status", action="store_true",
                        help="show each cell's state and the table so far; run nothing")
    run = parser.add_argument_group("where the cells run (docs/sweeps.md)")
    run.add_argument("--executor", default="local", help=f"{' | '.join(EXECUTORS)} (default local)")
    run.add_argument("--jobs", type=_bounded("jobs"), default=None,
                     help="local: cells run side by side (default 1)")
    run.add_argument("--cpus-per-cell", type=_bounded("cpus"), default=None,
                     help="slurm, ray: CPUs per cell (default 1)")
    run.add_argument("--gpus-per-cell", type=_bounded("gpus"), default=None,
                     help="slurm, ray: GPUs per cell (default 0)")
    run.add_argument("--partition", default=None, help="slurm: partition")
    run.add_argument("--time", type=_bounded("time_min"), default=None,
                     help="slurm: time limit per cell in minutes (default 1440)")
    run.add_argument("--account", default=None, help="slurm: account to charge")
    run.add_argument("--mem-gb", type=real(*RANGES["mem_gb"], low_open=False), default=None,
                     help="slurm: memory per cell in GB")
    run.add_argument("--array-parallelism", type=_bounded("array_parallelism"), default=None,
                     help="slurm: most cells running at once")
    run.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                     help="slurm: any other sbatch option, e.g. --sbatch qos=high (repeatable)")
    run.add_argument("--no-wait", action="store_true", help="slurm: return once the job array is submitted")
    run.add_argument("--ray-address", default=None, help="ray: cluster address (default: start a local one)")
    run.add_argument("--executor-config", type=Path, default=None,
                     help="JSON object of executor settings (flags override it), e.g. "
                          '{"partition": "gpu", "gpus": 1, "time_min": 2880, "sbatch": {"qos": "high"}}')


def executor_from(args: argparse.Namespace) -> Executor:
    """The executor the flags (over ``--executor-config``) ask for."""
    settings: dict[str, Any] = read_settings(args.executor_config) if args.executor_config else {}
    settings.update({key: getattr(args, flag) for flag, key in FLAGS.items() if getattr(args, flag) is not None})
    if args.sbatch:
        settings["sbatch"] = {**settings.get("sbatch", {}), **dict(_pair(p) for p in args.sbatch)}
    if args.no_wait:
        settings["wait"] = False
    return make_executor(args.executor, settings)


def run(args: argparse.Namespace) -> int:
    if args.preset not in PRESETS:
        raise ValueError(f"--preset {args.preset!r} is not allowed; choose one of {', '.join(PRESETS)}")
    if args.data is not None:  # once, before any cell: a bad --data would fail every cell alike
        check_source(args.data)
        if args.data.endswith(".npz") and not Path(args.data).is_file():
            raise ValueError(f"--data {args.data}: no such file")
    experiment = get_experiment(args.experiment)
    out = args.out or check_output(Path("runs") / f"{args.experiment}-{args.preset}", "folder")  # --out: cli.py
    executor = executor_from(args)  # checked with --status too: a bad flag is said now, not at the next run
    if args.status:  # a folder that holds no sweep is said, not made into one
        status(out)
        executor = StatusOnly()
    try:
        table = experiment(args.preset, args.seeds, out, args.data, executor=executor)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"rerun the same command to continue: finished cells are kept in {out / 'cells'}"
                                " and the interrupted one resumes from its last checkpoint, if it wrote one") from None
    states = status(out)
    if args.status:
        print(format_status(states))
    print(table)
    failed = [s for s in states if s.state == "failed"]
    if failed and len(failed) == len(states) and not args.status:  # nothing to show for the run: say why
        raise ValueError(f"all {len(states)} cells failed; the first, {failed[0].key}: {failed[0].detail}")
    return 0


def _pair(text: str) -> tuple[str, str]:
    return split_pair("--sbatch", text, identifier=False, hint=", e.g. --sbatch qos=high")

