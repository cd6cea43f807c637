"""Measure how much of the timestep survives each normalization layer of a model (and find risky sites).

MODEL is a built-in name, a diffusers folder or config.json (e.g. a UNet2DModel's save_pretrained
folder; built offline), a timeaware run or checkpoint folder (a DDPM run's U-Net with its EMA weights,
a NODE run's ODE function), or an import path ``package.module:factory`` whose factory returns an
nn.Module (``--set key=value`` pairs are then passed to it as keyword strings).

Built-in models (``--set`` changes their TimeAware fields, e.g. ``--set norm=batch``):
  node-func      the paper's NODE function [N-Act-ConcatConv-N-Act-ConcatConv-N], C=64 on an 8x8 state
  node-func-mlp  the same with an additive MLP timestep embedding (the paper's Table 2 model)
Their defaults, and those of a NODE run's ODE function, follow an ODE solve during training: every
call shares one t (``--batching shared``) with the norms in train mode (``--mode train``), t in [0, 1]
(a NODE run: [0, t1] of its solver).
Other models default to ``--mode eval --batching shared`` (sampling); the call is detected
(``forward(t, x)`` → tx, a block taking a time embedding gets sinusoidal features of t, else xt), and t
is integer steps 0..T-1 for diffusion models (diffusers', a DDPM run's) and [0, 1] otherwise; the input
shape comes from the model (a diffusers sample_size, a run's recorded image or state shape).

examples:
  timeaware audit node-func --set norm=batch
  timeaware audit node-func --set norm=batch --set positional=linear --json
  timeaware audit path/to/unet_folder --json
  timeaware audit runs/ddpm-quick
  timeaware audit mypkg.models:build_unet --input-shape 3,32,32 --batching mixed --mode train
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch
from torch import nn

BUILTINS = ("node-func", "node-func-mlp")
NODE_SHAPE = (64, 8, 8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help=f"{' | '.join(BUILTINS)} | diffusers folder or config.json | "
                        "timeaware run folder | package.module:factory")
    parser.add_argument("--set", dest="pairs", action="append", default=[], metavar="KEY=VALUE",
                        help="a TimeAware field of a built-in model, or a keyword for an import path's factory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--plot", metavar="FILE.png", help="also write a bar chart of survival per layer")
    parser.add_argument("--timesteps", type=int, default=8, metavar="K", help="timesteps, evenly spaced (default 8)")
    parser.add_argument("--samples", type=int, default=16, metavar="N", help="random inputs (default 16)")
    parser.add_argument("--batching", choices=("shared", "mixed"), default="shared",
                        help="shared: one t per call (ODE solve, sampling); mixed: mixed t per batch (diffusion "
                             "training). Default shared")
    parser.add_argument("--mode", choices=("train", "eval"), default=None,
                        help="norms in train or eval mode (default: train for NODE functions, eval for others)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model's initialisation and the inputs")
    parser.add_argument("--input-shape", metavar="C,H,W", help=f"input shape per sample (built-ins: "
                        f"{','.join(map(str, NODE_SHAPE))})")
    parser.add_argument("--call", choices=("xt", "tx"), default=None,
                        help="xt: model(x, t); tx: torchdiffeq's model(t, x) (default: tx built-ins, xt imports)")
    parser.add_argument("--t-range", metavar="A,B", help="first,last timestep; integers give integer (diffusion) "
                        "steps (default: 0,T-1 for diffusion models, a NODE run's 0,t1, else 0.0,1.0)")


def run(args: argparse.Namespace) -> int:
    from ..node import ODEFunc
    from ..specs import default_input_shape, default_timesteps, detect_call, load_model, parse_pairs
    from . import audit, find_vanishing_sites

    for flag, value in (("--timesteps", args.timesteps), ("--samples", args.samples)):
        if value < 2:
            raise ValueError(f"{flag} {value} is not allowed; it must be at least 2 (the audit compares them)")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise ValueError(f"--plot {args.plot!r} is not allowed; give a file name ending in .png")
    builtin = args.model in BUILTINS
    given = _ints("--input-shape", args.input_shape) if args.input_shape else None
    torch.manual_seed(args.seed)
    if builtin:
        shape = given or NODE_SHAPE
        model = _builtin(args.model, args.pairs, shape)
    else:
        model, _ = load_model(args.model, parse_pairs(args.pairs))
        found = given or default_input_shape(model)
        if found is None:
            raise ValueError(f"--input-shape is needed for {args.model!r}: the shape C,H,W of one input, e.g. 3,32,32")
        shape = found
    x = torch.randn(args.samples, *shape)
    timesteps = _timesteps(args.t_range, args.timesteps) if args.t_range else default_timesteps(model, args.timesteps)
    mode = args.mode or ("train" if isinstance(model, ODEFunc) else "eval")  # NODE functions: as in a training solve
    report = audit(model, x, timesteps, call=args.call or detect_call(model), batching=args.batching, mode=mode)
    sites = find_vanishing_sites(model)
    if args.plot:
        report.plot(args.plot)
    if args.json:
        print(json.dumps({"model": args.model, "set": args.pairs, **report.to_dict(),
                          "sites": [asdict(s) for s in sites]}, allow_nan=False))
        return 0
    print(f"{args.model} {' '.join(args.pairs)}".rstrip())
    print(f"static check: {len(sites)} per-channel time offset(s) followed by a normalization")
    for site in sites:
        print(f"  {site}")
    print()
    print(report)
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _builtin(name: str, pairs: list[str], shape: tuple[int, ...]) -> nn.Module:
    from ..config import TimeAware
    from ..node import ODEFunc

    channels, h, w = shape
    return ODEFunc(channels, TimeAware.from_strings(pairs), time="concat" if name == "node-func" else "mlp",
                   size=(h, w))


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{flag} {text!r} is not allowed; give three positive integers C,H,W, e.g. 3,32,32")
    return values


def _timesteps(text: str, k: int) -> torch.Tensor:
    """K evenly spaced timesteps from A to B; integer steps when both ends are integers."""
    parts = text.split(",")
    try:
        ends = [float(p) for p in parts]
    except ValueError:
        ends = []
    if len(ends) != 2 or ends[0] == ends[1] or not all(map(torch.isfinite, torch.tensor(ends))):
        raise ValueError(f"--t-range {text!r} is not allowed; give two different finite numbers A,B, e.g. 0,1")
    steps = torch.linspace(ends[0], ends[1], k, dtype=torch.float64)
    if not all(p.strip().lstrip("+-").isdigit() for p in parts):
        return steps
    steps = steps.round().long()
    if steps.unique().numel() < k:
        raise ValueError(f"--t-range {text!r} holds fewer than K={k} integer steps; widen it or write floats "
                         f"(e.g. {ends[0]:.1f},{ends[1]:.1f}) for continuous t")
    return steps
