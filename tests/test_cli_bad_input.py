"""Property: every invalid command line gives one line on stderr, exit code 2, no traceback, no files."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeaware.cli import main

# Values that no numeric option accepts.
bad_ints = st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["x", "1.5", "", "nan", "inf", "1e3"]))
bad_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=12).filter(
    lambda s: s not in {"batch", "instance", "group", "layer", "none", "linear", "mlp", "zero", "default", "add",
                        "relu", "silu", "elu", "softplus", "sigmoid", "scale_shift"})
config_fields = st.sampled_from(["norm", "positional", "operand_bias", "time_bias", "injection", "activation"])
missing_paths = st.text(alphabet="abcdefgh", min_size=1, max_size=8).map(lambda s: f"missing-{s}/config.json")


@st.composite
def bad_command_lines(draw) -> list[str]:
    kind = draw(st.sampled_from(["command", "audit-int", "audit-set", "audit-unknown-key", "audit-model",
                                 "audit-trange", "fix-path", "fix-groups", "reproduce-name", "reproduce-seeds",
                                 "reproduce-preset", "flag"]))
    if kind == "command":
        return [draw(bad_names.filter(lambda s: s not in {"audit", "train", "sample", "evaluate", "reproduce",
                                                            "fix"}))]
    if kind == "audit-int":
        return ["audit", "node-func", draw(st.sampled_from(["--timesteps", "--samples"])), draw(bad_ints)]
    if kind == "audit-set":
        return ["audit", "node-func", "--set", f"{draw(config_fields)}={draw(bad_names)}"]
    if kind == "audit-unknown-key":
        return ["audit", "node-func", "--set", f"{draw(bad_names.filter(lambda s: s not in {'groups'}))}x=1"]
    if kind == "audit-model":
        return ["audit", draw(bad_names.filter(lambda s: ":" not in s and "node-func" not in s))]
    if kind == "audit-trange":
        return ["audit", "node-func", "--t-range", draw(st.sampled_from(["1,1", "a,b", "0", "0,nan", "0,inf,1"]))]
    if kind == "fix-path":
        return ["fix", draw(missing_paths), "--groups", "1", "--out", "out"]
    if kind == "fix-groups":
        return ["fix", "tests.test_repair:make_odefunc", "--input-shape", "8,8,8", "--groups", draw(bad_ints),
                "--out", "out"]
    if kind == "reproduce-name":
        return ["reproduce", draw(bad_names), "--out", "out"]
    if kind == "reproduce-seeds":
        return ["reproduce", "node-norm", "--seeds", draw(bad_ints), "--out", "out"]
    if kind == "reproduce-preset":
        return ["reproduce", "node-norm", "--preset", draw(bad_names.filter(lambda s: s not in {"quick", "paper"})),
                "--out", "out"]
    return [draw(st.sampled_from(["audit", "fix", "reproduce"])), f"--{draw(bad_names)}-flag"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=bad_command_lines())
def test_bad_command_lines_exit_2_with_one_line_and_write_nothing(argv, tmp_path_factory, capsys):
    workdir = tmp_path_factory.mktemp("cli")
    old = Path.cwd()
    os.chdir(workdir)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own exits (e.g. --help) must not occur for bad input
        code = exit_.code
    finally:
        os.chdir(old)
    captured = capsys.readouterr()
    assert code == 2, (argv, captured.err)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("timeaware: error:"), (argv, captured.err)
    assert "Traceback" not in captured.err
    assert list(workdir.iterdir()) == [], (argv, list(workdir.iterdir()))
