"""Sampling time per image: DDPM-1000 (ancestral), DDIM-50, DPM-Solver++-20, all from diffusers, on a small U-Net.

    PYTHONPATH=src python benchmarks/sampling_speed.py [--num 32] [--preset quick]

The model is the preset's U-Net at initialisation: the cost of a sampler does not depend on the weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from timeaware.diffusion.sampling import sample
from timeaware.diffusion.train import preset
from timeaware.diffusion.unet import UNet, count_parameters

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm", 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=32, help="images per sampler (one batch)")
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args()
    cfg, _ = preset(args.preset)
    torch.manual_seed(0)
    model = UNet(cfg).eval()
    print(f"U-Net {count_parameters(model):,} params, {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}, "
          f"batch {args.num}, {torch.get_num_threads()} threads")
    print(f"| sampler | steps | s/image | ms/step/image | speed-up vs DDPM-1000 |\n|{'---|' * 5}")
    base = None
    for name, steps in SAMPLERS:
        t0 = time.perf_counter()
        sample(model, args.num, sampler=name, steps=steps, batch_size=args.num)
        per_image = (time.perf_counter() - t0) / args.num
        base = base or per_image
        print(f"| {name} | {steps} | {per_image:.4f} | {1000 * per_image / steps:.3f} | {base / per_image:.1f}x |")


if __name__ == "__main__":
    main()
