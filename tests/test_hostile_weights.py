"""Property: weights, checkpoints and fix recipes from disk are checked before use. A NaN weight, an integer
tensor for a float parameter, a hostile RNG state, a scheduler field that is not the scheduler's, a time domain
of 10^30: each is one ValueError line naming the file and what is wrong, never a cast, an OverflowError or a
traceback from numpy, random or torch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from timeaware.io import load_tensors, load_weights, save_tensors
from timeaware.repair import fix, load_fixed, save_fixed
from timeaware.training.checkpoint import load_checkpoint, save_checkpoint


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize(("change", "message"), [
    (lambda sd: sd.update({"0.weight": sd["0.weight"].clone().fill_(float("nan"))}), r"'0\.weight' holds NaN/inf"),
    (lambda sd: sd.update({"1.running_var": sd["1.running_var"] * float("inf")}), r"'1\.running_var' holds NaN/inf"),
    (lambda sd: sd.update({"0.weight": sd["0.weight"].long()}), r"'0\.weight' holds torch\.int64 values where the "
                                                                 r"model holds torch\.float32"),
    (lambda sd: sd.update({"0.bias": sd["0.bias"].bool()}), r"'0\.bias' holds torch\.bool"),
    (lambda sd: sd.update({"1.num_batches_tracked": sd["1.num_batches_tracked"].float()}),
     r"'1\.num_batches_tracked' holds torch\.float32 values where the model holds torch\.int64"),
    (lambda sd: sd.pop("1.bias"), r"tensor '1\.bias' is missing"),
    (lambda sd: sd.update({"2.weight": torch.ones(1)}), r"tensor '2\.weight' is not one of the model's"),
    (lambda sd: sd.update({"0.bias": torch.ones(5)}), r"'0\.bias' has shape \(5,\), the model's \(4,\)"),
])
def test_a_weights_file_the_model_cannot_hold_is_refused_before_loading(
        tmp_path: Path, change: Callable[[dict[str, torch.Tensor]], Any], message: str) -> None:
    state = {k: v.clone() for k, v in _net().state_dict().items()}
    change(state)
    save_tensors(tmp_path / "w.safetensors", state)
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message) as err:
        load_weights(model, tmp_path / "w.safetensors")
    assert _one_line(err).startswith(f"{tmp_path / 'w.safetensors'}: ")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_half_precision_weights_still_load_into_a_float32_model(tmp_path: Path) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in _net().state_dict().items()}
    save_tensors(tmp_path / "w.safetensors", state)
    model = _net()
    load_weights(model, tmp_path / "w.safetensors")
    assert model[0].weight.dtype == torch.float32 and torch.equal(model[0].weight, state["0.weight"].float())


def _checkpoint(tmp_path: Path) -> tuple[Path, nn.Module, torch.optim.Optimizer, Any]:
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    model(torch.randn(2, 2, 5, 5)).sum().backward()
    opt.step()
    sched.step()
    folder = save_checkpoint(tmp_path, step=1, modules={"model": model}, optimizer=opt, scheduler=sched)
    return folder, model, opt, sched


def _edit_state(folder: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    meta = json.loads((folder / "state.json").read_text())
    edit(meta)
    (folder / "state.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["rng"]["numpy"].__setitem__(1, 10**30), r"state\.json: .*field rng\.numpy\.1"),
    (lambda m: m["rng"]["numpy"].__setitem__(0, "PCG64"), r"state\.json: .*field rng\.numpy\.0"),
    (lambda m: m["rng"]["python"].__setitem__(1, [2**40] * 625), r"state\.json: .*field rng\.python\.1"),
    (lambda m: m["rng"]["python"][1].__setitem__(624, 10**6), r"state\.json: corrupted checkpoint metadata \(rng"),
    (lambda m: m["optimizer"]["param_groups"].append(m["optimizer"]["param_groups"][0]),
     r"state\.json: corrupted checkpoint metadata \(optimizer: param_groups is"),
    (lambda m: m["optimizer"]["param_groups"][0].__setitem__("lr", "fast"),
     r"state\.json: corrupted checkpoint metadata \(optimizer: param_groups\.0\.lr is 'fast', expected a number"),
    (lambda m: m["scheduler"].__setitem__("optimizer", "hijacked"),
     r"state\.json: corrupted checkpoint metadata \(scheduler: scheduler has fields"),
    (lambda m: m["scheduler"].__setitem__("last_epoch", [1, 2]),
     r"state\.json: corrupted checkpoint metadata \(scheduler: scheduler\.last_epoch is"),
])
def test_a_hostile_checkpoint_state_is_one_line_naming_the_file(tmp_path: Path, edit: Callable[[dict[str, Any]], Any],
                                                                message: str) -> None:
    folder, model, opt, sched = _checkpoint(tmp_path)
    _edit_state(folder, edit)
    with pytest.raises(ValueError, match=message) as err:
        load_checkpoint(folder, modules={"model": model}, optimizer=opt, scheduler=sched)
    _one_line(err)
    assert sched.optimizer is opt  # no attribute of the scheduler was overwritten


def test_an_rng_state_of_the_wrong_kind_names_the_rng_file(tmp_path: Path) -> None:
    folder, model, opt, sched = _checkpoint(tmp_path)
    rng = load_tensors(folder / "rng.safetensors")
    rng["torch"] = rng["torch"].float()
    save_tensors(folder / "rng.safetensors", rng)
    with pytest.raises(ValueError, match=r"rng\.safetensors: corrupted checkpoint metadata \(rng: RNG state 'torch' "
                                         r"is torch\.float32") as err:
        load_checkpoint(folder, modules={"model": model}, optimizer=opt, scheduler=sched)
    _one_line(err)
    state = torch.get_rng_state()
    load_checkpoint(folder, modules={"model": model}, restore_rng=False)  # the rest still loads
    assert torch.equal(state, torch.get_rng_state())


def _fixed_folder(tmp_path: Path) -> Path:
    from test_model_reach import OffsetNet

    model = OffsetNet().eval()
    result = fix(model, torch.randn(2, 3, 8, 8), positional="linear", preserve_output=False, check=False)
    base = {"kind": "factory", "target": "test_model_reach:offset_net", "kwargs": {}}
    save_fixed(result, tmp_path, base)
    return tmp_path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["call"]["domain"].__setitem__("high", 10**30), r"field 'call': time domain high=1000000000000"),
    (lambda m: m["call"]["domain"].__setitem__("low", "zero"), r"field 'call': time domain low='zero'"),
    (lambda m: m.__setitem__("base", {"kind": "timeaware-node-func", "channels": 8, "config": {}, "time": "concat",
                                      "size": [8, 8], "t1": "soon"}), r"field 'base': "),
    (lambda m: m.__setitem__("base", {"kind": "pickle"}), r"unknown model record kind 'pickle'"),
])
def test_a_hostile_fix_recipe_is_one_line_naming_the_file(tmp_path: Path, edit: Callable[[dict[str, Any]], Any],
                                                         message: str) -> None:
    folder = _fixed_folder(tmp_path)
    meta = json.loads((folder / "fix.json").read_text())
    edit(meta)
    (folder / "fix.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message) as err:
        load_fixed(folder, trust_code=True)
    assert _one_line(err).startswith(f"{folder / 'fix.json'}: ")


def test_nan_weights_in_a_fixed_model_are_refused(tmp_path: Path) -> None:
    folder = _fixed_folder(tmp_path)
    state = load_tensors(folder / "model.safetensors")
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_tensors(folder / "model.safetensors", state)
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor '{key}' holds NaN/inf .* does not match "
                                         r".*fix\.json"):
        load_fixed(folder, trust_code=True)


def test_a_checkpoint_of_another_noise_schedule_is_refused_by_the_sampler(tmp_path: Path) -> None:
    from timeaware.cli import main
    from timeaware.diffusion import load_unet

    run = tmp_path / "run"
    assert main(["train", "ddpm", "--set", "channels=8", "--set", "groups=4", "--set", "data_limit=8",
                 "--batch-size", "8", "--steps", "1", "--out", str(run)]) == 0
    load_unet(run)  # as trained: the DDPM schedule
    folder = next((run / "checkpoints").glob("step-*"))
    _edit_state(folder, lambda m: m["state"]["schedule"].__setitem__("beta_end", 0.5))
    with pytest.raises(ValueError, match=r"state\.json: field state\.schedule: .*'beta_end': 0\.5.* is not the DDPM"):
        load_unet(run)
