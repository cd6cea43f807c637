"""Diagnosis: how much of the timestep survives each normalization layer of a time-dependent network.

``audit`` measures it by running the model (hooks, a documented metric); ``find_vanishing_sites``
finds the risky pattern (a per-channel time offset followed by a channel-wise norm) without data.
See docs/audit.md for the metric, the verdict thresholds and the heuristics.
"""

from .audit import audit
from .report import AuditReport, LayerAudit
from .static import Site, find_vanishing_sites
from .summary import survival_after_injection

__all__ = ["AuditReport", "LayerAudit", "Site", "audit", "find_vanishing_sites",
           "survival_after_injection"]
