"""Property: a flag the command cannot honour is one line and exit 2 before the expensive part starts (loading a
run, sampling, submitting cells), and an extra input is named once. Numeric flags (seeds 0..2**63-1, positive
counts, finite positive floats: "nan" parses as a float) are refused as argparse reads them, naming flag and value;
an FD classifier whose .json does not fit the model's samples is refused, naming the file and field, before
sampling."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from timeaware.calling import Input, ModelCall
from timeaware.cli import main

TINY = ["--set", "channels=8", "--set", "groups=4", "--set", "data_limit=16", "--batch-size", "8"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddpm") / "run"
    assert main(["train", "ddpm", *TINY, "--steps", "1", "--out", str(out)]) == 0
    return out


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's exit: a flag refused as it is read
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _never(*_: Any, **__: Any) -> Any:
    raise AssertionError("the expensive part started before the bad flag was refused")


@pytest.mark.parametrize(("flag", "value"), [("--seed", "-1"), ("--seed", str(2**63)), ("--seed", "nan"),
                                             ("--bins", "0"), ("--bins", "-3"), ("--bins", "1001"), ("--limit", "0"),
                                             ("--limit", "1.5"), ("--mode", "bogus")])
def test_time_use_refuses_a_bad_number_before_loading_the_run(flag: str, value: str, run_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import timeaware.experiments.time_use as time_use

    monkeypatch.setattr(time_use, "load_run", _never)
    out = tmp_path / "tu"
    err = _refused(["time-use", str(run_dir), f"{flag}={value}", "--out", str(out)], capsys)
    assert flag in err and repr(value) in err and "is not allowed" in err, err
    assert not out.exists()


def test_time_use_checks_its_arguments_and_out_folder_before_loading(run_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import timeaware.experiments.time_use as time_use

    monkeypatch.setattr(time_use, "load_run", _never)
    for kwargs, message in (({"bins": 0}, "bins=0 is not allowed"), ({"mode": "test"}, "mode='test' is not allowed"),
                            ({"seed": -1}, "seed=-1 is not allowed")):
        with pytest.raises(ValueError, match=message):
            time_use.time_use(run_dir, **kwargs)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for out in (taken, taken / "sub"):
        assert "is a file, not a folder" in _refused(["time-use", str(run_dir), "--out", str(out)], capsys)
    assert taken.read_text() == "mine"
    assert "is inside the run folder" in _refused(["time-use", str(run_dir), "--out", str(run_dir / "x")], capsys)


DIGITS_CLASSIFIER = {"config": {"in_channels": 1, "num_classes": 10, "width": 8}, "data": "digits",
                     "image_shape": [1, 8, 8], "test_accuracy": 0.5}  # what the tiny run's samples need


@pytest.mark.parametrize(("change", "field"), [
    ({"data": "cifar10", "image_shape": [3, 32, 32]}, "field data is 'cifar10'"),
    ({"image_shape": [1, 16, 16]}, "field image_shape is [1, 16, 16]"),
    ({"config": {"in_channels": 3, "num_classes": 10, "width": 8}}, "field config.in_channels is 3"),
    ({"config": {"in_channels": 1, "num_classes": 5, "width": 8}}, "field config.num_classes is 5"),
])
def test_evaluate_refuses_a_classifier_of_other_data_before_sampling(change: dict[str, Any], field: str, run_dir: Path,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import timeaware.diffusion.evaluate as evaluate
    import timeaware.diffusion.metrics as metrics

    monkeypatch.setattr(evaluate, "sample", _never)
    monkeypatch.setattr(metrics, "train_feature_classifier", _never)
    monkeypatch.setattr(metrics, "load_weights", _never)  # the .json is read first, and is enough to refuse
    classifier = tmp_path / "clf.safetensors"
    classifier.write_bytes(b"")
    classifier.with_suffix(".json").write_text(json.dumps({**DIGITS_CLASSIFIER, **change}))
    before = sorted(tmp_path.iterdir())
    err = _refused(["evaluate", str(run_dir), "--num", "2", "--steps", "2", "--classifier", str(classifier),
                    "--out", str(tmp_path / "scores.json")], capsys)
    assert f"--classifier {classifier.with_suffix('.json')}: {field} but" in err, err
    assert sorted(tmp_path.iterdir()) == before  # no scores, no classifier trained or rewritten


@pytest.mark.parametrize(("argv", "flag", "value"), [
    (["sample", "RUN", "--out", "s"], "--seed", "-1"),
    (["sample", "RUN", "--out", "s"], "--steps", "1001"),
    (["sample", "RUN", "--out", "s"], "--num", "0"),
    (["sample", "RUN", "--out", "s"], "--batch-size", "nan"),
    (["evaluate", "RUN"], "--seed", str(2**63)),
    (["evaluate", "RUN"], "--num", "-5"),
    (["train", "ddpm"], "--lr", "nan"),
    (["train", "ddpm"], "--lr", "inf"),
    (["train", "ddpm"], "--seed", "-1"),
    (["train", "ddpm"], "--batch-size", "0"),
    (["train", "node"], "--rtol", "nan"),
    (["train", "node"], "--atol", "0"),
    (["train", "node"], "--lr", "-inf"),
    (["train", "node"], "--limit", "0"),
    (["train", "node"], "--seed", "-1"),
    (["fix", "node-func", "--out", "f"], "--groups", "0"),
])
def test_numeric_flags_are_refused_as_they_are_read(argv: list[str], flag: str, value: str, run_dir: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    err = _refused([str(run_dir) if a == "RUN" else a for a in argv] + [f"{flag}={value}"], capsys)
    assert f"argument {flag}: {value!r} is not allowed" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["train", "ddpm", "--steps", str(10**14)], ["train", "ddpm", "--set", "steps=1e14"],
    ["train", "ddpm", "--set", f"steps={10**14}"], ["train", "node", "--epochs", str(10**14)],
    ["train", "node", "--set", f"epochs={10**14}"]])
def test_a_training_length_of_years_is_refused_by_flag_or_setting(argv: list[str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    err = _refused(argv, capsys)
    assert re.search(r"(steps|epochs)=.* is not allowed", err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("flag", "value"), [("--mem-gb", "nan"), ("--mem-gb", "inf"), ("--time", "-1"),
                                             ("--cpus-per-cell", "0"), ("--array-parallelism", "0"),
                                             ("--time", "1000000000"), ("--mem-gb", "1e12"),
                                             ("--gpus-per-cell", "100000"), ("--cpus-per-cell", str(2**40))])
def test_executor_flags_are_checked_with_status_too(flag: str, value: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    err = _refused(["reproduce", "node-norm", "--executor", "slurm", f"{flag}={value}", "--status"], capsys)
    assert "is not allowed" in err and value in err


def test_an_extra_input_given_twice_is_refused_and_one_given_replaces_the_detected_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["audit", "node-func", "--input", "y=labels:3", "--input", "y=labels:4"], capsys)
    assert "--input y=... is given more than once" in err
    with pytest.raises(ValueError, match=r"name one input twice"):
        ModelCall(extras=(("y", Input(kind="labels", high=2)), ("y", Input(shape=(3,)))))


def test_an_input_given_replaces_the_detected_one_of_that_name() -> None:
    from timeaware.cli import build_parser
    from timeaware.specs.options import resolve

    args = build_parser().parse_args(["audit", "families:make_ldm_unet", "--input", "context=5,16", "--samples", "2",
                                      "--timesteps", "2", "--input-shape", "4,8,8"])
    found = resolve(args)
    assert [name for name, _ in found.call.extras] == ["context"]  # detected as (8, 16), given as (5, 16)
    assert found.call.inputs["context"].shape == (5, 16) and found.extras["context"].shape == (2, 5, 16)


def test_hostile_sweep_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    from timeaware.experiments.store import ResultStore, slug
    from timeaware.experiments.sweep import status

    (tmp_path / "cells").mkdir()
    (tmp_path / "sweep.json").write_text(json.dumps({"cells": 5}))
    with pytest.raises(ValueError, match=r"sweep\.json: field cells: 5 is not of type 'array'"):
        status(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps({"cells": ["a", "b", "c"]}))
    (tmp_path / "cells" / f"{slug('a')}.json").write_text("[]")
    (tmp_path / "cells" / f"{slug('b')}.json").write_text(json.dumps({"key": "b", "test_acc": "high"}))
    (tmp_path / "cells" / f"{slug('c')}.running").write_text(json.dumps({"host": "h", "pid": 10**30}))
    with pytest.raises(ValueError, match=r"\.json: field \(top level\): \[\] is not of type 'object'"):
        ResultStore(tmp_path).get("a")
    with pytest.raises(ValueError, match=r"\.json: field test_acc: 'high' is not of type"):
        ResultStore(tmp_path).get("b")
    assert ResultStore(tmp_path).state("c").state == "pending"  # a marker that is not one is no running cell


@pytest.mark.parametrize(("content", "message"), [
    ("[" * 5000 + "]" * 5000, r"--executor-config .*config\.json: JSON nested deeper than 64 levels"),
    (b"\xff\xfe{}", r"--executor-config .*config\.json: not valid JSON"),
    (json.dumps({"sbatch": {"qos": {"nested": 1}}}), r"executor setting sbatch=.* must map sbatch options to strings"),
    (json.dumps({"time_min": 10**9}), r"executor setting time_min=1000000000 is not allowed; it must be from 1 to "
                                      r"525,600 minutes"),
    (json.dumps({"mem_gb": 1e300}), r"executor setting mem_gb=1e\+300 is not allowed; it must be from 0.001 to "
                                    r"1,048,576 GB"),
])
def test_a_hostile_executor_config_is_one_line(content: str | bytes, message: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.json"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    err = _refused(["reproduce", "node-norm", "--executor", "slurm", "--executor-config", str(config), "--status"],
                   capsys)
    assert re.search(message, err), err


@pytest.mark.parametrize(("argv", "flag", "value"), [
    (["audit", "node-func"], "--seed", "-1"),
    (["audit", "node-func"], "--samples", "1"),
    (["audit", "node-func"], "--timesteps", "10001"),
    (["audit", "node-func"], "--timesteps", "nan"),
    (["fix", "node-func", "--out", "f"], "--seed", str(2**63)),
    (["reproduce", "node-norm", "--status"], "--seeds", "0"),
    (["reproduce", "node-norm", "--status"], "--seeds", "1001"),
    (["reproduce", "node-norm", "--status"], "--jobs", "0"),
    (["reproduce", "node-norm", "--executor", "slurm", "--status"], "--gpus-per-cell", "-1"),
    (["reproduce", "node-norm", "--executor", "slurm", "--status"], "--mem-gb", "nan"),
    (["reproduce", "node-norm", "--executor", "slurm", "--status"], "--time", "1.5"),
])
def test_audit_fix_and_reproduce_flags_are_refused_as_they_are_read(argv: list[str], flag: str, value: str,
                                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import timeaware.specs.options as options

    monkeypatch.setattr(options, "_load", _never)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, f"{flag}={value}"]) == 2  # returned, not argparse's SystemExit
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {flag}: {value!r} is not allowed" in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_input_given_twice_is_refused_before_the_model_is_built_or_a_file_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import timeaware.specs.options as options

    monkeypatch.setattr(options, "_load", _never)
    monkeypatch.setattr(options, "load_tensors", _never)
    file = str(tmp_path / "y.safetensors")
    for argv in (["audit", "node-func", "--input", "y=2,3", "--input", f"y={file}"],
                 ["fix", "node-func", "--input", "y=labels:3", "--input", "y=labels:3", "--out", str(tmp_path / "f")]):
        err = _refused(argv, capsys)
        assert "--input y=... is given more than once" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["sample", "runs/x", "--out", ""], ["fix", "node-func", "--out", " "],
                                  ["train", "node", "--out", ""], ["time-use", "runs/x", "--out", ""],
                                  ["reproduce", "node-norm", "--out", "", "--status"],
                                  ["evaluate", "runs/x", "--out", ""]])
def test_an_empty_out_is_refused_not_taken_for_the_current_folder(argv: list[str], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert "argument --out: '" in _refused(argv, capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_input_file_that_is_no_regular_file_or_an_input_too_large_is_refused_before_reading(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)  # opening it to read would block until someone writes
    assert f"{fifo} is not a regular file" in _refused(["audit", "node-func", "--input", f"y={fifo}"], capsys)
    err = _refused(["audit", "node-func", "--samples", "2", "--input", "foo=1000000,1000000"], capsys)
    assert "with foo of shape 1000000,1000000 needs about" in err


def test_the_tracer_gives_the_model_a_contiguous_batch_and_says_its_failure_in_one_line() -> None:
    """HunyuanDiT views its image_meta_size (a contiguous batch in its pipeline); a model the tracer cannot run
    is a ValueError the audit CLI reports as 'untraced', not a traceback after the audit."""
    import torch
    from torch import nn

    from timeaware.awareness.trace import trace_time

    class Meta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.time, self.norm = nn.Linear(1, 4), nn.GroupNorm(4, 4)

        def forward(self, x: torch.Tensor, t: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
            assert meta.view(-1).numel() == 2 * x.shape[0]
            return self.norm(x + self.time(t.float()[:, None])[:, :, None, None] + meta.sum())

    call = ModelCall(input_shape=(4, 3, 3), extras=(("meta", Input(shape=(2,))),))
    x, extras = call.example(2)
    assert {s.norm for s in trace_time(Meta(), call, x, torch.tensor([0, 999]), extras).sites} == {"norm"}

    class Broken(Meta):
        def forward(self, x: torch.Tensor, t: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("view size is not compatible with input tensor's size and stride\nmore")

    with pytest.raises(ValueError, match=r"^tracing t failed: the model raised RuntimeError: view size is not "
                                         r"compatible with input tensor's size and stride$"):
        trace_time(Broken(), call, x, torch.tensor([0, 999]), extras)


@pytest.mark.parametrize(("argv", "own"), [(["fix", "node-func", "--samples", "2", "--out"], "fix.json"),
                                           (["sample", "runs/none", "--out"], "grid.png"),
                                           (["reproduce", "node-norm", "--status", "--out"], "sweep.json")])
def test_an_out_folder_of_other_files_is_refused_and_an_earlier_output_is_not(argv: list[str], own: str,
                                                                              tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]
                                                                              ) -> None:
    """A folder of the user's files (a 00000.png, a fix.json of their own making aside) is never written into: an
    existing --out must be empty or the command's earlier output, which its marker file names."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "00000.png").write_bytes(b"the user's picture")
    err = _refused([*argv, str(folder)], capsys)
    assert f"holds other files (00000.png ...) and no {own}" in err
    assert (folder / "00000.png").read_bytes() == b"the user's picture"
    (folder / own).write_text("{}")  # an earlier output: checked further on its own terms, not refused as foreign
    with contextlib.suppress(SystemExit):
        main([*argv, str(folder)])
    assert "holds other files" not in capsys.readouterr().err
