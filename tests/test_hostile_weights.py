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


def test_complex_nan_and_a_module_that_refuses_its_weights_are_one_line(tmp_path: Path) -> None:
    class Refusing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.z = nn.Parameter(torch.ones(2, dtype=torch.complex64))

        def _load_from_state_dict(self, state: Any, prefix: str, *args: Any) -> None:
            args[-1].append("a hook refused\nover two lines")  # error_msgs: load_state_dict raises RuntimeError

    save_tensors(tmp_path / "z.safetensors", {"z": torch.full((2,), complex("nan+1j"), dtype=torch.complex64)})
    with pytest.raises(ValueError, match=r"z\.safetensors: tensor 'z' holds NaN/inf"):
        load_weights(Refusing(), tmp_path / "z.safetensors")
    save_tensors(tmp_path / "z.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match=r"z\.safetensors: does not match the model \(.*a hook refused over") as err:
        load_weights(Refusing(), tmp_path / "z.safetensors")
    _one_line(err)


def test_half_precision_weights_still_load_into_a_float32_model(tmp_path: Path) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in _net().state_dict().items()}
    save_tensors(tmp_path / "w.safetensors", state)
    model = _net()
    load_weights(model, tmp_path / "w.safetensors")
    assert model[0].weight.dtype == torch.float32 and torch.equal(model[0].weight, state["0.weight"].float())


def _fresh() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def _checkpoint(tmp_path: Path) -> tuple[Path, nn.Module, torch.optim.Optimizer, Any]:
    model, opt, sched = _fresh()
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


@pytest.mark.parametrize(("edit", "message"), [  # each passed load_state_dict and broke at the next step
    (lambda m: m["optimizer"]["param_groups"][0].__setitem__("lr", 10**30),
     r"param_groups\.0\.lr is 1000000000000000000000000000000, expected a finite number"),
    (lambda m: m["optimizer"]["param_groups"][0].__setitem__("eps", float("nan")), r"param_groups\.0\.eps is nan"),
    (lambda m: m["optimizer"]["param_groups"][0].__setitem__("lr", None), r"param_groups\.0\.lr is None, expected"),
    (lambda m: m["optimizer"]["param_groups"][0].__setitem__("betas", [1, 2]), r"optimizer: Invalid beta parameter"),
    (lambda m: m["optimizer"]["param_groups"][0].__setitem__("amsgrad", True),
     r"param_groups\.0\.amsgrad is True, the live object's is False"),
    (lambda m: m["optimizer"]["param_groups"][0]["params"].__setitem__(0, 99), r"param_groups hold parameters"),
    (lambda m: m["optimizer"]["plain"].__setitem__("0.step", 10**30), r"state '0\.step' is 1000000000000000000000"),
    (lambda m: m["optimizer"]["plain"].__setitem__("0.step", 10**400),
     r"field optimizer\.plain\.0\.step: an integer of 401 digits is not allowed"),
    (lambda m: m["optimizer"]["plain"].__setitem__("0.exp_avg", "x"), r"state '0\.exp_avg' is 'x', expected"),
    (lambda m: m["scheduler"].__setitem__("last_epoch", None), r"scheduler\.last_epoch is None"),
])
def test_optimizer_and_scheduler_fields_are_checked_against_the_live_objects(
        tmp_path: Path, edit: Callable[[dict[str, Any]], Any], message: str) -> None:
    folder, model, opt, sched = _checkpoint(tmp_path)
    _edit_state(folder, edit)
    with pytest.raises(ValueError, match=r"state\.json: corrupted checkpoint metadata \(.*" + message) as err:
        load_checkpoint(folder, modules={"model": model}, optimizer=opt, scheduler=sched)
    _one_line(err)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.update({"0.exp_avg": torch.zeros(7)}), r"state '0\.exp_avg' is torch\.float32 of shape \(7,\), "
                                                        r"expected a scalar or floats of \(4, 2, 3, 3\)"),
    (lambda t: t.update({"1.exp_avg": t["1.exp_avg"].long()}), r"state '1\.exp_avg' is torch\.int64"),
    (lambda t: t.update({"0.exp_avg_sq": t["0.exp_avg_sq"] * float("inf")}), r"state '0\.exp_avg_sq' holds NaN/inf"),
    (lambda t: t.update({"99.exp_avg": torch.zeros(1)}), r"state '99\.exp_avg' is not '<index>\.<name>' of one of "
                                                         r"the 4 parameters"),
    (lambda t: t.pop("2.exp_avg"), r"parameters keep different state"),
])
def test_an_optimizer_state_that_does_not_fit_the_parameters_names_the_file(
        tmp_path: Path, change: Callable[[dict[str, torch.Tensor]], Any], message: str) -> None:
    folder = _checkpoint(tmp_path)[0]
    model, opt, sched = _fresh()
    tensors = load_tensors(folder / "optimizer.safetensors")
    change(tensors)
    save_tensors(folder / "optimizer.safetensors", tensors)
    with pytest.raises(ValueError, match=r"optimizer\.safetensors: corrupted checkpoint metadata \(optimizer: "
                                         + message) as err:
        load_checkpoint(folder, modules={"model": model}, optimizer=opt, scheduler=sched)
    _one_line(err)
    assert not opt.state  # nothing half-loaded


def test_a_checkpoint_resumes_and_trains_on(tmp_path: Path) -> None:
    folder, _, opt, _ = _checkpoint(tmp_path)
    fresh, opt2, sched2 = _fresh()
    load_checkpoint(folder, modules={"model": fresh}, optimizer=opt2, scheduler=sched2)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    fresh(torch.randn(2, 2, 5, 5)).sum().backward()
    opt2.step()
    sched2.step()


def _fixed_folder(tmp_path: Path) -> Path:
    from test_model_reach import OffsetNet

    model = OffsetNet().eval()
    result = fix(model, torch.randn(2, 3, 8, 8), positional="linear", preserve_output=False, check=False)
    base = {"kind": "factory", "target": "test_model_reach:offset_net", "kwargs": {}}
    save_fixed(result, tmp_path, base)
    return tmp_path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["call"]["domain"].__setitem__("high", 10**30), r"field call\.domain\.high: 1000000000000"),
    (lambda m: m["call"]["domain"].__setitem__("high", float("inf")), r"field call\.domain\.high: inf is greater"),
    (lambda m: m["call"]["domain"].__setitem__("high", float("nan")), r"field 'call': time domain high=nan"),
    (lambda m: m["call"]["domain"].__setitem__("low", "zero"), r"field call\.domain\.low: 'zero' is not of type"),
    (lambda m: m["call"]["domain"].__setitem__("low", 10**6), r"field 'call': time domain \[1000000, 999\]"),
    (lambda m: m["call"].__setitem__("embedding_dim", 10**30), r"field call\.embedding_dim: 1000000000000"),
    (lambda m: m["call"].__setitem__("concat_dim", -10**30), r"field call\.concat_dim: -1000000000000"),
    (lambda m: m["call"].__setitem__("input_shape", [3, 10**30]), r"field call\.input_shape\.1: 1000000000000"),
    (lambda m: m["call"].__setitem__("extras", {"y": {"shape": [], "kind": "labels", "high": 2**64}}),
     r"field call\.extras\.y\.high: 18446744073709551616"),
    (lambda m: m.__setitem__("extra", 1), r"field \(top level\): Additional properties .*'extra'"),
    (lambda m: m.pop("call"), r"field \(top level\): 'call' is a required property"),
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


def test_maps_a_fix_recipe_records_are_sized_before_any_is_made(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An MLP map over 4096x4096 positions (4.5 GB) was built before the weights' shapes were compared."""
    from timeaware import resources

    folder = _fixed_folder(tmp_path)
    monkeypatch.setattr(resources, "available_memory", lambda: 2**30)  # 1 GiB free, whatever the machine
    load_fixed(folder, trust_code=True)  # the recorded fix fits
    meta = json.loads((folder / "fix.json").read_text())
    meta["fix"].update(positional="mlp", sites={"norm": [4096, 4096]})
    (folder / "fix.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"fix\.json: the fixed model, [\d,]+ bytes of weights needs about"):
        load_fixed(folder, trust_code=True)


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
