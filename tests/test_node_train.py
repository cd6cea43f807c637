"""Training: a tiny quick run learns and writes valid files; resume is bitwise; user errors are one line."""

import json

import pytest
import torch

from timeaware.cli import main
from timeaware.io import load_tensors
from timeaware.node import NodeRunConfig, preset, train_classifier
from timeaware.training import latest_checkpoint

TINY = {"limit": 160, "test_limit": 90, "channels": 8, "groups": 4, "batch_size": 32, "padding": 0,
        "dropout": 0.0, "lr": 0.1}


def _tiny(**changes):
    return preset("quick").with_overrides({**TINY, **changes})


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_epoch_quick_run_learns_and_writes_metrics_and_checkpoint(tmp_path):
    result_cfg = _tiny(epochs=2, limit=480, batch_size=16)
    result = train_classifier(result_cfg, tmp_path, progress=False)
    rows = _records(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["lr"] for r in rows] == [0.1, 0.1]  # TINY's lr; the plateau schedule waits 15 epochs
    assert all(0 <= r[k] <= 100 for r in rows for k in ("train_acc", "test_acc"))
    assert rows[-1]["test_acc"] == result.summary["test_acc"] and rows[0]["wall_time"] > 0
    assert rows[-1]["nfe_forward"] >= 6 and rows[-1]["nfe_backward"] > 0  # dopri5 + adjoint
    assert result.summary["test_acc"] > 18.0  # 10 classes: chance is 10%
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())["state"]
    assert state["epoch"] == 2 and NodeRunConfig.from_dict(state["config"]) == result_cfg
    assert set(load_tensors(latest_checkpoint(tmp_path) / "model.safetensors")) == set(result.model.state_dict())


def test_resume_continues_the_same_run_bitwise(tmp_path):
    cfg = _tiny(epochs=2, padding=2, dropout=0.5, limit=64)  # augmentation and dropout draw random numbers
    straight = train_classifier(cfg, tmp_path / "straight", progress=False).model.state_dict()
    train_classifier(cfg.with_overrides({"epochs": 1}), tmp_path / "split", progress=False)
    resumed = train_classifier(cfg, tmp_path / "split", resume=True, progress=False).model.state_dict()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    strip = [{k: v for k, v in r.items() if k != "wall_time"} for r in _records(tmp_path / "straight")]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time"} for r in _records(tmp_path / "split")]


def test_resume_refuses_a_different_run_and_fresh_run_refuses_an_existing_folder(tmp_path):
    train_classifier(_tiny(epochs=1, limit=32), tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train_classifier(_tiny(epochs=1, limit=32), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different channels"):
        train_classifier(_tiny(epochs=2, limit=32, channels=4, groups=2), tmp_path, resume=True, progress=False)


def test_paper_preset_builds_the_papers_model_on_cifar10():
    """Section 4.1: C = 64, GroupNorm G = 32 everywhere, an 8×8 ODE state at 32 px, dopri5 at 1e-3 with the
    adjoint, dropout 0.5 before the classifier."""
    from torch import nn

    from timeaware.data import ImageData
    from timeaware.node.train import build_model

    cifar_shaped = ImageData(torch.rand(4, 3, 32, 32), torch.arange(4), 10, "cifar10-shaped")
    model = build_model(preset("paper"), cifar_shaped)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and {(n.num_groups, n.num_channels) for n in norms} == {(32, 64)}
    assert model.initial_state(cifar_shaped.x).shape == (4, 64, 8, 8)
    solver = model.block.solver
    assert (solver.method, solver.rtol, solver.atol, solver.adjoint, solver.t1) == ("dopri5", 1e-3, 1e-3, True, 1.0)
    assert [m.p for m in model.head if isinstance(m, nn.Dropout)] == [0.5]
    assert model.head[-1].out_features == 10


def test_paper_preset_trains_with_the_papers_optimizer_and_schedule(tmp_path):
    """SGD (lr 0.1, momentum 0.9, weight decay 1e-4) and ReduceLROnPlateau(patience 15), as the checkpoint saw them;
    only the data and the network's size are shrunk."""
    cfg = preset("paper").with_overrides({"data": "digits", "limit": 16, "test_limit": 8, "epochs": 1,
                                          "batch_size": 8, "channels": 4, "groups": 2, "method": "rk4",
                                          "options": {"step_size": 0.5}})
    train_classifier(cfg, tmp_path, progress=False)
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 0.9, 1e-4, False)
    assert (state["scheduler"]["patience"], state["scheduler"]["mode"]) == (15, "min")


def test_overrides_parse_strings_and_reject_unknown_keys():
    cfg = preset("quick").with_overrides({"norm": "batch", "groups": "4", "epochs": "3", "adjoint": "false",
                                          "options": '{"max_num_steps": 50}', "data": "x.npz"})
    assert (cfg.model.norm, cfg.model.groups, cfg.epochs, cfg.solver.adjoint) == ("batch", 4, 3, False)
    assert cfg.solver.options == {"max_num_steps": 50} and cfg.data == "x.npz" and cfg.use_flip
    assert not preset("quick").use_flip and preset("quick").image_size == 16
    with pytest.raises(ValueError, match="unknown setting 'colour'"):
        preset("quick").with_overrides({"colour": "red"})


@pytest.mark.parametrize(("argv", "message"), [
    (["--preset", "huge"], "preset 'huge' is unknown; choose one of quick, paper"),
    (["--set", "epochs=-1"], "epochs=-1 is not allowed"),  # --epochs -1: argparse's (tests/test_hostile_cli.py)
    (["--set", "colour=red"], "unknown setting 'colour'"),
    (["--set", "norm=weird"], "norm='weird' is not allowed"),
    (["--set", "groups=5"], "groups=5 does not divide channels=16"),
    (["--data", "/nope/cifar.npz"], "/nope/cifar.npz: no such file"),
])
def test_cli_bad_inputs_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main(["train", "node", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_trains_and_reports(tmp_path, capsys):
    args = ["train", "node", "--out", str(tmp_path), "--epochs", "1", "--limit", "32", "--no-adjoint",
            "--set", "channels=8", "--set", "groups=4", "--method", "rk4", "--set", 'options={"step_size": 0.5}']
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "NFE-F 8.0, NFE-B 0.0" in out and (tmp_path / "metrics.jsonl").is_file()


def test_metrics_written_before_a_crash_without_checkpoint_are_not_kept(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 9.9}) + "\n")  # died before saving
    train_classifier(_tiny(epochs=1), run, resume=True, progress=False)
    records = _records(run)
    assert [r["epoch"] for r in records] == [1] and records[0]["train_loss"] != 9.9


@pytest.mark.parametrize(("rank", "error", "shown"), [
    ("0", "solver", "timeaware: error: ODE solve failed (max_num_steps exceeded)"),
    ("1", "solver", "timeaware: error (rank 1): ODE solve failed (max_num_steps exceeded)"),  # torchrun stops the rest
    ("1", "loss", ""),  # the loss is checked after the all-reduce: every rank stops, rank 0 reports
])
def test_a_solver_failure_is_reported_by_the_rank_it_happened_on(rank, error, shown, monkeypatch, capsys, tmp_path):
    from timeaware.node import SolverError, train
    from timeaware.training import NonFiniteLoss

    def fail(*args, **kwargs):
        raise SolverError("ODE solve failed (max_num_steps exceeded)") if error == "solver" else NonFiniteLoss("nan")

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a launcher sets both
    monkeypatch.setattr(train, "train_classifier", fail)
    assert main(["train", "node", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == shown
