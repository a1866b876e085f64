"""Dent masks (the reference recipe's recipe, step by step), amplitude fit and dented targets, on known answers."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep import dents as D
from data_prep.lattice import measure_lattice
from data_prep.patches import SyntheticLattice, rotation_to_match
from data_prep.simulate import Dent, simulate, synthetic_lattice
from stem_denoise.common.errors import InputError


# ---------------------------------------------------------------------------------------------------------------
# recipe steps on tiny arrays with known answers
# ---------------------------------------------------------------------------------------------------------------
def test_subtract_mean_known():
    out = D.subtract_mean(np.array([[1.0, 2.0], [3.0, 6.0]]))
    np.testing.assert_allclose(out, [[-2.0, -1.0], [0.0, 3.0]])


def test_window_mean_of_a_delta_is_a_box():
    x = np.zeros((5, 5))
    x[2, 2] = 9.0
    out = D.window_mean(x, 3)
    expected = np.zeros((5, 5))
    expected[1:4, 1:4] = 1.0
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_window_min_is_lowest_neighbour_within_chebyshev_3():
    i, j = np.mgrid[0:9, 0:9].astype(float)
    x = i + 10.0 * j  # increasing ramp: the lowest neighbour is 3 up and 3 left, clamped at the border
    out = D.window_min(x, 7)
    np.testing.assert_allclose(out, np.maximum(i - 3, 0) + 10.0 * np.maximum(j - 3, 0))


def test_to_0_255_and_zero_below_known():
    np.testing.assert_allclose(D.to_0_255(np.array([[-1.0, 0.0], [1.0, 3.0]])), [[0.0, 63.75], [127.5, 255.0]])
    np.testing.assert_array_equal(D.to_0_255(np.full((3, 3), 7.0)), np.zeros((3, 3)))
    np.testing.assert_allclose(D.zero_below(np.array([[127.9, 128.0, 200.0, 5.0]]), 128), [[0, 128, 200, 0]])


def test_to_0_255_border_ignores_edge_values():
    x = np.zeros((7, 7))
    x[3, 3] = 2.0
    x[0, 0] = 100.0  # an edge outlier, within the border
    out = D.to_0_255(x, border=1)
    assert out[3, 3] == 255.0 and out[0, 0] == 255.0  # clipped, not stretching the range
    assert out[2, 2] == 0.0


def test_gaussian_blur_of_a_delta_matches_the_gaussian():
    x = np.zeros((41, 41))
    x[20, 20] = 1.0
    out = D.gaussian_blur(x, 3.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-6)
    assert out[20, 20] == pytest.approx(1.0 / (2 * np.pi * 9.0), rel=0.01)
    assert out[20, 26] / out[20, 20] == pytest.approx(np.exp(-36 / 18.0), rel=0.02)
    np.testing.assert_array_equal(D.gaussian_blur(x, 0.0), x)


def test_odd_window():
    assert [D.odd_window(v) for v in (0.4, 5, 6, 12.8, 24.9, 25.6)] == [1, 5, 7, 13, 25, 25]
    with pytest.raises(InputError):
        D.odd_window(0)


def test_seed_recipe_runs_its_steps_in_order():
    rng = np.random.default_rng(0)
    img = rng.normal(10.0, 1.0, (24, 30))
    img[8:16, 10:20] -= 4.0  # a dark dent
    expected = D.gaussian_blur(D.zero_below(D.to_0_255(-D.window_mean(D.subtract_mean(img), 5), border=2), 128),
                               D.RECIPE_BLUR_PX)
    got = D.dent_mask(img, None, method="recipe", scale="pixels")
    np.testing.assert_allclose(got, np.clip(expected, 0, 255), atol=1e-4)
    # the variants: 7 px minimum (Chebyshev 3) and 11 px mean (Chebyshev 5)
    exp_min = D.gaussian_blur(D.zero_below(D.to_0_255(-D.window_min(D.subtract_mean(img), 7), border=3), 128), 1.0)
    np.testing.assert_allclose(D.dent_mask(img, None, method="min", scale="pixels"), exp_min, atol=1e-4)
    exp_mean = D.gaussian_blur(D.zero_below(D.to_0_255(-D.window_mean(D.subtract_mean(img), 11), border=5), 128),
                               1.0)
    np.testing.assert_allclose(D.dent_mask(img, None, method="mean", scale="pixels"), exp_mean, atol=1e-4)


def test_mask_marks_the_dent_and_polarity_decides_which():
    img = np.full((40, 40), 10.0)
    img[14:26, 14:26] = 6.0  # dark square
    img[2:6, 30:36] = 13.0  # small bright patch
    dark = D.dent_mask(img, None, scale="pixels", window_px=3, blur_px=0)
    assert dark[20, 20] == pytest.approx(255.0)
    assert dark[4, 33] == 0.0 and dark[30, 5] == 0.0
    bright = D.dent_mask(img, None, scale="pixels", window_px=3, blur_px=0, polarity="bright")
    assert bright[4, 33] == pytest.approx(255.0)
    assert bright[20, 20] == 0.0
    region = D.mask_region(dark)
    assert region[14:26, 14:26].mean() > 0.9 and region.mean() < 0.15


def test_bad_arguments_raise_input_error():
    img = np.random.default_rng(0).random((16, 16))
    with pytest.raises(InputError):
        D.dent_mask(img, 4.0, method="median")
    with pytest.raises(InputError):
        D.dent_mask(img, 4.0, polarity="up")
    with pytest.raises(InputError):
        D.dent_mask(img, None)  # period scale needs a period
    with pytest.raises(InputError):
        D.dent_mask(np.full((16, 16), np.nan), 4.0)
    with pytest.raises(InputError):
        D.dented_targets(img, np.zeros((8, 8)), -0.1)


# ---------------------------------------------------------------------------------------------------------------
# amplitude fit and dented targets
# ---------------------------------------------------------------------------------------------------------------
def test_fit_recovers_offset_and_amplitude():
    yy, xx = np.mgrid[0:96, 0:96].astype(float)
    m = 255.0 * np.exp(-((yy - 48) ** 2 + (xx - 40) ** 2) / (2 * 15.0 ** 2))
    lattice = 0.1 * np.cos(2 * np.pi * xx / 8.0) * np.cos(2 * np.pi * yy / 8.0)
    img = 0.5 - 0.2 * m / 255.0 + lattice
    fit = D.fit_dent_amplitude(img, m, 8.0)
    assert fit.amplitude == pytest.approx(-0.2, rel=0.05)
    assert fit.offset == pytest.approx(0.5, abs=0.01)
    assert fit.r < -0.95
    # a dark-polarity mask never brightens: fitting it to a bright bump gives 0
    assert D.fit_dent_amplitude(0.5 + 0.2 * m / 255.0, m, 8.0).amplitude == 0.0


def test_dented_targets_add_and_scale_known():
    m = np.zeros((4, 4))
    m[1, 1] = 255.0
    m[2, 2] = 127.5
    img = np.full((4, 4), 0.6)
    add = D.dented_targets(img, m, -0.2, mode="add")
    np.testing.assert_allclose(add, 0.6 - 0.2 * m / 255.0, atol=1e-6)
    # a flat image: scaling reproduces the same low-pass change exactly
    sc = D.dented_targets(img, m, -0.2, mode="scale", zero_level=-0.1)
    np.testing.assert_allclose(sc, add, atol=1e-6)
    # scaling is about the zero level: a column twice as high above zero drops twice as much
    two = np.array([[0.6, 1.1]])
    out = D.dented_targets(two, np.full((1, 2), 255.0), -0.2, mode="scale", offset=0.6, zero_level=0.1)
    np.testing.assert_allclose(out, [[0.4, 0.1 + 1.0 * 0.6]], atol=1e-6)
    # never below the zero level
    deep = D.dented_targets(img, np.full((4, 4), 255.0), -5.0, mode="scale", zero_level=0.0)
    assert deep.min() >= 0.0
    # a stack with one mask each
    stack = D.dented_targets(np.stack([img, img]), np.stack([m, 0 * m]), -0.2, mode="add")
    np.testing.assert_allclose(stack[1], img)


# ---------------------------------------------------------------------------------------------------------------
# the floors: on a simulated micrograph with a known dent
# ---------------------------------------------------------------------------------------------------------------
def _dented_micrograph(shape_name: str, seed: int):
    dent = Dent(shape=shape_name, center=(180.0, 200.0), radius_px=110.0, depth=0.4, aspect=0.7, angle_deg=30.0)
    r = simulate(shape=(352, 384), period_px=12.0, angle_deg=17.0, dose=20.0, dents=[dent], background_slow=0.0,
                 seed=seed)
    lo, hi = np.percentile(r.noisy, [0.5, 99.5])
    return r, (r.noisy.astype(np.float64) - lo) / (hi - lo), -lo / (hi - lo)


@pytest.fixture(scope="module")
def synthetic():
    return SyntheticLattice.from_image(synthetic_lattice("square", period_px=24.0, n_cells=8))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("shape_name,seed", [("elliptic", 1), ("gaussian", 2), ("irregular", 3), ("ramp", 4)])
def test_dented_target_reproduces_the_micrographs_lowpass(synthetic, shape_name, seed):
    r, x, zero = _dented_micrograph(shape_name, seed)
    info = measure_lattice(x)
    period = info.period_px
    mask = D.dent_mask(x, period)  # defaults: seed method, windows in periods, dark dents
    # the mask overlaps the true dent region (thickness below half the dent's depth)
    t = r.thickness
    truth = t < 1.0 - 0.5 * (1.0 - t.min())
    assert _iou(D.mask_region(mask), truth) >= 0.6
    fit = D.fit_dent_amplitude(x, mask, period)
    assert fit.amplitude < 0
    rot = rotation_to_match(synthetic, info)
    k = 3
    clean = np.stack([synthetic.render(x.shape, period_px=period, rotation_deg=rot, origin=(37.0 * i, 11.0 * i))
                      for i in range(k)])
    lp_micro = D.lowpass(x, period).ravel()
    for mode in ("scale", "add"):
        targets = D.dented_targets(clean, mask, fit.amplitude, mode=mode, zero_level=0.0)
        for tgt in targets:
            rr = np.corrcoef(D.lowpass(tgt, period).ravel(), lp_micro)[0, 1]
            assert rr >= 0.9, (mode, rr)
    # without the dent the target's low-pass does not follow the micrograph (the check can fail)
    r0 = np.corrcoef(D.lowpass(clean[0], period).ravel(), lp_micro)[0, 1]
    assert abs(r0) < 0.5


def test_windows_in_periods_are_needed_on_atomic_resolution_images():
    """The reference recipe's literal 5 px window leaves the lattice in the mask; a window of whole periods does not."""
    r, x, _ = _dented_micrograph("elliptic", 1)
    t = r.thickness
    truth = t < 1.0 - 0.5 * (1.0 - t.min())
    literal = D.dent_mask(x, None, scale="pixels")
    by_period = D.dent_mask(x, r.period_px)
    assert _iou(D.mask_region(by_period), truth) > 0.6 > _iou(D.mask_region(literal), truth) + 0.2


@pytest.mark.parametrize("method", ["min", "mean"])
def test_variants_find_the_dent_too(method):
    r, x, _ = _dented_micrograph("elliptic", 1)
    t = r.thickness
    truth = t < 1.0 - 0.5 * (1.0 - t.min())
    mask = D.dent_mask(x, r.period_px, method=method)
    assert _iou(D.mask_region(mask), truth) >= 0.5
    fit = D.fit_dent_amplitude(x, mask, r.period_px)
    assert fit.r < -0.85


def test_the_reference_recipes_old_method_name_still_works():
    from data_prep.patches import PrepConfig

    rng = np.random.default_rng(0)
    img = rng.normal(10.0, 1.0, (96, 96)).astype(np.float32)
    np.testing.assert_array_equal(D.dent_mask(img, 12.0, method="seed"), D.dent_mask(img, 12.0, method="recipe"))
    assert PrepConfig(dent_method="seed").dent_method == "recipe" == PrepConfig().dent_method
