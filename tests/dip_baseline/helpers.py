"""Tiny network presets and small lattice images with known truth for the DIP tests."""
from __future__ import annotations

import numpy as np

from dip_baseline.net import SkipNetConfig
from dip_baseline.presets import DipPreset, DipSettings
from dip_baseline.stopping import HoldoutConfig, WMVConfig

TINY_NET = SkipNetConfig(down_channels=(8, 16), skip_channels=4, input_channels=4, activation="swish")
# A tiny network whose windowed output variance has a clear valley after the structure is fitted on a 32 px
# noisy lattice (the two-level Swish one above keeps settling instead, so the automatic stop never fires).
STOP_NET = SkipNetConfig(down_channels=(8, 16, 16), skip_channels=4, input_channels=4, activation="leaky_relu")


def tiny_preset(steps: int = 150, stop: str = "fixed", window: int = 20, patience: int = 40, net=TINY_NET,
                **settings) -> DipPreset:
    s = DipSettings(max_steps=steps, stop=stop, wmv=WMVConfig(window=window, patience=patience),
                    holdout=HoldoutConfig(patience=patience), **settings)
    return DipPreset("tiny", net, s, "test network")


def lattice(shape=(32, 32), period=8.0, sigma=1.3, amplitude=1.0, background=0.1, offset=None) -> np.ndarray:
    """Square lattice of Gaussian columns (float64, arbitrary units); columns at ``offset + k * period`` px
    (default offset period/2)."""
    offset = period / 2 if offset is None else offset
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    img = np.full(shape, background)
    for cy in np.arange(offset - period, shape[0] + period, period):
        for cx in np.arange(offset - period, shape[1] + period, period):
            img += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return img
