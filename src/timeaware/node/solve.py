"""The ODE block: torchdiffeq solves with every option passed through, exact NFE, readable failures.

NFE is counted by wrapping the ODE function: calls made while ``odeint`` runs are the forward solve
(NFE-F); calls made after it returned and before the next solve can only come from the adjoint's
backward solve (NFE-B). Direct backpropagation (``adjoint=False``) never calls the function again,
so its NFE-B is 0 by construction.

torchdiffeq reports a step budget exceeded or a step size underflow with a bare ``assert``;
``solver_errors`` turns those into ``SolverError`` naming the likely cause (paper section 5: the
dynamics are too stiff, or too smooth because the timestep embedding vanished) and the options
that change it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..validate import check_int, check_number, choice

METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint", "heun3", "rk4",
           "explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver")
_SOLVER_FAILURES = ("max_num_steps exceeded", "underflow in dt", "non-finite values in state")
MAX_STEPS = 10**6  # most steps of size step_size (or max_step) per solve over [0, t1]: more is a typo, not a setting
# torchdiffeq's numeric options (rk_common, solvers, fixed_adams, scipy_wrapper): integer range, or real lower bound
# (open unless min_step); step_size and max_step are also bounded below by t1 / MAX_STEPS.
_INT_OPTIONS = {"max_num_steps": (1, 2**31 - 1), "max_iters": (1, 10**6), "max_order": (1, 12)}  # int32; adams
_REAL_OPTIONS = ("step_size", "first_step", "max_step", "min_step", "safety", "ifactor", "dfactor")
_WORD_OPTIONS = {"interp": ("linear", "cubic")}  # fixed-step output; the rest (norm, grid_constructor) are code
MIN_TOLERANCE = 1e-12  # rtol/atol below it (far below float32's resolution) cannot be met: a solve never ends


class SolverError(RuntimeError):
    """An ODE solve gave up: step budget exceeded, step size underflow, or a diverging state."""


@dataclass(frozen=True)
class SolverOptions:
    """How the ODE block is solved (the paper: dopri5, rtol = atol = 1e-3, adjoint, T = 1).

    options   torchdiffeq's ``options`` dict, passed through unchanged (e.g. ``{"max_num_steps": 1000}``,
              ``{"step_size": 0.1}`` for fixed-step methods).
    adjoint   ``odeint_adjoint`` (memory O(1) in the steps, a second solve backwards) or direct backprop.
    adjoint_rtol, adjoint_atol, adjoint_options
              the backward solve's own settings (None: the forward ones, torchdiffeq's default).
    """

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    options: dict[str, Any] = field(default_factory=dict)
    adjoint: bool = True
    t1: float = 1.0
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    adjoint_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        choice("method", self.method, METHODS)
        for name in ("options", "adjoint_options"):
            if not isinstance(getattr(self, name), dict | None) or (name == "options" and self.options is None):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; it must be a dict of "
                                 "torchdiffeq solver options, e.g. {\"max_num_steps\": 1000}")
        for name in ("rtol", "atol", "t1", "adjoint_rtol", "adjoint_atol"):
            value = getattr(self, name)
            if value is None and name.startswith("adjoint_"):
                continue
            check_number(name, value, 0 if name == "t1" else MIN_TOLERANCE, low_open=name == "t1")
        _check_options("options", self.options, self.t1)
        _check_options("adjoint_options", self.adjoint_options or {}, self.t1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def solve_kwargs(self, adjoint: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``odeint``, or with ``adjoint`` for ``odeint_adjoint``."""
        kwargs: dict[str, Any] = {"rtol": self.rtol, "atol": self.atol, "method": self.method,
                                  "options": dict(self.options) or None}
        if adjoint:
            kwargs.update(adjoint_rtol=self.adjoint_rtol, adjoint_atol=self.adjoint_atol,
                          adjoint_options=None if self.adjoint_options is None else dict(self.adjoint_options))
        return kwargs


def _check_options(name: str, options: dict[Any, Any], t1: float) -> None:
    """torchdiffeq's numeric options as finite positive numbers (integers where it counts), and no step so small
    that a solve over [0, t1] would take more than MAX_STEPS steps (a fixed grid that size is allocated up front)."""
    for key, value in options.items():
        if not isinstance(key, str):
            raise ValueError(f"{name} key {key!r} is not allowed; option names are strings like \"step_size\"")
        if key in _INT_OPTIONS:
            check_int(f"{name}.{key}", value, *_INT_OPTIONS[key])
        elif key in _REAL_OPTIONS:
            check_number(f"{name}.{key}", value, 0, low_open=key != "min_step")
            if key in ("step_size", "max_step") and value < t1 / MAX_STEPS:
                raise ValueError(f"{name}.{key}={value!r} is not allowed; it must be >= t1/{MAX_STEPS:,} = "
                                 f"{t1 / MAX_STEPS:g} (more than {MAX_STEPS:,} steps per solve is a typo, not a "
                                 "setting)")
        elif key in _WORD_OPTIONS:
            choice(f"{name}.{key}", value, _WORD_OPTIONS[key])
        else:  # norm, grid_constructor, jump_t …: functions and tensors, which a settings file cannot hold
            known = sorted([*_INT_OPTIONS, *_REAL_OPTIONS, *_WORD_OPTIONS])
            raise ValueError(f"{name} key {key!r} is not allowed; settable options are {', '.join(known)}")


@dataclass
class SolveStats:
    """Function evaluations of the latest solve: NFE-F for the forward solve, NFE-B for the adjoint solve."""

    nfe_forward: int = 0
    nfe_backward: int = 0
    adjoint: bool = True

    def __str__(self) -> str:
        note = "" if self.adjoint else " (no adjoint: gradients by direct backpropagation)"
        return f"NFE-F {self.nfe_forward}, NFE-B {self.nfe_backward}{note}"


class _Counted(nn.Module):
    """Wraps the ODE function and counts its calls into the forward or backward tally."""

    def __init__(self, func: nn.Module, stats: SolveStats) -> None:
        super().__init__()
        self.func, self.stats, self.in_forward = func, stats, False

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.in_forward:
            self.stats.nfe_forward += 1
        else:
            self.stats.nfe_backward += 1
        return self.func(t, x)


@contextlib.contextmanager
def solver_errors(solver: SolverOptions, func: nn.Module | None = None) -> Iterator[None]:
    """Turn torchdiffeq's failure assertions (forward or adjoint solve) into a one-line ``SolverError``."""
    try:
        yield
    except AssertionError as err:
        text = str(err)
        if not text.startswith(_SOLVER_FAILURES):
            raise
        raise SolverError(_explain(text.split(" (")[0].split(":")[0], solver, func)) from err


def _explain(failure: str, solver: SolverOptions, func: nn.Module | None) -> str:
    config, channels = getattr(func, "config", None), getattr(func, "channels", None)
    causes = []
    if config is None or config.activation == "relu":
        causes.append("too stiff (ReLU's kink)")
    if config is None or config.norm in ("batch", "instance") or (config.norm == "group" and config.groups == channels):
        causes.append("too smooth (a channel-wise norm after the time offset cancels t: vanished time-dependence)")
    cause = " or ".join(causes) or "diverging dynamics"
    adjoint = f" adjoint_options={solver.adjoint_options}" if solver.adjoint_options is not None else ""
    return (f"ODE solve failed ({failure}) with {solver.method} rtol={solver.rtol:g} atol={solver.atol:g} "
            f"options={solver.options}{adjoint}: likely {cause}; try larger rtol/atol or max_num_steps, a smooth "
            "activation (softplus, silu), or fewer groups (norm=group, groups=1) / positional=linear")


class ODEBlock(nn.Module):
    """z(T) = z(0) + ∫ f(z, t) dt over [0, T], solved by torchdiffeq; ``stats`` holds the latest NFE."""

    def __init__(self, func: nn.Module, solver: SolverOptions | None = None) -> None:
        super().__init__()
        self.solver = solver or SolverOptions()
        self.stats = SolveStats(adjoint=self.solver.adjoint)
        self.counted = _Counted(func, self.stats)

    @property
    def func(self) -> nn.Module:
        return self.counted.func

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        from torchdiffeq import odeint

        s = self.solver
        t = torch.tensor([0.0, s.t1], dtype=z0.dtype, device=z0.device)
        self.stats.nfe_forward = self.stats.nfe_backward = 0
        self.counted.in_forward = True
        try:
            with solver_errors(s, self.func):
                params = [p for p in self.counted.parameters() if p.requires_grad]
                if not (s.adjoint and torch.is_grad_enabled() and (z0.requires_grad or params)):
                    return odeint(self.counted, z0, t, **s.solve_kwargs())[-1]  # nothing to differentiate
                out: torch.Tensor = _AdjointSolve.apply(self, z0, t, *params)
                return out
        finally:
            self.counted.in_forward = False


class _AdjointSolve(torch.autograd.Function):
    """torchdiffeq's ``odeint_adjoint`` with its backward solve run inside this node's backward.

    The adjoint solve fails in ``loss.backward()``, far from the block; running it here under
    ``solver_errors`` turns its failures into the same one-line ``SolverError`` as the forward solve's,
    so training loops need not know the block solves anything.
    """

    @staticmethod
    def forward(ctx: Any, block: ODEBlock, z0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        from torchdiffeq import odeint_adjoint

        with torch.enable_grad():
            ctx.inputs = ((z0.detach().requires_grad_(),) if z0.requires_grad else ()) + params
            start = ctx.inputs[0] if z0.requires_grad else z0.detach()
            ctx.out = odeint_adjoint(block.counted, start, t, **block.solver.solve_kwargs(adjoint=True))[-1]
        ctx.block, ctx.z0_grad = block, z0.requires_grad
        return ctx.out.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with solver_errors(ctx.block.solver, ctx.block.func):
            grads = torch.autograd.grad(ctx.out, ctx.inputs, grad, allow_unused=True, retain_graph=True)
        z0_grad = grads[0] if ctx.z0_grad else None
        return (None, z0_grad, None, *grads[int(ctx.z0_grad):])
