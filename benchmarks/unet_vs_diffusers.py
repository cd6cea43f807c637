"""Forward+backward throughput of our U-Net against diffusers' UNet2DModel at the identical configuration.

    PYTHONPATH=src python benchmarks/unet_vs_diffusers.py [--repeat 10]

Both models get the same architecture (widths, blocks, single-head attention at the same resolutions,
GroupNorm groups, Swish, DDPM's sinusoidal convention) and the parameter counts are printed to show it.
The ratio is ours / diffusers in images per second: >= 1.0 means ours is not slower. The two models
alternate step by step and each keeps its fastest step, the estimate least disturbed by other processes
on a shared CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DModel

from timeaware.diffusion.unet import UNet, UNetConfig, count_parameters

CASES = {  # name: (config, batch)
    "ddpm-cifar10 (35.7M) 32x32": (UNetConfig(), 4),
    "small (ch32, 1-2) 16x16": (UNetConfig(image_size=16, in_channels=1, channels=32, channel_mult=(1, 2),
                                           num_res_blocks=2, attn_resolutions=(8,)), 16),
}


def diffusers_twin(cfg: UNetConfig) -> UNet2DModel:
    """diffusers' UNet2DModel with exactly our architecture."""
    widths = [cfg.channels * m for m in cfg.channel_mult]
    attn = [cfg.image_size // 2**i in cfg.attn_resolutions for i in range(len(widths))]
    assert len({w for w, a in zip(widths, attn) if a} | {widths[-1]}) == 1, "one head size needs one attention width"
    return UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        block_out_channels=tuple(widths), layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=widths[-1], norm_num_groups=cfg.time.groups, act_fn="silu", dropout=cfg.dropout,
        flip_sin_to_cos=False, freq_shift=1)


def step_fn(model: torch.nn.Module, cfg: UNetConfig, batch: int, diffusers: bool) -> Callable[[], None]:
    """One forward+backward of the ε-prediction loss."""
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.randint(0, 1000, (batch,))
    noise = torch.randn_like(x)

    def step() -> None:
        out = model(x, t).sample if diffusers else model(x, t)
        torch.nn.functional.mse_loss(out, noise).backward()
        model.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="interleaved rounds per case (default 10)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeat} interleaved rounds")
    print(f"| case | batch | params ours | params diffusers | ours img/s | diffusers img/s | ratio |\n|{'---|' * 7}")
    for name, (cfg, batch) in CASES.items():
        torch.manual_seed(0)
        ours, theirs = UNet(cfg).train(), diffusers_twin(cfg).train()
        steps = [step_fn(ours, cfg, batch, False), step_fn(theirs, cfg, batch, True)]
        best = [float("inf")] * 2
        for step in steps:
            step()  # warm-up
        for _ in range(args.repeat):
            for i, step in enumerate(steps):
                t0 = time.perf_counter()
                step()
                best[i] = min(best[i], time.perf_counter() - t0)
        a, b = batch / best[0], batch / best[1]
        print(f"| {name} | {batch} | {count_parameters(ours):,} | {count_parameters(theirs):,} | {a:.2f} | {b:.2f} "
              f"| {a / b:.2f} |")


if __name__ == "__main__":
    main()
