"""The reproduce sweeps: results.jsonl + table.md, done runs skipped, the groups plot."""

import json

import timeaware.node.train
from timeaware.experiments.node import node_activation, node_groups, node_norm
from timeaware.experiments.registry import get_experiment

TINY = {"limit": 48, "test_limit": 32, "channels": 4, "groups": 2, "epochs": 1, "batch_size": 16, "padding": 0}


def test_node_norm_writes_results_and_table_and_skips_done_runs(tmp_path, monkeypatch):
    assert get_experiment("node-norm") is node_norm
    table = node_norm("quick", 1, tmp_path, "digits", overrides=TINY)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in records] == ["GN", "BN", "GN + positional"]
    assert [r["config"]["model"]["norm"] for r in records] == ["group", "batch", "group"]
    assert records[2]["config"]["model"]["positional"] == "linear"
    for r in records:
        assert r["key"] == f"{r['setting']}/seed=0/quick/digits"
        assert 0 <= r["test_acc"] <= 100 and r["nfe_forward"] > 0 and r["nfe_backward"] > 0 and r["wall_time"] > 0
        assert 0 <= r["time_share"] <= 1 and r["survival"] >= 0 and 0 <= r["frozen_acc"] <= 100
    survival = {r["setting"]: r["survival"] for r in records}
    assert survival["BN"] < min(survival["GN"], survival["GN + positional"])  # BN cancels the offset (not the edge)
    assert (tmp_path / "table.md").read_text() == table
    assert "| BN | 1 |" in table and "91.11" in table and "NFE-B" in table and "accuracy, t ≡ T/2 (%)" in table

    def fail(*args, **kwargs):
        raise AssertionError("a done run was trained again")

    monkeypatch.setattr(timeaware.node.train, "train_classifier", fail)
    assert node_norm("quick", 1, tmp_path, "digits", overrides=TINY) == table
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
