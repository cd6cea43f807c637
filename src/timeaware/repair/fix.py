"""``fix(model)``: apply the paper's three fixes to an existing model, with a before/after audit.

Where to act comes from running the model (``awareness.trace_time``), for any family: a site is a
time offset added before a normalization. Scale-shift / adaptive-norm models have none: time enters
after the norm and ``fix`` says that nothing needs fixing.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..awareness import AuditReport, LayerAudit, audit
from ..awareness.audit import as_timesteps
from ..awareness.norms import groups_of
from ..awareness.trace import TimeTrace, trace_time
from ..calling import ModelCall, model_dtype, unwrapped
from ..specs import describe
from ..validate import check_int, check_positive, check_type
from .surgery import add_positional, regroup, zero_operand_bias

POSITIONAL_FORMS = ("linear", "mlp")
MAX_SAMPLES = 4096  # random inputs fix makes for its trace and audits; more says nothing new and may not fit


@dataclass
class FixResult:
    """The fixed model, what changed, what was asked but does not apply (``skipped``), the sites, and the audit
    before and after (same call, mode and inputs)."""

    model: nn.Module
    changes: list[str]
    options: dict[str, Any]
    call: ModelCall
    trace: TimeTrace
    before: AuditReport | None = None
    after: AuditReport | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return self.trace.needs_fix

    def survival(self) -> list[tuple[str, LayerAudit, LayerAudit]]:
        """(norm after a time injection, its audit row before, after) for each site."""
        if self.before is None or self.after is None:
            return []
        before = {row.name: row for row in self.before.layers}
        after = {row.name: row for row in self.after.layers}
        return [(s.norm, before[s.norm], after.get(s.norm) or after[_wrapped(s.norm)])
                for s in self.trace.sites if s.norm in before and (s.norm in after or _wrapped(s.norm) in after)]

    def to_dict(self) -> dict[str, Any]:
        sites = [{"norm": n, "survival_before": b.survival, "survival_after": a.survival,
                  "interior_survival_before": b.interior_survival, "interior_survival_after": a.interior_survival,
                  "verdict_before": b.verdict, "verdict_after": a.verdict} for n, b, a in self.survival()]
        return {"options": self.options, "call": self.call.to_dict(), "changes": self.changes,
                "skipped": self.skipped, "sites": sites,
                "trace": self.trace.explain(),
                "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None}

    def __str__(self) -> str:
        lines = [self.trace.explain(), f"fix: {len(self.changes)} change(s)"] + [f"  {c}" for c in self.changes]
        lines += [f"  not applied: {s}" for s in self.skipped]
        rows = self.survival()
        if rows:
            mode = self.before.settings.get("mode") if self.before else "?"
            width = max(len(n) for n, _, _ in rows)
            lines.append(f"  {'norm after time injection':<{width}}  survival (interior) before -> after, "
                         f"audited as {self.call.name}, norms in {mode} mode")
            lines += [f"  {n:<{width}}  {b.judged_survival:>8.4f} ({b.verdict}) -> {a.judged_survival:.4f} "
                      f"({a.verdict})" for n, b, a in rows]
        return "\n".join(lines)


def fix(model: nn.Module, example: torch.Tensor | None = None, *, positional: bool | str = False,
        zero_operand_bias: bool = False, groups: int | None = None, preserve_output: bool = True,
        call: ModelCall | None = None, extras: dict[str, torch.Tensor] | None = None,
        timesteps: torch.Tensor | None = None, check: bool = True, inplace: bool = False,
        samples: int = 8, seed: int = 0) -> FixResult:
    """Apply the paper's fixes to ``model`` where a time offset is added before a normalization.

    positional         True / "linear" / "mlp": a positional timestep embedding at every unprotected site
                       (a model given a time embedding instead of t always gets the MLP form on it)
    zero_operand_bias  zero the bias of each site's operand conv (changes the output)
    groups             regroup every group norm (``norms.groups_of``) to this many groups, keeping its parameters;
                       sites whose norm has no groups are listed in ``result.skipped``
    preserve_output    start the positional maps at zero so the output is unchanged at the moment of the fix
    call               how the model is called (default: ``specs.describe``); ``example``/``extras`` the
                       inputs (default: ``samples`` random ones of the call's shape, seeded)
    check              audit before and after, in the call's mode, on the same inputs and timesteps
    Nothing is changed when the model has no site (``result.needed`` is False) or a request is invalid.
    """
    form = _form(positional)
    model = unwrapped(model)  # fix the module a compiled / DataParallel wrapper runs
    if call is not None:  # the fixed model reads t from each of its calls as a ModelCall says; a function cannot
        check_type("call", call, ModelCall)
    if groups is not None:
        check_positive("groups", groups)
    for name, flag in (("zero_operand_bias", zero_operand_bias), ("preserve_output", preserve_output),
                       ("check", check), ("inplace", inplace)):
        check_type(name, flag, bool)
    check_int("samples", samples, 2, MAX_SAMPLES)
    check_int("seed", seed, 0)
    if example is not None:
        check_type("example", example, torch.Tensor)
        if example.ndim < 1 or example.shape[0] < 2:
            raise ValueError(f"example has shape {tuple(example.shape)}; allowed: (N, ...) with N >= 2 inputs "
                             "(the tracer compares two)")
    if timesteps is not None:
        check_type("timesteps", timesteps, torch.Tensor)
        as_timesteps(timesteps, model_dtype(model))
    if not (form or zero_operand_bias or groups):
        raise ValueError("nothing to fix: ask for positional, zero_operand_bias and/or groups")
    call = call or describe(model)
    if example is None:
        example, made = call.example(samples, seed, model_dtype(model))
        extras = {**made, **(extras or {})}
    extras = extras or {}
    timesteps = call.timesteps(8) if timesteps is None else timesteps
    trace = trace_time(model, call, example, timesteps[[0, -1]], extras)
    options: dict[str, Any] = {"positional": form, "zero_operand_bias": zero_operand_bias, "groups": groups,
               "preserve_output": preserve_output}

    def measure(m: nn.Module) -> AuditReport | None:
        return audit(m, example, timesteps, call=call, extras=extras, mode=call.mode) if check else None

    before = measure(model) if trace.sites else None
    if before is not None:
        _trust_the_audit(trace, before)
    if not trace.needs_fix:
        return FixResult(model, [], options, call, trace, before)
    if groups:  # validate before any change
        regroup(copy.deepcopy(model), groups)
    if not inplace:
        model = copy.deepcopy(model)
    options["sites"] = _site_modules(trace)
    options["operands"] = sorted({s.operand for s in trace.sites if s.operand})
    changes = apply_fix(model, options, call, preserve_output, zero_operand_bias)
    return FixResult(model, changes, options, call, trace, before, measure(model), _ungrouped(model, trace, groups))


def apply_fix(model: nn.Module, options: dict[str, Any], call: ModelCall, preserve: bool = True,
              zero_bias: bool = False) -> list[str]:
    """Apply a recorded fix (also to rebuild a saved fixed model, where no data is needed); one line per change."""
    changes: list[str] = []
    groups = options.get("groups")
    if groups:
        regrouped = regroup(model, groups)
        if regrouped:
            changes.append(f"{len(regrouped)} GroupNorm layer(s) regrouped to {groups} group(s), parameters kept")
    if zero_bias:
        zeroed = zero_operand_bias(model, options.get("operands", []))
        changes += [f"{name}: operand conv bias zeroed" for name in zeroed]
    form = options.get("positional")
    if form:
        sites = {name: tuple(size) for name, size in options.get("sites", {}).items()}
        kind = "MLP on the time embedding" if call.convention == "embedding" else form
        for name in add_positional(model, sites, call, form, preserve):
            size = "x".join(map(str, sites[name]))
            start = ", starts at 0" if preserve else ""
            changes.append(f"{name}: positional timestep embedding {size} ({kind}{start})")
    return changes


def _trust_the_audit(trace: TimeTrace, before: AuditReport) -> None:
    """A site the tracer took for protected (a term that may vary over space) whose norm the audit reads as
    vanished is not protected: the term did not vary (SVD's per-frame time projection, the same for every frame)."""
    verdicts = {row.name: row.verdict for row in before.layers}
    trace.sites = [dataclasses.replace(site, protected=False)
                   if site.protected and verdicts.get(site.norm) == "vanished" else site for site in trace.sites]


def _ungrouped(model: nn.Module, trace: TimeTrace, groups: int | None) -> list[str]:
    """The sites whose normalization ``groups`` cannot change: it has no groups (InstanceNorm, BatchNorm …)."""
    if not groups:
        return []
    names = dict.fromkeys(site.norm.split("#")[0] for site in trace.sites)
    norms = {name: model.get_submodule(name) for name in names}
    return [f"{name}: groups={groups} does not apply to {type(norm).__name__} (it has no groups)"
            for name, norm in norms.items() if groups_of(getattr(norm, "norm", norm)) is None]


def _wrapped(site: str) -> str:
    """The audit's name for a site's norm once wrapped with a positional map: <module>.norm[#i], input h + p(t)."""
    module, mark, repeat = site.partition("#")
    return f"{module}.norm{mark}{repeat}"


def _site_modules(trace: TimeTrace) -> dict[str, list[int]]:
    """Norm module → its input's spatial size, for the unprotected sites; a module called several times per
    pass (``norm#1`` …: tied or recurrent blocks) is one module to wrap, so its calls must share a size."""
    sizes: dict[str, list[int]] = {}
    for site in trace.sites:
        if site.protected:
            continue
        module = site.norm.split("#")[0]
        if sizes.setdefault(module, list(site.size)) != list(site.size):
            raise ValueError(f"{module} is called on maps of sizes {sizes[module]} and {list(site.size)} in one pass; "
                             "one positional map cannot serve both: fix without positional, or wrap it yourself")
    return sizes


def _form(positional: bool | str | None) -> str | None:
    if positional is False or positional is None:
        return None
    if positional is True:
        return "linear"
    if positional not in POSITIONAL_FORMS:
        raise ValueError(f"positional={positional!r} is not allowed; choose True, False, 'linear' or 'mlp'")
    return positional
