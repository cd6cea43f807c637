"""Measure how much a trained model uses t: its loss with the real t against t frozen, reversed or shuffled.

The functional counterpart of the audit: the audit measures whether t survives the norms, this measures
whether the trained model's *task performance* depends on it.

  timeaware time-use runs/bn                 # a NODE run: accuracy, loss, NFE with real / frozen / reversed t
  timeaware time-use runs/ddpm-quick --bins 10 --out report/   # a DDPM run: loss per t-bin, true / random / shifted t

* NODE classifiers: the test set solved with the ODE function seeing the real t, t frozen at 0, T/2 and T,
  and t reversed (T − t). ``--mode train`` puts the ODE function's norms in train mode (batch statistics, one
  t per solver step, as in training), where BatchNorm cancels ConcatConv's offset exactly.
* DDPM: the simple loss per t-bin on held-out images, with one draw of (x_0, ε, t) scored three times: with
  the true t, a random t′ ~ U{0..T−1}, and t shifted by T/2 (mod T). The gap is what the denoiser reads from
  t beyond what x_t tells it about the noise level.

Writes OUT/time-use.md (table), OUT/time-use.json and OUT/time-use.png (default OUT: RUN/time-use).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from ..diffusion.ddpm import Schedule
from ..io import atomic_write, atomic_write_text, staged_folder, write_json
from ..parsing import COUNT, SEED, integer, nonempty_path
from ..paths import check_output
from ..validate import check_int, choice

if TYPE_CHECKING:
    from ..node.model import NodeClassifier

MAX_BINS = Schedule.num_train_timesteps  # T of the DDPM schedule: one t per bin at the most
NODE_TIMES = ("real", "frozen 0", "frozen T/2", "frozen T", "reversed")
DDPM_TIMES = ("true", "random", "shifted")
MODES = ("eval", "train")


class _Remapped(nn.Module):
    """An ODE function that sees g(t) instead of t."""

    def __init__(self, func: nn.Module, remap: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.func, self.remap = func, remap

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.func(self.remap(torch.as_tensor(t)), x)


def time_maps(t1: float) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """How each NODE row changes the t the ODE function sees, on the interval [0, t1]."""
    return {"real": lambda t: t, "frozen 0": lambda t: torch.zeros_like(t),
            "frozen T/2": lambda t: torch.full_like(t, t1 / 2), "frozen T": lambda t: torch.full_like(t, t1),
            "reversed": lambda t: t1 - t}


@contextlib.contextmanager
def remapped_time(model: NodeClassifier, remap: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Solve ``model.block`` (an ODEBlock) with its function seeing ``remap(t)``; restored on exit."""
    counted = model.block.counted
    func = counted.func
    counted.func = _Remapped(func, remap)
    try:
        yield
    finally:
        counted.func = func


@torch.no_grad()
def node_time_use(model: NodeClassifier, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256,
                  mode: str = "eval", times: tuple[str, ...] = NODE_TIMES) -> list[dict[str, Any]]:
    """Accuracy (%), mean cross-entropy and mean NFE of a NodeClassifier per way of feeding it t.

    ``mode`` "train": the ODE function's norms use batch statistics (one t per call); the rest stays in eval
    mode; every buffer (running statistics) is restored afterwards.
    """
    choice("mode", mode, MODES)
    check_int("batch_size", batch_size, 1)
    maps = time_maps(model.block.solver.t1)
    unknown = [t for t in times if t not in maps]
    if unknown:
        raise ValueError(f"time {unknown[0]!r} is not allowed; choose from {', '.join(maps)}")
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    device = next(model.parameters()).device
    rows = []
    try:
        for name in times:
            model.eval()
            model.block.func.train(mode == "train")
            correct, loss, nfe, batches = 0, 0.0, 0, 0
            with remapped_time(model, maps[name]):
                for idx in torch.arange(len(images)).split(batch_size):
                    logits = model(images[idx].to(device)).cpu()
                    loss += F.cross_entropy(logits, labels[idx], reduction="sum").item()
                    correct += int((logits.argmax(1) == labels[idx]).sum())
                    nfe += model.stats.nfe_forward
                    batches += 1
            rows.append({"t": name, "accuracy": 100.0 * correct / len(images), "loss": loss / len(images),
                         "nfe": nfe / batches})
    finally:
        model.load_state_dict(buffers)
        model.eval()
    return rows


@torch.no_grad()
def diffusion_time_use(model: nn.Module, x0: torch.Tensor, *, bins: int = 10, draws: int = 1, seed: int = 0,
                       num_train_timesteps: int = 1000, batch_size: int = 256) -> list[dict[str, Any]]:
    """DDPM's simple loss per t-bin on images ``x0`` in [−1, 1], with the true t, a random t′ and t + T/2 (mod T).

    Each bin scores ``draws`` × len(x0) triples (x_0, ε, t), t uniform in the bin; the three columns share them.
    """
    from ..diffusion.ddpm import make_scheduler

    check_int("seed", seed, 0)
    check_int("bins", bins, 1, num_train_timesteps)
    check_int("draws", draws, 1)
    check_int("batch_size", batch_size, 1)
    scheduler = make_scheduler("ddpm")
    gen = torch.Generator().manual_seed(seed)
    edges = torch.linspace(0, num_train_timesteps, bins + 1).round().long().tolist()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sums = dict.fromkeys(DDPM_TIMES, 0.0)
        count = 0
        for _ in range(draws):
            for chunk in x0.split(batch_size):
                n = chunk.shape[0]
                t = torch.randint(lo, hi, (n,), generator=gen)
                noise = torch.randn(chunk.shape, generator=gen)
                x_t = scheduler.add_noise(chunk, noise, t)
                fed = {"true": t, "random": torch.randint(0, num_train_timesteps, (n,), generator=gen),
                       "shifted": (t + num_train_timesteps // 2) % num_train_timesteps}
                for name, tt in fed.items():
                    pred = model(x_t.to(device), tt.to(device)).cpu()
                    sums[name] += F.mse_loss(pred, noise, reduction="sum").item() / noise[0].numel()
                count += n
        rows.append({"bin": f"{lo}-{hi - 1}", "t_lo": lo, "t_hi": hi - 1,
                     **{name: value / count for name, value in sums.items()}})
    model.train(was_training)
    return rows


Loaded = tuple[str, nn.Module, dict[str, Any], dict[str, torch.Tensor]]


def load_run(run: str | Path, limit: int | None = None) -> Loaded:
    """A timeaware run folder's model (NODE classifier, or DDPM U-Net with EMA weights) and its held-out data.

    Returns (kind "node" | "ddpm", model, the checkpoint's state, {"x": ..., "y": ...}) with test images
    (the first ``limit``). The one place this module reads checkpoints.
    """
    from ..data import load_images
    from ..training import find_checkpoint, load_checkpoint, read_checkpoint_state, state_field

    found = find_checkpoint(run)
    state = read_checkpoint_state(found)["state"]
    if "unet" in state:
        from ..diffusion.sampling import load_unet
        from ..diffusion.train import TrainConfig

        unet, _ = load_unet(found, device="cpu")
        train_cfg = state_field(found, "train", lambda: TrainConfig(**state["train"]))
        data = load_images(train_cfg.data, "test", unet.config.image_size).subset(limit)
        return "ddpm", unet, state, {"x": data.x * 2 - 1}
    if "config" not in state or "input_shape" not in state:
        raise ValueError(f"{found}: not a timeaware NODE or DDPM checkpoint (its state.json has no 'unet', or no "
                         "'config' and 'input_shape'); time-use reads run folders of timeaware train")
    from ..node.run_config import NodeRunConfig
    from ..node.train import build_model, load_run_data

    cfg = state_field(found, "config", lambda: NodeRunConfig.from_dict(state["config"]))
    train, test = load_run_data(cfg)
    model = build_model(cfg, train)
    load_checkpoint(found, modules={"model": model}, restore_rng=False)
    test = test.subset(limit)
    return "node", model.eval(), state, {"x": test.x, "y": test.y}


def time_use(run: str | Path, *, limit: int | None = None, bins: int = 10, mode: str = "eval",
             seed: int = 0) -> dict[str, Any]:
    """Time use of a run folder: ``{"kind", "run", "rows", "table"}`` (rows as the two functions above)."""
    from ..node.model import NodeClassifier

    check_int("seed", seed, 0)  # before the run is loaded
    check_int("bins", bins, 1, MAX_BINS)
    choice("mode", mode, MODES)
    kind, model, _, data = load_run(run, limit)
    if isinstance(model, NodeClassifier):  # kind "node"
        rows = node_time_use(model, data["x"], data["y"], mode=mode)
    else:
        rows = diffusion_time_use(model, data["x"], bins=bins, seed=seed)
    return {"kind": kind, "run": str(run), "mode": mode, "seed": seed, "images": len(data["x"]), "rows": rows,
            "table": render(kind, rows)}


def render(kind: str, rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows of ``node_time_use`` or ``diffusion_time_use``."""
    if kind == "node":
        lines = ["| t fed to the ODE function | accuracy (%) | loss | NFE-F |", "|---|---|---|---|"]
        lines += [f"| {r['t']} | {r['accuracy']:.2f} | {r['loss']:.4f} | {r['nfe']:.1f} |" for r in rows]
    else:
        lines = ["| t-bin | loss, true t | random t′ | shifted t + T/2 | random / true |", "|---|---|---|---|---|"]
        lines += [f"| {r['bin']} | {r['true']:.4f} | {r['random']:.4f} | {r['shifted']:.4f} | "
                  f"{r['random'] / r['true']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(kind: str, rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Bars of accuracy per way of feeding t (NODE), or loss against the t-bin per column (DDPM)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    if kind == "node":
        ax.bar([r["t"] for r in rows], [r["accuracy"] for r in rows], color="tab:blue")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xlabel("t fed to the ODE function")
    else:
        mids = [(r["t_lo"] + r["t_hi"]) / 2 for r in rows]
        for name in DDPM_TIMES:
            ax.plot(mids, [r[name] for r in rows], marker="o", label=f"{name} t")
        ax.set_yscale("log")
        ax.set_xlabel("diffusion step t (bin centre)")
        ax.set_ylabel("simple loss (MSE of ε)")
        ax.legend()
    ax.set_title(title or "time use")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", type=Path,
                        help="a timeaware run folder (train node / train ddpm) or checkpoint")
    parser.add_argument("--out", type=nonempty_path, default=None, help="output folder (default RUN/time-use)")
    parser.add_argument("--limit", type=COUNT, default=None, help="use the first N test images (default all)")
    parser.add_argument("--bins", type=integer(1, MAX_BINS), default=10,
                        help=f"DDPM: t-bins over 0..T-1, 1 to {MAX_BINS} (default 10)")
    parser.add_argument("--mode", default="eval", help=f"NODE: norms in {' | '.join(MODES)} mode (default eval)")
    parser.add_argument("--seed", type=SEED, default=0, help="DDPM: seed of the (x_0, ε, t) draws (default 0)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    choice("--mode", args.mode, MODES)  # before the run loads; the numbers are checked as they are read
    out = _output(args.out, args.run_dir)
    result = time_use(args.run_dir, limit=args.limit, bins=args.bins, mode=args.mode, seed=args.seed)
    with staged_folder(out) as stage:  # the three files, or none of them
        write_json(stage / "time-use.json", result)
        atomic_write_text(stage / "time-use.md", result["table"])
        plot(result["kind"], result["rows"], stage / "time-use.png", title=f"time use: {args.run_dir}")
    print(_dumps(result) if args.json else result["table"] + f"\nwrote {out}/time-use.{{md,json,png}}")
    return 0


def _output(out: Path | None, run_dir: Path) -> Path:
    """``--out``, checked as every output folder is; or RUN/time-use, the one folder inside a run written here."""
    default = Path(run_dir) / "time-use"
    if out is not None and out.resolve() != default.resolve():
        return check_output(out, "folder")
    for path in (default, *default.parents):
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"--out {default}: {path} exists and is not a folder; remove it or give another --out")
            break
    return default


def _dumps(result: dict[str, Any]) -> str:
    from ..io import dumps

    return dumps(result, indent=2)
