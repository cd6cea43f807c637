"""Measure how much of the timestep survives each normalization layer of a model (and find where t enters).

MODEL is a built-in name, a diffusers folder or config.json (UNet2DModel, UNet2DConditionModel, UNet1DModel,
DiT … ; built offline), a timeaware run or checkpoint folder, a folder written by ``timeaware fix``, or an
import path ``package.module:factory`` whose factory returns an nn.Module: your own code, imported and run
because you typed it (``--set key=value`` pairs are passed to it as keyword strings).

How the model is called is detected (a model's own ``timeaware_call()``, a diffusers config, or its
forward signature: ``forward(t, x)`` of torchdiffeq/torchdyn, ``forward(x, time)`` of lucidrains/ADM,
torchdyn's DepthCat, t concatenated to x) and printed; ``--call``, ``--time-arg``, ``--input-shape``,
``--input`` and ``--t-range`` override any part. Built-ins (``--set`` changes their TimeAware fields):
  node-func      the paper's NODE function [N-Act-ConcatConv-N-Act-ConcatConv-N], C=64 on an 8x8 state
  node-func-mlp  the same with an additive MLP timestep embedding (the paper's Table 2 model)
NODE functions are audited as in a training solve: one t per call, norms in train mode.

examples:
  timeaware audit node-func --set norm=batch
  timeaware audit node-func --set norm=batch --set positional=linear --json
  timeaware audit path/to/unet_folder --json
  timeaware audit path/to/unet2dcondition/config.json          # text embeddings made up from the config
  timeaware audit runs/ddpm-quick
  timeaware audit mypkg.models:build_unet1d --input-shape 2,64 --batching mixed
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..specs.options import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--plot", metavar="FILE.png", help="also write a bar chart of survival per layer")
    parser.add_argument("--batching", choices=("shared", "mixed"), default="shared",
                        help="shared: one t per call (ODE solve, sampling); mixed: mixed t per batch (diffusion "
                             "training). Default shared")
    parser.add_argument("--layers", action="append", default=[], metavar="NAME|CLASS|PATTERN",
                        help="also hook these modules (names, class names or shell patterns); repeatable")
    parser.add_argument("--only-layers", action="store_true", help="hook only the --layers modules")
    parser.add_argument("--perturb-zero-init", action="store_true",
                        help="audit a copy whose all-zero weights (zero_module convs, EDM2 gains) are set to small "
                        "random values, to see the structure they hide at initialisation")


def run(args: argparse.Namespace) -> int:
    from ..specs.options import resolve
    from . import audit
    from .trace import TimeTrace, perturb_zero_init, trace_time

    if args.plot and not args.plot.lower().endswith(".png"):
        raise ValueError(f"--plot {args.plot!r} is not allowed; give a file name ending in .png")
    if args.only_layers and not args.layers:
        raise ValueError("--only-layers needs --layers NAME|CLASS|PATTERN")
    found = resolve(args)
    model, call = found.model, found.call
    if args.perturb_zero_init:
        model = perturb_zero_init(copy.deepcopy(model), seed=args.seed)
    report = audit(model, found.x, found.timesteps, call=call, extras=found.extras, batching=args.batching,
                   mode=call.mode, layers=args.layers, only_layers=args.only_layers)
    try:
        trace = trace_time(model, call, found.x, found.timesteps[[0, -1]], found.extras)
    except ValueError as err:  # the layers' readings stand; say why the sites are unknown
        trace = TimeTrace(untraced=str(err))
    if args.plot:
        report.plot(args.plot)
    sites = {site.norm for site in trace.sites}
    elsewhere = [row.name for row in report.layers if row.verdict == "vanished" and row.name not in sites
                 and not trace.untraced]
    if args.json:
        print(json.dumps({"model": args.model, "set": args.pairs, "call": call.to_dict(), **report.to_dict(),
                          "sites": [asdict(s) for s in trace.sites], "modulated": trace.modulated,
                          "blocked": trace.blocked, "trace": trace.explain(), "vanished_not_sites": elsewhere},
                         allow_nan=False))
        return 0
    print(f"{args.model} {' '.join(args.pairs)}".rstrip())
    print(f"called as {call.name}; t: {call.domain.kind} in [{call.domain.low:g}, {call.domain.high:g}]; "
          f"input {','.join(map(str, call.input_shape or ()))}" +
          "".join(f"; {name} {','.join(map(str, i.shape)) or i.kind}" for name, i in call.extras))
    print(f"where t enters: {trace.explain()}")
    for site in trace.sites:
        print(f"  {site}")
    print()
    print(report)
    if elsewhere:
        print(f"note: {len(elsewhere)} vanished layer(s) are not sites of an added time offset "
              f"({', '.join(elsewhere[:4])}{' …' if len(elsewhere) > 4 else ''}): t reaches them another way, e.g. "
              "a σ-dependent input scale such as EDM's c_in(σ)·x, which a norm removes by design")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0
