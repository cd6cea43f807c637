"""Sample images from a trained DDPM (EMA weights unless --raw): one PNG per image and a grid.

  timeaware sample runs/ddpm-quick --sampler ddim --steps 50 --num 64 --out samples/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..parsing import COUNT, SEED, integer, nonempty_path
from .ddpm import SAMPLERS, Schedule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a run folder (its latest checkpoint) or a checkpoint folder")
    add_sampling_arguments(parser)
    parser.add_argument("--out", type=nonempty_path, required=True, help="folder for 00000.png ... and grid.png")


def add_sampling_arguments(parser: argparse.ArgumentParser, num: int = 64) -> None:
    """The sampling options shared with ``timeaware evaluate``; ``num``: the default number of images."""
    parser.add_argument("--sampler", default="ddim", help=f"{' | '.join(SAMPLERS)} (default ddim)")
    steps = Schedule.num_train_timesteps
    parser.add_argument("--steps", type=integer(1, steps), default=50,
                        help=f"sampling steps, 1 to {steps} (default 50; DDPM's own: {steps})")
    parser.add_argument("--num", type=COUNT, default=num, help=f"number of images (default {num})")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of x_T and the sampler noise (default 0)")
    parser.add_argument("--batch-size", type=COUNT, default=256, help="images per forward pass (default 256)")
    parser.add_argument("--raw", action="store_true", help="use the raw weights instead of their EMA")


def run(args: argparse.Namespace) -> int:
    from .sampling import load_unet, sample, save_images

    if args.sampler not in SAMPLERS:
        raise ValueError(f"--sampler {args.sampler!r} is not allowed; choose one of {', '.join(SAMPLERS)}")
    model, meta = load_unet(args.checkpoint, raw=args.raw)
    images = sample(model, args.num, sampler=args.sampler, steps=args.steps, seed=args.seed,
                    batch_size=args.batch_size, progress=True)
    grid_path = save_images(images, args.out)
    print(f"{args.num} images ({args.sampler}-{args.steps}, {'raw' if args.raw else 'ema'} weights, "
          f"step {meta['step']}, seed {args.seed}) in {args.out}; grid {grid_path}")
    return 0
