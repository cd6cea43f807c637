"""DDPM training: the paper's recipe as the ``paper`` preset and a ``quick`` preset that trains on a 2-core CPU.

Resume is exact: every source of randomness is either the global RNG or the ``data`` generator (batch
indices, flips, t, ε), and both live in the checkpoint with weights, EMA, Adam and the warm-up schedule,
so N steps straight and k steps + resume to N give the same bits on the CPU (on one process).
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import TimeAware, field_names, parse_setting
from ..data import check_source, random_flip
from ..io import write_json
from ..parsing import split_pair
from ..resources import check_memory, training_bytes
from ..training import (
    MetricsLog,
    check_finite,
    claim_run_folder,
    latest_checkpoint,
    load_checkpoint,
    make_accelerator,
    read_checkpoint_state,
    rewind_to,
    save_checkpoint,
    seed_everything,
)
from ..validate import MAX_LR, check_int, check_number, check_type
from .ddpm import Schedule, make_scheduler, simple_loss, to_model_range
from .unet import UNet, UNetConfig, ddpm_time_config

MAX_STEPS = 10**8  # training steps: 77 times the paper's 1.3M; more is a typo that would train for years


@dataclass(frozen=True)
class TrainConfig:
    """How to train; defaults are the paper's (Ho et al. 2020 and section 4.2 of the paper)."""

    data: str = "cifar10"          # dataset name or .npz path (see timeaware.data)
    data_limit: int | None = None  # use a random subset of this many training images
    steps: int = 1_300_000
    batch_size: int = 128
    lr: float = 2e-4               # Adam, no weight decay
    warmup: int = 5000             # linear warm-up steps (LambdaLR)
    grad_clip: float = 1.0         # max gradient norm (0: off)
    ema_decay: float = 0.9999
    flip: bool = True              # random horizontal flip, p = 0.5
    checkpoint_every: int = 10_000
    log_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "checkpoint_every", "log_every"):
            check_int(name, getattr(self, name), 1)
        check_int("steps", self.steps, 1, MAX_STEPS)
        check_int("warmup", self.warmup, 0)
        check_int("seed", self.seed, 0)
        if self.data_limit is not None:
            check_int("data_limit", self.data_limit, 1)
        check_number("lr", self.lr, 0.0, MAX_LR, low_open=True)
        check_number("grad_clip", self.grad_clip, 0.0)
        check_number("ema_decay", self.ema_decay, 0.0, 1.0)
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip={self.flip!r} is not allowed; it must be true or false")
        check_source(self.data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, tuple[UNetConfig, TrainConfig]] = {
    "paper": (UNetConfig(), TrainConfig()),
    # A 0.7M-parameter U-Net on the digits at their native 8×8: 8 groups of 4 channels at width 32, like the
    # paper's 128/32, and an EMA short enough to matter after a few hundred steps (~1.5 min on one core).
    "quick": (UNetConfig(image_size=8, in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                         attn_resolutions=(4,), dropout=0.1, time=ddpm_time_config().replace(groups=8)),
              TrainConfig(data="digits", steps=500, batch_size=64, lr=1e-3, warmup=50,
                          ema_decay=0.99, checkpoint_every=250, log_every=25)),
}
# the quick preset on RGB data (CIFAR-10 .npz): a 10k-image subset at 16×16, still minutes on a CPU
QUICK_RGB = ("in_channels=3", "image_size=16", "data_limit=10000")


def preset(name: str, overrides: list[str] | tuple[str, ...] = (), data: str | None = None
           ) -> tuple[UNetConfig, TrainConfig]:
    """A named preset on ``data`` (default: the preset's) with ``key=value`` overrides.

    A key may be a TimeAware, UNetConfig or TrainConfig field. ``quick`` on data other than the digits
    switches to RGB at 16×16 on a 10k-image subset (``QUICK_RGB``), before the overrides.
    """
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; choose one of {', '.join(PRESETS)}")
    unet, train = PRESETS[name]
    if data is not None:
        adapt = QUICK_RGB if name == "quick" and data != "digits" else ()
        overrides = [f"data={data}", *adapt, *overrides]
    time_pairs, unet_changes, train_changes = [], {}, {}
    for pair in overrides:
        key, value = split_pair("--set", pair)
        if key in field_names():
            time_pairs.append(pair)
        elif key in _fields(UNetConfig) and key != "time":
            unet_changes[key] = parse_setting(key, value, getattr(unet, key))
        elif key in _fields(TrainConfig):
            train_changes[key] = parse_setting(key, value, getattr(train, key))
        else:
            allowed = [*field_names(), *(_fields(UNetConfig) - {"time"}), *_fields(TrainConfig)]
            raise ValueError(f"--set {key!r} is unknown; allowed keys: {', '.join(sorted(allowed))}")
    time = TimeAware.from_strings(time_pairs, base=unet.time)
    return unet.replace(time=time, **unet_changes), train.replace(**train_changes)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def train(run_dir: str | Path, unet_cfg: UNetConfig, cfg: TrainConfig, *, resume: bool | str | Path = False,
          progress: bool = True) -> dict[str, Any]:
    """Train a DDPM into ``run_dir`` (checkpoints, metrics.jsonl, config.json).

    ``resume``: False, True / ``"latest"`` or a checkpoint folder, as ``timeaware.training.resolve_resume``.
    Under DDP every process draws its own batches from its own stream; all the streams are checkpointed,
    so a resumed distributed run continues exactly too (with the same number of processes).
    Returns a summary whose ``loss`` is the mean over the last 10% of the steps run by this call.
    """
    check_type("unet_cfg", unet_cfg, UNetConfig)
    check_type("cfg", cfg, TrainConfig)
    check_type("run_dir", run_dir, str | os.PathLike)
    check_type("resume", resume, bool | str | os.PathLike)
    params, activations = unet_cfg.size()
    check_memory(training_bytes(params, activations, cfg.batch_size),
                 f"training a U-Net of about {params:,} parameters with batch_size={cfg.batch_size}")
    with claim_run_folder(run_dir, resume) as found:  # bad input fails here and in _train, before a process group
        return _train(Path(run_dir), unet_cfg, cfg, found, progress)


def _train(run_dir: Path, unet_cfg: UNetConfig, cfg: TrainConfig, found: Path | None,
           progress: bool) -> dict[str, Any]:
    from torch.optim.lr_scheduler import LambdaLR
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from tqdm.auto import tqdm

    from ..data import load_images

    data = load_images(cfg.data, "train", unet_cfg.image_size).subset(cfg.data_limit, seed=cfg.seed)
    if data.x.shape[1] != unet_cfg.in_channels:
        raise ValueError(f"data {data.name} has {data.x.shape[1]} channels but the U-Net expects "
                         f"{unet_cfg.in_channels}; set in_channels={data.x.shape[1]}")
    acc = make_accelerator()
    seed_everything(cfg.seed)
    images = to_model_range(data.x)
    model = UNet(unet_cfg)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_schedule = LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0)
    # one stream per process for batches, flips, t and ε; every process's stream is checkpointed
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + acc.process_index)
    stream = "data" if acc.process_index == 0 else f"data.rank{acc.process_index}"
    scheduler = make_scheduler("ddpm")
    state = {"unet": unet_cfg.to_dict(), "train": cfg.to_dict(), "schedule": Schedule().to_dict(),
             "processes": acc.num_processes}
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=acc.is_main_process)
    start = 0
    if found is not None:
        saved = read_checkpoint_state(found)["state"]
        if saved.get("unet") != state["unet"]:
            raise ValueError(f"{found}: was trained with a different U-Net config; resume with the same --set values")
        extendable = ("steps", "checkpoint_every", "log_every")  # may change when a run is continued
        changed = sorted(k for k, v in state["train"].items()
                         if k not in extendable and saved.get("train", {}).get(k) != v)
        if changed:
            raise ValueError(f"{found}: was trained with different {', '.join(changed)}; resume with the same "
                             "settings or choose another --out")
        if saved.get("processes", 1) != acc.num_processes:  # each process continues its own data stream
            raise ValueError(f"{found}: was trained on {saved.get('processes', 1)} processes, not "
                             f"{acc.num_processes}; resume with the same number of processes")
        meta = load_checkpoint(found, modules={"model": model, "ema": ema}, optimizer=optimizer,
                               scheduler=lr_schedule, generators={stream: generator})
        start = meta["step"]
        if acc.is_main_process:
            rewind_to(run_dir, found)
    if acc.is_main_process:
        log.truncate_after("step", start)  # drop lines after the checkpoint (all, if there is none)
        write_json(run_dir / "config.json", state)
    acc.wait_for_everyone()
    model, optimizer = acc.prepare(model, optimizer)
    ema.to(acc.device)  # prepare moves only the model; the EMA must live beside it
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and acc.is_main_process), desc="ddpm")
    try:
        model.train()
        recent: deque[float] = deque(maxlen=max(1, cfg.steps // 10))  # the summary's loss: last 10% of steps
        for step in range(start + 1, cfg.steps + 1):
            x0 = _batch(images, cfg, generator).to(acc.device)
            loss = simple_loss(model, scheduler, x0, generator)
            total = acc.reduce(loss.detach(), "sum")  # all processes' losses: the same value on every process
            check_finite(total, step)  # so every process stops at the same step
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            lr_schedule.step()
            ema.update_parameters(acc.unwrap_model(model))
            loss_value = total.item() / acc.num_processes
            recent.append(loss_value)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                bar.set_postfix(loss=f"{loss_value:.4f}")
                log.write({"step": step, "loss": loss_value, "lr": lr_schedule.get_last_lr()[0]})
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                streams = _all_streams(acc, generator)  # a collective: every process takes part
                if acc.is_main_process:
                    save_checkpoint(run_dir, step=step, modules={"model": acc.unwrap_model(model), "ema": ema},
                                    optimizer=optimizer, scheduler=lr_schedule, generators=streams,
                                    state={**state, "loss": loss_value})
    finally:
        bar.close()  # before an error is printed, so the error is the last line
    acc.wait_for_everyone()
    return {"run_dir": str(run_dir), "step": cfg.steps, "loss": sum(recent) / len(recent) if recent else None,
            "checkpoint": str(latest_checkpoint(run_dir))}


def _all_streams(acc: Any, generator: torch.Generator) -> dict[str, torch.Generator]:
    """Every process's data generator (gathered to all), keyed as ``train`` restores them: data, data.rank1, ..."""
    state = generator.get_state()[None].long()  # gloo has no all-gather for uint8 (it crashes): gather int64
    states = (acc.gather(state.to(acc.device)).cpu() if acc.num_processes > 1 else state).to(torch.uint8)
    streams = {}
    for rank, state in enumerate(states):
        streams["data" if rank == 0 else f"data.rank{rank}"] = gen = torch.Generator()
        gen.set_state(state.clone())  # a row view (storage offset) crashes set_state
    return streams


def _batch(images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A batch drawn with replacement (so the stream state is just the generator), flipped at random."""
    x = images[torch.randint(0, len(images), (cfg.batch_size,), generator=generator)]
    return random_flip(x, generator) if cfg.flip else x
