"""Noise-model estimation (data_prep/noise_model.py): known answers on simulated micrographs, 8-bit exports,
detector offsets, bad input, determinism, and sanity on the four shared real frames."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from data_prep.noise_model import NoiseEstimate, estimate_noise
from data_prep.simulate import simulate
from stem_denoise.common.errors import InputError
from tests.real_frames import REAL_FRAMES, needs_real, read_real  # noqa: E402

SIZE = 384
READ = 0.5  # the simulator's default read noise, counts

# (lattice, dose, gain, corr_row, corr_col, row_offset, dents, period_px, angle_deg): every lattice, dose, gain,
# correlation pair and row-offset level of the grid, with and without dents, axis-aligned and rotated lattices
CASES = [
    ("square", 3, 1.0, 0.0, 0.0, 0.02, 0, 12.8, 0.0),
    ("hex", 3, 7.3, 0.28, -0.1, 0.03, 2, 13.5, 65.0),
    ("perovskite", 3, 1.0, 0.4, 0.2, 0.01, 0, 14.2, 81.0),
    ("square", 5, 7.3, 0.4, 0.2, 0.02, 2, 10.7, 30.0),
    ("hex", 5, 1.0, 0.0, 0.0, 0.03, 0, 15.3, 15.0),
    ("perovskite", 5, 7.3, 0.28, -0.1, 0.02, 2, 12.8, 0.0),
    ("square", 10, 1.0, 0.28, -0.1, 0.03, 2, 12.6, 81.0),
    ("hex", 10, 7.3, 0.4, 0.2, 0.01, 0, 12.8, 0.0),
    ("perovskite", 10, 1.0, 0.0, 0.0, 0.02, 2, 11.1, 27.0),
    ("square", 20, 7.3, 0.0, 0.0, 0.03, 0, 14.4, 42.0),
    ("hex", 20, 1.0, 0.4, 0.2, 0.03, 2, 10.1, 40.0),
    ("perovskite", 20, 7.3, 0.28, -0.1, 0.03, 0, 12.8, 0.0),
    ("square", 50, 1.0, 0.4, 0.2, 0.03, 2, 12.8, 0.0),
    ("hex", 50, 7.3, 0.0, 0.0, 0.02, 2, 12.7, 79.0),
    ("perovskite", 50, 1.0, 0.28, -0.1, 0.03, 0, 13.0, 13.0),
    ("square", 50, 7.3, 0.28, -0.1, 0.02, 0, 14.6, 42.0),
]


def _sim(lattice, dose, gain, corr_row, corr_col, row_offset, dents, period, angle, seed):
    return simulate(shape=(SIZE, SIZE), lattice=lattice, dose=float(dose), gain=gain, noise_corr_row=corr_row,
                    noise_corr_col=corr_col, row_offset=row_offset, dents=dents, period_px=period, angle_deg=angle,
                    seed=seed)


def _true_dose(res, gain: float) -> float:
    """Counts at a column peak, computed from the truth as the estimator defines it (the simulator's offset is 0)."""
    return float((np.percentile(res.truth, 99.5) - 0.0) / gain)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-d{c[1]}-g{c[2]}-r{c[3]}-c{c[4]}-o{c[5]}-dents{c[6]}"
                                              for c in CASES])
def test_simulated_micrographs_give_back_the_noise_model(case):
    lattice, dose, gain, corr_row, corr_col, row_offset, dents, period, angle = case
    res = _sim(*case, seed=100 + CASES.index(case))
    est = estimate_noise(res.noisy)
    assert est.reliable, est.notes
    assert abs(est.gain / gain - 1.0) <= 0.10, f"gain {est.gain:.3f} vs {gain}"
    true_dose = _true_dose(res, gain)
    assert abs(est.dose / true_dose - 1.0) <= 0.10, f"dose {est.dose:.2f} vs {true_dose:.2f}"
    assert abs(est.corr_row - corr_row) <= 0.05, f"corr_row {est.corr_row:.3f} vs {corr_row}"
    assert abs(est.corr_col - corr_col) <= 0.05, f"corr_col {est.corr_col:.3f} vs {corr_col}"
    assert abs(est.period_px - res.period_px) / res.period_px < 0.01
    assert est.offset == pytest.approx(0.0, abs=0.05 * gain * true_dose)
    # row offsets: what the simulator added (image units) against the noise of a row mean of pixel noise
    true_ro = row_offset * float(res.truth.mean())
    pixel_var = gain * float(res.truth.mean()) + (gain * READ) ** 2 + 1.0 / 12.0
    row_mean_var = pixel_var * (1.0 + 2.0 * corr_row) / (0.8 * SIZE)
    if true_ro ** 2 >= 0.5 * row_mean_var:  # resolvable on this frame: 30 % accuracy
        assert abs(est.row_offset / true_ro - 1.0) <= 0.30, f"row_offset {est.row_offset:.3g} vs {true_ro:.3g}"
    # always: the pixel noise's share of the row means is not mistaken for row offsets
    assert est.row_offset ** 2 <= true_ro ** 2 + 0.5 * (true_ro ** 2 + row_mean_var)
    # the noise std at the median signal follows from the model
    med = float(np.median(res.truth))
    assert est.noise_std == pytest.approx(math.sqrt(gain * med + (gain * READ) ** 2), rel=0.12)


def test_detector_offset_is_recovered_and_leaves_the_dose_unchanged():
    res = _sim("square", 20, 1.0, 0.28, -0.1, 0.02, 0, 12.8, 20.0, seed=7)
    base = estimate_noise(res.noisy)
    shifted = estimate_noise(res.noisy + 500.0)
    true_dose = _true_dose(res, 1.0)
    # the offset convention: a negative intercept is an offset, low by read_noise^2 / gain at most
    assert shifted.offset == pytest.approx(500.0, abs=0.05 * true_dose + READ ** 2 + 0.1)
    assert shifted.gain == pytest.approx(base.gain, rel=0.02)
    assert abs(shifted.dose / true_dose - 1.0) <= 0.10
    assert shifted.read_noise == 0.0 and base.offset == 0.0 and base.read_noise > 0.0


@pytest.mark.parametrize("lattice,dose,gain", [("square", 10, 1.0), ("perovskite", 20, 7.3)])
def test_eight_bit_export_gives_the_effective_dose(lattice, dose, gain):
    res = _sim(lattice, dose, gain, 0.28, -0.1, 0.01, 0, 12.8, 0.0, seed=11)
    lo, hi = float(res.noisy.min()), float(res.noisy.max())
    scale = 255.0 / (hi - lo)
    img8 = np.round((res.noisy - lo) * scale).astype(np.uint8)
    est = estimate_noise(img8)
    # a linear stretch keeps the counts: the effective dose is the true one, the gain scales with the stretch
    assert abs(est.dose / _true_dose(res, gain) - 1.0) <= 0.15
    assert abs(est.gain / (gain * scale) - 1.0) <= 0.10
    assert 0.0 <= est.offset <= 1.2 * (-lo * scale) + 1.0
    assert abs(est.corr_row - 0.28) <= 0.05


def test_saturated_export_keeps_the_gain_and_says_the_dose_is_a_lower_bound():
    res = _sim("square", 20, 1.0, 0.28, -0.1, 0.01, 0, 12.8, 0.0, seed=12)
    lo, hi = np.percentile(res.noisy, [0.5, 98.0])  # 0.5 % black, 2 % white pixels
    scale = 255.0 / (hi - lo)
    img8 = np.clip(np.round((res.noisy - lo) * scale), 0, 255).astype(np.uint8)
    est = estimate_noise(img8)
    assert "clipped" in est.notes and "lower bound" in est.notes
    assert abs(est.gain / scale - 1.0) <= 0.10
    assert est.dose <= 1.05 * _true_dose(res, 1.0)


def test_signal_independent_noise_is_flagged_unreliable():
    """A flat mean-variance relation (white Gaussian noise of one level) has no gain to measure."""
    res = simulate(shape=(SIZE, SIZE), lattice="square", dose=30.0, noise=False, seed=3)
    rng = np.random.default_rng(0)
    img = res.truth + rng.normal(0.0, 3.0, size=res.truth.shape)
    est = estimate_noise(img)
    assert not est.reliable and est.notes
    assert est.noise_std == pytest.approx(3.0, rel=0.15)
    assert abs(est.corr_row) < 0.05 and abs(est.corr_col) < 0.05


def test_same_input_same_answer_and_the_input_is_untouched():
    res = _sim("hex", 10, 1.0, 0.28, -0.1, 0.02, 2, 12.8, 10.0, seed=5)
    img = res.noisy.copy()
    first = estimate_noise(img)
    second = estimate_noise(img)
    assert first == second
    assert np.array_equal(img, res.noisy)
    assert estimate_noise(img.astype(np.float64)) == first


def test_large_images_are_measured_on_a_central_crop():
    res = _sim("square", 20, 1.0, 0.0, 0.0, 0.01, 0, 12.8, 0.0, seed=9)
    crop = res.noisy[92:292, 92:292]
    assert estimate_noise(res.noisy, max_pixels=200 * 200) == estimate_noise(crop)


def test_a_given_period_is_reported_and_used():
    res = _sim("square", 20, 1.0, 0.28, -0.1, 0.01, 0, 12.8, 0.0, seed=4)
    est = estimate_noise(res.noisy, period_px=12.8)
    assert est.period_px == 12.8
    assert abs(est.gain - 1.0) <= 0.10


def test_to_dict_is_plain_json():
    res = _sim("perovskite", 10, 1.0, 0.28, -0.1, 0.02, 0, 12.8, 0.0, seed=2)
    est = estimate_noise(res.noisy)
    d = est.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(NoiseEstimate)}
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert isinstance(d["reliable"], bool) and isinstance(d["notes"], str)
    assert all(type(v) is float for k, v in d.items() if k not in ("reliable", "notes"))


@pytest.mark.parametrize("bad", [
    np.full((128, 128), 7.0),
    np.where(np.eye(128, dtype=bool), np.nan, 1.0) + np.arange(128.0),
    np.where(np.eye(128, dtype=bool), np.inf, 1.0) + np.arange(128.0),
    np.arange(4096.0),
    np.random.default_rng(0).random((2, 128, 128)),
    np.random.default_rng(0).random((32, 128)),
    np.array([["a", "b"], ["c", "d"]]),
], ids=["constant", "nan", "inf", "1-d", "3-d", "too-small", "strings"])
def test_bad_input_raises_input_error(bad):
    with pytest.raises(InputError) as info:
        estimate_noise(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [dict(period_px=0.0), dict(period_px=float("nan")), dict(period_px="twelve"),
                                    dict(max_pixels=100)])
def test_bad_options_raise_input_error(kwargs):
    res = _sim("square", 10, 1.0, 0.0, 0.0, 0.01, 0, 12.8, 0.0, seed=1)
    with pytest.raises(InputError):
        estimate_noise(res.noisy, **kwargs)


@needs_real
@pytest.mark.parametrize("name", REAL_FRAMES)
def test_real_frames_give_a_sane_noise_model(name):
    image, _ = read_real(name)
    est = estimate_noise(image)
    d = est.to_dict()
    assert all(math.isfinite(v) for k, v in d.items() if k not in ("reliable", "notes"))
    assert est.gain > 0 and 0.1 < est.dose < 1e5
    assert abs(est.corr_row) < 0.9 and abs(est.corr_col) < 0.9
    assert est.row_offset >= 0 and est.read_noise >= 0 and est.noise_std > 0 and est.period_px > 0
    assert json.loads(json.dumps(d, allow_nan=False)) == d
