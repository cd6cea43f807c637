"""Train the paper's NODE image classifier (stem → ODE block → head) and report accuracy and NFE.

Examples:
  timeaware train node                                  # quick preset: digits, a couple of CPU minutes
  timeaware train node --set norm=batch --out runs/bn   # one knob of the shared config changed
  timeaware train node --preset paper --data /path/cifar10.npz --out runs/paper
  timeaware train node --out runs/bn --resume           # continue the latest checkpoint exactly
  torchrun --nproc-per-node 2 -m timeaware train node   # DDP (gloo on CPUs); --batch-size is the global batch
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..parsing import COUNT, POSITIVE, SEED, nonempty_path, split_pair
from ..resources import launch_rank
from .run_config import PRESETS, allowed_keys

# flag -> NodeRunConfig / SolverOptions field it overrides
_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "limit": "limit", "seed": "seed",
          "data": "data", "method": "method", "rtol": "rtol", "atol": "atol"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None,
                        help="digits (built in), cifar10 (needs TIMEAWARE_CIFAR10) or a .npz path")
    parser.add_argument("--preset", default="quick", help=f"recipe: {' | '.join(PRESETS)} (default quick)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="change any setting, e.g. norm=batch, groups=1, positional=linear, channels=32, "
                             "options={\"max_num_steps\":1000}; repeatable")
    parser.add_argument("--epochs", type=COUNT, default=None)
    parser.add_argument("--batch-size", type=COUNT, default=None)
    parser.add_argument("--lr", type=POSITIVE, default=None)
    parser.add_argument("--limit", type=COUNT, default=None, help="train on a fixed subset of N images")
    parser.add_argument("--seed", type=SEED, default=None)
    parser.add_argument("--out", type=nonempty_path, default=None, help="run folder (default runs/node-PRESET)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|CHECKPOINT",
                        help="continue the run in --out from its latest checkpoint (also: --resume latest; starts "
                             "fresh when --out has none) or from a checkpoint / run folder")
    parser.add_argument("--no-adjoint", action="store_true", help="direct backpropagation through the solver")
    parser.add_argument("--method", default=None, help="torchdiffeq method (default dopri5)")
    parser.add_argument("--rtol", type=POSITIVE, default=None)
    parser.add_argument("--atol", type=POSITIVE, default=None)


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """``key=value`` strings → dict, with a one-line error naming a malformed pair."""
    return dict(split_pair("--set", pair, hint=f"; keys: {', '.join(allowed_keys())}") for pair in pairs)


def run(args: argparse.Namespace) -> int:
    from ..training import NonFiniteLoss, is_main_process, resume_hint
    from .run_config import preset
    from .solve import SolverError
    from .train import train_classifier

    changes: dict[str, Any] = parse_settings(args.settings)
    changes.update({field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None})
    if args.no_adjoint:
        changes["adjoint"] = False
    cfg = preset(args.preset).with_overrides(changes)
    out = args.out or Path("runs") / f"node-{args.preset}"
    try:
        result = train_classifier(cfg, out, resume=args.resume or False)
    except KeyboardInterrupt:  # Ctrl-C, timeout -s INT: the dispatcher prints "interrupted" and this hint
        raise KeyboardInterrupt(resume_hint(out)) from None
    except (SolverError, NonFiniteLoss) as err:  # RuntimeErrors, which the dispatcher would show as a traceback
        rank = launch_rank()
        if rank == 0 or isinstance(err, SolverError):  # a solve fails on its own rank; the loss check is global
            where = "" if rank == 0 else f" (rank {rank})"
            print(f"timeaware: error{where}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if not is_main_process():
        return 0
    s = result.summary
    print(f"{out}: epoch {s['epoch']}, test accuracy {s['test_acc']:.2f}% (best {s['best_test_acc']:.2f}%), "
          f"NFE-F {s['nfe_forward']:.1f}, NFE-B {s['nfe_backward']:.1f}, {s['wall_time']:.0f}s")
    return 0

