"""Property: a flag the command cannot honour is one line and exit 2 before the expensive part starts (loading a
run, sampling, submitting cells), and an extra input is named once."""

from __future__ import annotations

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
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _never(*_: Any, **__: Any) -> Any:
    raise AssertionError("the expensive part started before the bad flag was refused")


def test_time_use_refuses_a_negative_seed_before_loading_the_run(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import timeaware.experiments.time_use as time_use

    monkeypatch.setattr(time_use, "load_run", _never)
    assert "seed=-1 is not allowed" in _refused(["time-use", str(run_dir), "--seed", "-1"], capsys)


def test_evaluate_refuses_a_classifier_of_other_data_before_sampling(run_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import timeaware.diffusion.evaluate as evaluate

    monkeypatch.setattr(evaluate, "sample", _never)
    classifier = tmp_path / "clf.safetensors"
    classifier.write_bytes(b"")
    info = {"config": {"in_channels": 1, "num_classes": 10, "width": 8}, "data": "cifar10",
            "image_shape": [3, 32, 32], "test_accuracy": 0.5}
    classifier.with_suffix(".json").write_text(json.dumps(info))
    err = _refused(["evaluate", str(run_dir), "--num", "2", "--classifier", str(classifier)], capsys)
    assert "clf.safetensors: was trained on cifar10 [3, 32, 32], not digits" in err


@pytest.mark.parametrize(("flag", "value"), [("--mem-gb", "nan"), ("--mem-gb", "inf"), ("--time", "-1"),
                                             ("--cpus-per-cell", "0"), ("--array-parallelism", "0")])
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
