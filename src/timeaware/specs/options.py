"""The command-line options that name a model and say how to call it, shared by ``audit`` and ``fix``.

MODEL is a built-in name, a diffusers folder or config.json, a timeaware run or checkpoint folder, a
folder written by ``timeaware fix``, or an import path ``package.module:factory`` — the last is your own
code, imported and run because you typed it. Everything detected about the call can be overridden.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..awareness.audit import MAX_TIMESTEPS
from ..calling import CONVENTIONS, Input, ModelCall, unwrapped
from ..embeddings import TIME_KINDS, TimeDomain
from ..io import load_tensors, tensor_bytes
from ..parsing import SEED, integer, parse_pairs, parse_range, parse_shape, split_pair
from ..resources import check_memory
from ..validate import check_int
from .describe import describe, probe
from .load import load_model

BUILTINS = ("node-func", "node-func-mlp")
NODE_SHAPE = (64, 8, 8)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_model_arguments(parser: argparse.ArgumentParser, samples: int = 16) -> None:
    parser.add_argument("model", metavar="MODEL", help=f"{' | '.join(BUILTINS)} | diffusers folder or config.json | "
                        "timeaware run folder | fixed folder | package.module:factory (your code: imported and run)")
    parser.add_argument("--set", dest="pairs", action="append", default=[], metavar="KEY=VALUE",
                        help="a TimeAware field of a built-in model, or a keyword for an import path's factory")
    parser.add_argument("--input-shape", metavar="SHAPE", help="one input's shape, any rank: 3,32,32 or 2,64 "
                        "(default: from the model, e.g. a diffusers sample_size or a run)")
    parser.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME=SHAPE|FILE",
                        help="an extra keyword input: NAME=8,768 (random normal per sample), NAME=labels:10 "
                        "(random class labels), NAME=file.safetensors (its one tensor), or NAME=none (None, for an "
                        "argument the model requires but ignores); GROUP.KEY=... goes into a dict keyword "
                        "(added_cond_kwargs.time_ids=6); repeatable")
    parser.add_argument("--call", choices=CONVENTIONS, help="how t is passed: xt model(x, t); tx model(t, x); attr "
                        "sets .t on submodules (torchdyn); concat appends t to x; embedding passes sinusoidal "
                        "features of t (default: detected)")
    parser.add_argument("--time-arg", metavar="NAME", help="pass t by this keyword (e.g. timestep, noise_labels)")
    parser.add_argument("--time-domain", choices=TIME_KINDS, help="steps (integers), continuous, or sigma (noise "
                        "level, log-spaced); default: detected")
    parser.add_argument("--t-range", metavar="A,B", help="first,last t; integers give integer (diffusion) steps "
                        "(default: 0,T-1 for diffusion models, a NODE run's 0,t1, σ in 0.002,80, else 0,1)")
    parser.add_argument("--samples", type=integer(2), default=samples, metavar="N",
                        help=f"random inputs, at least 2 (default {samples})")
    parser.add_argument("--timesteps", type=integer(2, MAX_TIMESTEPS), default=8, metavar="K",
                        help=f"timesteps, spread over the time domain, 2 to {MAX_TIMESTEPS} (default 8)")
    parser.add_argument("--mode", choices=("train", "eval"), default=None,
                        help="norms in train or eval mode (default: the model's use; train for NODE functions)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="compute in this dtype (float64 makes exact cancellation exact; default float32)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed for the model's initialisation and the inputs")
    parser.add_argument("--trust-code", action="store_true",
                        help="allow a fixed folder's fix.json to name a factory that is imported and run")


@dataclass
class Resolved:
    """A model ready to audit or fix: the model, how to rebuild it, how to call it, and its inputs."""

    model: nn.Module
    record: dict[str, Any]
    call: ModelCall
    x: torch.Tensor
    extras: dict[str, torch.Tensor]
    timesteps: torch.Tensor


def resolve(args: argparse.Namespace) -> Resolved:
    """Build the model MODEL names, describe its call with the overrides, and make its inputs."""
    names = [split_pair("--input", text, identifier=False)[0] for text in args.inputs]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:  # before the model is built and any --input file is read
        raise ValueError(f"--input {twice}=... is given more than once; give each input once")
    torch.manual_seed(args.seed)  # a factory's random init is part of the run
    model, record = _load(args.model, args.pairs, args.trust_code)
    model = unwrapped(model)  # a compiled or DataParallel model: its module
    dtype = DTYPES[args.dtype]
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model = model.to(dtype)
    overrides: dict[str, Any] = {"time_arg": args.time_arg, "mode": args.mode}
    if args.time_arg and args.call not in (None, "xt"):
        raise ValueError(f"--time-arg {args.time_arg} passes t by keyword, model(x, {args.time_arg}=t); it does not "
                         f"go with --call {args.call}")
    if args.time_arg:  # a keyword for t means model(x, NAME=t), whatever was detected
        overrides.update(convention="xt", scalar_time=False)
    if args.call:
        overrides["convention"] = args.call
        if args.call == "tx":
            overrides["scalar_time"] = True
    if args.input_shape:
        overrides["input_shape"] = parse_shape("--input-shape", args.input_shape)
    elif args.model in BUILTINS:
        overrides["input_shape"] = NODE_SHAPE
    call = describe(model, **overrides)
    if args.inputs:  # the given inputs replace detected ones of the same name
        given = [_extra(text, args.samples) for text in args.inputs]
        call = call.replace(extras=(*((n, s) for n, s in call.extras if n not in names), *given))
    if args.t_range or args.time_domain:
        call = call.replace(domain=_domain(args.t_range, args.time_domain, call.domain))
    if call.input_shape is None:
        raise ValueError(f"the input shape of {args.model!r} is unknown; give --input-shape, e.g. 3,32,32 or 2,64")
    per_input = math.prod(call.input_shape) * torch.finfo(dtype).bits // 8
    extra = sum(math.prod(spec.shape) * 8 for _, spec in call.extras if spec.kind != "tensor")  # made per input
    check_memory(args.samples * (per_input * (args.timesteps + 4) + extra),  # inputs, the audit's per-layer sums
                 f"--samples {args.samples} inputs of shape {','.join(map(str, call.input_shape))}"
                 + "".join(f" with {name} of shape {','.join(map(str, spec.shape))}" for name, spec in call.extras
                           if spec.kind != "tensor" and spec.shape))
    call = probe(model, call, guessed=not args.input_shape)
    x, extras = call.example(args.samples, args.seed, dtype)
    return Resolved(model, record, call, x, extras, call.timesteps(args.timesteps))


def _load(spec: str, pairs: list[str], trust_code: bool) -> tuple[nn.Module, dict[str, Any]]:
    if spec in BUILTINS:
        from ..config import TimeAware
        from ..node import ODEFunc

        channels, h, w = NODE_SHAPE
        config = TimeAware.from_strings(pairs)
        model = ODEFunc(channels, config, time="concat" if spec == "node-func" else "mlp", size=(h, w))
        return model, {"kind": "timeaware-node-func", "channels": channels, "config": config.to_dict(),
                       "time": model.time, "size": [h, w], "t1": 1.0}
    if (Path(spec) / "fix.json").is_file():
        from ..io import read_json
        from ..repair import load_fixed

        if pairs:
            raise ValueError(f"--set is not allowed with the fixed folder {spec}: it is rebuilt from its fix.json")
        return load_fixed(spec, trust_code=trust_code), read_json(Path(spec) / "fix.json")["base"]
    if ":" not in spec and "/" not in spec and not spec.endswith(".json") and not Path(spec).exists():
        raise ValueError(f"MODEL {spec!r} is neither a built-in ({', '.join(BUILTINS)}), an existing folder or "
                         "config.json, nor an import path package.module:factory")
    return load_model(spec, parse_pairs(pairs))


def _extra(text: str, samples: int) -> tuple[str, Input]:
    name, value = split_pair("--input", text, identifier=False)
    if not all(part.isidentifier() for part in name.split(".", 1)):
        raise ValueError(f"--input {text!r} is not of the form NAME=VALUE (NAME a keyword, or group.key for a dict "
                         "keyword such as added_cond_kwargs.time_ids)")
    if value == "none":  # an argument the model requires and ignores: passed as None
        return name, Input(kind="none")
    if value.startswith("labels:"):
        try:
            high = int(value.removeprefix("labels:"))
        except ValueError:
            raise ValueError(f"--input {text!r} is not allowed; give labels:K with K >= 1 classes") from None
        check_int(f"--input {name}=labels:K", high, 1)
        return name, Input(kind="labels", high=high)
    if value.endswith(".safetensors"):
        if not Path(value).is_file():  # a FIFO or device would block the reader, a folder is no tensor
            raise ValueError(f"--input {text!r}: {value} is not a regular file")
        check_memory(samples * tensor_bytes(value), f"--input {text}: {samples} copies of its tensor")
        tensors = load_tensors(value)
        if len(tensors) != 1:
            raise ValueError(f"--input {text!r}: {value} holds {len(tensors)} tensors; give a file with exactly one")
        tensor = next(iter(tensors.values()))
        return name, Input(shape=tuple(tensor.shape[1:]) if tensor.ndim > 1 else tuple(tensor.shape), kind="tensor",
                           value=tensor)
    if "." in value and not value.replace(",", "").isdigit():  # a file, but not one that may be read
        raise ValueError(f"--input {text!r} is not allowed; give NAME=8,768 (a shape), NAME=labels:K, or "
                         "NAME=file.safetensors (pickle files such as .pt are never loaded)")
    return name, Input(shape=parse_shape("--input", value))


def _domain(text: str | None, kind: str | None, detected: TimeDomain) -> TimeDomain:
    if text is None:
        assert kind is not None
        if kind == detected.kind:
            return detected
        defaults = {"steps": (0, 999), "continuous": (0.0, 1.0), "sigma": (0.002, 80.0)}
        return TimeDomain(kind, *defaults[kind])
    low, high, integers = parse_range("--t-range", text)
    if low > high:
        low, high = high, low
    kind = kind or ("steps" if integers else "continuous")
    return TimeDomain(kind, low, high)
