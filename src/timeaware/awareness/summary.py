"""One number per model: the survival of t through the norms that follow a time injection."""

from __future__ import annotations

import math

from torch import nn

from .report import AuditReport
from .static import find_vanishing_sites


def survival_after_injection(model: nn.Module, report: AuditReport) -> float | None:
    """Mean judged survival over the norms the static check pairs with a time injection (None if none)."""
    norms = {site.norm for site in find_vanishing_sites(model)}
    values = [layer.judged_survival for layer in report.layers if layer.name in norms]
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else None
