"""Diagnosis: how much of the timestep survives each normalization layer of a time-dependent network.

``audit`` measures it by running the model (hooks, a documented metric); ``trace_time`` finds where t
enters by running it (a time offset added before a norm, or time after the norm); ``find_vanishing_sites``
reads the risky pattern from module registration order, without data.
See docs/audit.md for the metric, the verdict thresholds and the heuristics.
"""

from .audit import audit
from .report import AuditReport, LayerAudit
from .static import Site, find_vanishing_sites
from .summary import survival_after_injection
from .trace import TimeSite, TimeTrace, perturb_zero_init, trace_time

__all__ = ["AuditReport", "LayerAudit", "Site", "TimeSite", "TimeTrace", "audit", "find_vanishing_sites",
           "perturb_zero_init", "survival_after_injection", "trace_time"]
