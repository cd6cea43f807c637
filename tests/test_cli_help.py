"""What ``--help`` says each option defaults to is what the parser really uses, for every command."""

import argparse
import re

from timeaware.cli import build_parser

# "(default 64)", "(default: train for ...)", "Default shared": the words after "default" up to ")" or ";"
STATED = re.compile(r"\bdefault:?\s+([^;)]+)", re.IGNORECASE)


def _options(parser: argparse.ArgumentParser, prog: str = "timeaware"):
    """(command, option, parser default, help or None) for every option of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{prog} {name}")
        elif not isinstance(action, argparse._HelpAction):
            flag = action.nargs == 0  # store_true / store_false: the help says what the flag turns on
            yield prog, "/".join(action.option_strings) or action.dest, parser.get_default(action.dest), \
                None if flag else action.help


def _same(stated: str, default: object) -> bool:
    try:
        return type(default)(stated) == default
    except ValueError:
        return False


def test_every_stated_default_is_the_parsers_default():
    options = list(_options(build_parser()))
    assert {prog for prog, *_ in options} >= {"timeaware audit", "timeaware train node", "timeaware train ddpm",
                                              "timeaware sample", "timeaware evaluate", "timeaware reproduce",
                                              "timeaware fix"}
    checked, wrong = 0, []
    for prog, option, default, text in options:
        stated = STATED.search(text or "")
        if stated is None or default is None:  # None: the help describes where the value comes from
            continue
        checked += 1
        if not _same(stated.group(1).strip(), default):
            wrong.append(f"{prog} {option}: help says {stated.group(1).strip()!r}, parser uses {default!r}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 10  # the pattern still finds the stated defaults


def test_evaluate_num_help_states_the_default_it_uses():
    evaluate = build_parser().parse_args(["evaluate", "runs/x"])
    assert evaluate.num == 1000
    sample = build_parser().parse_args(["sample", "runs/x", "--out", "s"])
    assert sample.num == 64
