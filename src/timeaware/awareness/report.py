"""The audit's result: one row per normalization layer, as a table, a JSON-safe dict or a bar chart."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write, json_safe
from .metrics import ALIVE_FROM, VANISHED_BELOW


@dataclass(frozen=True)
class LayerAudit:
    """How much of the time signal one layer lets through.

    survival           S = SNR(output) / SNR(input); NaN when the input carries no time ("no time")
    interior_survival  S without the 1-pixel border of a (C, H, W) map, where zero padding leaks t;
                       the verdict uses it when it exists (NaN for other shapes)
    time_share         η² of the output: the share of its variance explained by t (0..1)
    snr_in, snr_out    time variance / sample variance of the input and output
    channels_per_unit  distinct per-channel offsets one normalization unit sees (1: BN, IN, GN with G = C)
    """

    name: str
    type: str
    survival: float
    interior_survival: float
    time_share: float
    snr_in: float
    snr_out: float
    channels_per_unit: int | None
    verdict: str

    @property
    def judged_survival(self) -> float:
        """The survival the verdict reads: without the zero-padding border when the layer has one."""
        return self.survival if math.isnan(self.interior_survival) else self.interior_survival


@dataclass
class AuditReport:
    """Per-layer survival of t plus the model output's dependence on t; see docs/audit.md."""

    layers: list[LayerAudit]
    output_time_share: float
    output_dt: float | None
    settings: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """How many layers got each verdict."""
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.verdict] = out.get(layer.verdict, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        return json_safe({
            "verdicts": self.counts(),
            "output_time_share": self.output_time_share,
            "output_dt": self.output_dt,
            "thresholds": {"vanished_below": VANISHED_BELOW, "alive_from": ALIVE_FROM},
            **self.settings,
        })

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN and inf become None): ``{"layers": [...], "summary": {...}}``."""
        return {"layers": [json_safe(asdict(layer)) for layer in self.layers], "summary": self.summary()}

    def __str__(self) -> str:
        head = ("layer", "type", "ch/unit", "SNR in", "SNR out", "survival", "interior", "time share", "verdict")
        rows = [(a.name, a.type, "-" if a.channels_per_unit is None else str(a.channels_per_unit), _num(a.snr_in),
                 _num(a.snr_out), _num(a.survival), _num(a.interior_survival), _num(a.time_share), a.verdict)
                for a in self.layers]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i in (0, 1, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 .rstrip() for r in [head, *rows]]
        counts = ", ".join(f"{n} {v}" for v, n in self.counts().items()) or "no layers hooked"
        dt = "skipped (integer t)" if self.output_dt is None else _num(self.output_dt)
        s = self.settings
        lines.append(f"{len(self.layers)} layers: {counts}; output time share {_num(self.output_time_share)}, "
                     f"mean |d out/dt| {dt} (K={s.get('K')}, N={s.get('N')}, batching={s.get('batching')}, "
                     f"mode={s.get('mode')})")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Bar chart of the survival each verdict reads (interior where defined), written atomically as ``path``.

        Bars are coloured by verdict with the thresholds drawn; a black tick marks the whole-map
        survival where it differs (the zero-padding border leak); "no time" layers get a label.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write plot {str(path)!r}: folder {str(path.parent)!r} does not exist")
        colors = {"alive": "tab:green", "weak": "tab:orange", "vanished": "tab:red", "no time": "tab:gray"}
        read = [a.judged_survival for a in self.layers]
        finite = [v for v in [*read, *(a.survival for a in self.layers)] if math.isfinite(v) and v > 0]
        floor = min([VANISHED_BELOW / 10, *finite]) / 2
        x = range(len(self.layers))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(self.layers) + 2.5), 4.0))
        try:
            ax.bar(x, [max(v, floor) if math.isfinite(v) else 0.0 for v in read], bottom=0,
                   color=[colors.get(a.verdict, "tab:blue") for a in self.layers])
            whole = [(i, a.survival) for i, a in enumerate(self.layers)
                     if math.isfinite(a.survival) and not math.isnan(a.interior_survival)]
            ax.scatter([i for i, _ in whole], [max(v, floor) for _, v in whole], marker="_", s=200, color="black",
                       label="whole map (with border)", zorder=3)
            for i, a in enumerate(self.layers):
                if a.verdict == "no time":
                    ax.text(i, floor * 1.2, "no time", ha="center", va="bottom", rotation=90, fontsize=7)
            ax.set_yscale("log")
            ax.set_ylim(floor, max([1.5, *(1.5 * v for v in finite)]))
            ax.axhline(VANISHED_BELOW, color="tab:red", ls="--", lw=0.8)
            ax.axhline(ALIVE_FROM, color="tab:green", ls="--", lw=0.8)
            ax.set_xticks(list(x), [a.name for a in self.layers], rotation=90, fontsize=7)
            ax.set_ylabel("survival S (interior)")
            ax.set_title(f"t survival, {self.settings.get('batching')} t, {self.settings.get('mode')}", fontsize=10)
            if whole:
                ax.legend(fontsize=7, loc="lower right")
            fig.tight_layout()
            atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
        finally:
            plt.close(fig)
        return path


def _num(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value == 0 or math.isinf(value):
        return str(value)
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
