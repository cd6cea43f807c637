"""Train the NODE classifier: SGD + ReduceLROnPlateau on accelerate, NFE per epoch, exact resume.

A run folder holds ``metrics.jsonl`` (one line per epoch) and ``checkpoints/`` (weights as safetensors,
optimizer, scheduler, RNG states and a JSON state with the config, epoch and best accuracy). The data
order and the augmentation draw from one ``torch.Generator`` saved with the checkpoint, so a resumed
run continues bit for bit as if it had not stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import ImageData, augment, load_images
from ..training import (
    MetricsLog,
    check_finite,
    latest_checkpoint,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    seed_everything,
)
from .model import NodeClassifier
from .run_config import NodeRunConfig
from .solve import SolveStats

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
    return NodeClassifier(train.x.shape[1], train.num_classes, tuple(train.x.shape[-2:]), channels=cfg.channels,
                          config=cfg.model, time=cfg.time, solver=cfg.solver, dropout=cfg.dropout,
                          mean=mean, std=std)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Test accuracy in percent and the mean NFE of the forward solves."""
    model.eval()
    correct, nfe = 0, []
    for idx in torch.arange(len(data)).split(batch_size):
        logits = model(data.x[idx].to(device))
        correct += (logits.argmax(1).cpu() == data.y[idx]).sum().item()
        nfe.append(_unwrap(model).stats.nfe_forward)
    return 100.0 * correct / len(data), sum(nfe) / len(nfe)


def _unwrap(model: nn.Module) -> NodeClassifier:
    return getattr(model, "module", model)


def train_classifier(cfg: NodeRunConfig, out: str | Path, *, resume: bool = False,
                     progress: bool = True) -> TrainResult:
    """Train ``cfg`` into the run folder ``out``; with ``resume``, continue its latest checkpoint."""
    out = Path(out)
    found = latest_checkpoint(out)
    if found is not None and not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if found is not None:
        _check_same_run(json.loads((found / "state.json").read_text(encoding="utf-8"))["state"]["config"], cfg, out)
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


def _train(cfg: NodeRunConfig, out: Path, found: Path | None, progress: bool) -> TrainResult:
    from tqdm.auto import tqdm

    acc = make_accelerator()
    seed_everything(cfg.seed)
    train, test = load_run_data(cfg)
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
        log.truncate_after("epoch", start)
    model, opt = acc.prepare(model, opt)
    block = _unwrap(model).block
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        shard = torch.randperm(len(train), generator=gen)[acc.process_index::acc.num_processes]
        totals = {"loss": 0.0, "correct": 0, "seen": 0, "nfe_f": 0, "nfe_b": 0, "batches": 0}
        bar = tqdm(shard.split(cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not (progress and acc.is_main_process))
        for idx in bar:
            x = augment(train.x[idx], gen, padding=cfg.padding, hue=cfg.hue, saturation=cfg.saturation,
                        flip=cfg.use_flip).to(acc.device)
            y = train.y[idx].to(acc.device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            check_finite(loss, (epoch - 1) * len(bar) + totals["batches"])
            opt.zero_grad(set_to_none=True)
            with block.solver_errors():
                acc.backward(loss)
            opt.step()
            _add(totals, loss.item() * len(idx), (logits.argmax(1) == y).sum().item(), len(idx), block.stats)
            bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.3f}",
                            acc=f"{100 * totals['correct'] / totals['seen']:.1f}",
                            nfe=f"{block.stats.nfe_forward}/{block.stats.nfe_backward}")
        test_acc, test_nfe = evaluate(model, test, cfg.batch_size, acc.device)
        train_loss = totals["loss"] / totals["seen"]
        sched.step(train_loss)
        best = max(best, test_acc)
        wall += time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": 100.0 * totals["correct"] / totals["seen"],
               "test_acc": test_acc, "best_test_acc": best, "nfe_forward": totals["nfe_f"] / totals["batches"],
               "nfe_backward": totals["nfe_b"] / totals["batches"], "test_nfe_forward": test_nfe,
               "lr": opt.param_groups[0]["lr"], "wall_time": wall}
        if acc.is_main_process:
            log.write(row)
            save_checkpoint(out, step=epoch, modules={"model": _unwrap(model)}, optimizer=opt, scheduler=sched,
                            generators={"data": gen},
                            state={"epoch": epoch, "best": best, "metrics": row, "config": cfg.to_dict()})
            if progress:
                tqdm.write(_describe(row, cfg.solver.adjoint))
        acc.wait_for_everyone()
    return TrainResult(row, _unwrap(model))


def _check_same_run(saved: dict[str, Any], cfg: NodeRunConfig, out: Path) -> None:
    """A resumed run must be the same run; only ``epochs`` may grow (to extend it)."""
    now = cfg.to_dict()
    changed = sorted(k for k in set(saved) | set(now) if k != "epochs" and saved.get(k) != now.get(k))
    if changed:
        raise ValueError(f"--resume: {out} was trained with different {', '.join(changed)}; "
                         "resume with the same settings or choose another --out")


def _add(totals: dict[str, Any], loss: float, correct: int, seen: int, stats: SolveStats) -> None:
    totals["loss"] += loss
    totals["correct"] += correct
    totals["seen"] += seen
    totals["nfe_f"] += stats.nfe_forward
    totals["nfe_b"] += stats.nfe_backward
    totals["batches"] += 1


def _describe(row: dict[str, Any], adjoint: bool) -> str:
    note = "" if adjoint else " (0: no adjoint, direct backprop)"
    return (f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%  "
            f"test {row['test_acc']:.2f}%  NFE-F {row['nfe_forward']:.1f}  NFE-B {row['nfe_backward']:.1f}{note}  "
            f"lr {row['lr']:g}  {row['wall_time']:.0f}s")
