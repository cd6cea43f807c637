"""Apply the paper's fixes to an existing model and write it (safetensors + fix.json) with a before/after report.

Takes the same MODEL and call options as ``timeaware audit``. Where a time offset is added before a
normalization, it adds a positional timestep embedding, zeroes the operand conv's bias and/or regroups
the GroupNorms. A model whose time enters after its norms (scale-shift, adaptive norms) needs no fix:
that is said in one line, exit code 0, and nothing is written.

Examples:
  timeaware fix path/to/unet_folder --positional mlp --groups 1 --out fixed/
  timeaware fix runs/bn --groups 1 --positional linear --out fixed-bn/
  timeaware fix mypkg.models:make_odefunc --set dim=64 --input-shape 64,8,8 --positional linear --out fixed/
"""

from __future__ import annotations

import argparse

from ..parsing import COUNT, nonempty_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..specs.options import add_model_arguments
    from .fix import POSITIONAL_FORMS

    add_model_arguments(parser, samples=8)
    parser.add_argument("--out", type=nonempty_path, required=True,
                        help="folder for model.safetensors, fix.json, report.json")
    parser.add_argument("--positional", choices=POSITIONAL_FORMS, default=None,
                        help="add a positional timestep embedding (a block given a time embedding gets mlp)")
    parser.add_argument("--zero-bias", action="store_true", help="zero the bias of each site's operand conv")
    parser.add_argument("--groups", type=COUNT, default=None, help="regroup every GroupNorm to G groups")
    parser.add_argument("--no-preserve", action="store_true",
                        help="random-initialise the positional maps (default: zero, output unchanged)")


def run(args: argparse.Namespace) -> int:
    from ..specs.options import resolve
    from .fix import fix
    from .persist import save_fixed

    found = resolve(args)
    result = fix(found.model.eval(), found.x, positional=args.positional or False, zero_operand_bias=args.zero_bias,
                 groups=args.groups, preserve_output=not args.no_preserve, call=found.call, extras=found.extras,
                 timesteps=found.timesteps)
    if not result.needed and result.trace.functional_norms:  # norms fix cannot reach: not "no fix needed"
        raise ValueError(f"{args.model}: nothing fixed: {result.trace.explain()}; nothing written")
    if not result.needed:
        print(f"{args.model}: no fix needed: {result.trace.explain()}; nothing written")
        return 0
    save_fixed(result, args.out, found.record)
    print(result)
    print(f"wrote {args.out / 'model.safetensors'}, {args.out / 'fix.json'}, {args.out / 'report.json'}")
    return 0
