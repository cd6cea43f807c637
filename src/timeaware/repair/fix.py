"""``fix(model, example)``: apply the paper's three fixes to an existing model, with a before/after audit."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..awareness import AuditReport, LayerAudit, audit, find_vanishing_sites
from ..specs import CallFn, default_timesteps, detect_call
from .surgery import EmbeddingMappedNorm, Target, TimeMapped, add_positional, regroup, resolve

POSITIONAL_FORMS = ("linear", "mlp")


@dataclass
class FixResult:
    """The fixed model, what changed, and the audit before and after."""

    model: nn.Module
    changes: list[str]
    options: dict[str, Any]
    before: AuditReport | None = None
    after: AuditReport | None = None
    sites: list[str] = field(default_factory=list)

    def survival(self) -> list[tuple[str, LayerAudit, LayerAudit]]:
        """(norm after a time injection, its audit row before, after) for each site."""
        if self.before is None or self.after is None:
            return []
        before = {row.name: row for row in self.before.layers}
        after = {row.name: row for row in self.after.layers}
        # a norm wrapped by the fix (diffusers resnets) is hooked as <name>.norm afterwards
        return [(n, before[n], after[n] if n in after else after[f"{n}.norm"]) for n in self.sites if n in before]

    def to_dict(self) -> dict[str, Any]:
        sites = [{"norm": n, "survival_before": b.survival, "survival_after": a.survival,
                  "verdict_before": b.verdict, "verdict_after": a.verdict} for n, b, a in self.survival()]
        return {"options": self.options, "changes": self.changes, "sites": sites,
                "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None}

    def __str__(self) -> str:
        lines = [f"fix: {len(self.changes)} change(s)"] + [f"  {c}" for c in self.changes]
        rows = self.survival()
        if rows:
            width = max(len(n) for n, _, _ in rows)
            lines.append(f"  {'norm after time injection':<{width}}  survival before -> after")
            lines += [f"  {n:<{width}}  {b.survival:>8.4f} ({b.verdict}) -> {a.survival:.4f} ({a.verdict})"
                      for n, b, a in rows]
        return "\n".join(lines)


def fix(model: nn.Module, example: torch.Tensor, *, positional: bool | str = False, zero_operand_bias: bool = False,
        groups: int | None = None, preserve_output: bool = True, timesteps: torch.Tensor | None = None,
        call: str | CallFn | None = None, check: bool = True, inplace: bool = False) -> FixResult:
    """Apply the paper's fixes to ``model`` where time is added per channel before a normalization.

    positional         True / "mlp" / "linear": add a positional timestep embedding at every unprotected
                       site (diffusers resnets always use the MLP branch on their time embedding)
    zero_operand_bias  zero the biases of the operand-branch convs at each site (changes the output)
    groups             regroup every GroupNorm to this many groups, copying affine parameters
    preserve_output    start the positional maps at zero so the output is unchanged at the moment of the fix
    example            an input batch (N, ...) used to find each site's H×W and for the audits
    check              audit before and after (K timesteps, shared batching, eval mode)
    Anything ``fix`` does not understand is refused with a ValueError; nothing is changed then.
    """
    form = _form(positional)
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0):
        raise ValueError(f"groups={groups!r} is not allowed; it must be a positive integer")
    if not (form or zero_operand_bias or groups):
        raise ValueError("nothing to fix: ask for positional, zero_operand_bias and/or groups")
    sites = find_vanishing_sites(model)
    if not sites:
        raise ValueError(f"fix() found no time injection it understands in {type(model).__name__}; supported: "
                         "diffusers ResnetBlock2D (time_embedding_norm='default'), timeaware TimeConv2d/ConcatConv2d/"
                         "ODEFunc, torchdiffeq-style ConcatConv2d/Conv2dTime; nothing was changed")
    targets = [resolve(model, s.injector) for s in sites]  # raises before any change
    call = call or detect_call(model)
    timesteps = default_timesteps(model) if timesteps is None else timesteps
    before = audit(model, example, timesteps, call=call, mode="eval") if check else None
    if not inplace:
        model = copy.deepcopy(model)
        targets = [resolve(model, s.injector) for s in sites]
    sizes = _sizes(model, targets, example, timesteps, call)
    changes = _apply(model, targets, sites, sizes, form, zero_operand_bias, groups, preserve_output)
    after = audit(model, example, timesteps, call=call, mode="eval") if check else None
    options = {"positional": form, "zero_operand_bias": zero_operand_bias, "groups": groups,
               "preserve_output": preserve_output, "sizes": {t.name: list(sizes[t.name]) for t in targets}}
    return FixResult(model, changes, options, before, after, [s.norm for s in sites])


def apply_fix(model: nn.Module, options: dict[str, Any]) -> nn.Module:
    """Redo the structural part of a recorded fix (to load a saved fixed model); no data needed."""
    sites = find_vanishing_sites(model)
    targets = [resolve(model, s.injector) for s in sites]
    sizes = {k: tuple(v) for k, v in options["sizes"].items()}
    _apply(model, targets, sites, sizes, options["positional"], False, options["groups"], True)
    return model


def _apply(model: nn.Module, targets: list[Target], sites: list, sizes: dict[str, tuple[int, int]], form: str | None,
           zero_operand_bias: bool, groups: int | None, preserve: bool) -> list[str]:
    """Apply the fixes; returns one line per changed site, plus one for the regrouping."""
    changes: list[str] = []
    if groups:
        regrouped = regroup(model, groups)
        if regrouped:
            changes.append(f"{len(regrouped)} GroupNorm layers regrouped to {groups} group(s), affine copied")
    for target, site in zip(targets, sites):
        done = []
        if zero_operand_bias:
            for conv in target.operand_convs():
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
            done.append("operand conv biases zeroed")
        if form and not (site.protected or _already_mapped(target)):
            if target.name not in sizes:
                raise ValueError(f"{target.name}: no feature-map size recorded for the positional map")
            add_positional(model, target, sizes[target.name], form=form, preserve=preserve)
            h, w = sizes[target.name]
            kind = "MLP on the block's time embedding" if target.kind == "diffusers-resnet" else form
            done.append(f"positional timestep embedding {h}x{w} ({kind}{', starts at 0' if preserve else ''})")
        if done:
            changes.append(f"{target.name}: {'; '.join(done)}")
    return changes


def _already_mapped(target: Target) -> bool:
    return (isinstance(getattr(target.module, "norm2", None), EmbeddingMappedNorm)
            or getattr(target.module, "time_map", None) is not None or isinstance(target.module, TimeMapped))


def _form(positional: bool | str) -> str | None:
    if positional is False or positional is None:
        return None
    if positional is True:
        return "linear"
    if positional not in POSITIONAL_FORMS:
        raise ValueError(f"positional={positional!r} is not allowed; choose True, False, 'linear' or 'mlp'")
    return positional


def _sizes(model: nn.Module, targets: list[Target], example: torch.Tensor, timesteps: torch.Tensor,
           call: str | CallFn) -> dict[str, tuple[int, int]]:
    """Each site's output H×W, from one forward pass with hooks."""
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            sizes.setdefault(name, (int(out.shape[-2]), int(out.shape[-1])))
        return hook

    handles = [(t.module.get_submodule("conv1") if t.kind == "diffusers-resnet" else t.module)
               .register_forward_hook(record(t.name)) for t in targets]
    t = timesteps[len(timesteps) // 2]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if callable(call):
                call(model, example, t.expand(example.shape[0]))
            elif call == "tx":
                model(t.to(example.dtype), example)
            else:
                model(example, t.expand(example.shape[0]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sizes
