"""A NODE task that needs time: which normalizations let the paper's ODE function learn a time-dependent flow.

The ODE function ``timeaware.node.ODEFunc`` ([N–Act–ConcatConv–N–Act–ConcatConv–N]) regresses a known
vector field v(t, z) on states along its own trajectories, then is solved from held-out initial states.
Two fields, one per *kind* of time dependence, because the pipeline's final norm decides which kinds a
setting can express at all:

    per-channel  v = stdz_CHW(z + a·(2t−1)·u),  u_c = +1, −1, +1, −1, ... (zero mean in every pair of channels)
                 a per-channel offset: a channel-wise norm (BatchNorm, InstanceNorm = GroupNorm(G = C)) removes
                 it wherever it enters; GroupNorm with ≥ 2 channels per group, GroupNorm(1) and no norm keep
                 the within-group differences. A positional map (one H×W map for all channels) cannot draw it.
    spatial      v = stdz_HW(z + a·(2t−1)·Q),  Q a fixed H×W pattern shared by all channels
                 a spatial pattern: every channel norm keeps it, but ConcatConv brings t to interior pixels
                 only as a per-channel constant, so only the positional map t·P (fix 1) can draw it
                 (zero padding leaks a little t into the one-pixel border: the edge effect).

stdz_CHW / stdz_HW standardize over (C, H, W) / over (H, W) per channel, so each target has the scale the
setting's final norm imposes. Both targets average to a time-blind field over t ∈ [0, 1] (2t − 1 has mean 0).

Reported per (setting, task), mean ± std over seeds, on times and initial states not trained on:

* ``unexplained``: E‖(f − f̄)(t, z) − (v − v̄)(t, z)‖² / E‖(v − v̄)(t, z)‖², with v̄, f̄ the t-averages of the
  target and of the trained function on the same state: the share of the target's time variation the model
  does not reproduce, whatever its error in the time-independent part. A function that ignores t scores 1
  exactly; 0 = the time dependence is learnt;
* ``fit_error``: E‖f − v‖² on the same scale (both parts); ``frozen``: the same with f evaluated at t ≡ ½, so
  ``frozen`` − ``fit_error`` is what the trained function gains from reading t;
* ``endpoint``: ‖z_f(1) − z_v(1)‖ / ‖z_v(1) − z_v̄(1)‖ of dopri5 solves (rtol = atol = 1e-3) from held-out z(0),
  and ``nfe``, the function evaluations of the model's solve;
* the audit's survival of t through the norms after a time injection (train mode, one t per call).

A control, the no-norm function trained and evaluated with t fixed at ½ ("autonomous"), shows what a
time-blind field scores. Everything is evaluated in eval mode (BatchNorm then uses running statistics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..config import TimeAware
from ..node.func import ODEFunc
from ..node.solve import ODEBlock, SolverOptions
from ..validate import choice
from .store import markdown_table, write_table
from .sweep import Cell, Executor, run_sweep

TASKS = ("per-channel", "spatial")


@dataclass(frozen=True)
class TaskSize:
    """Scale of the task: state C × H × W, trajectories, time grid, training steps."""

    channels: int = 16
    size: int = 8
    train_paths: int = 128
    test_paths: int = 32
    grid: int = 17          # times 0, 1/16, ..., 1: even indices train, odd ones are held out
    steps: int = 200
    batch: int = 32
    lr: float = 5e-3
    amplitude: float = 1.5  # a: how strongly the field depends on t


SIZES = {"quick": TaskSize(), "paper": TaskSize(channels=64, steps=3000, train_paths=1024, test_paths=256)}


@dataclass(frozen=True)
class Setting:
    """One row: a name, the ODE function's config fields, and whether t is fixed at ½ (the time-blind control)."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    autonomous: bool = False


def settings(channels: int) -> list[Setting]:
    """Each norm with and without the positional map, and with positional + zero operand bias; the control."""
    half = channels // 2
    norms: list[tuple[str, dict[str, Any]]] = [
        ("BN", {"norm": "batch"}), ("IN = GN(G=C)", {"norm": "instance"}),
        (f"GN({half}) 2 ch/group", {"norm": "group", "groups": half}),
        ("GN(1)", {"norm": "group", "groups": 1}), ("no norm", {"norm": "none"})]
    rows = []
    for name, changes in norms:
        rows += [Setting(name, changes), Setting(f"{name} + pos", {**changes, "positional": "linear"})]
        if changes["norm"] != "none":  # zero operand bias (fix 2) matters where a norm follows the conv
            zero = {**changes, "positional": "linear", "operand_bias": "zero"}
            rows.append(Setting(f"{name} + pos + zero bias", zero))
    return [*rows, Setting("control: no norm, t ≡ ½", {"norm": "none"}, autonomous=True)]


class Field:
    """The target vector field v(t, z) of one task, with its fixed pattern drawn from ``seed``."""

    def __init__(self, task: str, size: TaskSize, seed: int = 0) -> None:
        choice("task", task, TASKS)
        self.task, self.a = task, size.amplitude
        c, s = size.channels, size.size
        if task == "per-channel":
            self.pattern = torch.tensor([(-1.0) ** i for i in range(c)]).view(1, c, 1, 1)
        else:
            q = torch.randn(1, 1, s, s, generator=torch.Generator().manual_seed(seed))
            self.pattern = (q - q.mean()) / q.std()
        self.dims = (1, 2, 3) if task == "per-channel" else (2, 3)

    def __call__(self, t: float | torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = z + self.a * (2 * torch.as_tensor(t, dtype=z.dtype) - 1) * self.pattern
        return (h - h.mean(self.dims, keepdim=True)) / h.std(self.dims, keepdim=True, unbiased=False).add(1e-5)

    def time_average(self, z: torch.Tensor) -> torch.Tensor:
        """v̄(z): v averaged over t ∈ [0, 1], the best field that ignores t (v turns sharply where a sum crosses 0)."""
        return t_average(lambda t: self(t, z), 129)


def t_average(fn: Any, points: int) -> torch.Tensor:
    """∫₀¹ fn(t) dt by the trapezoid rule on ``points`` equally spaced times."""
    w = [1.0 / (points - 1)] * points
    w[0] = w[-1] = 0.5 / (points - 1)
    return sum(wi * fn(ti) for wi, ti in zip(w, torch.linspace(0.0, 1.0, points).tolist()))


def paths(v: Any, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """States z(t_k) of dz/dt = v(t, z) from z0 (dopri5, tight tolerances): (K, N, C, H, W)."""
    from torchdiffeq import odeint

    with torch.no_grad():
        return odeint(v, z0, times, rtol=1e-5, atol=1e-5)


@dataclass
class Problem:
    """One task drawn for one seed: the field, its trajectories (train / held out) and held-out endpoints."""

    target: Field
    times: torch.Tensor
    train_states: torch.Tensor  # (K, N_train, C, H, W)
    test_states: torch.Tensor   # (K, N_test, C, H, W)
    ends: torch.Tensor          # z_v(1) from the held-out z(0)
    blind_ends: torch.Tensor    # z_v̄(1): the best time-blind flow from the same z(0)


@lru_cache(maxsize=1)  # cells run task → seed → setting: consecutive cells in one process share the problem
def make_problem(task: str, size: TaskSize, seed: int) -> Problem:
    """Draw the initial states and the pattern from ``seed`` and solve the true and time-blind flows."""
    gen = torch.Generator().manual_seed(1000 + seed)
    target = Field(task, size, seed)
    shape = (size.channels, size.size, size.size)
    z_train = torch.randn(size.train_paths, *shape, generator=gen)
    z_test = torch.randn(size.test_paths, *shape, generator=gen)
    times = torch.linspace(0.0, 1.0, size.grid)
    test_states = paths(target, z_test, times)
    blind = paths(lambda t, z: target.time_average(z), z_test, times[[0, -1]])[-1]
    return Problem(target, times, paths(target, z_train, times), test_states, test_states[-1], blind)


def needs_time_cell(task: str, setting: Setting, seed: int, size: TaskSize) -> dict[str, Any]:
    """One cell: draw (or reuse) the task's problem for ``seed``, then train and evaluate ``setting`` on it."""
    return run_one(make_problem(task, size, seed), setting, seed, size)


def run_one(problem: Problem, setting: Setting, seed: int, size: TaskSize) -> dict[str, Any]:
    """Train one ODE function on one problem and evaluate it on held-out times and initial states."""
    gen = torch.Generator().manual_seed(2000 + seed)
    torch.manual_seed(seed)
    target, times, train_states, test_states = problem.target, problem.times, problem.train_states, problem.test_states
    task = target.task
    train_k, test_k = list(range(0, size.grid, 2)), list(range(1, size.grid, 2))
    func = ODEFunc(size.channels, TimeAware(**setting.changes), size=(size.size, size.size))
    opt = torch.optim.Adam(func.parameters(), lr=size.lr)
    t0 = time.perf_counter()
    func.train()
    for _ in range(size.steps):  # one t per batch, as in a solve
        k = train_k[int(torch.randint(len(train_k), (1,), generator=gen))]
        idx = torch.randint(size.train_paths, (size.batch,), generator=gen)
        x, t = train_states[k, idx], times[k]
        loss = F.mse_loss(func(0.5 if setting.autonomous else t, x), target(t, x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    func.eval()
    result: dict[str, Any] = {"train_s": train_s, "train_loss": loss.item()}
    with torch.no_grad():
        xs, ts = test_states[test_k], times[test_k]
        truth = torch.stack([target(t, x) for t, x in zip(ts, xs)])
        change = truth - torch.stack([target.time_average(x) for x in xs])
        pred = torch.stack([func(0.5 if setting.autonomous else t, x) for t, x in zip(ts, xs)])
        # the model's own t-average on the same states: what of f changes with t, set against what of v does
        own = torch.stack([_time_average(func, x, setting.autonomous) for x in xs])
        frozen = torch.stack([func(0.5, x) for x in xs])
    scale = change.pow(2).mean()
    result["unexplained"] = ((pred - own - change).pow(2).mean() / scale).item()
    result["fit_error"] = ((pred - truth).pow(2).mean() / scale).item()  # not "error": a failed cell's line
    result["frozen"] = ((frozen - truth).pow(2).mean() / scale).item()
    if task == "spatial":  # the interior, away from the border that zero padding lets t into
        inner = (slice(None),) * 3 + (slice(1, -1), slice(1, -1))
        result["unexplained_interior"] = ((pred - own - change)[inner].pow(2).mean()
                                          / change[inner].pow(2).mean()).item()
    result.update(_endpoint(func, problem, setting.autonomous))
    result["survival"] = _survival(func, test_states[size.grid // 2])
    return result


def _time_average(func: nn.Module, z: torch.Tensor, autonomous: bool) -> torch.Tensor:
    """f̄(z): the trained function averaged over t ∈ [0, 1] (17 points: it is smooth in t where v is)."""
    return t_average(lambda t: func(0.5 if autonomous else t, z), 17)


class _Frozen(nn.Module):
    """f(½, z) for every t: the autonomous control as an ODE function."""

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func = func

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.func(0.5, z)


def _endpoint(func: nn.Module, problem: Problem, autonomous: bool) -> dict[str, float]:
    """Endpoint error of the model's solve relative to the best time-blind flow's; the solve's NFE."""
    block = ODEBlock(_Frozen(func) if autonomous else func, SolverOptions(adjoint=False))
    with torch.no_grad():
        z1 = block(problem.test_states[0])
    gap = (problem.ends - problem.blind_ends).flatten(1).norm(dim=1)
    err = (z1 - problem.ends).flatten(1).norm(dim=1) / gap
    return {"endpoint": err.mean().item(), "nfe": float(block.stats.nfe_forward)}


def _survival(func: ODEFunc, z: torch.Tensor) -> float | None:
    """The audit's survival after the time injections (train mode, one t per call, as in training)."""
    from ..awareness import audit, survival_after_injection

    report = audit(func, z, torch.linspace(0.0, 1.0, 8), call="tx", mode="train")
    return survival_after_injection(func, report)


METRICS = {"unexplained": "time part unexplained ↓", "fit_error": "error", "frozen": "error at t ≡ ½",
           "endpoint": "endpoint err ↓", "nfe": "NFE", "survival": "survival"}


def node_needs_time(preset: str, seeds: int, out: Path, data: str | None,
                    sizes: dict[str, TaskSize] | None = None, rows: Sequence[Setting] | None = None,
                    executor: Executor | None = None) -> str:
    """Run every task × setting × seed cell not yet done on ``executor`` (None: here, one by one); writes and
    returns table.md and needs-time.png."""
    if data is not None:
        raise ValueError(f"--data {data!r} is not allowed for node-needs-time: its data are generated trajectories")
    size = (sizes or SIZES)[preset]
    out = Path(out)
    rows = list(rows or settings(size.channels))
    started = time.perf_counter()
    cells = [Cell(f"{task}/{setting.name}/seed={seed}/{preset}",
                  {"size": size.__dict__, "changes": setting.changes, "autonomous": setting.autonomous},
                  partial(needs_time_cell, task, setting, seed, size),
                  {"task": task, "setting": setting.name, "seed": seed, "preset": preset})
             for task in TASKS for seed in range(seeds) for setting in rows]
    everything = run_sweep(out, cells, executor).records([c.key for c in cells])
    records = [r for r in everything if "error" not in r]
    tables = []
    for task in TASKS:
        part = [r for r in records if r["task"] == task]
        metrics = dict(METRICS)
        if task == "spatial":
            metrics = {"unexplained": METRICS["unexplained"], "unexplained_interior": "interior ↓",
                       **{k: v for k, v in METRICS.items() if k != "unexplained"}}
        tables.append(markdown_table(part, group="setting", metrics=metrics, order=[s.name for s in rows],
                                     title=f"node-needs-time ({preset}): {task} time dependence"))
    note = (f"\nHeld-out times (odd points of a {size.grid}-point grid) and initial states; seeds 0..{seeds - 1}, "
            f"mean ± std. C = {size.channels}, {size.size}×{size.size}, {size.steps} Adam steps. "
            "time part unexplained: share of the target's variation over t that the model's variation over t "
            "misses (1 = ignores t); error: held-out squared error / time variance of the target; error at t ≡ ½: "
            "the same with the trained function evaluated at t = ½; endpoint err: ‖z(1) − true z(1)‖ / ‖best "
            "time-blind z(1) − true z(1)‖ (dopri5, rtol = atol = 1e-3), NFE of that solve; survival: the audit. "
            "Wall time of this invocation: "
            f"{time.perf_counter() - started:.0f} s (runs already done are not redone).\n"
            + "".join(f"\nfailed: {r['key']} ({r['error']})\n" for r in everything if "error" in r))
    table = "\n".join(tables) + note
    write_table(out / "table.md", table)
    _plot(records, rows, out / "needs-time.png")
    return table


def _plot(records: list[dict[str, Any]], rows: Sequence[Setting], path: Path) -> None:
    """Held-out unexplained fraction per setting, one bar group per task, error bars = std over seeds."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from ..io import atomic_write

    names = [s.name for s in rows]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.4
    for i, task in enumerate(TASKS):
        means, stds = [], []
        for name in names:
            vals = [r["unexplained"] for r in records if r["task"] == task and r["setting"] == name
                    and math.isfinite(r["unexplained"])]
            means.append(statistics.fmean(vals) if vals else math.nan)
            stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        ax.bar([j + (i - 0.5) * width for j in range(len(names))], means, width, yerr=stds, capsize=2, label=task)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("held-out time variance unexplained")
    ax.set_title("NODE function on a task that needs time (1 = time-blind)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
