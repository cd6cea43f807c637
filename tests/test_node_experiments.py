"""The reproduce sweeps: results.jsonl + table.md, done runs skipped, the groups plot."""

import json

import pytest

import timeaware.node.train
from timeaware.experiments.node import node_activation, node_groups, node_norm
from timeaware.experiments.registry import get_experiment

TINY = {"limit": 48, "test_limit": 32, "channels": 4, "groups": 2, "epochs": 1, "batch_size": 16, "padding": 0}


def test_node_norm_writes_results_and_table_and_skips_done_runs(tmp_path, monkeypatch, capsys):
    assert get_experiment("node-norm") is node_norm
    table = node_norm("quick", 1, tmp_path, "digits", overrides=TINY)
    said = capsys.readouterr()
    for setting in ("GN", "BN", "GN + positional"):  # a line as each run starts, then its epochs
        assert f"node-norm: training {setting}/seed=0/quick/digits (1 epochs)" in said.err
    assert said.out.count("epoch 1: loss") == 3
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in records] == ["GN", "BN", "GN + positional"]
    assert [r["config"]["model"]["norm"] for r in records] == ["group", "batch", "group"]
    assert records[2]["config"]["model"]["positional"] == "linear"
    for r in records:
        assert r["key"] == f"{r['setting']}/seed=0/quick/digits"
        assert 0 <= r["test_acc"] <= 100 and r["nfe_forward"] > 0 and r["nfe_backward"] > 0 and r["wall_time"] > 0
        assert 0 <= r["time_share"] <= 1 and 0 <= r["frozen_acc"] <= 100
        # the table's number is the interior (border-free) survival averaged over the norms after ConcatConv;
        # each norm's full-map survival is kept beside it under its own name
        after_time = [r["audit"][name] for name in ("norm2", "norm3")]
        assert r["interior_survival_mean"] == pytest.approx(sum(a["interior_survival"] for a in after_time) / 2)
        assert all("full_map_survival" in a for a in after_time)
    survival = {r["setting"]: r["interior_survival_mean"] for r in records}
    assert survival["BN"] < min(survival["GN"], survival["GN + positional"])  # BN cancels the offset (not the edge)
    assert (tmp_path / "table.md").read_text() == table
    assert "| BN | 1 |" in table and "91.11" in table and "NFE-B" in table and "accuracy, t ≡ T/2 (%)" in table
    header = table.splitlines()[2]
    assert "interior survival (mean)" in header and "accuracy (%) (paper, CIFAR-10 full scale)" in header

    def fail(*args, **kwargs):
        raise AssertionError("a done run was trained again")

    monkeypatch.setattr(timeaware.node.train, "train_classifier", fail)
    assert node_norm("quick", 1, tmp_path, "digits", overrides=TINY) == table
    assert "node-norm: GN/seed=0/quick/digits is in results.jsonl, skipped" in capsys.readouterr().err
    table = node_norm("quick", 2, tmp_path, "digits", overrides=TINY)  # seed 1 is new: its cells run (and fail here)
    assert "failed: BN/seed=1/quick/digits (AssertionError: a done run was trained again)" in table
    assert "| BN | 1 |" in table  # seed 0 stays done


def test_node_groups_sweeps_divisors_and_plots(tmp_path):
    table = node_groups("quick", 1, tmp_path, None, overrides={**TINY, "channels": 2, "groups": 1})
    assert "| C=2 G=1 | 1 |" in table and "| C=2 G=2 | 1 |" in table
    assert (tmp_path / "groups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_solve_is_recorded_and_the_sweep_goes_on(tmp_path):
    table = node_activation("quick", 1, tmp_path, "digits", overrides={**TINY, "options": {"max_num_steps": 1}})
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all("max_num_steps exceeded" in r["error"] for r in records)
    assert "failed: relu/seed=0/quick/digits" in table
