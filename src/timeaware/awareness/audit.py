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

from .metrics import Moments, survival, verdict
from .report import AuditReport, LayerAudit

CALLS = ("xt", "tx")
BATCHINGS = ("shared", "mixed")
MODES = ("train", "eval", "keep")
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm,
)
CallFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]


def channels_per_unit(module: nn.Module) -> int | None:
    """How many channels share one normalization unit, i.e. how many distinct per-channel offsets it sees.

    1 cancels a per-channel offset exactly; None when it is not a channel normalization we know.
    """
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return 1
    if isinstance(module, nn.GroupNorm):
        return module.num_channels // module.num_groups
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) >= 3:
        return int(module.normalized_shape[-3])  # normalizes (C, H, W): one unit holds all C channels
    return None


def audit(model: nn.Module, x: torch.Tensor, timesteps: Sequence[float] | torch.Tensor, *,
          call: str | CallFn = "xt", batching: str = "shared", mode: str = "eval",
          layers: Sequence[str] | None = None, derivative: bool | None = None,
          chunk_size: int | None = None) -> AuditReport:
    """Measure, per normalization layer, how much of the timestep signal survives it.

    model       any nn.Module; every BatchNorm*, InstanceNorm*, GroupNorm and LayerNorm is hooked,
                plus the modules named in ``layers`` (names from ``model.named_modules()``)
    x           (N, ...) inputs, N >= 2; the same N inputs are paired with every timestep
    timesteps   K >= 2 finite timesteps; floating (an ODE's t) or integer (diffusion steps)
    call        "xt": ``model(x, t)`` with t of shape (B,); "tx": torchdiffeq's ``model(t, x)``, t a 0-d
                tensor under shared batching and (B,) under mixed; or ``fn(model, x, t)`` with t (B,)
    batching    "shared": one call per t_k with all N inputs (an ODE solve, sampling);
                "mixed": the N·K pairs shuffled into batches of mixed t (diffusion training)
    mode        "train" | "eval" for the audit (restored afterwards) | "keep" the model's own
    derivative  estimate mean |∂output/∂t| with one extra pass; None: only for floating timesteps
    chunk_size  at most this many inputs per call (default N)
    """
    spec = _check(model, x, timesteps, call, batching, mode, layers, derivative, chunk_size)
    n, k = x.shape[0], spec["t"].shape[0]
    batch = chunk_size or n
    targets = _targets(model, layers)
    capture = _Capture(n)
    flags = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    handles = [module.register_forward_hook(capture.hook(name), with_kwargs=True) for name, module in targets]
    device = _device(model, x)
    try:
        if mode != "keep":
            model.train(mode == "train")
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            dt = _run(model, x.to(device), spec, batching, batch, capture, device)
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
            if not isinstance(output, torch.Tensor):
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
         capture: _Capture, device: torch.device) -> float | None:
    """All audited calls, then the derivative pass; returns mean |∂out/∂t| or None."""
    t, fn = spec["t"].to(device), spec["fn"]
    k, n = t.shape[0], x.shape[0]
    if batching == "shared":
        mid = int(torch.argsort(t)[k // 2])  # the median timestep's first batch is repeated at t + h
        spans = [(kk, s, min(s + batch, n)) for kk in range(k) for s in range(0, n, batch)]
        pairs = [(torch.full((e - s,), kk), torch.arange(s, e)) for kk, s, e in spans]
        chosen = mid * math.ceil(n / batch)

        def inputs(i: int) -> tuple[torch.Tensor, torch.Tensor]:  # views: no copy of x per call
            kk, s, e = spans[i]
            return x[s:e], t[kk].repeat(e - s)
    else:
        order = torch.randperm(k * n, generator=torch.Generator().manual_seed(0))
        pairs = [(order[s:s + batch] // n, order[s:s + batch] % n) for s in range(0, k * n, batch)]
        chosen = 0

        def inputs(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            k_idx, n_idx = pairs[i]
            return x[n_idx.to(device)], t[k_idx.to(device)]
    shared = batching == "shared"
    rng: torch.Tensor | None = None
    base = torch.empty(0)
    version = None if x.is_inference() else x._version  # inference tensors cannot be changed in place anyway
    for i, (k_idx, n_idx) in enumerate(pairs):
        if i == chosen:
            rng = _rng_state(device)
        capture.start(k_idx, n_idx, device)
        out = _call(fn, model, *inputs(i), shared)
        if version is not None and x._version != version:
            raise ValueError("the model changed its input x in place (x is now modified); the audit pairs the same "
                             "inputs with every timestep, so the model must leave x unchanged (clone it in forward)")
        if i == chosen:
            base = out.detach().clone()
        capture.keep_output(out)
    capture.where = None
    if not spec["derivative"] or rng is None:
        return None
    xb, tb = inputs(chosen)
    h = math.sqrt(torch.finfo(tb.dtype).eps) * max(1.0, float(tb.abs().max()))
    _set_rng_state(device, rng)  # same dropout masks as the audited pass
    moved = _call(fn, model, xb, tb + h, shared).detach()
    if moved.dtype not in (torch.float32, torch.float64):  # half precision: the mean needs float32
        moved, base = moved.float(), base.float()
    return float(torch.sub(moved, base).abs_().mean()) / h  # its rounding is far below the step's own error


def _call(fn: CallFn | str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, shared: bool) -> torch.Tensor:
    if fn == "xt":
        out = model(x, t)
    elif fn == "tx":
        out = model(t[0] if shared else t, x)
    else:
        out = fn(model, x, t)  # type: ignore[operator]
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    out = getattr(out, "sample", out)  # diffusers' UNet2DOutput
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model returned {type(out).__name__}; the audit needs a tensor, a tuple starting "
                         "with one, or an object with a .sample tensor")
    return out


def _layer(key: str, module: nn.Module, inp: Moments, out: Moments) -> LayerAudit:
    s_in, s_out = inp.summary(), out.summary()
    s = survival(s_in.snr, s_out.snr, inp.dtype)
    inside = survival(s_in.interior_snr, s_out.interior_snr, inp.dtype)
    return LayerAudit(name=key, type=type(module).__name__, survival=s, interior_survival=inside,
                      time_share=s_out.time_share, snr_in=s_in.snr, snr_out=s_out.snr,
                      channels_per_unit=channels_per_unit(module), verdict=verdict(s, inside))


def _targets(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    wanted = set(layers or ())
    return [(name, m) for name, m in model.named_modules() if isinstance(m, NORM_TYPES) or name in wanted]


def _device(model: nn.Module, x: torch.Tensor) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else x.device


def _dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return floats[0] if floats else (x.dtype if x.is_floating_point() else torch.get_default_dtype())


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _check(model: nn.Module, x: Any, timesteps: Any, call: Any, batching: Any, mode: Any,
           layers: Sequence[str] | None, derivative: bool | None, chunk_size: Any) -> dict[str, Any]:
    """Validate the arguments; one-line ValueErrors naming the bad value and what is allowed."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model is a {type(model).__name__}; allowed: a torch.nn.Module")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x is a {type(x).__name__}; allowed: a tensor of N >= 2 inputs, shape (N, ...)")
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"x has shape {tuple(x.shape)}; allowed: (N, ...) with N >= 2 (the audit compares inputs)")
    if not (callable(call) or call in CALLS):
        raise ValueError(f"call={call!r} is not allowed; choose one of {', '.join(CALLS)} or a callable")
    if batching not in BATCHINGS:
        raise ValueError(f"batching={batching!r} is not allowed; choose one of {', '.join(BATCHINGS)}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; choose one of {', '.join(MODES)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} is not allowed; it must be a positive integer or None")
    try:
        t = torch.as_tensor(timesteps).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"timesteps={timesteps!r} is not allowed; give a sequence or tensor of numbers") from None
    if t.numel() < 2:
        raise ValueError(f"timesteps has {t.numel()} values; allowed: K >= 2 (the audit compares timesteps)")
    if t.is_floating_point():
        bad = t[~torch.isfinite(t)]
        if bad.numel():
            raise ValueError(f"timesteps contain non-finite values {bad.tolist()[:4]}; timesteps must be finite")
        t = t.to(_dtype(model, x))
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"timesteps have dtype {t.dtype}; allowed: floating or integer numbers")
    else:
        t = t.long()
    if derivative and not t.is_floating_point():
        raise ValueError("derivative=True needs floating timesteps; integer (diffusion) steps have no d/dt")
    names = {name for name, _ in model.named_modules()}
    missing = sorted(set(layers or ()) - names)
    if missing:
        sample = ", ".join(sorted(n for n in names if n)[:8])
        raise ValueError(f"layer {missing[0]!r} is not in the model; allowed: module names such as {sample}")
    return {"t": t, "fn": call, "call_name": call if isinstance(call, str) else getattr(call, "__name__", "callable"),
            "derivative": t.is_floating_point() if derivative is None else derivative}

