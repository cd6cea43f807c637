"""Train a DDPM (quick: a small U-Net on 8×8 digits in minutes on a CPU; paper: the paper's CIFAR-10 recipe).

Any TimeAware, U-Net or training field can be overridden with --set, e.g.
  timeaware train ddpm --set positional=mlp --set operand_bias=zero --set groups=1
  timeaware train ddpm --preset paper --data /path/cifar10.npz --steps 10 --batch-size 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..parsing import COUNT, POSITIVE, SEED, nonempty_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="dataset: digits, cifar10 or a .npz path (default: the preset's)")
    parser.add_argument("--preset", default="quick", help="quick | paper (default quick)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TimeAware / U-Net / training field (repeatable)")
    parser.add_argument("--steps", type=COUNT, default=None,
                        help="training steps (default: the preset's)")
    parser.add_argument("--batch-size", type=COUNT, default=None, help="batch size (default: the preset's)")
    parser.add_argument("--lr", type=POSITIVE, default=None, help="Adam learning rate (default: the preset's)")
    parser.add_argument("--seed", type=SEED, default=None, help="random seed (default: the preset's, 0)")
    parser.add_argument("--out", type=nonempty_path, default=None, help="run folder (default runs/ddpm-PRESET)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|CHECKPOINT",
                        help="continue the run in --out from its latest checkpoint (also: --resume latest; starts "
                             "fresh when --out has none) or from a checkpoint / run folder")


def run(args: argparse.Namespace) -> int:
    from ..training import NonFiniteLoss, is_main_process, resume_hint
    from .train import preset, train

    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    unet_cfg, cfg = preset(args.preset, args.overrides, data=args.data)
    cfg = cfg.replace(**{k: v for k, v in flags.items() if v is not None})
    out = args.out or Path("runs") / f"ddpm-{args.preset}"
    try:
        summary = train(out, unet_cfg, cfg, resume=args.resume or False)
    except KeyboardInterrupt:  # Ctrl-C, timeout -s INT: the dispatcher prints "interrupted" and this hint
        raise KeyboardInterrupt(resume_hint(out)) from None
    except NonFiniteLoss as err:  # a RuntimeError, which the dispatcher would show as a traceback
        if is_main_process():
            print(f"timeaware: error: {err}", file=sys.stderr)
        return 2
    if not is_main_process():
        return 0
    loss = "n/a (already trained)" if summary["loss"] is None else f"{summary['loss']:.4f}"
    print(f"trained {summary['step']} steps, loss over the last 10% {loss}; checkpoint {summary['checkpoint']}")
    return 0

