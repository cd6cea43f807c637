"""ddpm-fixes end to end at toy scale: every row trained, scored, gridded; reruns skip finished runs."""

import itertools
import json

import pytest
import torch

from timeaware.experiments.ddpm import PAPER, ROWS, audit_model, ddpm_fixes
from timeaware.experiments.registry import get_experiment

TOY = ("channels=8", "steps=2", "data_limit=32", "batch_size=8")
SMOKE = {"num": 8, "steps": 5, "classifier_steps": 10}


def test_registry_points_at_ddpm_fixes():
    assert get_experiment("ddpm-fixes") is ddpm_fixes


def test_rows_add_the_papers_fixes_one_at_a_time_and_scale_shift_stands_alone():
    """Table 3 is cumulative: each row keeps the previous row's fixes and adds one."""
    from timeaware.diffusion.train import preset

    def time_config(row: str) -> dict:
        return preset("quick", ROWS[row])[0].time.to_dict()

    names = ["baseline", "+positional", "+zero bias", "+fewer groups"]
    assert list(ROWS) == [*names, "scale-shift"] and set(PAPER) <= set(ROWS)
    changed = [{k for k, v in time_config(b).items() if v != time_config(a)[k]} for a, b in itertools.pairwise(names)]
    assert changed == [{"positional"}, {"operand_bias"}, {"groups"}]
    full = time_config("+fewer groups")
    assert (full["positional"], full["operand_bias"], full["groups"]) == ("mlp", "zero", 1)
    assert {k for k, v in time_config("scale-shift").items() if v != time_config("baseline")[k]} == {"injection"}


def test_quick_ddpm_fixes_writes_table_grids_and_skips_done_runs(tmp_path):
    table = ddpm_fixes("quick", 1, tmp_path, None, overrides=TOY, evaluation=SMOKE, progress=False)
    assert (tmp_path / "table.md").read_text() == table
    for row in ROWS:
        assert f"| {row} | 1 |" in table
    assert "3.238" in table and "**not FID**" in table and "8 samples (ddim-5, ema weights" in table
    assert len(list((tmp_path / "grids").glob("*.png"))) == len(ROWS)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    ddpm_fixes("quick", 1, tmp_path, None, overrides=TOY, evaluation=SMOKE, progress=False)
    assert (tmp_path / "results.jsonl").read_text().splitlines() == lines


def test_paper_preset_trains_with_the_papers_optimizer(tmp_path):
    """Section 4.2: Adam at 2e-4 without weight decay after a linear warm-up of 5k steps, as the checkpoint saw it."""
    from timeaware.diffusion.train import preset, train
    from timeaware.training import latest_checkpoint

    unet_cfg, cfg = preset("paper", ["channels=32", "channel_mult=1,2", "data=digits", "image_size=16",
                                     "in_channels=1", "steps=2", "batch_size=2"])
    assert train(tmp_path, unet_cfg, cfg, progress=False)["step"] == 2
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    group = state["optimizer"]["param_groups"][0]
    assert (group["initial_lr"], group["weight_decay"], group["betas"]) == (2e-4, 0.0, [0.9, 0.999])
    assert group["lr"] == pytest.approx(2e-4 * 3 / 5000, rel=1e-12)  # after 2 of 5000 warm-up steps: (2 + 1) / 5000


def test_audit_finds_the_norms_after_the_time_addition_and_fewer_groups_raise_survival(tmp_path):
    from timeaware.awareness import find_vanishing_sites
    from timeaware.diffusion.unet import UNet, UNetConfig, ddpm_time_config

    default = UNet(UNetConfig(image_size=8, in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                              attn_resolutions=(4,)))
    sites = find_vanishing_sites(default)
    assert len(sites) == len(default.res_blocks()) and all(s.norm.endswith("norm2") for s in sites)
    assert all(s.norm_type == "GroupNorm" and not s.protected for s in sites)
    mapped = UNet(UNetConfig(image_size=8, in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                             attn_resolutions=(4,), time=ddpm_time_config().replace(positional="mlp")))
    assert all(s.protected for s in find_vanishing_sites(mapped))

    def survival(groups: int) -> float:
        cfg = UNetConfig(image_size=8, in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                         attn_resolutions=(4,), time=ddpm_time_config().replace(groups=groups))
        return audit_model(UNet(cfg), torch.randn(4, 1, 8, 8), tmp_path / f"g{groups}")["survival"]

    assert survival(1) > survival(32)


