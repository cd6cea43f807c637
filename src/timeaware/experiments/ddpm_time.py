"""Does a vanished timestep embedding matter in DDPM? A deliberately time-blind U-Net beside Table 3's rows.

Rows (TimeAware fields on the preset's U-Net; ``ddpm.ROWS`` for the last four):

    time-blind      InstanceNorm everywhere = GroupNorm with one channel per group (G = C at every width):
                    each per-channel time embedding is cancelled by the norm after it, so ε_θ ignores t
    baseline, +positional, +zero bias, +fewer groups   the paper's Table 3

Each run is trained, scored (FD-classifier) and audited by ``ddpm.ddpm_fixes``; on top, its time use:
the simple loss per t-bin on held-out images with the true t, a random t′ and t + T/2 (mod T)
(``time_use.diffusion_time_use``). A denoiser that reads t loses accuracy when fed the wrong one;
a time-blind one scores the same three ways. Quick scale trains 300 steps instead of ddpm-fixes' 500 and
scores 256 DDIM-25 samples instead of 512 DDIM-50.
"""

from __future__ import annotations

import math
import statistics
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import load_images
from .ddpm import ROWS, ddpm_fixes
from .store import ResultStore, markdown_table, write_table
from .sweep import Executor
from .time_use import DDPM_TIMES, diffusion_time_use

if TYPE_CHECKING:
    from ..diffusion.unet import UNet

SETTINGS: dict[str, list[str]] = {"time-blind (GN G=C)": ["norm=instance"], **{k: v for k, v in ROWS.items()
                                                                                 if k != "scale-shift"}}
SCALE: dict[str, dict[str, Any]] = {  # training overrides and evaluation protocol per preset
    "quick": {"overrides": ("steps=300",), "evaluation": {"num": 256, "steps": 25}, "bins": 5},
    "paper": {"overrides": (), "evaluation": {}, "bins": 10},
}


def ddpm_time(preset: str, seeds: int, out: Path, data: str | None, *, overrides: tuple[str, ...] = (),
              evaluation: dict[str, Any] | None = None, progress: bool = False,
              settings: dict[str, list[str]] | None = None, images: int | None = None,
              executor: Executor | None = None) -> str:
    """Train, score, audit and measure the time use of every row × seed on ``executor`` (as ``ddpm_fixes``);
    writes table.md and time-use.png.

    ``overrides``, ``evaluation``: as ``ddpm_fixes``; ``settings`` replaces ``SETTINGS`` and ``images`` limits
    the held-out images of the time use (both for smoke runs).
    """
    scale = SCALE[preset]
    out = Path(out)
    settings = settings or SETTINGS
    ddpm_fixes(preset, seeds, out, data, overrides=(*scale["overrides"], *overrides),
               evaluation={**scale["evaluation"], **(evaluation or {})}, progress=progress, executor=executor,
               rows=settings, extra=partial(measure, bins=scale["bins"], images=images))
    records = [r for r in ResultStore(out).records() if r.get("setting") in settings and r["seed"] < seeds]
    done = [r for r in records if "error" not in r]
    table = render(done, preset, seeds) + "".join(f"\nfailed: {r['key']} ({r['error']})\n"
                                                  for r in records if "error" in r)
    write_table(out / "table.md", table)
    _plot(done, out / "time-use.png")
    return table


def measure(model: UNet, cfg: Any, *, bins: int, images: int | None) -> dict[str, Any]:
    """A cell's time use: the loss per t-bin on ``images`` held-out images with the true, a random and a shifted t."""
    test = load_images(cfg.data, "test", model.config.image_size).subset(images)
    rows = diffusion_time_use(model, test.x * 2 - 1, bins=bins, seed=cfg.seed)
    mean = {name: statistics.fmean(r[name] for r in rows) for name in DDPM_TIMES}
    return {"time_use": rows, "loss_true": mean["true"], "loss_random": mean["random"],
            "loss_shifted": mean["shifted"], "random_over_true": mean["random"] / mean["true"]}


def render(records: list[dict[str, Any]], preset: str, seeds: int) -> str:
    """The summary table (scores, audit, time use) and the per-t-bin losses, mean ± std over seeds."""
    metrics = {"fd_classifier": "FD-classifier ↓", "interior_survival_mean": "interior survival after norm (mean)",
               "loss_true": "loss, true t",
               "loss_random": "random t′", "loss_shifted": "t + T/2", "random_over_true": "random / true"}
    summary = markdown_table(records, group="setting", metrics=metrics, order=list(SETTINGS),
                             title=f"ddpm-time ({preset}): does a vanished timestep embedding matter?")
    per_bin = []
    for name in SETTINGS:
        rows = [r for r in records if r["setting"] == name]
        if not rows:
            continue
        for i, b in enumerate(rows[0]["time_use"]):
            cells = [_mean_std([r["time_use"][i][col] for r in rows]) for col in DDPM_TIMES]
            per_bin.append(f"| {name} | {b['bin']} | " + " | ".join(cells) + " |")
    bins = ["", "Loss per t-bin (held-out digits, one draw of (x_0, ε, t) per image and bin, shared by the "
            "three columns):", "", "| setting | t-bin | true t | random t′ | t + T/2 |", "|---|---|---|---|---|",
            *per_bin]
    notes = ["", f"Seeds 0..{seeds - 1}, mean ± std. survival: the audit (one t per call, eval mode), mean over "
             "the norms right after a time injection. FD-classifier is not FID (see ddpm-fixes). "
             "random / true: the loss with a random t′ over the loss with the true t, each averaged over the t-bins "
             "(1 = the denoiser does not read t)."]
    return summary + "\n".join(bins + notes) + "\n"


def _mean_std(values: list[float]) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if len(vals) > 1:
        return f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f}"
    return f"{vals[0]:.4f}" if vals else "–"


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    """Loss with a random t′ over loss with the true t, per t-bin, one line per setting (seed means)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from ..io import atomic_write

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name in SETTINGS:
        rows = [r["time_use"] for r in records if r["setting"] == name]
        if not rows:
            continue
        mids = [(b["t_lo"] + b["t_hi"]) / 2 for b in rows[0]]
        ratio = [statistics.fmean(r[i]["random"] / r[i]["true"] for r in rows) for i in range(len(mids))]
        ax.plot(mids, ratio, marker="o", label=name)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("diffusion step t (bin centre)")
    ax.set_ylabel("loss with random t′ / loss with true t")
    ax.set_title("DDPM time use (1 = t ignored)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
