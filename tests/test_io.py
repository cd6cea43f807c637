import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from timeaware.data import load_images
from timeaware.experiments.store import ResultStore, markdown_table, mean_std
from timeaware.io import load_tensors, read_json, save_tensors
from timeaware.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from timeaware.validate import check_number


def _train_state(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1)
    return model, opt, sched


def _step(model, opt):
    loss = model(torch.randn(4, 3)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_checkpoint_resume_is_bitwise(tmp_path):
    model, opt, sched = _train_state()
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        _step(model, opt)
    sched.step(1.0)
    save_checkpoint(tmp_path, step=3, modules={"model": model}, optimizer=opt, scheduler=sched,
                    generators={"data": gen}, state={"epoch": 1})
    straight = [_step(model, opt) for _ in range(2)] + [torch.rand(1, generator=gen).item(), np.random.rand()]

    model2, opt2, sched2 = _train_state(seed=1)
    gen2 = torch.Generator()
    meta = load_checkpoint(tmp_path, modules={"model": model2}, optimizer=opt2, scheduler=sched2,
                           generators={"data": gen2})
    resumed = [_step(model2, opt2) for _ in range(2)] + [torch.rand(1, generator=gen2).item(), np.random.rand()]
    assert meta["step"] == 3 and meta["state"] == {"epoch": 1}
    assert straight == resumed
    assert sched2.state_dict() == sched.state_dict()
    torch.testing.assert_close(model2.weight, model.weight, rtol=0, atol=0)


def test_checkpoint_keeps_latest_and_prunes(tmp_path):
    model, _opt, _ = _train_state()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step=step, modules={"model": model}, keep=2)
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000003"]


def test_truncated_weights_give_one_line_error_naming_the_file(tmp_path):
    model, _, _ = _train_state()
    path = save_checkpoint(tmp_path, step=1, modules={"model": model})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupted or truncated") as err:
        load_checkpoint(tmp_path, modules={"model": model})
    assert "\n" not in str(err.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(ValueError, match="refused, loading it would execute code"):
        load_tensors(path)
    assert not (tmp_path / "pwned").exists()


def test_safetensors_round_trip_is_atomic(tmp_path):
    path = save_tensors(tmp_path / "w.safetensors", {"a": torch.arange(3.0)})
    assert torch.equal(load_tensors(path)["a"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp files left


def test_result_store_keeps_one_file_per_cell_and_failed_cells_are_not_done(tmp_path):
    store = ResultStore(tmp_path)
    store.put({"key": "gn/0", "setting": "gn", "acc": 50.0})
    store.put({"key": "gn/1", "setting": "gn", "acc": 60.0})
    store.put({"key": "bn/0", "setting": "bn", "error": "SolverError: max_num_steps exceeded"})
    assert store.done("gn/1") and not store.done("bn/0") and not store.done("bn/1")
    assert store.state("bn/0").detail == "SolverError: max_num_steps exceeded"
    table = markdown_table(store.records(["gn/0", "gn/1"]), group="setting", metrics={"acc": "accuracy"},
                           paper={"gn": {"acc": 91.76}})
    assert "| gn | 2 | 55.00 ± 7.07 | 91.76 |" in table
    assert mean_std([1.0, float("nan"), None]) == "1.00"


def test_digits_are_builtin_and_cifar_npz_errors_are_clear(tmp_path):
    train, test = load_images("digits", "train", size=16), load_images("digits", "test")
    assert train.x.shape[1:] == (1, 16, 16) and len(train) + len(test) == 1797
    assert train.x.min() >= 0 and train.x.max() <= 1
    with pytest.raises(FileNotFoundError, match=r"missing\.npz: no such file"):
        load_images(str(tmp_path / "missing.npz"))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="missing keys"):
        load_images(str(bad))
    good = tmp_path / "c.npz"
    np.savez(good, x_train=np.full((4, 32, 32, 3), 255, np.uint8), y_train=np.arange(4),
             x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.arange(2))
    data = load_images(str(good), "train")
    assert data.x.shape == (4, 3, 32, 32) and float(data.x.max()) == 1.0 and data.num_classes == 4


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import stat

    path = save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(1)})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_result_store_refuses_a_key_recorded_with_another_config(tmp_path):
    store = ResultStore(tmp_path)
    store.put({"key": "gn/0", "config": {"epochs": 1, "dims": (2, 3)}})
    assert store.done("gn/0", {"epochs": 1, "dims": (2, 3)})  # tuples round-trip as lists
    with pytest.raises(ValueError, match="run 'gn/0' was recorded with a different configuration"):
        store.done("gn/0", {"epochs": 250, "dims": (2, 3)})


def test_npz_labels_of_shape_n_by_1_are_flattened_and_bad_labels_refused(tmp_path):
    path = tmp_path / "k.npz"
    x = np.zeros((3, 4, 4, 3), np.uint8)
    np.savez(path, x_train=x, y_train=np.array([[0], [1], [2]]), x_test=x, y_test=np.array([2, 0, 1]))
    assert load_images(str(path), "train").y.tolist() == [0, 1, 2]
    np.savez(path, x_train=x, y_train=np.array([[0], [1], [2]]), x_test=x, y_test=np.array([-1, 0, 1]))
    for split in ("train", "test"):  # the splits are checked together: one file, one set of classes
        with pytest.raises(ValueError, match="y_test labels go down to -1; allowed: integers 0 to"):
            load_images(str(path), split)


def test_an_integer_that_overflows_a_float_is_refused_where_json_is_read_naming_the_field(tmp_path: Path) -> None:
    """A run's state.json or a sweep's cell record with lr = 10**400 was an OverflowError in whoever made it a
    float; NaN and infinities stay (a scheduler keeps mode_worse = inf) for the field checks to judge."""
    path = tmp_path / "state.json"
    path.write_text('{"config": {"lr": 1' + "0" * 400 + ', "eps": NaN, "worse": Infinity}}')
    with pytest.raises(ValueError, match=r"state\.json: field config\.lr: an integer of 401 digits is not allowed"):
        read_json(path)
    path.write_text('{"config": {"lr": 1' + "0" * 30 + ', "eps": NaN, "worse": Infinity}}')
    config = read_json(path)["config"]
    assert config["lr"] == 10**30 and math.isnan(config["eps"]) and config["worse"] == math.inf
    with pytest.raises(ValueError, match=r"lr=10+\.\.\. \(401 characters\) is not allowed"):
        check_number("lr", 10**400, 0.0)
