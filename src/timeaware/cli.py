"""``timeaware`` command line: one dispatcher; each command lives beside the code it drives.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. User errors
(``ValueError``, ``TypeError`` from checked arguments, any ``OSError``: a full disk, a read-only file system, a
name too long ...) print one line and exit with code 2, never a traceback. Output paths are checked here,
before a command starts (``timeaware.paths.check_output``); training checks its run folder itself.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import NoReturn

from .paths import Kind, check_output, describe_os_error
from .resources import launch_rank, memory_check_disabled

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

# command -> (argument, kind) of the path it writes, checked before the command runs
# command -> (flag, what it writes, the file marking a folder as its earlier output)
OUTPUTS: dict[str, tuple[str, Kind, str | None]] = {
    "audit": ("plot", "file", None), "sample": ("out", "folder", "grid.png"), "evaluate": ("out", "file", None),
    "fix": ("out", "folder", "fix.json"), "reproduce": ("out", "folder", "sweep.json")}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit code 2
        if message.endswith("expected one argument"):  # argparse reads "-1,5" as an option
            message += " (a value starting with '-' is written --flag=VALUE, e.g. --t-range=-1,5)"
        raise SystemExit(_fail(f"{self.prog}: {message}"))


def _fail(message: str) -> int:
    try:
        rank = launch_rank()
    except ValueError:  # that is the error being reported
        rank = 0
    if rank == 0:  # under torchrun / accelerate launch, rank 0 alone reports
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
    parser.add_argument("--no-memory-check", action="store_true",
                        help="skip the check that the job fits in free memory (for people who know better)")
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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0), or a flag refused as it is read (2; its one line is printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    if not hasattr(args, "run"):
        return _fail(f"'{args.command}' has nothing to run yet")
    try:
        if args.command in OUTPUTS:
            name, kind, own = OUTPUTS[args.command]
            if getattr(args, name, None) is not None:
                check_output(getattr(args, name), kind, flag=f"--{name}", own=own)
        with memory_check_disabled() if args.no_memory_check else contextlib.nullcontext():
            return int(args.run(args) or 0)
    except OSError as err:
        return _fail(describe_os_error(err))
    except (ValueError, TypeError) as err:
        return _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt as err:  # a command may say how to continue (e.g. a trainer: --resume)
        return _fail(f"interrupted; {err}" if str(err) else "interrupted")


if __name__ == "__main__":
    raise SystemExit(main())
