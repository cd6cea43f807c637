"""The paper's Table 3 on DDPM: the three fixes added one by one, plus time injected after the norm.

Rows (each a change of TimeAware fields on the preset's U-Net):

    baseline        DDPM as published: time added per channel, then GroupNorm
    +positional     the positional timestep embedding, MLP branch (the paper's "+Inject")
    +zero bias      + zero bias on the operand convs
    +fewer groups   + GroupNorm with one group (the paper's "+Set")
    scale-shift     baseline with time applied after the norm instead (not in the paper; the common alternative)

Each run is trained, sampled (a grid per row), scored with its protocol recorded, and audited (how much
of t survives the norms; batching "shared" as in sampling). ``quick`` scores with FD-classifier, which is
not FID; ``paper`` scores FID and IS when ``TIMEAWARE_INCEPTION`` names local Inception weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..awareness import audit, survival_after_injection
from ..diffusion.metrics import Protocol
from ..io import write_json
from ..progress import say
from .store import markdown_table, write_table
from .sweep import Cell, Executor, run_sweep

ROWS: dict[str, list[str]] = {
    "baseline": [],
    "+positional": ["positional=mlp"],
    "+zero bias": ["positional=mlp", "operand_bias=zero"],
    "+fewer groups": ["positional=mlp", "operand_bias=zero", "groups=1"],
    "scale-shift": ["injection=scale_shift"],
}
PAPER = {  # Table 3 (CIFAR-10, 1.3M steps): FID ↓, IS ↑
    "baseline": {"fid": 3.238, "is": 9.507},
    "+positional": {"fid": 3.199, "is": 9.539},
    "+zero bias": {"fid": 3.122, "is": 9.549},
    "+fewer groups": {"fid": 3.074, "is": 9.603},
}
# samples scored per run, sampler and steps, per preset
EVAL = {"quick": {"num": 512, "sampler": "ddim", "steps": 50},
        "paper": {"num": 50_000, "sampler": "ddpm", "steps": 1000}}


def ddpm_fixes(preset: str, seeds: int, out: Path, data: str | None, *, overrides: tuple[str, ...] = (),
               evaluation: dict[str, Any] | None = None, progress: bool = True,
               executor: Executor | None = None, rows: dict[str, list[str]] | None = None,
               extra: Callable[[torch.nn.Module, Any], dict[str, Any]] | None = None) -> str:
    """Train, sample, score and audit every row × seed into ``out`` on ``executor`` (default: here, one by
    one); returns the table (also table.md).

    ``overrides`` are ``--set`` pairs applied to every row; ``evaluation`` changes ``EvalSettings`` fields
    of the preset's protocol (num, sampler, steps, classifier_steps): both are for smaller smoke runs.
    ``rows`` replaces ``ROWS``; ``extra(model, train_config)`` adds fields to each run's record (other sweeps
    built on this one, e.g. time use); it must pickle like the cells (a module-level function or a partial).
    """
    from ..diffusion.train import preset as make_preset

    out = Path(out)
    started = time.perf_counter()
    cells = []
    for row, changes in (rows or ROWS).items():
        for seed in range(seeds):
            unet_cfg, cfg = make_preset(preset, [*changes, *overrides, f"seed={seed}"], data=data)
            slug = f"{row.strip('+').replace(' ', '-')}-s{seed}"
            key = f"{row}/seed{seed}"
            cells.append(Cell(key, {"unet": unet_cfg.to_dict(), "train": cfg.to_dict()},
                              partial(train_and_score, unet_cfg, cfg, out, slug, preset, evaluation, progress, key,
                                      extra),
                              {"setting": row, "seed": seed, "changes": changes}))
    store = run_sweep(out, cells, executor, name="ddpm-fixes", progress=progress)
    table = render_table(store.records([c.key for c in cells]), preset, time.perf_counter() - started)
    write_table(out / "table.md", table)
    return table


def train_and_score(unet_cfg: Any, cfg: Any, out: Path, slug: str, preset: str,
                    evaluation: dict[str, Any] | None, progress: bool, key: str,
                    extra: Callable[[torch.nn.Module, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One cell: train ``out/runs/slug`` (resuming its latest checkpoint), sample, score, grid and audit it;
    ``extra(model, cfg)``'s fields join the record."""
    from ..diffusion.evaluate import EvalSettings, evaluate
    from ..diffusion.sampling import grid, load_unet, save_png
    from ..diffusion.train import train

    inception = os.environ.get("TIMEAWARE_INCEPTION")
    metrics = ("fid", "is") if preset == "paper" and inception else ("fd-classifier",)
    say(f"ddpm-fixes: training {key} ({cfg.steps} steps), then sampling, scoring and auditing it", progress)
    t0 = time.perf_counter()
    summary = train(out / "runs" / slug, unet_cfg, cfg, resume=True, progress=progress)
    t1 = time.perf_counter()
    model, _ = load_unet(out / "runs" / slug)
    settings = EvalSettings(**{**EVAL[preset], **(evaluation or {})}, metrics=metrics, seed=cfg.seed,
                            data=cfg.data, classifier=out / "classifier.safetensors",
                            inception_weights=Path(inception) if inception else None)
    scores, samples = evaluate(model, settings, progress=progress)
    save_png(out / "grids" / f"{slug}.png", grid(samples[:64]))
    audit = audit_model(model, samples[:8] * 2 - 1, out / "audits" / slug)
    record: dict[str, Any] = {"loss": summary["loss"], "train_s": t1 - t0, "eval_s": time.perf_counter() - t1,
                              "scores": scores,
                              "interior_survival_mean": audit.get("interior_survival_mean"),
                              **(extra(model, cfg) if extra else {})}
    for score in scores:
        record[score["metric"].lower().replace("-", "_")] = score["value"]
    return record


def render_table(records: list[dict[str, Any]], preset: str, seconds: float) -> str:
    """Mean ± std over seeds, the paper's FID / IS beside ours, and the protocol under the table."""
    metrics = {"fd_classifier": "FD-classifier ↓", "fid": "FID ↓", "is": "IS ↑",
               "interior_survival_mean": "interior survival after GN (mean)", "loss": "loss (last 10% of steps)"}
    table = markdown_table([r for r in records if "error" not in r], group="setting", metrics=metrics,
                           order=list(ROWS), paper=PAPER, title=f"ddpm-fixes ({preset})")
    protocols = {str(Protocol(**s["protocol"])) for r in records for s in r.get("scores", [])}
    notes = [
        "",
        "FD-classifier is the Fréchet distance in the features of a small classifier trained on the same data: "
        "it is **not FID** and is not comparable with the paper's numbers (CIFAR-10, Inception, 1.3M steps).",
        "Paper rows: +Inject = +positional, +Set = +fewer groups (G = 1). scale-shift is not in the paper.",
        "interior survival after GN (mean): the audit's survival without the 1-pixel border, averaged over the norms "
        "right after a time injection (one t per call as in sampling); audits/ROW-sSEED.json has each layer's "
        "full-map and interior survival.",
        f"Wall time of this invocation: {seconds:.0f} s (runs already done are not redone).",
        "",
        "Protocols:",
        *(f"- {p}" for p in sorted(protocols)),
        *(f"\nfailed: {r['key']} ({r['error']})" for r in records if "error" in r),
    ]
    return table + "\n".join(notes) + "\n"


def audit_model(model: torch.nn.Module, x: torch.Tensor, stem: Path) -> dict[str, Any]:
    """Audit a trained U-Net as it samples (one t per call, eval mode); write the report as JSON and PNG."""
    timesteps = torch.linspace(0, 999, 8).round().long()
    report = audit(model, x, timesteps, call="xt", batching="shared")
    result = {"interior_survival_mean": survival_after_injection(model, report), "report": report.to_dict()}
    write_json(stem.with_suffix(".json"), result)
    report.plot(stem.with_suffix(".png"))
    return result
