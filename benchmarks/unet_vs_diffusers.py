"""Forward+backward throughput of our U-Net against diffusers' UNet2DModel at the identical configuration.

    PYTHONPATH=src python benchmarks/unet_vs_diffusers.py [--repeat 5]

Both models get the same architecture (widths, blocks, single-head attention at the same resolutions,
GroupNorm groups, Swish, DDPM's sinusoidal convention) and the parameter counts are printed to show it.
The ratio is ours / diffusers in images per second: >= 1.0 means ours is not slower.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def images_per_second(model: torch.nn.Module, cfg: UNetConfig, batch: int, repeat: int,
                      call: str) -> float:
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.randint(0, 1000, (batch,))
    noise = torch.randn_like(x)

    def step() -> None:
        out = model(x, t) if call == "ours" else model(x, t).sample
        torch.nn.functional.mse_loss(out, noise).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"| case | batch | params ours | params diffusers | ours img/s | diffusers img/s | ratio |\n|{'---|' * 7}")
    for name, (cfg, batch) in CASES.items():
        torch.manual_seed(0)
        ours, theirs = UNet(cfg).train(), diffusers_twin(cfg).train()
        rates = []
        for model, call in ((ours, "ours"), (theirs, "diffusers"), (ours, "ours"), (theirs, "diffusers")):
            rates.append(images_per_second(model, cfg, batch, args.repeat, call))
        a, b = max(rates[0], rates[2]), max(rates[1], rates[3])  # interleaved, best of two: less noise from load
        print(f"| {name} | {batch} | {count_parameters(ours):,} | {count_parameters(theirs):,} | {a:.2f} | {b:.2f} "
              f"| {a / b:.2f} |")


if __name__ == "__main__":
    main()
