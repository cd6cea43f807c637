"""Time use: a model whose norms cancel t loses nothing when t is frozen or shuffled; one that reads t does."""

import itertools
import json

import pytest
import torch

from timeaware.cli import main
from timeaware.config import TimeAware
from timeaware.diffusion.unet import UNet, UNetConfig, ddpm_time_config
from timeaware.experiments.ddpm_time import SETTINGS, ddpm_time
from timeaware.experiments.needs_time import Field, Setting, TaskSize, node_needs_time
from timeaware.experiments.registry import get_experiment
from timeaware.experiments.time_use import NODE_TIMES, diffusion_time_use, node_time_use
from timeaware.node.model import NodeClassifier


def _classifier(**fields: str) -> NodeClassifier:
    torch.manual_seed(0)
    time = fields.pop("time", "concat")
    return NodeClassifier(1, 3, (8, 8), channels=4, config=TimeAware(groups=2, **fields), time=time)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)


def test_batchnorm_in_shared_t_train_mode_cancels_t_so_frozen_and_reversed_t_change_nothing():
    model = _classifier(norm="batch", time="mlp")  # per-channel offsets only: no zero-padding edge effect
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = {r["t"]: r for r in node_time_use(model, *_data(), mode="train")}
    assert list(rows) == list(NODE_TIMES)
    for name in NODE_TIMES[1:]:
        assert rows[name]["loss"] == pytest.approx(rows["real"]["loss"], abs=1e-5)
        assert rows[name]["accuracy"] == rows["real"]["accuracy"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics restored


def test_a_positional_map_makes_the_loss_depend_on_t():
    model = _classifier(norm="batch", positional="linear")
    with torch.no_grad():
        model.block.func.map1.weight.mul_(30)  # a map as strong as a trained one
    rows = {r["t"]: r for r in node_time_use(model, *_data(), mode="train")}
    assert abs(rows["frozen 0"]["loss"] - rows["real"]["loss"]) > 1e-3
    assert abs(rows["reversed"]["loss"] - rows["real"]["loss"]) > 1e-3


def test_bad_mode_and_time_names_are_refused():
    model = _classifier()
    with pytest.raises(ValueError, match="mode='test' is not allowed"):
        node_time_use(model, *_data(), mode="test")
    with pytest.raises(ValueError, match="time 'later' is not allowed"):
        node_time_use(model, *_data(), times=("later",))


def _unet(**time: object) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(image_size=8, in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attn_resolutions=(4,), time=ddpm_time_config().replace(groups=4, **time)))


def test_time_blind_unet_scores_the_same_with_true_random_and_shifted_t():
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    for row in diffusion_time_use(_unet(norm="instance"), x0, bins=3):
        assert row["random"] == pytest.approx(row["true"], rel=1e-5)
        assert row["shifted"] == pytest.approx(row["true"], rel=1e-5)
    rows = diffusion_time_use(_unet(), x0, bins=3)  # GroupNorm(4) at widths 8, 16: t survives
    assert any(abs(r["random"] / r["true"] - 1) > 1e-4 for r in rows)
    assert rows[0]["t_lo"] == 0 and rows[-1]["t_hi"] == 999  # the bins tile 0..T-1
    assert all(a["t_hi"] + 1 == b["t_lo"] for a, b in itertools.pairwise(rows))


def test_targets_need_time_and_their_time_average_is_blind():
    size = TaskSize(channels=4, size=4)
    z = torch.randn(3, 4, 4, 4)
    for task in ("per-channel", "spatial"):
        field = Field(task, size)
        assert not torch.allclose(field(0.0, z), field(1.0, z))
        fine = torch.stack([field(t, z) for t in torch.linspace(0, 1, 257).tolist()]).mean(0)
        assert (fine - field.time_average(z)).abs().max() < 1e-2  # v̄ is the t-average of v
    with pytest.raises(ValueError, match="task='radial' is not allowed"):
        Field("radial", size)


TINY = {"quick": TaskSize(channels=4, size=4, train_paths=8, test_paths=4, grid=5, steps=3, batch=4)}
ROWS = [Setting("no norm", {"norm": "none"}), Setting("IN", {"norm": "instance"}),
        Setting("control", {"norm": "none"}, autonomous=True)]


def test_needs_time_writes_results_table_plot_and_skips_done_runs(tmp_path, monkeypatch):
    assert get_experiment("node-needs-time") is node_needs_time
    table = node_needs_time("quick", 1, tmp_path, None, sizes=TINY, rows=ROWS)
    assert (tmp_path / "table.md").read_text() == table and (tmp_path / "needs-time.png").stat().st_size > 0
    assert "| control | 1 |" in table and "per-channel time dependence" in table and "interior" in table
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(ROWS)
    control = [r for r in records if r["setting"] == "control"]
    assert all(r["unexplained"] == pytest.approx(1.0) for r in control)  # a time-blind field: exactly 1
    import timeaware.experiments.needs_time as module

    monkeypatch.setattr(module, "run_one", lambda *a: pytest.fail("a finished run was redone"))
    node_needs_time("quick", 1, tmp_path, None, sizes=TINY, rows=ROWS)
    with pytest.raises(ValueError, match="--data 'digits' is not allowed"):
        node_needs_time("quick", 1, tmp_path, "digits", sizes=TINY, rows=ROWS)


@pytest.mark.slow  # trains, samples and scores two U-Nets: about a minute on a shared 2-core CPU
def test_ddpm_time_reports_time_use_per_setting_and_the_blind_row_ignores_t(tmp_path):
    toy = ("channels=8", "steps=2", "data_limit=32", "batch_size=8")
    rows = {name: SETTINGS[name] for name in ("time-blind (GN G=C)", "baseline")}
    assert SETTINGS["time-blind (GN G=C)"] == ["norm=instance"] and "+fewer groups" in SETTINGS
    table = ddpm_time("quick", 1, tmp_path, None, overrides=toy, settings=rows, images=16,
                      evaluation={"num": 8, "steps": 3, "classifier_steps": 5})
    assert (tmp_path / "table.md").read_text() == table and (tmp_path / "time-use.png").stat().st_size > 0
    for name in rows:
        assert f"| {name} | 1 |" in table
    assert table.count("| time-blind (GN G=C) | ") == 1 + 5  # the summary row, then one per t-bin
    blind = next(json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()
                 if json.loads(line)["setting"].startswith("time-blind"))
    assert blind["random_over_true"] == pytest.approx(1.0, rel=1e-5)


def test_time_use_cli_on_a_node_run(tmp_path, capsys):
    from timeaware.node.run_config import preset
    from timeaware.node.train import train_classifier

    cfg = preset("quick").with_overrides({"limit": 32, "test_limit": 16, "channels": 4, "groups": 2, "epochs": 1,
                                          "batch_size": 16, "padding": 0})
    train_classifier(cfg, tmp_path / "run", progress=False)
    assert main(["time-use", str(tmp_path / "run"), "--limit", "8"]) == 0
    out = tmp_path / "run" / "time-use"
    assert "| frozen T/2 |" in capsys.readouterr().out
    result = json.loads((out / "time-use.json").read_text())
    assert result["kind"] == "node" and result["images"] == 8 and [r["t"] for r in result["rows"]] == list(NODE_TIMES)
    assert (out / "time-use.png").stat().st_size > 0 and (out / "time-use.md").is_file()
    assert main(["time-use", str(tmp_path / "run"), "--mode", "test"]) == 2
    assert "mode='test' is not allowed" in capsys.readouterr().err


def test_time_use_cli_on_a_ddpm_run(tmp_path, capsys):
    from timeaware.diffusion.train import preset, train

    unet_cfg, cfg = preset("quick", ["channels=8", "groups=4", "data_limit=16", "batch_size=4", "steps=1"])
    train(tmp_path / "ddpm", unet_cfg, cfg, progress=False)
    assert main(["time-use", str(tmp_path / "ddpm"), "--limit", "4", "--bins", "2", "--out", str(tmp_path / "tu")]) == 0
    assert "| 0-499 |" in capsys.readouterr().out
    result = json.loads((tmp_path / "tu" / "time-use.json").read_text())
    assert result["kind"] == "ddpm" and [r["bin"] for r in result["rows"]] == ["0-499", "500-999"]
    assert main(["time-use", str(tmp_path / "nothing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
