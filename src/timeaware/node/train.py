"""Train the NODE classifier: SGD + ReduceLROnPlateau on accelerate, NFE per epoch, exact resume.

A run folder holds ``metrics.jsonl`` (one line per epoch) and ``checkpoints/`` (weights as safetensors,
optimizer, scheduler, RNG states and a JSON state with the config, epoch and best accuracy). The data
order and the augmentation draw from one ``torch.Generator`` saved with the checkpoint, so a resumed
run continues bit for bit as if it had not stopped.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import ImageData, augment, load_images
from ..resources import FLOAT, check_memory, training_bytes
from ..training import (
    MetricsLog,
    check_finite,
    claim_run_folder,
    load_checkpoint,
    make_accelerator,
    read_checkpoint_state,
    rewind_to,
    save_checkpoint,
    seed_everything,
)
from ..validate import check_type
from .model import NodeClassifier
from .run_config import NodeRunConfig

SUBSET_SEED = 0  # the --limit subset is the same for every seed: seeds vary initialisation and data order


@dataclass
class TrainResult:
    """The last epoch's metrics (plus best test accuracy and wall time) and the trained model."""

    summary: dict[str, Any]
    model: NodeClassifier


def load_run_data(cfg: NodeRunConfig) -> tuple[ImageData, ImageData]:
    """Train and test splits as the run sees them (resized, subset)."""
    train = load_images(cfg.data, "train", cfg.image_size).subset(cfg.limit, SUBSET_SEED)
    test = load_images(cfg.data, "test", cfg.image_size).subset(cfg.test_limit, SUBSET_SEED)
    return train, test


def build_model(cfg: NodeRunConfig, train: ImageData) -> NodeClassifier:
    mean, std = train.channel_stats()
    return NodeClassifier(train.x.shape[1], train.num_classes, (train.x.shape[-2], train.x.shape[-1]),
                          channels=cfg.channels, config=cfg.model, time=cfg.time, solver=cfg.solver,
                          dropout=cfg.dropout, mean=mean, std=std)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, data: ImageData, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Test accuracy in percent and the mean NFE of the forward solves."""
    model.eval()
    correct, nfe = 0, []
    for idx in torch.arange(len(data)).split(batch_size):
        logits = model(data.x[idx].to(device))
        correct += (logits.argmax(1).cpu() == data.y[idx]).sum().item()
        nfe.append(_unwrap(model).stats.nfe_forward)
    return 100.0 * correct / len(data), sum(nfe) / len(nfe)


def _unwrap(model: nn.Module) -> NodeClassifier:
    inner = getattr(model, "module", model)  # DDP holds the model in .module
    assert isinstance(inner, NodeClassifier)
    return inner


def train_classifier(cfg: NodeRunConfig, out: str | Path, *, resume: bool | str | Path = False,
                     progress: bool = True) -> TrainResult:
    """Train ``cfg`` into the run folder ``out``.

    ``resume``: False (``out`` must not hold a run), True or ``"latest"`` (continue ``out``'s latest
    checkpoint, or start when it has none), or a checkpoint folder / run folder to continue from.
    """
    check_type("cfg", cfg, NodeRunConfig)
    check_type("out", out, str | os.PathLike)
    check_type("resume", resume, bool | str | os.PathLike)
    out = Path(out)
    with claim_run_folder(out, resume) as found:
        if found is not None:
            state = read_checkpoint_state(found)["state"]
            missing = [key for key in ("config", "epoch", "metrics") if key not in state]
            if missing:
                raise ValueError(f"{found / 'state.json'}: corrupted checkpoint metadata (no {', '.join(missing)})")
            _check_same_run(state["config"], cfg, out)
        with _intra_op_threads(cfg.threads):
            return _train(cfg, out, found, progress)


@contextlib.contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: torch's default), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def global_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's global batches: a permutation of ``n`` drawn from ``generator``, cut every ``batch_size``."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def rank_slice(size: int, rank: int, world: int) -> slice:
    """This rank's contiguous part of a global batch of ``size`` (sizes differ by at most one)."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def _train(cfg: NodeRunConfig, out: Path, found: Path | None, progress: bool) -> TrainResult:
    """The loop. ``cfg.batch_size`` is the global batch: every process draws the same permutation and the
    same augmentation for the whole batch (one generator, equal on all ranks) and trains on its slice;
    the loss is scaled so that DDP's gradient average equals the single-process gradient of the batch.
    """
    from tqdm.auto import tqdm

    train, test = load_run_data(cfg)  # bad data paths fail here, before any process group is set up
    acc = make_accelerator()
    rank, world = acc.process_index, acc.num_processes
    _check_batches(len(train), cfg.batch_size, world)
    _check_memory(cfg, train, acc.device, world)
    seed_everything(cfg.seed)
    model = build_model(cfg, train)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=cfg.patience)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, best, wall, row = 0, 0.0, 0.0, {}
    log = MetricsLog(out / "metrics.jsonl", enabled=acc.is_main_process)
    if found is not None:
        meta = load_checkpoint(found, modules={"model": model}, optimizer=opt, scheduler=sched,
                               generators={"data": gen})
        start, row = meta["state"]["epoch"], meta["state"]["metrics"]
        best, wall = row["best_test_acc"], row["wall_time"]
        if acc.is_main_process:
            rewind_to(out, found)
    if acc.is_main_process:
        log.truncate_after("epoch", start)  # drop lines of epochs after the checkpoint (all, if there is none)
    acc.wait_for_everyone()
    model, opt = acc.prepare(model, opt)
    block = _unwrap(model).block
    steps = -(-len(train) // cfg.batch_size)
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        local = torch.zeros(4, dtype=torch.float64)  # correct, NFE-F, NFE-B, batches (this rank)
        loss_sum = 0.0
        bar = tqdm(global_batches(len(train), cfg.batch_size, gen), desc=f"epoch {epoch}/{cfg.epochs}",
                   leave=False, disable=not (progress and acc.is_main_process))
        for i, batch in enumerate(bar):
            x = augment(train.x[batch], gen, padding=cfg.padding, hue=cfg.hue, saturation=cfg.saturation,
                        flip=cfg.use_flip)  # the whole global batch, identically on every rank
            part = rank_slice(len(batch), rank, world)
            x, y = x[part].to(acc.device), train.y[batch][part].to(acc.device)
            logits = model(x)
            ce = F.cross_entropy(logits, y, reduction="sum")
            total = acc.reduce(ce.detach(), "sum")  # the global batch's loss, the same on every rank
            check_finite(total, (epoch - 1) * steps + i + 1)
            opt.zero_grad(set_to_none=True)
            acc.backward(ce * (world / len(batch)))  # DDP averages over ranks: mean over the global batch
            opt.step()
            loss_sum += total.item()
            local += torch.tensor([(logits.argmax(1) == y).sum().item(), block.stats.nfe_forward,
                                   block.stats.nfe_backward, 1], dtype=torch.float64)
            bar.set_postfix(loss=f"{total.item() / len(batch):.3f}",
                            nfe=f"{block.stats.nfe_forward}/{block.stats.nfe_backward}")
        correct, nfe_f, nfe_b, batches = acc.reduce(local.to(acc.device), "sum").tolist()
        test_acc, test_nfe = evaluate_accuracy(_unwrap(model), test, cfg.batch_size, acc.device)
        train_loss = loss_sum / len(train)
        sched.step(train_loss)
        best = max(best, test_acc)
        wall += time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": 100.0 * correct / len(train),
               "test_acc": test_acc, "best_test_acc": best, "nfe_forward": nfe_f / batches,
               "nfe_backward": nfe_b / batches, "test_nfe_forward": test_nfe,
               "lr": opt.param_groups[0]["lr"], "wall_time": wall}
        if acc.is_main_process:
            log.write(row)
            save_checkpoint(out, step=epoch, modules={"model": _unwrap(model)}, optimizer=opt, scheduler=sched,
                            generators={"data": gen},
                            state={"epoch": epoch, "best": best, "metrics": row, "config": cfg.to_dict(),
                                   "input_shape": list(train.x.shape[1:]), "num_classes": train.num_classes})
            if progress:
                tqdm.write(_describe(row, cfg.solver.adjoint))
        acc.wait_for_everyone()
    return TrainResult(row, _unwrap(model))


def _check_batches(n: int, batch_size: int, world: int) -> None:
    """Every process needs at least one image of every global batch (the last one included)."""
    last = n % batch_size or batch_size
    if min(batch_size, last) < world:
        raise ValueError(f"batch_size={batch_size} over {n} images leaves a batch of {min(batch_size, last)} for "
                         f"{world} processes; batch_size is the global batch, choose it (and limit) so that every "
                         "batch has at least one image per process")


def _check_memory(cfg: NodeRunConfig, train: ImageData, device: torch.device, world: int) -> None:
    """Refuse a width or image size this machine cannot hold, before the model is built.

    The ODE function's two 3×3 convs (time concatenated) dominate the parameters; a batch keeps about 40
    state-sized maps for the adjoint's backward pass, about 400 when backpropagating through the solver;
    each process holds its slice of the global batch.
    """
    channels, (in_ch, h, w) = cfg.channels, train.x.shape[1:]
    params = 2 * 9 * (channels + 1) * channels + 9 * in_ch * channels + channels * train.num_classes
    maps = 40 if cfg.solver.adjoint else 400
    need = training_bytes(params, maps * channels * h * w * FLOAT, -(-cfg.batch_size // world))
    check_memory(need, f"training channels={channels} on {h}×{w} images with batch_size={cfg.batch_size}", device)


def _check_same_run(saved: dict[str, Any], cfg: NodeRunConfig, out: Path) -> None:
    """A resumed run must be the same run; only ``epochs`` may grow (to extend it)."""
    now = cfg.to_dict()
    changed = sorted(k for k in set(saved) | set(now) if k != "epochs" and saved.get(k) != now.get(k))
    if changed:
        raise ValueError(f"--resume: {out} was trained with different {', '.join(changed)}; "
                         "resume with the same settings or choose another --out")


def _describe(row: dict[str, Any], adjoint: bool) -> str:
    note = "" if adjoint else " (0: no adjoint, direct backprop)"
    return (f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%  "
            f"test {row['test_acc']:.2f}%  NFE-F {row['nfe_forward']:.1f}  NFE-B {row['nfe_backward']:.1f}{note}  "
            f"lr {row['lr']:g}  {row['wall_time']:.0f}s")
