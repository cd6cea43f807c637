"""``timeaware`` command line: one dispatcher; each command lives beside the code it drives.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. User errors
(``ValueError``, ``FileNotFoundError``) print one line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> module, or {subcommand: module}; modules import heavy dependencies inside run().
COMMANDS: dict[str, str | dict[str, str]] = {
    "audit": "timeaware.awareness.cli",
    "train": {"node": "timeaware.node.cli", "ddpm": "timeaware.diffusion.cli"},
    "sample": "timeaware.diffusion.sample_cli",
    "evaluate": "timeaware.diffusion.evaluate_cli",
    "reproduce": "timeaware.experiments.cli",
    "fix": "timeaware.repair.cli",
    "time-use": "timeaware.experiments.time_use",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        raise SystemExit(_fail(f"{self.prog}: {message}"))


def _fail(message: str) -> int:
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch, rank 0 alone reports
        print(f"timeaware: error: {message}", file=sys.stderr)
    return 2


def _add(sub: argparse._SubParsersAction, name: str, module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            return  # command not built yet
        raise
    doc = (module.__doc__ or "").strip().splitlines()
    parser = sub.add_parser(name, help=doc[0] if doc else None, description=module.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="timeaware", description="Time-dependent networks that stay time-aware.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, target in COMMANDS.items():
        if isinstance(target, str):
            _add(sub, name, target)
            continue
        group = sub.add_parser(name, help=f"{name} a model: {', '.join(target)}")
        inner = group.add_subparsers(dest="model", required=True, parser_class=_Parser)
        for model, module_name in target.items():
            _add(inner, model, module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "run"):
        return _fail(f"'{args.command}' has nothing to run yet")
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        return _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    raise SystemExit(main())
