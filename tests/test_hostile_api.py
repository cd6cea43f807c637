"""Hostile input to the Python API and the files it reads back: each is refused in one line before any work,
and nothing of the user's is overwritten."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from timeaware import resources
from timeaware.awareness import audit
from timeaware.calling import ModelCall
from timeaware.cli import main
from timeaware.diffusion.metrics import check_classifier_path
from timeaware.io import read_json, write_json
from timeaware.repair import fix, load_fixed


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4))


def _shift(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return model(x + t.view(-1, 1, 1, 1))


def test_a_users_file_is_never_taken_for_a_classifier(tmp_path: Path) -> None:
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes")
    with pytest.raises(ValueError, match=r"notes.safetensors exists but .*notes.json does not"):
        check_classifier_path(notes)
    assert notes.read_text() == "my notes"
    with pytest.raises(ValueError, match=r"allowed: a .safetensors path"):
        check_classifier_path(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"--classifier"):
        check_classifier_path(tmp_path)  # a folder
    assert check_classifier_path(tmp_path / "new.safetensors") == tmp_path / "new.safetensors"


@pytest.mark.parametrize("timesteps", [[0.5, 0.5, 0.5], [0.5, 0.50000001], [3, 3]])
def test_timesteps_that_are_one_value_in_the_models_dtype_are_refused(timesteps: list[float]) -> None:
    with pytest.raises(ValueError, match=r"^timesteps hold one distinct value"):
        audit(_net(), torch.randn(4, 3, 8, 8), timesteps, call=_shift)


@pytest.mark.parametrize(("x", "message"), [
    (torch.randn(4, 3, 8, 8).double(), r"^x has dtype torch.float64; allowed: a floating tensor of the model's dtype"),
    (torch.randn(4, 3, 8, 8).to_sparse(), r"^x is a sparse_coo tensor; allowed: a dense tensor"),
    (torch.empty(4, 3, 8, 8, device="meta"), r"^x is a meta tensor; allowed: a dense tensor"),
])
def test_an_input_the_model_cannot_take_is_a_type_error(x: torch.Tensor, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        audit(_net(), x, [0.0, 1.0], call=_shift)


def test_an_integer_output_and_a_string_of_layers_are_read_right() -> None:
    with pytest.raises(ValueError, match=r"^the model returned a torch.int64 output; the audit needs a floating"):
        audit(_net(), torch.randn(4, 3, 8, 8), [0.0, 1.0], call=lambda m, x, t: (_shift(m, x, t) * 100).long())
    report = audit(_net(), torch.randn(4, 3, 8, 8), [0.0, 1.0], call=_shift, layers="0", only_layers=True)
    assert [row.name for row in report.layers] == ["0"]  # one pattern, not one per character
    with pytest.raises(TypeError, match=r"^derivative must be bool"):
        audit(_net(), torch.randn(4, 3, 8, 8), [0.0, 1.0], call=_shift, derivative="yes")  # type: ignore[arg-type]


class Offset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.time, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(1, 4), nn.GroupNorm(4, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x) + self.time(t.float().view(-1, 1))[:, :, None, None])


CALL = ModelCall(input_shape=(3, 8, 8))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"example": torch.randn(1, 3, 8, 8)}, ValueError, r"example has shape \(1, 3, 8, 8\); allowed: .* N >= 2"),
    ({"example": [[1.0]]}, TypeError, r"example must be Tensor, not list"),
    ({"timesteps": [0.0, 1.0]}, TypeError, r"timesteps must be Tensor, not list"),
    ({"timesteps": torch.tensor(0.5)}, ValueError, r"timesteps has shape \(\); allowed: K values, 2 <= K"),
    ({"samples": 10**12}, ValueError, r"samples=1000000000000 is not allowed; it must be an integer from 2 to 4096"),
    ({"seed": "0"}, ValueError, r"seed='0' is not allowed"),
    ({"zero_operand_bias": "no"}, TypeError, r"zero_operand_bias must be bool, not str"),
])
def test_fix_checks_its_arguments_before_any_work(kwargs: dict[str, object], error: type[Exception],
                                                  message: str) -> None:
    model = Offset()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        fix(model, **{"groups": 1, "call": CALL, "inplace": True, **kwargs})  # type: ignore[arg-type]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.fixture(scope="module")
def fixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fixed") / "f"
    assert main(["fix", "node-func", "--set", "norm=batch", "--positional", "linear", "--samples", "2",
                 "--timesteps", "2", "--out", str(folder)]) == 0
    return folder


@pytest.mark.parametrize(("where", "value", "message"), [
    (("base", "channels"), 4096, r"fix.json: .*[\d,]+ (bytes of weights|parameters) needs about [\d.]+ GiB"),
    (("base",), {"kind": "timeaware-node-func"}, r"fix.json: the model record does not describe a model \(missing "
                                                  r"field 'channels'\)"),
    (("fix", "sites"), {"norm2": [4096, 4096, 4096]}, r"fix.sites must map .* at most 16,777,216 positions"),
    (("fix", "preserve_output"), "no", r"fix.preserve_output='no'; allowed: true or false"),
])
def test_a_fix_recipe_that_asks_for_too_much_or_too_little_is_one_line(
        fixed: Path, tmp_path: Path, where: tuple[str, ...], value: object, message: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "available_memory", lambda: 2**30)  # 1 GiB free, whatever the machine
    folder = tmp_path / "edited"
    folder.mkdir()
    for name in ("model.safetensors", "fix.json"):
        (folder / name).write_bytes((fixed / name).read_bytes())
    recipe = read_json(folder / "fix.json")
    node = recipe
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    write_json(folder / "fix.json", recipe)
    with pytest.raises(ValueError, match=message):
        load_fixed(folder)


def test_seeds_and_label_counts_beyond_int64_name_their_flag(capsys: pytest.CaptureFixture[str]) -> None:
    huge = str(2**64)
    for argv, flag in ((["audit", "node-func", "--seed", huge], "--seed"),
                       (["audit", "node-func", "--input", f"y=labels:{huge}"], "--input y=labels:K"),
                       (["reproduce", "node-norm", "--seeds", huge, "--status"], "--seeds")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and flag in err and huge in err and "is not allowed" in err, err


def test_reproduce_refuses_a_missing_data_file_before_any_cell(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert main(["reproduce", "node-norm", "--data", str(tmp_path / "none.npz"), "--out", str(out)]) == 2
    assert "none.npz: no such file" in capsys.readouterr().err and not out.exists()


def test_a_timeaware_unet_record_is_sized_before_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from timeaware.specs import build_base

    monkeypatch.setattr(resources, "available_memory", lambda: 2**20)
    record = {"kind": "timeaware-unet", "config": {"image_size": 8, "in_channels": 1, "channels": 64,
                                                   "channel_mult": [1, 2], "num_res_blocks": 1}}
    with pytest.raises(ValueError, match=r"^unet.json: a model of [\d,]+ bytes of weights needs about"):
        build_base(record, source="unet.json")


def test_a_sweep_whose_every_cell_fails_exits_nonzero_saying_why(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    data = tmp_path / "const.npz"
    flat = np.full((40, 8, 8, 3), 7, np.uint8)  # loads, but cannot be normalised: every cell fails alike
    np.savez(data, x_train=flat, y_train=np.arange(40) % 10, x_test=flat, y_test=np.arange(40) % 10)
    assert main(["reproduce", "node-norm", "--data", str(data), "--out", str(tmp_path / "sweep")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("timeaware: error: all 3 cells failed; the first, ") and "zero variance" in last


@pytest.mark.parametrize(("name", "make"), [
    (".lock", lambda path, target: path.symlink_to(target)),
    ("metrics.jsonl", lambda path, target: os.mkfifo(path)),
])
def test_a_run_folder_with_links_or_fifos_is_refused_before_anything_is_written(
        name: str, make: object, tmp_path: Path) -> None:
    from timeaware.training.run_folder import claim_run_folder

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    make(run / name, victim)  # type: ignore[operator]
    with pytest.raises(ValueError, match=rf"{name}: is a (symlink|FIFO).*must be a regular file"), \
            claim_run_folder(run, resume=None):
        pass
    assert victim.read_text() == "precious"


def test_a_stray_rank_does_not_silence_errors_and_a_bad_world_size_is_named(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # left over in a shell, no launcher
    assert main(["audit", "bogus-model"]) == 2
    assert "MODEL 'bogus-model' is neither a built-in" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "abc")
    from timeaware.resources import launch_rank

    with pytest.raises(ValueError, match=r"^WORLD_SIZE='abc' is not allowed"):
        launch_rank()


def test_a_safetensors_file_is_sized_from_its_header_before_it_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from timeaware.io import load_tensors, tensor_bytes

    path = tmp_path / "emb.safetensors"
    save_file({"e": torch.zeros(256, 64)}, str(path))
    assert tensor_bytes(path) == 256 * 64 * 4
    monkeypatch.setattr(resources, "available_memory", lambda: 10_000)  # less than the file's 65,536 bytes
    with pytest.raises(ValueError, match=r"emb.safetensors: its tensors needs about"):
        load_tensors(path)
    assert main(["audit", "node-func", "--call", "xt", "--samples", "2", "--input", f"e={path}"]) == 2
    assert "2 copies of its tensor needs about" in capsys.readouterr().err


def test_a_diffusers_config_is_sized_on_the_meta_device_whatever_field_makes_it_large(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from timeaware.specs import build_base

    config = {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
              "block_out_channels": [32, 64],
              "layers_per_block": 1, "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "UpBlock2D"], "time_embedding_dim": 1 << 20}  # ~1e12 parameters
    monkeypatch.setattr(resources, "available_memory", lambda: 2**34)  # 16 GiB, whatever the machine
    with pytest.raises(ValueError, match=r"^u/config.json: a model of [\d,]+ bytes of weights needs about"):
        build_base({"kind": "diffusers", "class": "UNet2DModel", "config": config}, source="u/config.json")


@pytest.mark.parametrize(("changes", "message"), [
    ({"padding": 100_000}, r"padding=100000 is not allowed"),
    ({"lr": 1e308}, r"lr=1e\+308 is not allowed; it must be a finite number > 0 and < 1000"),
    ({"weight_decay": 1e308}, r"weight_decay=1e\+308 is not allowed"),
    ({"rtol": 1e-15}, r"rtol=1e-15 is not allowed; it must be a finite number >= 1e-12"),
    ({"atol": 0.0}, r"atol=0\.0 is not allowed"),
    ({"options": {"norm": "x"}}, r"options key 'norm' is not allowed; settable options are .*step_size"),
    ({"options": {"interp": "spline"}}, r"options\.interp='spline' is not allowed; choose one of linear, cubic"),
])
def test_training_settings_that_overflow_hang_or_name_code_are_refused_before_training(changes: dict[str, Any],
                                                                                        message: str) -> None:
    """A crop padding of 10^5 allocated a terabyte, lr 1e308 overflowed the optimizer mid-epoch, rtol 1e-15 never
    finished a solve, and a solver option naming a function was called as one."""
    from timeaware.node.run_config import preset

    with pytest.raises(ValueError, match=message):
        preset("quick").with_overrides(changes)


def test_a_diffusion_learning_rate_beyond_any_that_trains_is_refused() -> None:
    from timeaware.diffusion.train import TrainConfig

    with pytest.raises(ValueError, match=r"lr=1e\+308 is not allowed"):
        TrainConfig(lr=1e308)
