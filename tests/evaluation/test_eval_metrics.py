"""Metrics on cases with known answers: the truth scores perfectly, a 1-px shift gives RMSE 1 px, a filled vacancy
is counted as a hallucination, a removed column as lost."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from data_prep.simulate import Dent, simulate
from stem_denoise.common.errors import InputError
from stem_denoise.evaluation.metrics import (
    PSNR_CAP_DB,
    ColumnTruth,
    column_metrics,
    dent_fidelity,
    disc_sums,
    evaluate,
    intensity_fidelity,
    psnr,
    ssim,
    visible_columns,
)


@pytest.fixture(scope="module")
def sim():
    return simulate(lattice="square", shape=(192, 192), dose=50, vacancy_frac=0.05, heavy_frac=0.05,
                    light_frac=0.05, dents=2, seed=11, angle_deg=23.0)


def truth_cols(res):
    return ColumnTruth(res.columns, res.vacancies, res.period_px, res.params["pixel_size_pm"], res.heavy, res.light)


def add_peak(image, pos, height, sigma):
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return image + height * np.exp(-((yy - pos[0]) ** 2 + (xx - pos[1]) ** 2) / (2 * sigma ** 2))


def interior_index(points, shape, margin):
    p = np.asarray(points)
    ok = (p[:, 0] > margin) & (p[:, 0] < shape[0] - 1 - margin) & (p[:, 1] > margin) & (p[:, 1] < shape[1] - 1 - margin)
    return np.flatnonzero(ok)


def test_truth_scores_perfectly(sim):
    m = evaluate(sim.truth, sim.truth, truth_cols(sim))
    assert m["psnr"] == PSNR_CAP_DB
    assert m["ssim"] == pytest.approx(1.0)
    assert m["n_true"] > 150 and m["n_vacancies"] >= 3
    assert m["f1"] == 1.0 and m["lost"] == 0 and m["fp"] == 0
    assert m["rmse_px"] < 0.08
    assert m["rmse_pm"] == pytest.approx(m["rmse_px"] * sim.params["pixel_size_pm"])
    assert m["hallucinations"] == 0 and m["halluc_peak"] == 0 and m["halluc_intensity"] == 0
    assert m["intensity_corr"] == pytest.approx(1.0)
    assert m["dent_corr"] == pytest.approx(1.0)


def test_one_pixel_shift_gives_rmse_one_pixel(sim):
    shifted = ndimage.shift(sim.truth, (0.0, 1.0), order=1, mode="nearest")
    m = column_metrics(shifted, truth_cols(sim))
    assert m["f1"] == 1.0
    assert m["rmse_px"] == pytest.approx(1.0, abs=0.1)
    diag = ndimage.shift(sim.truth, (2.0, -2.0), order=1, mode="nearest")
    assert column_metrics(diag, truth_cols(sim))["rmse_px"] == pytest.approx(2 * math.sqrt(2), abs=0.15)


def test_shift_beyond_max_dist_loses_every_column(sim):
    far = ndimage.shift(sim.truth, (0.0, 0.5 * sim.period_px), order=1, mode="nearest")
    m = column_metrics(far, truth_cols(sim))
    assert m["f1"] < 0.05
    assert m["lost"] >= 0.95 * m["n_true"]


def test_filled_vacancy_is_counted(sim):
    cols = truth_cols(sim)
    sigma = sim.params["probe_sigma_px"]
    k = interior_index(sim.vacancies, sim.truth.shape, sim.period_px)[0]
    v = sim.vacancies[k]
    thick = float(sim.thickness[int(round(v[0])), int(round(v[1]))])
    filled = add_peak(sim.truth, v, sim.params["dose"] * thick, sigma)
    m = column_metrics(filled, cols, truth_image=sim.truth)
    assert m["hallucinations"] == 1
    assert m["halluc_peak"] == 1 and m["halluc_intensity"] == 1
    assert m["lost"] == 0
    assert m["in_vacuum"] == 0  # a fill inside the lattice is not a column in vacuum
    assert m["vacancy_counts"] == 1  # its counts are a column's
    assert column_metrics(sim.truth, cols, truth_image=sim.truth)["vacancy_counts"] == 0
    # A faint bump (a tenth of a column) at the same site is a peak but not a column-like fill.
    faint = add_peak(sim.truth, v, 0.1 * sim.params["dose"] * thick, sigma)
    assert column_metrics(faint, cols, truth_image=sim.truth)["hallucinations"] == 0


def test_vacancy_counts_measure_what_the_noisy_data_can_tell():
    # At a high dose every vacancy's counts are far from a column's; at a very low one the vacancies of the weak
    # B sublattice (0.3 of an A column) are not.
    def counts(res, image):
        return column_metrics(image, truth_cols(res), truth_image=res.truth)["vacancy_counts"]

    kw = dict(lattice="perovskite", shape=(256, 256), vacancy_frac=0.1, seed=7, angle_deg=12.0)
    high, low = simulate(dose=500, **kw), simulate(dose=1, **kw)
    assert len(high.vacancies) >= 30
    assert counts(high, high.noisy) == 0
    assert counts(low, low.noisy) >= 5
    assert counts(low, low.truth) == 0


def test_column_painted_into_vacuum_is_counted_there():
    res = simulate(lattice="square", shape=(256, 256), dose=50, vacancy_frac=0.0, seed=4, angle_deg=10.0,
                   particle_radius_frac=0.5)
    cols = truth_cols(res)
    clean = column_metrics(res.truth, cols, truth_image=res.truth)
    assert clean["in_vacuum"] == 0  # (the rim may show a part-column or two at vacancy sites: not in vacuum)
    far = (12.0 + res.period_px, 12.0 + res.period_px)  # a corner: the vacuum, far from every column
    assert np.min(np.hypot(*(res.columns - np.array(far)).T)) > 2 * res.period_px
    painted = add_peak(res.truth, far, res.params["dose"], res.params["probe_sigma_px"])
    m = column_metrics(painted, cols, truth_image=res.truth)
    assert m["fp"] == clean["fp"] + 1 and m["in_vacuum"] == 1 and m["lost"] == 0


def test_removed_column_is_lost(sim):
    cols = truth_cols(sim)
    sigma = sim.params["probe_sigma_px"]
    inner = interior_index(sim.columns, sim.truth.shape, sim.period_px)
    i = inner[len(inner) // 2]
    removed = add_peak(sim.truth, sim.columns[i], -sim.column_weight[i] * sim.params["dose"], sigma)
    m = column_metrics(removed, cols, truth_image=sim.truth)
    assert m["lost"] == 1
    assert m["hallucinations"] == 0 and m["fp"] == 0
    assert m["recall"] == pytest.approx((m["n_true"] - 1) / m["n_true"])


def test_psnr_and_ssim_known_values(sim):
    rng = float(sim.truth.max() - sim.truth.min())
    err = 0.01 * rng
    assert psnr(sim.truth + err, sim.truth) == pytest.approx(40.0, abs=1e-3)
    assert ssim(sim.noisy, sim.truth) < ssim(ndimage.gaussian_filter(sim.noisy, 1.0), sim.truth) < 1.0
    with pytest.raises(InputError):
        psnr(sim.truth[:10], sim.truth)
    with pytest.raises(InputError):
        psnr(sim.truth, np.ones_like(sim.truth))


def test_disc_sums_of_constant_image_count_disc_pixels():
    img = np.full((40, 40), 2.0)
    s = disc_sums(img, np.array([[20.0, 20.0], [10.3, 25.7]]), 3.2)
    n = np.sum(np.hypot(*np.mgrid[-4:5, -4:5]) <= 3.2)
    np.testing.assert_allclose(s, 2.0 * n)


def test_intensity_and_dent_fidelity_see_what_was_removed(sim):
    cols = truth_cols(sim)
    dented = simulate(lattice="hex", shape=(160, 160), dose=50, background_slow=0.0, seed=2,
                      dents=[Dent("gaussian", (80.0, 70.0), 60.0, 0.5)])
    flat = dented.truth / dented.thickness  # dent removed: what the reference recipe's stitched GAN did
    assert dent_fidelity(flat, dented.truth, dented.period_px) < 0.5
    assert dent_fidelity(dented.noisy, dented.truth, dented.period_px) > 0.95
    # Every column brought to one height: heavy/light contrast and dent contrast gone from the columns.
    smooth = ndimage.gaussian_filter(sim.truth, sim.period_px)
    assert intensity_fidelity(smooth, sim.truth, cols.columns, sim.period_px) < 0.9
    assert intensity_fidelity(2.0 * sim.truth + 5.0, sim.truth, cols.columns, sim.period_px) == pytest.approx(1.0)


def test_column_truth_validation():
    with pytest.raises(InputError):
        ColumnTruth(np.zeros((1, 2)), np.zeros((0, 2)), 1.0)
    with pytest.raises(InputError):
        ColumnTruth(np.zeros((1, 2)), np.zeros((0, 2)), 12.0, pixel_size_pm=-1.0)


def test_visible_columns_leaves_out_what_the_truth_does_not_show(sim):
    cols = truth_cols(sim)
    visible, hidden = visible_columns(sim.truth, cols)
    assert hidden == 0 and len(visible.columns) == len(cols.columns)
    np.testing.assert_array_equal(visible.heavy, cols.heavy)
    # a truth image in which one listed column does not show: it is left out, and the image scores perfectly
    inner = interior_index(sim.columns, sim.truth.shape, sim.period_px)
    i = int(inner[3])
    faint = add_peak(sim.truth, sim.columns[i], -sim.column_weight[i] * sim.params["dose"],
                     sim.params["probe_sigma_px"])
    visible, hidden = visible_columns(faint, cols)
    assert hidden == 1 and not np.any(np.all(visible.columns == sim.columns[i], axis=1))
    assert column_metrics(faint, visible, truth_image=faint)["f1"] == 1.0
    assert len(visible.heavy) == len(cols.heavy) - int(i in cols.heavy)
    np.testing.assert_array_equal(visible.columns[visible.heavy], cols.columns[np.setdiff1d(cols.heavy, [i])])


def test_noise_left_measures_the_noise_realisation_kept():
    from stem_denoise.evaluation.metrics import noise_left

    rng = np.random.default_rng(0)
    truth = rng.random((64, 64)).astype(np.float32) * 10
    noisy = truth + rng.normal(0, 1, truth.shape).astype(np.float32)
    assert noise_left(noisy, truth, noisy) == pytest.approx(1.0)
    assert noise_left(truth, truth, noisy) == pytest.approx(0.0)
    assert noise_left(0.5 * (noisy + truth), truth, noisy) == pytest.approx(0.5)
    # an output with fresh noise of the same strength looks as noisy but carries none of this realisation
    other = truth + rng.normal(0, 1, truth.shape).astype(np.float32)
    assert abs(noise_left(other, truth, noisy)) < 0.05
