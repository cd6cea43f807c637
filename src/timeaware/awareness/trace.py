"""Find where t enters a model by running it, not by reading class names or registration order.

Two small passes in eval mode:

1. one batch [x_a at t0, x_b at t0, x_a at t1] (or separate calls for a model that takes one scalar t):
   every module call whose output varies with t but not with x is on the *time branch*;
2. with gradients, per input row: the outputs of time-branch calls (and t itself, when it is a float)
   become leaves, every normalization's output is cut from the graph, and for each normalization
   ``autograd.grad`` tells which leaves its input depends on without crossing another norm.

An *injection* into a norm is *additive* when that dependence does not change with x (an offset added
before the norm: conv(h) + e(t)); a *site* (what the paper's fixes are for) is an additive injection
with a per-channel constant part, which a channel-wise norm subtracts with the mean. It is *protected*
when the injected term also varies over space (a positional map). A dependence that changes with x
is a *modulation* (scale-shift, adaLN: time enters after the norm). A dependence whose gradient is
exactly zero runs through parameters that are zero at initialisation (``zero_module``, EDM2's ``Gain``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..calling import ModelCall, model_dtype, output_tensor, unwrapped
from .norms import channels_per_unit, is_norm

HALF = (torch.float16, torch.bfloat16)

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class TimeSite:
    """A time offset added before a normalization.

    injectors          where the time term comes from: time-branch modules (``time_emb_proj``, ``emb_layers``)
                       or ``t`` itself (ConcatConv, torchdyn's DepthCat, t concatenated to x)
    norm               the normalization the offset meets next in execution; ``norm_type`` its class
    channels_per_unit  per-channel offsets one normalization unit sees (1: cancelled exactly; None: unknown)
    protected          a term that varies over space (a positional map) reaches the norm as well
    operand            the operand branch: the last conv/linear on the x path before the norm, whose output
                       meets the offset (fix 2 zeroes its bias)
    size               the spatial shape of the norm's input (what a positional map must cover)
    """

    injectors: tuple[str, ...]
    norm: str
    norm_type: str
    channels_per_unit: int | None
    protected: bool
    operand: str | None
    size: tuple[int, ...]
    channels: int

    @property
    def kind(self) -> str:
        units = self.channels_per_unit
        return "unknown" if units is None else "exact" if units == 1 else "partial"

    def __str__(self) -> str:
        unit = "?" if self.channels_per_unit is None else str(self.channels_per_unit)
        guard = "unprotected"
        if self.protected:  # the time term varies along the axes the norm normalizes, so it is not cancelled
            guard = ("protected by a spatial time term" if self.channels_per_unit is not None else
                     f"not cancelled: the time term varies along the axes {self.norm_type} normalizes")
        return (f"{', '.join(self.injectors)} -> {self.norm} ({self.norm_type}): {self.kind}, {unit} ch/unit, "
                f"{guard}")


@dataclass
class TimeTrace:
    """Where t enters and what it meets: sites, modulated norms, and what blocks t at initialisation."""

    sites: list[TimeSite] = field(default_factory=list)
    modulated: list[str] = field(default_factory=list)   # norms that t reaches only by scale/shift after a norm
    time_branch: list[str] = field(default_factory=list)  # module calls that depend on t alone
    blocked: list[str] = field(default_factory=list)     # norms t reaches only through zero-valued parameters
    zero_parameters: list[str] = field(default_factory=list)
    norms: int = 0  # normalization calls seen in one forward pass
    untraced: str = ""  # why the model could not be traced (the audit still reads its layers)
    functional_norms: int = 0  # norms called as torch.nn.functional functions outside any norm module

    @property
    def needs_fix(self) -> bool:
        return any(not s.protected for s in self.sites)

    def explain(self) -> str:
        """One line on what the trace found, for the CLI."""
        if self.untraced:
            return f"not traced: {self.untraced}"
        functional = (f"{self.functional_norms} normalization(s) called as torch.nn.functional functions in forward "
                      "(F.group_norm …), which no hook sees and fix cannot wrap; make them modules (nn.GroupNorm …) "
                      "to audit and fix them")
        if self.sites:
            open_ = sum(not s.protected for s in self.sites)
            return (f"{len(self.sites)} site(s) where a time offset is added before a normalization, "
                    f"{open_} without a positional term" + (f"; and {functional}" if self.functional_norms else ""))
        if self.functional_norms:
            return f"the model has {functional}"
        if self.modulated:
            return ("time enters after the normalizations (scale-shift / adaptive norm): a channel-wise norm "
                    "cannot cancel it, nothing needs fixing")
        zero = ", ".join(self.zero_parameters[:6]) + (" …" if len(self.zero_parameters) > 6 else "")
        if self.blocked:
            return (f"t is blocked at initialisation by zero-valued parameters ({zero}); audit with "
                    "--perturb-zero-init to see the structure")
        if not self.norms:
            hint = f"; zero-valued parameters ({zero}) keep t out at initialisation" if self.zero_parameters else ""
            return ("the model has no normalization modules (it may normalize in functions): hook other layers with "
                    f"--layers NAME|CLASS|PATTERN{hint}")
        return "t reaches no normalization"


class _NormFunctions(TorchFunctionMode):
    """Counts the normalizations called as ``torch.nn.functional`` functions (norm modules call them too)."""

    FUNCTIONS = (F.group_norm, F.instance_norm, F.batch_norm, F.layer_norm, F.rms_norm, F.local_response_norm)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += func in self.FUNCTIONS
        return func(*args, **(kwargs or {}))


def trace_time(model: nn.Module, call: ModelCall, x: torch.Tensor, t: torch.Tensor,
               extras: dict[str, torch.Tensor] | None = None) -> TimeTrace:
    """Find the time sites of ``model``: x holds >= 2 inputs, t >= 2 distinct timesteps (the first two are used).

    A float16 / bfloat16 model is traced in float32 (and put back exactly): the tests that tell an offset from
    a modulation compare gradients to 1e-4, below half precision's rounding.
    """
    model = unwrapped(model)
    if model_dtype(model) in HALF:
        with _in_float32(model):
            up = {k: v.float() if v.dtype in HALF else v for k, v in (extras or {}).items()}
            return trace_time(model, call, x.float(), t.float() if t.dtype in HALF else t, up)
    one = {k: v[:1] for k, v in (extras or {}).items()}  # the same conditioning for every row: only x varies
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        try:  # the same conditioning row twice, contiguous as a batch would be (HunyuanDiT views it)
            branch, functional = _time_branch(model, call, x[:2], t[:2],
                                              {k: v.expand(2, *v.shape[1:]).contiguous() for k, v in one.items()})
        except (RuntimeError, TypeError, IndexError) as err:  # the model's own error, in one line
            line = (str(err).strip().splitlines() or [""])[0]
            raise ValueError(f"tracing t failed: the model raised {type(err).__name__}: {line}") from err
        traced = t[1:2]
        if not t.is_floating_point() and not branch:  # nothing depends on t alone: follow t itself, as a float
            traced = t[1:2].to(model_dtype(model))
        try:
            rows = [_dependencies(model, call, x[i:i + 1], traced, one, branch) for i in range(2)]
        except (RuntimeError, TypeError, IndexError) as err:
            if traced is t[1:2]:
                raise
            raise ValueError(f"no module's output depends on t alone and the model refused t = {t[1].item()} as a "
                             f"float ({type(err).__name__}), so the tracer cannot follow t; give floating "
                             "timesteps (--time-domain continuous) or a ModelCall with embedding") from None
    finally:
        for module, flag in flags.items():
            module.training = flag
            held = vars(module).get("t")  # torchdyn's DepthCat keeps the last t: keep its value, drop the graph
            if isinstance(held, torch.Tensor) and held.requires_grad:
                module.t = held.detach()
    if not all(bool(torch.isfinite(row["output"]).all()) for row in rows):
        raise ValueError(f"the model produced NaN or inf at t = {t[1].item()}; tracing needs finite outputs "
                         "(check the time domain, e.g. --t-range or --time-domain, and the weights)")
    zero = [name for name, p in model.named_parameters() if p.numel() and not name.endswith("bias") and not p.any()]
    trace = _classify(rows, sorted(branch), zero)
    trace.functional_norms = functional
    return trace


@contextlib.contextmanager
def _in_float32(model: nn.Module) -> Iterator[None]:
    """The model's half-precision parameters and buffers in float32 for the block, then exactly as they were."""
    tensors = [v for v in (*model.parameters(), *model.buffers()) if v.dtype in HALF]
    kept = [v.data for v in tensors]
    try:
        for v in tensors:
            v.data = v.data.float()
        yield
    finally:
        for v, data in zip(tensors, kept):
            v.data = data


def _calls(model: nn.Module, on_call: Any, counts: dict[str, int]) -> list[Any]:
    """Forward hooks on every module, naming each call ``name`` or ``name#i`` for the i-th repeat in a pass
    (clear ``counts`` between passes)."""

    def hook(name: str) -> Any:
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            i = counts.get(name, 0)
            counts[name] = i + 1
            return on_call(name if i == 0 else f"{name}#{i}", module, args, output)
        return fn

    return [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]


def _time_branch(model: nn.Module, call: ModelCall, x: torch.Tensor, t: torch.Tensor,
                 extras: dict[str, torch.Tensor]) -> tuple[set[str], int]:
    """Module calls whose output varies with t but not with x, and the normalizations called as functions
    outside norm modules (functional calls beyond one per norm module call)."""
    seen: list[dict[str, torch.Tensor]] = []
    norm_calls = [0]
    functions = _NormFunctions()

    def record(name: str, module: nn.Module, _a: Any, out: Any) -> None:
        norm_calls[0] += is_norm(module)
        tensor = _first_tensor(out)
        if tensor is not None and tensor.is_floating_point():
            seen[-1][name] = tensor.detach().clone()

    counts: dict[str, int] = {}
    handles = _calls(model, record, counts)
    try:
        with torch.no_grad():
            for xs, ts in ((x, t[:1].expand(2)), (x[:1], t[1:2])):  # [x_a, x_b] at t0, then x_a at t1
                seen.append({})
                counts.clear()
                norm_calls[0] = 0
                with functions if xs.shape[0] == 1 else contextlib.nullcontext():
                    call.invoke(model, xs, ts, {k: v[: xs.shape[0]] for k, v in extras.items()})
    finally:
        for h in handles:
            h.remove()
    first, moved = seen
    branch = set()
    for name, out in first.items():
        if name not in moved or out.ndim == 0 or out.shape[0] != 2:
            continue
        if _same(out[0], out[1]) and not _same(out[0], moved[name][0]):
            branch.add(name)
    return branch, max(0, functions.calls - norm_calls[0])


def _dependencies(model: nn.Module, call: ModelCall, x: torch.Tensor, t: torch.Tensor,
                  extras: dict[str, torch.Tensor], branch: set[str]) -> dict[str, Any]:
    """For one input: per norm call, the gradient of <its input, r> for two probes r, w.r.t. every time leaf."""
    leaves: dict[str, torch.Tensor] = {}
    norms: list[tuple[str, nn.Module, torch.Tensor]] = []
    order: list[str] = []
    last_weight: dict[str, str | None] = {}
    current: list[str | None] = [None]

    def on_call(name: str, module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        order.append(name)
        if name in branch:
            tensor = _first_tensor(out)
            if tensor is not None:
                leaf = tensor.detach().requires_grad_()
                leaves[name] = leaf
                return _replace_first(out, leaf.clone())
            return None
        if is_norm(module):
            if not torch.is_grad_enabled():  # inside the model's own no_grad: nothing to follow t through
                raise ValueError(f"{name} runs under torch.no_grad inside the model's forward (activation "
                                 "checkpointing, e.g. guided-diffusion's use_checkpoint or a reentrant "
                                 "torch.utils.checkpoint), so the tracer cannot follow t through it; build the model "
                                 "with checkpointing off to trace or fix it (the weights are the same)")
            inp = _first_tensor(args)
            if inp is not None and inp.requires_grad:
                norms.append((name, module, inp))
                last_weight[name] = current[0]
            return _detached(out)
        if isinstance(module, WEIGHT_LAYERS) or _is_weight_leaf(module):
            current[0] = name.split("#")[0]
        return None

    handles = _calls(model, on_call, {})
    t_leaf = t.detach().clone().requires_grad_() if t.is_floating_point() else t
    try:
        with torch.enable_grad():
            out = call.invoke(model, x, t_leaf, extras)
    finally:
        for h in handles:
            h.remove()
    if t_leaf.requires_grad:
        leaves["t"] = t_leaf
    names, tensors = list(leaves), list(leaves.values())
    found: dict[str, Any] = {"norms": {}, "output": out.detach()}
    for name, module, inp in norms:
        probes = _probes(inp)
        grads = [torch.autograd.grad((inp * r).sum(), tensors, allow_unused=True, retain_graph=True) for r in probes]
        deps = {leaf: [g[i].detach().reshape(-1) for g in grads] for i, leaf in enumerate(names)
                if grads[0][i] is not None}
        found["norms"][name] = {"deps": deps, "type": type(module).__name__, "units": channels_per_unit(module),
                                "shape": tuple(inp.shape[1:]), "operand": last_weight[name]}
    return found


def _probes(h: torch.Tensor) -> list[torch.Tensor]:
    """Two fixed probes: constant over space per channel, and zero-mean over the central half of the map."""
    gen = torch.Generator().manual_seed(0)
    b, c, *space = h.shape
    per_channel = torch.randn(b, c, *([1] * len(space)), generator=gen).to(h).expand_as(h).contiguous()
    if not space:
        return [per_channel, torch.zeros_like(h)]
    inner = torch.zeros(space, dtype=torch.bool)  # the central half: clear of zero padding's border leak
    inner[tuple(slice(s // 4, s - s // 4) if s >= 4 else slice(None) for s in space)] = True
    pattern = torch.randn(b, c, *space, generator=gen).to(h) * inner.to(h)
    mean = pattern.sum(dim=tuple(range(2, h.ndim)), keepdim=True) / inner.sum()
    return [per_channel, (pattern - mean) * inner.to(h)]


def _classify(rows: list[dict[str, Any]], branch: list[str], zero: list[str]) -> TimeTrace:
    a, b = rows
    trace = TimeTrace(time_branch=branch, zero_parameters=zero, norms=len(a["norms"]))
    for name, info in a["norms"].items():
        if any(inner.startswith(f"{name.split('#')[0]}.") for inner in branch):  # adaLN, AdaGroupNorm: t inside
            trace.modulated.append(name)
            continue
        other = b["norms"].get(name, {"deps": {}})
        additive, spatial, blocked = [], False, True
        for leaf, (g_const, g_zm) in info["deps"].items():
            scale = float(g_const.abs().max() + g_zm.abs().max())
            if scale == 0.0:
                continue
            blocked = False
            h_const, h_zm = other["deps"].get(leaf, (None, None))
            if h_const is None or not (_same(g_const, h_const, 1e-4) and _same(g_zm, h_zm, 1e-4)):
                continue  # the dependence changes with x: a modulation, not an offset
            additive.append(leaf)
            spatial = spatial or float(g_zm.abs().max()) > 1e-4 * scale
        if not info["deps"]:
            continue
        if blocked:
            trace.blocked.append(name)
        elif additive:
            size = tuple(info["shape"][1:])
            trace.sites.append(TimeSite(tuple(additive), name, info["type"], info["units"], spatial,
                                        info["operand"], size, int(info["shape"][0]) if info["shape"] else 1))
        else:
            trace.modulated.append(name)
    return trace


def _same(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    if a.shape != b.shape:
        return False
    tol = rel * float(a.abs().max() + b.abs().max()) + 1e-30
    return bool(((a - b).abs() <= tol).all()) and math.isfinite(tol)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    try:
        return output_tensor(value)
    except ValueError:
        return None


def _replace_first(out: Any, new: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return new
    if isinstance(out, tuple):
        i = next(i for i, v in enumerate(out) if isinstance(v, torch.Tensor))
        return (*out[:i], new, *out[i + 1:])
    return None


def _detached(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, tuple):
        return tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in out)
    return None


def _is_weight_leaf(module: nn.Module) -> bool:
    """A leaf module with a matrix or kernel weight (magnitude-preserving convs and other custom layers)."""
    weight = getattr(module, "weight", None)
    return not any(True for _ in module.children()) and isinstance(weight, torch.Tensor) and weight.ndim >= 2


def perturb_zero_init(model: nn.Module, std: float = 0.02, seed: int = 0) -> nn.Module:
    """Set every all-zero weight of ``model`` (in place) to small random values; returns the model.

    Zero-initialised parameters (``zero_module`` output convs, EDM2's ``Gain``) keep t out of a freshly
    built model; perturbing them shows the structure training will open up.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and not name.endswith("bias") and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model
