"""How a time-dependent model is called: the one description the audit, the site tracer, ``fix`` and the CLI share.

A ``ModelCall`` says where x and t go (``model(x, t)``, ``model(t, x)``, t by keyword, t set as an
attribute as torchdyn's ``DepthCat`` reads it, t concatenated to x, or a block that takes a timestep
embedding), whether t is one scalar per call or one value per sample, the time domain, the shape of
one input, and the extra inputs a model needs (text embeddings, class labels). Models may state their
own by defining ``timeaware_call()``; ``timeaware.specs.describe`` detects it for everything else.
It is plain data: it round-trips through JSON and never names code.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .embeddings import TimeDomain, sinusoidal_features

CONVENTIONS = ("xt", "tx", "attr", "concat", "embedding")
INPUT_KINDS = ("normal", "labels", "ones", "none", "tensor")
MODES = ("train", "eval")


@dataclass(frozen=True)
class Input:
    """An extra input, per sample: random normal values of ``shape``, integer labels in [0, high), ones (an attention
    mask that keeps every token), a given tensor, or none: ``None`` for an argument the model requires but does
    not use (an unconditional EDM network's ``class_labels``), passed by ``ModelCall.invoke`` and never made.

    ``shared``: one value for the whole batch, which the model takes without a batch dimension (Flux's RoPE
    position ids). It is made and sliced as N equal rows like any input, and ``ModelCall.invoke`` passes one.
    """

    shape: tuple[int, ...] = ()
    kind: str = "normal"
    high: int = 0
    value: torch.Tensor | None = field(default=None, compare=False, repr=False)  # kind="tensor": (N, ...) or (...)
    shared: bool = False

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind {self.kind!r} is not allowed; choose one of {', '.join(INPUT_KINDS)}")
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        if any(v <= 0 for v in self.shape):
            raise ValueError(f"input shape {self.shape} is not allowed; sizes must be positive")
        if self.kind == "labels" and self.high < 1:
            raise ValueError(f"labels need a number of classes >= 1, not {self.high}")
        if self.kind == "tensor" and not isinstance(self.value, torch.Tensor):
            raise ValueError("an input of kind 'tensor' needs its value")

    def make(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """N rows of this input (a given tensor of one sample is repeated; a shared input is one row, N times)."""
        if self.shared and self.kind != "tensor":
            return replace(self, shared=False).make(1, generator).expand(n, *self.shape).clone()
        if self.kind == "labels":
            return torch.randint(0, self.high, (n, *self.shape), generator=generator)
        if self.kind == "normal":
            return torch.randn(n, *self.shape, generator=generator)
        if self.kind == "ones":
            return torch.ones(n, *self.shape, dtype=torch.long)  # 1 = keep (masks are long or bool)
        if self.kind == "none":
            raise ValueError("an input of kind 'none' is passed as None by ModelCall.invoke, never made")
        value = self.value
        assert value is not None
        if value.ndim and value.shape[0] == n and tuple(value.shape[1:]) == self.shape:
            return value
        return value.expand(n, *value.shape).clone()

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "tensor":
            raise ValueError("an input given as a tensor is not recorded; save it beside the model instead")
        shared = {"shared": True} if self.shared else {}  # older files hold no such field
        return {"shape": list(self.shape), "kind": self.kind, "high": self.high, **shared}


def unwrapped(model: nn.Module) -> nn.Module:
    """The module a wrapper runs: ``torch.compile``'s ``_orig_mod``, (Distributed)DataParallel's ``module``.

    The audit hooks and calls that one: the same weights and maths, without compiling the hooks."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_dtype(model: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of the model's first floating parameter or buffer: the dtype its inputs must have."""
    tensors = (*model.parameters(), *model.buffers())
    return next((v.dtype for v in tensors if v.is_floating_point()), default)


@dataclass(frozen=True)
class ModelCall:
    """How to call a model with (x, t) and what to feed it.

    convention    xt: ``model(x, t)`` (t by keyword when ``time_arg`` is set); tx: torchdiffeq's ``model(t, x)``;
                  attr: ``model(x)`` after setting ``.t`` on every submodule that has one (torchdyn);
                  concat: ``model(cat([x, t], concat_dim))`` (torchcfm's MLP); embedding: ``model(x, emb)``
                  with sinusoidal features of t, ``embedding_dim`` wide (a block taking a time embedding)
    time_arg      the keyword t is passed by (``timestep``, ``time``, ``noise_labels`` …), or None: positional
    scalar_time   t is one 0-d value per call (an ODE solver's); the audit then calls once per t
    domain        integer steps, a continuous interval or a noise level σ (``TimeDomain``)
    input_shape   one input's shape, any rank (None: unknown, must be given)
    extras        keyword inputs besides x and t: name → ``Input``
    mode          the norms' mode in which the model is used: eval (sampling) or train (an ODE solve in training)
    float_steps   integer steps go in as floats (a model whose time embedding multiplies them with float weights)
    """

    convention: str = "xt"
    time_arg: str | None = None
    scalar_time: bool = False
    domain: TimeDomain = field(default_factory=TimeDomain)
    input_shape: tuple[int, ...] | None = None
    extras: tuple[tuple[str, Input], ...] = ()
    embedding_dim: int | None = None
    concat_dim: int = 1
    mode: str = "eval"
    float_steps: bool = False

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"call {self.convention!r} is not allowed; choose one of {', '.join(CONVENTIONS)}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not allowed; choose one of {', '.join(MODES)}")
        if isinstance(self.extras, dict):
            object.__setattr__(self, "extras", tuple(self.extras.items()))
        names = [name for name, _ in self.extras]
        if len(set(names)) != len(names):
            raise ValueError(f"extra inputs {names} name one input twice; give each once")
        if self.input_shape is not None:
            shape = tuple(int(v) for v in self.input_shape)
            if not shape or any(v <= 0 for v in shape):
                raise ValueError(f"input shape {self.input_shape} is not allowed; give positive sizes, e.g. 3,32,32")
            object.__setattr__(self, "input_shape", shape)
        if self.convention == "embedding" and not (self.embedding_dim and self.embedding_dim >= 4):
            raise ValueError("call 'embedding' needs embedding_dim >= 4 (the width of the block's time embedding)")

    def replace(self, **changes: Any) -> ModelCall:
        return replace(self, **changes)

    @property
    def inputs(self) -> dict[str, Input]:
        return dict(self.extras)

    @property
    def name(self) -> str:
        """Short words for reports: how t is passed."""
        where = {"xt": f"model(x, {self.time_arg}=t)" if self.time_arg else "model(x, t)", "tx": "model(t, x)",
                 "attr": "model.<m>.t = t; model(x)", "concat": "model(cat[x, t])",
                 "embedding": "model(x, sinusoidal(t))"}[self.convention]
        return where + (", scalar t" if self.scalar_time else "")

    def timesteps(self, k: int) -> torch.Tensor:
        t = self.domain.grid(k)
        return t.float() if self.float_steps and not t.is_floating_point() else t

    def example(self, n: int, seed: int = 0, dtype: torch.dtype = torch.float32,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """N random inputs and their extra inputs, from one seeded generator; floating ones in ``dtype``
        (the model's: ``model_dtype``), drawn in float32 so that every dtype sees the same values."""
        if self.input_shape is None:
            raise ValueError("the input shape is unknown; give it (--input-shape, e.g. 3,32,32 or 2,64)")
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, *self.input_shape, generator=gen).to(dtype)
        extras = {name: spec.make(n, gen) for name, spec in self.extras if spec.kind != "none"}
        return x, {name: v.to(dtype) if v.is_floating_point() else v for name, v in extras.items()}

    def invoke(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor,
               extras: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``model`` called on x with t of shape (B,) as this description says; returns the output tensor.

        An extra named ``group.key`` goes in as ``group={"key": ...}`` (diffusers' ``added_cond_kwargs``); a
        ``shared`` one as its first row."""
        shared = {name for name, spec in self.extras if spec.shared}
        given: dict[str, Any] = {name: v[0] if name in shared else v for name, v in (extras or {}).items()}
        given.update((name, None) for name, spec in self.extras if spec.kind == "none")
        extras = nest(given)
        tt: torch.Tensor = t[0] if self.scalar_time else t
        if self.scalar_time and t.numel() > 1 and not bool((t == t[0]).all()):
            raise ValueError("this model takes one scalar t per call; a batch with several t cannot be passed at once")
        if self.convention == "tx":
            out = model(tt, x, **extras)
        elif self.convention == "attr":
            holders = [m for m in model.modules() if holds_time(m)]
            for module in holders:
                module.t = tt
            try:
                out = model(x, **extras)
            finally:  # keep the value, not the graph: the model stays copyable
                for module in holders:
                    module.t = tt.detach()
        elif self.convention == "concat":
            shape = list(x.shape)
            shape[self.concat_dim] = 1
            column = t.to(x.dtype).view(-1, *([1] * (x.ndim - 1))).expand(shape)
            out = model(torch.cat([x, column], dim=self.concat_dim), **extras)
        elif self.convention == "embedding":
            assert self.embedding_dim is not None
            emb = sinusoidal_features(t.float(), self.embedding_dim).to(x.dtype)
            out = model(x, emb, **extras)
        elif self.time_arg:
            out = model(x, **{self.time_arg: tt}, **extras)
        else:
            out = model(x, tt, **extras)
        return output_tensor(out)

    def time_from_call(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """The t (or, for ``embedding``, the time embedding) of a call ``model(*args, **kwargs)``, as this
        description routes it; None when it is not there (a positional map then refuses to guess)."""
        if self.convention == "attr":
            found = next((vars(m)["t"] for m in model.modules() if holds_time(m) and vars(m)["t"] is not None), None)
            return None if found is None else torch.as_tensor(found)
        if self.convention == "concat":
            x = args[0] if args else None
            return x.select(self.concat_dim, -1).reshape(x.shape[0], -1)[:, 0] if isinstance(x, torch.Tensor) else None
        if self.convention == "tx":
            found = args[0] if args else kwargs.get("t")
        elif self.convention == "embedding" or not self.time_arg:
            found = args[1] if len(args) > 1 else None
        else:
            try:
                found = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments.get(self.time_arg)
            except TypeError:
                found = kwargs.get(self.time_arg)
        if found is None:
            return None
        return torch.as_tensor(found)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["domain"] = self.domain.to_dict()
        data["extras"] = {name: spec.to_dict() for name, spec in self.extras}
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ModelCall:
        """Rebuild from ``to_dict``; every field is checked (this may come from a file someone else wrote)."""
        if not isinstance(data, dict):
            raise ValueError(f"a model call must be a JSON object, not {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model call field {unknown[0]!r}; allowed: {', '.join(sorted(known))}")
        data = dict(data)
        if "domain" in data:
            data["domain"] = TimeDomain.from_dict(data["domain"])
        extras = data.get("extras") or {}
        if not isinstance(extras, dict):
            raise ValueError("model call extras must be an object name → {shape, kind, high}")
        data["extras"] = tuple((str(k), Input(**_input_fields(v))) for k, v in extras.items())
        for key, kind in (("time_arg", str), ("embedding_dim", int), ("concat_dim", int), ("scalar_time", bool),
                          ("float_steps", bool)):
            value = data.get(key)
            if value is not None and (type(value) is not kind):
                raise ValueError(f"model call {key}={value!r} is not allowed; expected {kind.__name__}")
        return cls(**data)


def nest(extras: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Keyword inputs with ``group.key`` names gathered into one dict per group: {"a.b": v} → {"a": {"b": v}}."""
    nested: dict[str, Any] = {}
    for name, value in extras.items():
        group, dot, key = name.partition(".")
        if dot:
            nested.setdefault(group, {})[key] = value
        else:
            nested[name] = value
    return nested


def _input_fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - {"shape", "kind", "high", "shared"}:
        raise ValueError(f"extra input {value!r} is not allowed; give {{shape, kind, high[, shared]}}")
    shape = value.get("shape", [])
    if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        raise ValueError(f"extra input shape {shape!r} is not allowed; give a list of positive integers")
    high = value.get("high", 0)
    if isinstance(high, bool) or not isinstance(high, int):
        raise ValueError(f"extra input high={high!r} is not allowed; give an integer")
    shared = value.get("shared", False)
    if not isinstance(shared, bool):
        raise ValueError(f"extra input shared={shared!r} is not allowed; give true or false")
    return {"shape": tuple(shape), "kind": value.get("kind", "normal"), "high": high, "shared": shared}


def holds_time(module: nn.Module) -> bool:
    """A submodule that reads t from its own ``.t`` attribute (torchdyn's ``DepthCat`` convention)."""
    return "t" in vars(module) and not isinstance(vars(module)["t"], nn.Module)


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor a model returned: itself, the first of a tuple, diffusers' ``.sample`` (an attribute or a
    dict key), or the one tensor of a dict."""
    if isinstance(out, (tuple, list)) and out:  # the first tensor with a batch dimension: (aux_loss, out) → out
        out = next((v for v in out if isinstance(v, torch.Tensor) and v.ndim), out[0])
    if isinstance(out, Mapping):
        tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
        out = out.get("sample", tensors[0] if len(tensors) == 1 else out)
    out = getattr(out, "sample", out)
    if not isinstance(out, torch.Tensor):
        keys = f" with keys {sorted(map(str, out))[:6]}" if isinstance(out, Mapping) else ""
        raise ValueError(f"the model returned {type(out).__name__}{keys}; a tensor, a tuple starting with one, an "
                         "object or dict with a 'sample' tensor, or a dict of one tensor is needed")
    return out


def as_call(call: str | ModelCall | None) -> ModelCall:
    """A ModelCall from one (returned as is) or from a convention name ("xt", "tx", …)."""
    if isinstance(call, ModelCall):
        return call
    if call is None:
        return ModelCall()
    if call not in CONVENTIONS:
        raise ValueError(f"call={call!r} is not allowed; choose one of {', '.join(CONVENTIONS)} or a ModelCall")
    return ModelCall(convention=call)

