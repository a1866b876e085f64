"""Named DIP recipes: a network architecture plus optimisation settings.

* ``ulyanov``: the reference recipe of the DIP paper's denoising code: 5 levels of 128 filters, 4 skip filters,
  3x3 kernels, LeakyReLU(0.2), strided-convolution downsampling, bilinear upsampling, 32 input noise channels,
  reflection padding; Adam at 0.01, input perturbation sigma 1/30, exponential moving average 0.99, 3000 steps.
* ``microscopy``: seed 002's best denoising setting on electron micrographs (ISBI 2012): its baseline of
  4 levels of 128 filters with Swish activations and 8 skip filters; otherwise as ``ulyanov``.
* ``light``: a CPU-sized network (16-32-64-64 filters, 16 input channels; 16x fewer multiply-adds than
  ``ulyanov`` per pixel), with Swish and 8 skip filters as in ``microscopy``; the project's default. Its cost and
  quality against the reference recipe are measured by ``scripts/bench_dip.py``.

Every preset stops automatically by default (``auto``: the held-out-pixel rule of :mod:`dip_baseline.stopping`)
with ``max_steps`` as a cap; the reference recipe of the paper is ``ulyanov`` with ``stop="fixed"``.

The output layer is linear in every preset (see :mod:`dip_baseline.net`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from dip_baseline.net import SkipNetConfig
from dip_baseline.stopping import AUTO_RULES, STOP_RULES, HoldoutConfig, WMVConfig
from stem_denoise.common.config import Config
from stem_denoise.common.errors import ConfigError

DEFAULT_PRESET = "light"


class DipSettings(Config):
    """Optimisation settings (steps count optimiser updates; intensities are in normalised units).

    ``input_scale``: the fixed code z is uniform in [0, input_scale]. ``input_noise_std``: Gaussian
    perturbation added to z at every step (0 disables). ``ema``: weight of the exponential moving average of
    the outputs (0 disables; the average is the result). ``amp = False`` makes precision "auto" mean float32
    (see :func:`dip_baseline.optimize.dip_precision`); ``channels_last`` applies whenever the network runs on
    CUDA or under bf16 autocast.
    """

    lr: float = Field(0.01, gt=0.0)
    max_steps: int = Field(3000, ge=1)
    input_scale: float = Field(0.1, gt=0.0)
    input_noise_std: float = Field(1.0 / 30.0, ge=0.0)
    ema: float = Field(0.99, ge=0.0, lt=1.0)
    stop: Literal[STOP_RULES] = "auto"
    auto_rule: Literal[AUTO_RULES] = "holdout"
    wmv: WMVConfig = WMVConfig()
    holdout: HoldoutConfig = HoldoutConfig()
    amp: bool = True
    channels_last: bool = True


class DipPreset(Config):
    """A named recipe: the network and the optimisation settings."""

    name: str
    net: SkipNetConfig
    settings: DipSettings
    description: str = ""


_ULYANOV_NET = SkipNetConfig(down_channels=(128,) * 5, skip_channels=4, activation="leaky_relu",
                             input_channels=32, downsample="stride", upsample="bilinear", pad="reflection")

PRESETS: dict[str, DipPreset] = {
    "ulyanov": DipPreset(
        "ulyanov", _ULYANOV_NET, DipSettings(max_steps=3000),
        "DIP paper reference: 5x128 filters, 4 skip filters, LeakyReLU, 32 input channels"),
    "microscopy": DipPreset(
        "microscopy", _ULYANOV_NET.replace(down_channels=(128,) * 4, skip_channels=8, activation="swish"),
        DipSettings(max_steps=3000),
        "seed 002's best for micrographs: 4x128 filters, Swish, 8 skip filters, 32 input channels"),
    "light": DipPreset(
        "light", SkipNetConfig(down_channels=(16, 32, 64, 64), up_channels=(16, 32, 64, 64), skip_channels=8,
                               activation="swish", input_channels=16),
        DipSettings(max_steps=3000),
        "CPU-sized: 16-32-64-64 filters, Swish, 8 skip filters, 16 input channels"),
}


def get_preset(name: str) -> DipPreset:
    """Return the preset called ``name`` (ConfigError listing the names otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown DIP preset {name!r}; choose one of {', '.join(PRESETS)}") from None
