"""The windowed-moving-variance (ES-WMV) stopping rule on sequences whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dip_baseline.stopping import HoldoutConfig, ValidationStopper, WindowedVarianceStopper, WMVConfig, holdout_pixels
from stem_denoise.common.errors import ConfigError


def _feed(stopper, amplitudes, seed=0):
    """Outputs = fixed image + noise whose size follows ``amplitudes`` (one per step); return the step it fired."""
    rng = np.random.default_rng(seed)
    base = rng.random(64)
    for t, a in enumerate(amplitudes):
        if stopper.update(torch.from_numpy(base + a * rng.standard_normal(64))):
            return t
    return None


def test_fires_after_the_valley_and_picks_its_bottom():
    # quiet start (a fresh network), then a hill (structure being fitted), a valley at step 300, a rise (noise).
    t = np.arange(1000)
    amp = np.where(t < 50, 0.01, 0.0) + np.where(t >= 50, 0.2 + 0.8 * np.abs(t - 300) / 300, 0.0)
    amp[50:100] = 1.5
    s = WindowedVarianceStopper(WMVConfig(window=20, patience=150))
    fired = _feed(s, amp)
    assert fired is not None
    assert abs(s.best_step - 300) <= 25  # the window's end lags the valley by at most one window
    assert fired == s.best_step + 150


def test_does_not_fire_while_outputs_keep_settling():
    amp = np.linspace(1.0, 0.01, 600)
    s = WindowedVarianceStopper(WMVConfig(window=20, patience=100))
    assert _feed(s, amp) is None
    assert s.best_step == 599


def test_variance_matches_the_definition():
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((30, 16))
    s = WindowedVarianceStopper(WMVConfig(window=10, patience=5))
    for x in xs:
        s.update(torch.from_numpy(x))
    window = xs[-10:]
    expected = np.mean(np.sum((window - window.mean(0)) ** 2, axis=1)) / 16
    assert s.variance_history[-1] == pytest.approx(expected, rel=1e-9)
    assert len(s.variance_history) == 21


def test_min_steps_delays_the_stop():
    amp = np.concatenate([np.full(30, 1.0), np.full(10, 0.1), np.full(200, 1.0)])
    s = WindowedVarianceStopper(WMVConfig(window=5, patience=20, min_steps=150))
    assert _feed(s, amp) == 150


@pytest.mark.parametrize("bad", [dict(window=1), dict(patience=0), dict(min_steps=-1)])
def test_bad_settings(bad):
    with pytest.raises(ConfigError):
        WMVConfig(**bad)


def test_holdout_blocks_are_sparse_known_and_apart():
    known = np.ones((60, 90), bool)
    known[20:30, :] = False  # a scar: no block may sit on it
    cfg = HoldoutConfig()
    centres, held = holdout_pixels(known, cfg, seed=3)
    assert len(centres) > 0.8 * (60 * 90 - 900) / 36  # about one per 6 x 6 cell of known pixels
    assert held.sum() == 3 * len(centres) and not (held & ~known).any()
    for r, c in centres:
        assert held[r, c - 1:c + 2].all()  # the 1 x 3 block around each scored centre
    for r, c in centres:  # blocks never touch: the ring around a block holds no other block's pixel
        assert held[max(r - 1, 0):r + 2, max(c - 2, 0):c + 3].sum() == 3
    again, _ = holdout_pixels(known, cfg, seed=3)
    np.testing.assert_array_equal(centres, again)


def test_validation_stopper_keeps_the_lowest_value():
    values = np.concatenate([np.linspace(1.0, 0.2, 50), np.linspace(0.2, 0.6, 100)])
    s = ValidationStopper(patience=30)
    fired = next(t for t, v in enumerate(values) if s.update(v))
    assert s.best_step == 49 and fired == 79


@pytest.mark.parametrize("bad", [dict(block=(2, 3)), dict(block=(1, 3), spacing=3), dict(patience=0)])
def test_bad_holdout_settings(bad):
    with pytest.raises(ConfigError):
        HoldoutConfig(**bad)
