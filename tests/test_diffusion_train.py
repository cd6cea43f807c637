"""DDPM training: the loss falls, resume is bitwise exact on the CPU, presets and --set parse."""

import pytest
import torch

from timeaware.diffusion.ddpm import make_scheduler, simple_loss, to_model_range
from timeaware.diffusion.sampling import load_unet
from timeaware.diffusion.train import preset, train
from timeaware.diffusion.unet import UNet
from timeaware.io import load_tensors

TINY = ["channels=8", "groups=4", "data_limit=64", "batch_size=16", "log_every=1", "warmup=1"]


def tiny_preset(*extra: str):
    return preset("quick", [*TINY, *extra])


def test_a_few_steps_lower_the_loss(tmp_path):
    from timeaware.data import load_images

    unet_cfg, cfg = tiny_preset("steps=30", "lr=3e-3", "dropout=0", "checkpoint_every=30")
    x0 = to_model_range(load_images("digits", "train", 8).subset(64, seed=0).x)

    def loss_of(model: UNet) -> float:
        with torch.no_grad():
            return simple_loss(model.eval(), make_scheduler("ddpm"), x0, torch.Generator().manual_seed(0)).item()

    torch.manual_seed(cfg.seed)
    before = loss_of(UNet(unet_cfg))
    train(tmp_path, unet_cfg, cfg, progress=False)
    after = loss_of(load_unet(tmp_path, raw=True)[0])
    assert after < 0.8 * before


def test_resume_is_bitwise_exact(tmp_path):
    unet_cfg, cfg = tiny_preset("checkpoint_every=2")
    train(tmp_path / "straight", unet_cfg, cfg.replace(steps=4), progress=False)
    train(tmp_path / "resumed", unet_cfg, cfg.replace(steps=2), progress=False)
    train(tmp_path / "resumed", unet_cfg, cfg.replace(steps=4), resume=True, progress=False)
    a, b = tmp_path / "straight/checkpoints/step-00000004", tmp_path / "resumed/checkpoints/step-00000004"
    for name in ("model", "ema", "optimizer", "rng"):
        ta, tb = load_tensors(a / f"{name}.safetensors"), load_tensors(b / f"{name}.safetensors")
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    lines = (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "straight/metrics.jsonl").read_text().splitlines()


def test_existing_run_needs_resume(tmp_path):
    unet_cfg, cfg = tiny_preset("steps=1")
    train(tmp_path, unet_cfg, cfg, progress=False)
    with pytest.raises(ValueError, match="pass --resume"):
        train(tmp_path, unet_cfg, cfg, progress=False)


def test_resume_refuses_changed_training_settings_but_allows_more_steps(tmp_path):
    unet_cfg, cfg = tiny_preset("steps=1")
    train(tmp_path, unet_cfg, cfg, progress=False)
    with pytest.raises(ValueError, match="was trained with different lr"):
        train(tmp_path, unet_cfg, cfg.replace(lr=1.0, steps=2), resume=True, progress=False)
    assert train(tmp_path, unet_cfg, cfg.replace(steps=2), resume=True, progress=False)["step"] == 2


def test_ema_and_raw_weights_differ_and_both_load(tmp_path):
    unet_cfg, cfg = tiny_preset("steps=3", "lr=1e-2")
    train(tmp_path, unet_cfg, cfg, progress=False)
    ema, meta = load_unet(tmp_path)
    raw, _ = load_unet(tmp_path, raw=True)
    assert meta["step"] == 3 and meta["state"]["unet"] == unet_cfg.to_dict()
    assert any(not torch.equal(p, q) for p, q in zip(ema.parameters(), raw.parameters()))
    stored = load_tensors(tmp_path / "checkpoints/step-00000003/ema.safetensors")
    assert all(torch.equal(v, stored[f"module.{k}"]) for k, v in ema.state_dict().items())
    stored = load_tensors(tmp_path / "checkpoints/step-00000003/model.safetensors")
    assert all(torch.equal(v, stored[k]) for k, v in raw.state_dict().items())


def test_set_overrides_reach_each_config():
    unet_cfg, cfg = preset("quick", ["positional=mlp", "groups=1", "channel_mult=1,2,2", "steps=7", "flip=false",
                                     "data_limit=none"])
    assert unet_cfg.time.positional == "mlp" and unet_cfg.time.groups == 1 and unet_cfg.channel_mult == (1, 2, 2)
    assert cfg.steps == 7 and cfg.flip is False and cfg.data_limit is None


def test_quick_preset_on_rgb_data_switches_to_a_16px_subset_and_overrides_still_win():
    unet_cfg, cfg = preset("quick", ["data_limit=500"], data="cifar10.npz")
    assert (unet_cfg.in_channels, unet_cfg.image_size) == (3, 16)
    assert (cfg.data, cfg.data_limit) == ("cifar10.npz", 500)
    assert preset("quick", data="digits")[0].in_channels == 1


def test_paper_preset_builds_ddpms_cifar10_u_net():
    """Ho et al.'s CIFAR-10 model: 35.7M parameters, self-attention on the 16×16 maps (and once in the middle)."""
    from test_diffusion_unet import DDPM_CIFAR10_PARAMS, meta_count
    from timeaware.diffusion.unet import Attention

    unet_cfg, _ = preset("paper")
    assert abs(meta_count(unet_cfg) / DDPM_CIFAR10_PARAMS - 1) < 0.005
    model, sizes = UNet(unet_cfg), []
    for module in model.modules():
        if isinstance(module, Attention):
            module.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    assert sizes == [(16, 16)] * 2 + [(4, 4)] + [(16, 16)] * 3  # 2 blocks down, the middle, 3 blocks up


@pytest.mark.parametrize(("pair", "message"), [
    ("steps=many", r"--set steps='many' is not allowed; expected int"),
    ("colour=red", "--set 'colour' is unknown; allowed keys: "),
    ("groups", "is not of the form key=value"),
    ("norm=magic", "norm='magic' is not allowed; choose one of"),
])
def test_bad_overrides_are_one_line_errors(pair, message):
    with pytest.raises(ValueError, match=message):
        preset("quick", [pair])


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from timeaware.diffusion import train as train_module
    from timeaware.training import NonFiniteLoss, latest_checkpoint

    unet_cfg, cfg = tiny_preset("steps=2", "checkpoint_every=1")
    train(tmp_path, unet_cfg, cfg.replace(steps=1), progress=False)
    monkeypatch.setattr(train_module, "simple_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(NonFiniteLoss, match="at step 2"):
        train(tmp_path, unet_cfg, cfg, resume=True, progress=False)
    assert latest_checkpoint(tmp_path).name == "step-00000001"
