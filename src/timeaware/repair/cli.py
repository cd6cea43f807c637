"""Apply the paper's fixes to an existing model and write it (safetensors + fix.json) with a before/after report.

Examples:
  timeaware fix path/to/unet_folder --positional mlp --groups 1 --out fixed/
  timeaware fix mypkg.models:make_odefunc --set dim=64 --input-shape 64,8,8 --positional linear --out fixed/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..specs import default_input_shape, load_model, parse_pairs
from .fix import POSITIONAL_FORMS, fix
from .persist import save_fixed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a diffusers folder or config.json, a timeaware run folder, or an import path "
                        "package.module:factory")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.safetensors, fix.json, report.json")
    parser.add_argument("--positional", choices=POSITIONAL_FORMS, default=None,
                        help="add a positional timestep embedding (diffusers resnets always use mlp)")
    parser.add_argument("--zero-bias", action="store_true", help="zero the operand-branch conv biases")
    parser.add_argument("--groups", type=int, default=None, help="regroup every GroupNorm to G groups")
    parser.add_argument("--no-preserve", action="store_true",
                        help="random-initialise the positional maps (default: zero, output unchanged)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for a factory (repeatable)")
    parser.add_argument("--input-shape", default=None, metavar="C,H,W",
                        help="one input's shape (default: from the model, e.g. a diffusers config or a run)")
    parser.add_argument("--samples", type=int, default=8, help="inputs used to find sizes and to audit (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed for a factory's init and the inputs")


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)  # a factory's random init is part of the run
    model, base = load_model(args.model, parse_pairs(args.set))
    shape = _shape(args.input_shape, model)
    if args.samples < 2:
        raise ValueError(f"--samples {args.samples} is not allowed; it must be at least 2")
    example = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    result = fix(model.eval(), example, positional=args.positional or False, zero_operand_bias=args.zero_bias,
                 groups=args.groups, preserve_output=not args.no_preserve)
    save_fixed(result, args.out, base)
    print(result)
    print(f"wrote {args.out / 'model.safetensors'}, {args.out / 'fix.json'}, {args.out / 'report.json'}")
    return 0


def _shape(text: str | None, model: torch.nn.Module) -> tuple[int, ...]:
    if text is None:
        shape = default_input_shape(model)
        if shape is None:
            raise ValueError("--input-shape C,H,W is needed for this model (it does not say its input shape)")
        return shape
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise ValueError(f"--input-shape {text!r} is not allowed; give positive integers like 64,8,8")
    return shape
