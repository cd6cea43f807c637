"""The audit's result: one row per normalization layer, as a table, a JSON-safe dict or a bar chart."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
        return {
            "verdicts": self.counts(),
            "output_time_share": _safe(self.output_time_share),
            "output_dt": _safe(self.output_dt),
            "thresholds": {"vanished_below": VANISHED_BELOW, "alive_from": ALIVE_FROM},
            **{key: _safe(value) for key, value in self.settings.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN and inf become None): ``{"layers": [...], "summary": {...}}``."""
        return {"layers": [{k: _safe(v) for k, v in asdict(layer).items()} for layer in self.layers],
                "summary": self.summary()}

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
        """Bar chart of survival per layer (log scale, thresholds drawn), written atomically as ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write plot {str(path)!r}: folder {str(path.parent)!r} does not exist")
        colors = {"alive": "tab:green", "weak": "tab:orange", "vanished": "tab:red", "no time": "tab:gray"}
        shown = [a for a in self.layers if math.isfinite(a.survival)]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(self.layers) + 2), 3.6))
        try:
            names = [a.name for a in self.layers]
            floor = min([1e-6, *(a.survival for a in shown if a.survival > 0)])
            ax.bar(names, [max(a.survival, floor) if math.isfinite(a.survival) else 0.0 for a in self.layers],
                   color=[colors.get(a.verdict, "tab:blue") for a in self.layers])
            ax.set_yscale("log")
            ax.axhline(VANISHED_BELOW, color="tab:red", ls="--", lw=0.8)
            ax.axhline(ALIVE_FROM, color="tab:green", ls="--", lw=0.8)
            ax.set_ylabel("survival S = SNR out / SNR in")
            ax.set_title(f"time survival per layer ({self.settings.get('batching')} t, {self.settings.get('mode')})")
            ax.tick_params(axis="x", labelrotation=90, labelsize=7)
            fig.tight_layout()
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".png", dir=path.parent)
            os.close(fd)
            try:
                fig.savefig(tmp, format=(path.suffix.lstrip(".") or "png"))
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        finally:
            plt.close(fig)
        return path


def _safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _num(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value == 0 or math.isinf(value):
        return str(value)
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
