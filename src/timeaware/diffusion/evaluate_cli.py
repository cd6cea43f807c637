"""Score a trained DDPM: FD-classifier (offline), or FID / IS with local Inception weights; prints the protocol.

  timeaware evaluate runs/ddpm-quick --metric fd-classifier --num 1000
  timeaware evaluate runs/ddpm-paper --data cifar10.npz --metric fid --metric is \\
      --inception-weights pt_inception-2015-12-05-6726825d.pth --sampler ddpm --steps 1000 --num 50000
FD-classifier is a Fréchet distance in a small classifier's feature space, not FID.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..parsing import nonempty_path
from .metrics import METRICS, Protocol
from .sample_cli import add_sampling_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a run folder (its latest checkpoint) or a checkpoint folder")
    parser.add_argument("--metric", action="append", default=None, help=f"{' | '.join(METRICS)} (repeatable; "
                        "default fd-classifier)")
    add_sampling_arguments(parser, num=1000)
    parser.add_argument("--data", default=None, help="reference dataset (default: the one the model was trained on)")
    parser.add_argument("--reference-split", default="train", help="train | test (default train)")
    parser.add_argument("--classifier", type=Path, default=None,
                        help="FD-classifier weights; trained and saved there when absent "
                             "(default runs/classifiers/DATA-SIZE.safetensors)")
    parser.add_argument("--inception-weights", type=Path, default=None,
                        help="local pt_inception-2015-12-05 weights for FID / IS (needs timeaware[fid])")
    parser.add_argument("--out", type=nonempty_path, default=None, help="also write the records to this JSON file")


def run(args: argparse.Namespace) -> int:
    from ..io import write_json
    from .evaluate import EvalSettings, evaluate
    from .sampling import load_unet

    if args.num < 2:
        raise ValueError(f"--num {args.num} is not allowed; a Fréchet distance needs at least 2 samples")
    model, meta = load_unet(args.checkpoint, raw=args.raw)
    settings = EvalSettings(metrics=tuple(args.metric or ["fd-classifier"]), num=args.num, sampler=args.sampler,
                            steps=args.steps, seed=args.seed, data=args.data or meta["state"]["train"]["data"],
                            reference_split=args.reference_split, classifier=args.classifier,
                            inception_weights=args.inception_weights, batch_size=args.batch_size)
    records, _ = evaluate(model, settings, weights="raw" if args.raw else "ema", progress=True)
    for record in records:
        std = f" ± {record['std']:.3f}" if "std" in record else ""
        print(f"{record['metric']} = {record['value']:.4f}{std}    [{Protocol(**record['protocol'])}]")
    if args.out:
        write_json(args.out, {"checkpoint": meta["path"], "step": meta["step"], "records": records})
    return 0

