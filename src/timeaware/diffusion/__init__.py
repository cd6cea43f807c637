"""DDPM with the paper's fixes: U-Net, diffusers schedules and samplers, training, FID/IS/FD-classifier.

The names below are the public API; the modules behind them may change.
"""

from .ddpm import Schedule, make_scheduler, simple_loss
from .sampling import load_unet, sample, save_images
from .train import PRESETS, TrainConfig, preset  # train(): timeaware.diffusion.train.train
from .unet import UNet, UNetConfig, ddpm_time_config

__all__ = ["PRESETS", "Schedule", "TrainConfig", "UNet", "UNetConfig", "ddpm_time_config", "load_unet",
           "make_scheduler", "preset", "sample", "save_images", "simple_loss"]
