"""Sampling with diffusers' schedulers, seeded and reproducible, and image files (PNGs and a grid).

``sample`` draws x_T and every sampler noise from one ``torch.Generator``, so the same seed, count and
batch size give identical images. ``load_unet`` rebuilds a trained U-Net from a checkpoint, with its EMA
weights unless asked for the raw ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write, staged_folder
from ..resources import FLOAT, check_memory, sampling_bytes
from ..training import find_checkpoint, load_checkpoint, read_checkpoint_state, state_field
from ..validate import check_int, check_type
from .ddpm import Schedule, make_scheduler, to_image_range
from .unet import UNet, UNetConfig


def prepare_sampler(model: UNet, num: int, *, sampler: str = "ddim", steps: int = 50, seed: int = 0,
                    batch_size: int = 256, schedule: Schedule | None = None) -> Any:
    """The diffusers scheduler ``sample`` runs, after checking its arguments, the model (a timeaware ``UNet`` in
    float32 or float64) and the memory ``num`` images take; callers with work to do first call it up front."""
    check_type("model", model, UNet)
    for name, value in (("num", num), ("steps", steps), ("batch_size", batch_size)):
        check_int(name, value, 1)
    check_int("seed", seed, 0)
    check_type("sampler", sampler, str)
    cfg: UNetConfig = model.config
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"sample() needs a float32 or float64 model, not {dtype}; convert it with model.float()")
    params = sum(p.numel() for p in model.parameters())
    check_memory(sampling_bytes(params, cfg.size()[1], min(batch_size, num), num,
                                cfg.in_channels * cfg.image_size**2),
                 f"sampling {num:,} images of {cfg.in_channels}×{cfg.image_size}×{cfg.image_size}", device)
    scheduler = make_scheduler(sampler, schedule)
    limit = scheduler.config.num_train_timesteps
    if steps > limit:
        raise ValueError(f"steps={steps} is not allowed; the schedule has {limit} timesteps")
    return scheduler


@torch.no_grad()
def sample(model: UNet, num: int, *, sampler: str = "ddim", steps: int = 50, seed: int = 0,
           batch_size: int = 256, schedule: Schedule | None = None, progress: bool = False) -> torch.Tensor:
    """``num`` images in [0, 1], shape (num, C, H, W), from ``model`` with a diffusers ``sampler``.

    Checked before anything is drawn: the argument types, the model (a timeaware ``UNet`` in float32 or
    float64) and the memory that ``num`` images take.
    """
    scheduler = prepare_sampler(model, num, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                                schedule=schedule)
    cfg: UNetConfig = model.config
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, num, batch_size):
            n = min(batch_size, num - start)
            scheduler.set_timesteps(steps)
            x = torch.randn((n, cfg.in_channels, cfg.image_size, cfg.image_size), generator=generator)
            x = x.to(device, dtype)
            timesteps = scheduler.timesteps
            if progress:
                from tqdm.auto import tqdm

                timesteps = tqdm(timesteps, desc=f"sampling {start + n}/{num} images ({sampler}-{steps})", leave=False)
            for t in timesteps:
                eps = model(x, t.expand(n).to(device))
                x = scheduler.step(eps, t, x, generator=generator).prev_sample
            out.append(to_image_range(x).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def load_unet(checkpoint: str | Path, raw: bool = False,
               device: str | torch.device | None = None) -> tuple[UNet, dict[str, Any]]:
    """The U-Net of a checkpoint folder or run folder, with EMA weights (or the raw ones), in eval mode,
    on ``device`` (default: the GPU when there is one)."""
    from torch.optim.swa_utils import AveragedModel

    device = _device(device)
    path = find_checkpoint(checkpoint)
    meta = read_checkpoint_state(path)
    if "unet" not in meta.get("state", {}):
        raise ValueError(f"{path}: not a DDPM checkpoint (its state.json has no 'unet' config)")
    recorded = meta["state"].get("schedule", Schedule().to_dict())
    if recorded != Schedule().to_dict():  # the one schedule training uses and sample() draws with
        raise ValueError(f"{path / 'state.json'}: field state.schedule: {recorded} is not the DDPM schedule "
                         f"{Schedule().to_dict()} that timeaware trains and samples with")
    cfg = state_field(path, "state.unet", lambda: UNetConfig.from_dict(meta["state"]["unet"]))
    params = cfg.size()[0]
    check_memory(2 * params * FLOAT, f"{path}: a U-Net of about {params:,} parameters (and its EMA)")
    model = UNet(cfg)
    if raw:
        load_checkpoint(path, modules={"model": model}, restore_rng=False)
    else:
        ema = AveragedModel(model, use_buffers=True)  # holds a copy of ``model``: the weights land in ema.module
        load_checkpoint(path, modules={"ema": ema}, restore_rng=False)
        assert isinstance(ema.module, UNet)  # a deep copy of ``model``
        model = ema.module
    meta["path"] = str(path)
    return model.to(device).eval(), meta


def _device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device (default: the GPU when there is one); a one-line error for a bad or absent one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_type("device", device, str | torch.device)
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={str(device)!r} is not a torch device ({str(err).splitlines()[0]})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} is not available here (no CUDA GPU); use device='cpu'")
    return device


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] → (N, H, W, C) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid(images: torch.Tensor, ncols: int | None = None, pad: int = 2) -> torch.Tensor:
    """Tile (N, C, H, W) images into one (C, H', W') image with ``pad`` pixels of white between them."""
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    canvas = torch.ones(c, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        canvas[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return canvas


def save_png(path: str | Path, image: torch.Tensor) -> Path:
    """Write one (C, H, W) image in [0, 1] as PNG, atomically."""
    from PIL import Image

    arr = to_uint8(image[None])[0]
    pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    return atomic_write(path, lambda p: pil.save(p, format="PNG"))


def save_images(images: torch.Tensor, out: str | Path, grid_name: str = "grid.png", grid_max: int = 64) -> Path:
    """PNG per image (``00000.png`` ...) plus a grid of the first ``grid_max``, all or none; returns the grid path."""
    out = Path(out)
    with staged_folder(out) as stage:
        for i, img in enumerate(images):
            save_png(stage / f"{i:05d}.png", img)
        save_png(stage / grid_name, grid(images[:grid_max]))
    return out / grid_name
