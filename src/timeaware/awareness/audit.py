"""Run a model on K timesteps × N inputs, hook its normalization layers and measure how much t survives each.

The audit costs K forward passes (plus one for the time derivative) and leaves the model as it
found it: training flags and buffers (BatchNorm running statistics) are restored, parameters are
untouched (every pass runs under no_grad), and the global random state is forked. Nothing is copied
off the model's device: each hook folds the layer's input and output into running sums
(``metrics.Moments``) as soon as one timestep's N inputs are complete, so a shared-t call with all
N inputs is folded in directly and only chunked or mixed batches are staged, per timestep, until
their rows are all in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..calling import ModelCall, as_call, model_dtype, output_tensor, unwrapped
from ..validate import check_positive, check_type, choice
from .metrics import Moments, survival, verdict
from .norms import channels_per_unit, select_layers
from .report import AuditReport, LayerAudit

BATCHINGS = ("shared", "mixed")
MODES = ("train", "eval", "keep")
CallFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]


def audit(model: nn.Module, x: torch.Tensor, timesteps: Sequence[float] | torch.Tensor, *,
          call: str | ModelCall | CallFn = "xt", extras: dict[str, torch.Tensor] | None = None,
          batching: str = "shared", mode: str = "eval", layers: Sequence[str] | str | None = None,
          only_layers: bool = False, derivative: bool | None = None, chunk_size: int | None = None) -> AuditReport:
    """Measure, per normalization layer, how much of the timestep signal survives it.

    model       any nn.Module; every normalization layer (``norms.is_norm``: torch's and their subclasses,
                RMSNorm, PixelNorm, adaptive norms …) is hooked, plus the modules ``layers`` names (module
                names, class names or shell patterns); with ``only_layers`` just those
    x           (N, ...) inputs of any rank, N >= 2; the same N inputs are paired with every timestep
    timesteps   K >= 2 finite timesteps; floating (an ODE's t, a noise level) or integer (diffusion steps)
    call        a ``ModelCall`` (how t is passed: position, keyword, attribute, concatenated, embedding),
                a convention name ("xt": ``model(x, t)``, "tx": torchdiffeq's ``model(t, x)`` …), or
                ``fn(model, x, t)`` with t of shape (B,)
    extras      further inputs, N rows each, paired with x row by row (text embeddings, class labels)
    batching    "shared": one call per t_k with all N inputs (an ODE solve, sampling);
                "mixed": the N·K pairs shuffled into batches of mixed t (diffusion training); a model that
                takes one scalar t per call is then called once per t in each batch
    mode        "train" | "eval" for the audit (restored afterwards) | "keep" the model's own
    derivative  estimate mean |∂output/∂t| with one extra pass; None: only for floating timesteps
    chunk_size  at most this many inputs per call (default N)
    Non-finite inputs, weights or outputs are errors naming the first place they appear, never "no time"
    (weights are searched once an output is not finite).
    """
    spec = _check(model, x, timesteps, call, extras, batching, mode, derivative, chunk_size, only_layers)
    model = unwrapped(model)  # hooks on a compiled model's own modules, run eagerly
    n, k = x.shape[0], spec["t"].shape[0]
    batch = chunk_size or n
    targets = select_layers(model, layers, only=only_layers)
    capture = _Capture(n)
    flags = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    handles = [module.register_forward_hook(capture.hook(name), with_kwargs=True) for name, module in targets]
    device = _device(model, x)
    try:
        if mode != "keep":
            model.train(mode == "train")
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            dt = _run(model, x.to(device), spec, batching, batch, capture, device, dict(targets))
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        for module, flag in flags.items():
            module.training = flag
    modules = dict(targets)
    with torch.no_grad():
        rows = [_layer(key, modules[key.split("#")[0]], *capture.sites[key]) for key in capture.sites]
        out = capture.output
        if out is None:
            raise ValueError("the model was never called, so there is no output to audit")
        settings = {"K": k, "N": n, "batching": batching, "mode": mode, "call": spec["call_name"],
                    "dtype": str(out.dtype).removeprefix("torch."), "chunk_size": batch}
        return AuditReport(layers=rows, output_time_share=out.summary().time_share, output_dt=dt, settings=settings)


class _Capture:
    """Forward hooks that fold each hooked layer's input and output into running sums, one timestep at a time."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sites: dict[str, tuple[Moments, Moments]] = {}  # in call order
        self.staged: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}  # (moments id, k) -> rows so far, count
        self.output: Moments | None = None
        self.where: list[tuple[int, torch.Tensor, torch.Tensor]] | None = None  # per timestep: k, batch rows, n
        self.calls: dict[str, int] = {}
        self.scratch: dict[tuple[Any, ...], torch.Tensor] = {}  # one work buffer per shape, shared by all sites

    def start(self, k_idx: torch.Tensor, n_idx: torch.Tensor, device: torch.device) -> None:
        """Rows of the next call; one timestep with all N inputs in order (shared t, no chunks) goes straight in."""
        ks = k_idx.unique().tolist()
        if len(ks) == 1 and n_idx.numel() == self.n and bool((n_idx == torch.arange(self.n)).all()):
            self.where = []
        else:
            self.where = [(k, rows.to(device), n_idx[rows].to(device))
                          for k in ks for rows in [(k_idx == k).nonzero().squeeze(1)]]
        self.calls = {}

    def hook(self, name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            inp = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
            if self.where is None or inp is None:
                return
            count = self.calls.get(name, 0)
            self.calls[name] = count + 1
            key = name if count == 0 else f"{name}#{count}"  # a module called twice per pass is two sites
            if isinstance(output, (tuple, list)):  # adaptive norms return (x, gates …): x comes first
                output = next((v for v in output if isinstance(v, torch.Tensor)), None)
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                return
            if key not in self.sites:
                self.sites[key] = (Moments(inp.dtype, False, self.scratch), Moments(output.dtype, True, self.scratch))
            for moments, value in zip(self.sites[key], (inp, output)):
                self.store(moments, value, key)
        return fn

    def store(self, moments: Moments, value: torch.Tensor, key: str) -> None:
        if self.where is None:
            return
        if moments.k and tuple(value.shape[1:]) != moments.shape:
            raise ValueError(f"layer {key!r} gave shape {tuple(value.shape[1:])} after {moments.shape}; "
                             "the audit needs the same shape for every timestep")
        if not self.where:
            moments.add(value)
            return
        for k, rows, n_idx in self.where:  # stage the rows until the timestep has all N inputs
            buf, count = self.staged.pop((id(moments), k), (None, 0))
            if buf is None:
                buf = value.new_empty((self.n, *value.shape[1:]))
            elif buf.shape[1:] != value.shape[1:]:
                raise ValueError(f"layer {key!r} gave shape {tuple(value.shape[1:])} after {tuple(buf.shape[1:])}; "
                                 "the audit needs the same shape for every timestep")
            buf[n_idx] = value.detach()[rows]
            count += rows.numel()
            if count == self.n:
                moments.add(buf)
            else:
                self.staged[(id(moments), k)] = (buf, count)

    def keep_output(self, out: torch.Tensor) -> None:
        if self.output is None:
            self.output = Moments(out.dtype, True, self.scratch)
        self.store(self.output, out, "output")


def _run(model: nn.Module, x: torch.Tensor, spec: dict[str, Any], batching: str, batch: int,
         capture: _Capture, device: torch.device, hooked: dict[str, nn.Module]) -> float | None:
    """All audited calls, then the derivative pass; returns mean |∂out/∂t| or None."""
    t, fn = spec["t"].to(device), spec["fn"]
    extras = {name: v.to(device) for name, v in spec["extras"].items()}
    k, n = t.shape[0], x.shape[0]
    if batching == "shared":
        mid = int(torch.argsort(t)[k // 2])  # the median timestep's first batch is repeated at t + h
        spans = [(kk, s, min(s + batch, n)) for kk in range(k) for s in range(0, n, batch)]
        pairs = [(torch.full((e - s,), kk), torch.arange(s, e)) for kk, s, e in spans]
        chosen = mid * math.ceil(n / batch)

        def inputs(i: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:  # views, no copies
            kk, s, e = spans[i]
            return x[s:e], t[kk].repeat(e - s), {name: v[s:e] for name, v in extras.items()}
    else:
        order = torch.randperm(k * n, generator=torch.Generator().manual_seed(0))
        pairs = [(order[s:s + batch] // n, order[s:s + batch] % n) for s in range(0, k * n, batch)]
        if isinstance(fn, ModelCall) and fn.scalar_time:  # one call per t within each mixed batch
            pairs = [(k_idx[k_idx == kk], n_idx[k_idx == kk]) for k_idx, n_idx in pairs for kk in k_idx.unique()]
        chosen = 0

        def inputs(i: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
            k_idx, n_idx = pairs[i]
            rows = n_idx.to(device)
            return x[rows], t[k_idx.to(device)], {name: v[rows] for name, v in extras.items()}
    rng: torch.Tensor | None = None
    base = torch.empty(0)
    version = None if x.is_inference() else x._version  # inference tensors cannot be changed in place anyway
    for i, (k_idx, n_idx) in enumerate(pairs):
        if i == chosen:
            rng = _rng_state(device)
        capture.start(k_idx, n_idx, device)
        xb, tb, eb = inputs(i)
        try:
            out = _call(fn, model, xb, tb, eb)
        except (RuntimeError, IndexError) as err:  # the model's own error, chained: one line first, then its cause
            line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"calling the model on inputs of shape {tuple(xb.shape)} at t = {tb[:2].tolist()} "
                             f"failed: {type(err).__name__}: {line}") from err
        if out.ndim == 0 or out.shape[0] != xb.shape[0]:
            raise ValueError(f"the model returned a tensor of shape {tuple(out.shape)} for {xb.shape[0]} inputs; the "
                             "audit needs one output row per input (give the network that maps x, not a solver)")
        if not out.is_floating_point():
            raise ValueError(f"the model returned a {out.dtype} output; the audit needs a floating output")
        if not _finite(out):
            raise ValueError(_first_nonfinite(model, fn, xb, tb, eb, hooked))
        if version is not None and x._version != version:
            raise ValueError("the model changed its input x in place (x is now modified); the audit pairs the same "
                             "inputs with every timestep, so the model must leave x unchanged (clone it in forward)")
        if i == chosen:
            base = out.detach().clone()
        capture.keep_output(out)
    capture.where = None
    if not spec["derivative"] or rng is None:
        return None
    xb, tb, eb = inputs(chosen)
    h = math.sqrt(torch.finfo(tb.dtype).eps) * max(1.0, float(tb.abs().max()))
    _set_rng_state(device, rng)  # same dropout masks as the audited pass
    moved = _call(fn, model, xb, tb + h, eb).detach()
    if moved.dtype not in (torch.float32, torch.float64):  # half precision: the mean needs float32
        moved, base = moved.float(), base.float()
    return float(torch.sub(moved, base).abs_().mean()) / h  # its rounding is far below the step's own error


def _call(fn: ModelCall | CallFn, model: nn.Module, x: torch.Tensor, t: torch.Tensor,
          extras: dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(fn, ModelCall):
        return fn.invoke(model, x, t, extras)
    return output_tensor(fn(model, x, t))


def _first_nonfinite(model: nn.Module, fn: ModelCall | CallFn, x: torch.Tensor, t: torch.Tensor,
                     extras: dict[str, torch.Tensor], hooked: dict[str, nn.Module]) -> str:
    """Name the first weight, else the first module (in execution order), holding NaN or inf (re-running one call).

    Weights are looked at only here, once an output is not finite: a clean audit does not pay a pass over them.
    """
    for name, value in (*model.named_parameters(), *model.named_buffers()):
        if value.is_floating_point() and not _finite(value):
            return f"the model's {name} holds NaN or inf; the audit needs finite weights"
    found: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def check(_m: nn.Module, _args: Any, out: Any) -> None:
            tensors = out if isinstance(out, (tuple, list)) else [out]
            if not found and any(isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
                                 for v in tensors):
                found.append(name)
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        _call(fn, model, x, t, extras)
    finally:
        for h in handles:
            h.remove()
    where = f"first in {found[0]} ({type(model.get_submodule(found[0])).__name__})" if found else "in its output"
    sample = t[:4].tolist()
    return (f"the model produced NaN or inf {where} at t = {sample}; the audit needs finite activations "
            "(check the time domain, e.g. --t-range, and the weights)")


def _layer(key: str, module: nn.Module, inp: Moments, out: Moments) -> LayerAudit:
    s_in, s_out = inp.summary(), out.summary()
    s = survival(s_in.snr, s_out.snr, inp.dtype)
    inside = survival(s_in.interior_snr, s_out.interior_snr, inp.dtype)
    return LayerAudit(name=key, type=type(module).__name__, survival=s, interior_survival=inside,
                      time_share=s_out.time_share, snr_in=s_in.snr, snr_out=s_out.snr,
                      channels_per_unit=channels_per_unit(module), verdict=verdict(s, inside))


def _finite(value: torch.Tensor) -> bool:
    """No NaN or inf: the min and max in one pass (NaN propagates), 10x cheaper than ``isfinite(..).all()``."""
    if value.numel() == 0 or not value.is_floating_point():
        return True
    low, high = torch.aminmax(value.detach())
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _device(model: nn.Module, x: torch.Tensor) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else x.device


def _dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    return model_dtype(model, x.dtype if x.is_floating_point() else torch.get_default_dtype())


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


MAX_TIMESTEPS = 10_000  # each timestep is a forward pass over all N inputs


def as_timesteps(timesteps: Any, dtype: torch.dtype) -> torch.Tensor:
    """K >= 2 different, finite timesteps as a 1-D CPU tensor: floating ones in ``dtype`` (the model's), integer
    steps as int64; else a one-line ValueError (the audit's and ``fix``'s one check)."""
    try:
        t = torch.as_tensor(timesteps).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"timesteps={str(timesteps)[:60]} is not allowed; give a sequence or tensor of numbers") \
            from None
    if t.ndim != 1 or not 2 <= t.numel() <= MAX_TIMESTEPS:
        raise ValueError(f"timesteps has shape {tuple(t.shape)}; allowed: K values, 2 <= K <= {MAX_TIMESTEPS:,} (the "
                         "audit compares timesteps; each one is a forward pass over the inputs)")
    if t.is_floating_point():
        bad = t[~torch.isfinite(t)]
        if bad.numel():
            raise ValueError(f"timesteps contain non-finite values {bad.tolist()[:4]}; timesteps must be finite")
        t = t.to(dtype)
        if t.unique().numel() < 2:
            raise ValueError(f"timesteps hold one distinct value ({t[0].item()}) in {t.dtype}; allowed: K >= 2 "
                             "different timesteps (widen the range, e.g. --t-range)")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"timesteps have dtype {t.dtype}; allowed: floating or integer numbers")
    else:
        t = t.long()
        if t.unique().numel() < 2:
            raise ValueError(f"timesteps hold one distinct value ({t[0].item()}); allowed: K >= 2 different timesteps")
    return t


def _check(model: nn.Module, x: Any, timesteps: Any, call: Any, extras: Any, batching: Any, mode: Any,
           derivative: bool | None, chunk_size: Any, only_layers: Any = False) -> dict[str, Any]:
    """Validate the arguments; one-line ValueErrors naming the bad value and what is allowed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}; allowed: a torch.nn.Module")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x is a {type(x).__name__}; allowed: a tensor of N >= 2 inputs, shape (N, ...)")
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"x has shape {tuple(x.shape)}; allowed: (N, ...) with N >= 2 (the audit compares inputs)")
    if x.layout != torch.strided or x.is_meta:
        raise TypeError(f"x is a {'meta' if x.is_meta else str(x.layout).removeprefix('torch.')} tensor; "
                        "allowed: a dense tensor with data")
    if not x.is_floating_point() or x.dtype != _dtype(model, x):
        raise TypeError(f"x has dtype {x.dtype}; allowed: a floating tensor of the model's dtype, {_dtype(model, x)}")
    if not _finite(x):
        first = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"x holds NaN or inf (first in input {first}); the audit needs finite inputs")
    extras = dict(extras or {})
    for name, value in extras.items():
        if not isinstance(value, torch.Tensor) or value.ndim < 1 or value.shape[0] != x.shape[0]:
            raise ValueError(f"extra input {name!r} must be a tensor with one row per input ({x.shape[0]})")
        if value.is_floating_point() and not _finite(value):
            raise ValueError(f"extra input {name!r} holds NaN or inf; the audit needs finite inputs")
    if not (callable(call) or isinstance(call, (str, ModelCall))):
        raise ValueError(f"call={call!r} is not allowed; give a ModelCall, a convention name or a callable")
    fn = call if callable(call) and not isinstance(call, ModelCall) else as_call(call)
    choice("batching", batching, BATCHINGS)
    choice("mode", mode, MODES)
    if chunk_size is not None:
        check_positive("chunk_size", chunk_size)
    t = as_timesteps(timesteps, _dtype(model, x))
    for name, flag in (("only_layers", only_layers), ("derivative", derivative)):
        if flag is not None:
            check_type(name, flag, bool)
    if derivative and not t.is_floating_point():
        raise ValueError("derivative=True needs floating timesteps; integer (diffusion) steps have no d/dt")
    name = fn.name if isinstance(fn, ModelCall) else getattr(fn, "__name__", "callable")
    return {"t": t, "fn": fn, "call_name": name, "extras": extras,
            "derivative": t.is_floating_point() if derivative is None else derivative}

