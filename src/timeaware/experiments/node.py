"""The paper's NODE experiments as sweeps of settings × seeds (Tables 1, 2, 4 and Figure 7).

Each experiment is a sweep of cells, one run per (setting, seed) with ``timeaware.node.train_classifier``,
on the executor given (this process by default; see ``sweep.py``). A cell records its accuracy, NFE-F,
NFE-B, the audit of the ODE function's norms, its accuracy with t frozen at T/2 and its wall time in
``OUT/cells/``; the sweep merges them into ``OUT/results.jsonl`` and writes ``OUT/table.md`` with mean ± std
over seeds beside the paper's CIFAR-10 numbers. Done cells are skipped and a run interrupted mid-way
resumes from its own checkpoint (``OUT/runs/...``), so an interrupted sweep continues where it stopped.

``overrides`` changes the preset for every run (any ``NodeRunConfig.with_overrides`` key), e.g. a
shorter ``{"epochs": 1, "limit": 64}``; the registry's CLI passes none.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..awareness import audit, find_vanishing_sites, survival_after_injection
from ..config import divisors
from ..io import atomic_write
from ..node.run_config import NodeRunConfig
from ..node.run_config import preset as run_preset
from ..progress import say
from .store import ResultStore, markdown_table, slug, write_table
from .sweep import Cell, Executor, run_sweep

if TYPE_CHECKING:
    from ..node.model import NodeClassifier

METRICS = {"test_acc": "accuracy (%)", "frozen_acc": "accuracy, t ≡ T/2 (%)", "nfe_forward": "NFE-F",
           "nfe_backward": "NFE-B", "interior_survival_mean": "interior survival (mean)",
           "time_share_pct": "time share (%)", "wall_time": "wall (s)"}
AUDIT_TIMES = 8     # timesteps in [0, T] at which the audit compares the ODE function's layers
AUDIT_IMAGES = 64   # test images whose z(0) the audit uses


@dataclass(frozen=True)
class Setting:
    """One row of a table: a name and the run settings it changes."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)


def node_norm(preset: str, seeds: int, out: Path, data: str | None, overrides: dict[str, Any] | None = None,
              executor: Executor | None = None) -> str:
    """Table 1: GroupNorm, BatchNorm (cancels ConcatConv's offset), GroupNorm + positional timestep embedding."""
    settings = [Setting("GN"), Setting("BN", {"norm": "batch"}), Setting("GN + positional", {"positional": "linear"})]
    paper = {"GN": (91.76, 26.0), "BN": (91.11, 34.6), "GN + positional": (91.80, 26.0)}
    return sweep("node-norm", "Table 1: normalization and positional timestep embedding", settings, paper,
                 preset, seeds, out, data, overrides, executor)


def node_bias(preset: str, seeds: int, out: Path, data: str | None, overrides: dict[str, Any] | None = None,
              executor: Executor | None = None) -> str:
    """Table 2 (MLP timestep embedding): zero bias on both branches, the timestep branch only, the operand only."""
    mlp = {"time": "mlp"}
    settings = [Setting("zero bias: both branches", {**mlp, "operand_bias": "zero", "time_bias": "zero"}),
                Setting("zero bias: timestep branch", {**mlp, "operand_bias": "default", "time_bias": "zero"}),
                Setting("zero bias: operand branch", {**mlp, "operand_bias": "zero", "time_bias": "default"})]
    paper = {"zero bias: both branches": (92.03, 26.0), "zero bias: timestep branch": (92.00, 39.2),
             "zero bias: operand branch": (92.18, 26.0)}
    return sweep("node-bias", "Table 2: zero bias initialization per branch (MLP timestep embedding)", settings,
                 paper, preset, seeds, out, data, overrides, executor)


def node_activation(preset: str, seeds: int, out: Path, data: str | None,
                    overrides: dict[str, Any] | None = None, executor: Executor | None = None) -> str:
    """Table 4: smooth activations lower NFE at some cost in accuracy."""
    names = ("relu", "silu", "elu", "softplus", "sigmoid")
    paper = dict(zip(names, [(91.76, 26.0), (91.76, 21.5), (91.38, 23.5), (89.89, 18.8), (89.75, 14.0)]))
    return sweep("node-activation", "Table 4: activation function vs accuracy and NFE",
                 [Setting(n, {"activation": n}) for n in names], paper, preset, seeds, out, data, overrides,
                 executor)


def node_groups(preset: str, seeds: int, out: Path, data: str | None, overrides: dict[str, Any] | None = None,
                executor: Executor | None = None) -> str:
    """Figure 7: GroupNorm with G in the divisors of C (C = 64, 128 at paper scale; the preset's C when quick)."""
    base = _base(preset, data, overrides)
    widths = (64, 128) if preset == "paper" else (base.channels,)
    settings = [Setting(f"C={c} G={g}", {"channels": c, "norm": "group", "groups": g})
                for c in widths for g in divisors(c)]
    table = sweep("node-groups", "Figure 7: number of groups G", settings, {}, preset, seeds, out, data, overrides,
                  executor)
    _plot_groups(_current(ResultStore(out), preset, base), out / "groups.png")
    return table


def sweep(name: str, title: str, settings: Sequence[Setting], paper: dict[str, tuple[float, float]], preset: str,
          seeds: int, out: Path, data: str | None, overrides: dict[str, Any] | None,
          executor: Executor | None = None) -> str:
    """Run every (setting, seed) cell not yet done on ``executor``, then write and return ``table.md``."""
    out = Path(out)
    base = _base(preset, data, overrides)
    cells = []
    for setting, seed in [(s, seed) for s in settings for seed in range(seeds)]:
        key = f"{setting.name}/seed={seed}/{preset}/{_data_label(base)}"
        cfg = base.with_overrides({**setting.changes, "seed": seed})
        cells.append(Cell(key, cfg.to_dict(), partial(train_and_audit, cfg, out / "runs" / slug(key), base, name, key),
                          {"setting": setting.name, "seed": seed, "preset": preset, "data": _data_label(base)}))
    say(f"{name}: {len(settings)} settings × {seeds} seed(s) on {_data_label(base)}, results in {out}")
    store = run_sweep(out, cells, executor, name=name)
    records = _current(store, preset, base)
    failed = [r for r in records if "error" in r]
    note = ("\nNFE-F / NFE-B: mean function evaluations per training batch in the last epoch (forward / adjoint "
            "solve); the paper's NFE is shown beside NFE-F. accuracy, t ≡ T/2: the same test set solved with the "
            "ODE function's t frozen at T/2 (timeaware time-use). interior survival (mean), time share: the audit of "
            "the norms right after a time injection, averaged over them (train mode, one t per batch). The "
            "survival shown is the interior one, without the 1-pixel border where zero padding leaks t (as the "
            "verdicts read it); results.jsonl also keeps each norm's full-map survival under audit.\n"
            + "".join(f"\nfailed: {r['key']} ({r['error']})" for r in failed))
    table = markdown_table([r for r in records if "error" not in r], group="setting", metrics=METRICS,
                           order=[s.name for s in settings], title=f"{name} ({preset}, {_data_label(base)}): {title}",
                           paper={k: {"test_acc": a, "nfe_forward": n} for k, (a, n) in paper.items()}) + note
    write_table(out / "table.md", table)
    return table


def train_and_audit(cfg: NodeRunConfig, run_dir: Path, base: NodeRunConfig, name: str, key: str) -> dict[str, Any]:
    """One cell ``key`` of experiment ``name``: say it starts, train (resuming ``run_dir``'s latest checkpoint,
    showing its epochs), then audit on ``base``'s test images."""
    from ..node.train import load_run_data, train_classifier

    say(f"{name}: training {key} ({cfg.epochs} epochs), then auditing its ODE function")
    start = time.perf_counter()
    result = train_classifier(cfg, run_dir, resume=True)
    test = load_run_data(base)[1]
    record = {k: result.summary.get(k) for k in ("test_acc", "best_test_acc", "nfe_forward", "nfe_backward",
                                                   "test_nfe_forward", "epoch")}
    return {**record, **audit_block(result.model, test.x[:AUDIT_IMAGES]),
            "frozen_acc": frozen_accuracy(result.model, test), "wall_time": time.perf_counter() - start}


def frozen_accuracy(model: NodeClassifier, test: Any) -> float:
    """Test accuracy with the ODE function's t frozen at T/2 (eval mode): the real-t accuracy when t is unused."""
    from .time_use import node_time_use

    return node_time_use(model, test.x, test.y, times=("frozen T/2",))[0]["accuracy"]


def audit_block(model: NodeClassifier, images: torch.Tensor) -> dict[str, Any]:
    """Survival and time share of t through the ODE function's norms after a time injection.

    ``interior_survival_mean`` (the table's column) averages each norm's survival without the zero-padded
    border; ``audit`` keeps per norm both that and the full-map survival, which the border leak inflates.

    Audited in train mode, one batch per t (as in a training solve): BatchNorm then uses the batch
    statistics that cancel ConcatConv's offset; in eval mode its running mean, averaged over t, would not.
    """
    model.eval()
    with torch.no_grad():
        z0 = model.initial_state(images.to(next(model.parameters()).device))
    times = torch.linspace(0.0, model.block.solver.t1, AUDIT_TIMES, dtype=z0.dtype, device=z0.device)
    report = audit(model.block.func, z0, times, call="tx", mode="train")
    after_time = {site.norm for site in find_vanishing_sites(model.block.func)}
    share = _finite_mean(layer.time_share for layer in report.layers if layer.name in after_time)
    return {"interior_survival_mean": survival_after_injection(model.block.func, report), "time_share": share,
            "time_share_pct": None if share is None else 100 * share,
            "audit": {layer.name: {"full_map_survival": layer.survival, "interior_survival": layer.interior_survival,
                                   "time_share": layer.time_share, "verdict": layer.verdict}
                      for layer in report.layers}}


def _base(preset: str, data: str | None, overrides: dict[str, Any] | None) -> NodeRunConfig:
    return run_preset(preset).with_overrides({**({"data": data} if data else {}), **(overrides or {})})


def _current(store: ResultStore, preset: str, base: NodeRunConfig) -> list[dict[str, Any]]:
    """The records of this preset and dataset (an OUT folder may hold others)."""
    return [r for r in store.records() if r.get("preset") == preset and r.get("data") == _data_label(base)]


def _data_label(cfg: NodeRunConfig) -> str:
    return Path(cfg.data).stem


def _finite_mean(values: Any) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(vals) if vals else None


def _plot_groups(records: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy (mean ± std over seeds) against G, one line per width C (paper Figure 7)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c in sorted({r["config"]["channels"] for r in records}):
        by_g: dict[int, list[float]] = {}
        for r in records:
            if r["config"]["channels"] == c and r.get("test_acc") is not None:
                by_g.setdefault(r["config"]["model"]["groups"], []).append(r["test_acc"])
        gs = sorted(by_g)
        means = [statistics.fmean(by_g[g]) for g in gs]
        stds = [statistics.stdev(by_g[g]) if len(by_g[g]) > 1 else 0.0 for g in gs]
        ax.errorbar(gs, means, yerr=stds, marker="o", capsize=3, label=f"C = {c}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("groups G")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("NODE: accuracy against the number of groups")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
