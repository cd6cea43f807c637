"""Property: every invalid command line gives one line on stderr, exit code 2, no traceback, no files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeaware.cli import main
from timeaware.data import SOURCES

# Values that no numeric option accepts.
bad_ints = st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["x", "1.5", "", "nan", "inf", "1e3"]))
bad_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=12).filter(
    lambda s: s not in {"batch", "instance", "group", "layer", "none", "linear", "mlp", "zero", "default", "add",
                        "relu", "silu", "elu", "softplus", "sigmoid", "scale_shift"})
data_names = bad_names.filter(lambda s: s not in SOURCES)  # "digits" is a real dataset
config_fields = st.sampled_from(["norm", "positional", "operand_bias", "time_bias", "injection", "activation"])
missing_paths = st.text(alphabet="abcdefgh", min_size=1, max_size=8).map(lambda s: f"missing-{s}/config.json")

# train node: every run field, model field and solver field by flag or --set, each value out of its range.
non_finite = st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "inf"])
bad_floats = st.one_of(non_finite, st.sampled_from(["x", "", "1,5", "[]", "{}", "true"]),
                       st.floats(max_value=0, allow_nan=False, allow_infinity=False).map(repr))
int_fields = st.sampled_from(["channels", "epochs", "batch_size", "patience", "limit", "test_limit", "size",
                              "threads", "groups"])
float_fields = st.sampled_from(["lr", "rtol", "atol", "t1"])  # must be > 0 and finite
nonneg_fields = st.sampled_from(["momentum", "weight_decay", "hue", "saturation", "dropout", "padding", "seed"])
name_fields = st.sampled_from(["norm", "positional", "operand_bias", "time_bias", "injection", "activation", "time",
                               "method", "data"])
negative = st.one_of(st.integers(max_value=-1).map(str), st.floats(max_value=-1e-9, allow_nan=False,
                                                                   allow_infinity=False).map(repr), non_finite)


@st.composite
def bad_command_lines(draw) -> list[str]:
    kind = draw(st.sampled_from(["command", "audit-int", "audit-set", "audit-unknown-key", "audit-model",
                                 "audit-trange", "fix-path", "fix-groups", "reproduce-name", "reproduce-seeds",
                                 "reproduce-preset", "flag", "train-int-flag", "train-float-flag", "train-seed",
                                 "train-set-int", "train-set-float", "train-set-nonneg", "train-set-name",
                                 "train-set-key", "train-set-form", "train-preset", "train-data", "train-resume",
                                 "train-flip", "train-options", "train-flag", "ddpm-int-flag", "ddpm-lr",
                                 "ddpm-set-int", "ddpm-set-float", "ddpm-set-name", "ddpm-set-key", "ddpm-preset",
                                 "ddpm-data", "ddpm-resume", "sample-missing", "sample-int", "sample-sampler",
                                 "evaluate-missing", "evaluate-int", "evaluate-metric", "evaluate-reference"]))
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
    if kind == "train-int-flag":
        return ["train", "node", draw(st.sampled_from(["--epochs", "--batch-size", "--limit"])), draw(bad_ints)]
    if kind == "train-float-flag":
        return ["train", "node", draw(st.sampled_from(["--lr", "--rtol", "--atol"])), draw(bad_floats)]
    if kind == "train-seed":
        return ["train", "node", "--seed", draw(st.one_of(st.integers(max_value=-1).map(str),
                                                          st.sampled_from(["x", "1.5", "nan", ""])))]
    if kind == "train-set-int":  # positive integers: 0, negatives, fractions, booleans, non-finite, text
        value = draw(st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["1.5", "true", "x", "[1]"]),
                               non_finite))
        return ["train", "node", "--set", f"{draw(int_fields)}={value}"]
    if kind == "train-set-float":
        return ["train", "node", "--set", f"{draw(float_fields)}={draw(bad_floats)}"]
    if kind == "train-set-nonneg":
        field = draw(nonneg_fields)
        value = draw(st.one_of(negative, st.just("1.5")) if field == "dropout" else negative)
        return ["train", "node", "--set", f"{field}={value}"]
    if kind == "train-set-name":
        return ["train", "node", "--set", f"{draw(name_fields)}={draw(bad_names)}"]
    if kind == "train-set-key":
        return ["train", "node", "--set", f"{draw(bad_names)}x=1"]
    if kind == "train-set-form":
        return ["train", "node", "--set", draw(st.sampled_from(["norm", "=batch", "", "epochs:3"]))]
    if kind == "train-preset":
        return ["train", "node", "--preset", draw(bad_names.filter(lambda s: s not in {"quick", "paper"}))]
    if kind == "train-data":
        return ["train", "node", "--data", draw(st.one_of(missing_paths.map(lambda p: p + ".npz"), data_names))]
    if kind == "train-resume":
        return ["train", "node", "--resume", draw(missing_paths).rsplit("/", 1)[0]]
    if kind == "train-flip":
        return ["train", "node", "--set", f"flip={draw(st.sampled_from(['1', '0', 'yes', '[]', 'NaN']))}"]
    if kind == "train-options":
        return ["train", "node", "--set", f"options={draw(st.sampled_from(['1', '[]', 'null', 'x', '{']))}"]
    if kind == "train-flag":
        return ["train", draw(st.sampled_from(["node", "nodes", "ddpmx", ""])), f"--{draw(bad_names)}-flag"]
    if kind == "ddpm-int-flag":
        return ["train", "ddpm", draw(st.sampled_from(["--steps", "--batch-size"])), draw(bad_ints)]
    if kind == "ddpm-lr":
        return ["train", "ddpm", "--lr", draw(bad_floats)]
    if kind == "ddpm-set-int":
        field = draw(st.sampled_from(["steps", "batch_size", "checkpoint_every", "log_every", "data_limit", "channels",
                                      "image_size", "num_res_blocks", "in_channels", "groups", "channel_mult"]))
        value = draw(st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["1.5", "x", "nan", "inf"])))
        return ["train", "ddpm", "--set", f"{field}={value}"]
    if kind == "ddpm-set-float":
        field = draw(st.sampled_from(["lr", "grad_clip", "ema_decay", "dropout", "warmup", "seed"]))
        value = draw(st.one_of(negative.filter(lambda v: v not in ("NaN", "Infinity", "-Infinity")),
                               st.sampled_from(["nan", "inf", "x"] + (["1", "1.5"] if field in ("ema_decay", "dropout")
                                                                       else []))))
        return ["train", "ddpm", "--set", f"{field}={value}"]
    if kind == "ddpm-set-name":
        return ["train", "ddpm", "--set", f"{draw(config_fields)}={draw(bad_names)}"]
    if kind == "ddpm-set-key":
        return ["train", "ddpm", "--set", f"{draw(bad_names)}x=1"]
    if kind == "ddpm-preset":
        return ["train", "ddpm", "--preset", draw(bad_names.filter(lambda s: s not in {"quick", "paper"}))]
    if kind == "ddpm-data":
        return ["train", "ddpm", "--data", draw(st.one_of(missing_paths.map(lambda p: p + ".npz"), data_names))]
    if kind == "ddpm-resume":
        return ["train", "ddpm", "--resume", draw(missing_paths).rsplit("/", 1)[0]]
    if kind == "sample-missing":
        return ["sample", draw(missing_paths).rsplit("/", 1)[0], "--out", "out"]
    if kind == "sample-int":
        return ["sample", "RUN", draw(st.sampled_from(["--steps", "--num", "--batch-size"])), draw(bad_ints), "--out",
                "out"]
    if kind == "sample-sampler":
        return ["sample", "RUN", "--sampler", draw(bad_names.filter(lambda s: s not in {"ddpm", "ddim", "dpm"})),
                "--out", "out"]
    if kind == "evaluate-missing":
        return ["evaluate", draw(missing_paths).rsplit("/", 1)[0]]
    if kind == "evaluate-int":
        return ["evaluate", "RUN", draw(st.sampled_from(["--steps", "--num", "--batch-size"])), draw(bad_ints)]
    if kind == "evaluate-metric":
        return ["evaluate", "RUN", "--metric", draw(bad_names.filter(lambda s: s not in {"fid", "is"}))]
    if kind == "evaluate-reference":
        flag = draw(st.sampled_from(["--reference-split", "--data"]))
        return ["evaluate", "RUN", flag, draw(bad_names.filter(lambda s: s not in {"train", "test", "digits"}))]
    return [draw(st.sampled_from(["audit", "fix", "reproduce"])), f"--{draw(bad_names)}-flag"]


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory) -> str:
    """A tiny trained DDPM for sample / evaluate (outside every example's working folder)."""
    out = tmp_path_factory.mktemp("ddpm-run")
    assert main(["train", "ddpm", "--set", "channels=8", "--set", "groups=4", "--set", "data_limit=16",
                 "--batch-size", "8", "--steps", "1", "--out", str(out)]) == 0
    return str(out)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=bad_command_lines())
def test_bad_command_lines_exit_2_with_one_line_and_write_nothing(argv, tmp_path_factory, capsys, ddpm_run):
    argv = [ddpm_run if arg == "RUN" else arg for arg in argv]
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
