"""Tests of the shared column finder and matcher against lattices with known column positions."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stem_denoise.common.columns import find_columns, match_columns
from stem_denoise.common.errors import InputError


def render_lattice(shape=(160, 160), period=12.8, angle=17.0, sigma=1.6, kind="square", offset=(0.31, 0.17),
                   vacancy_frac=0.0, light_frac=0.0, dent=False, background=0.1, seed=0):
    """Sum of Gaussian columns (peak 1, light ones 0.5) on a square or hexagonal lattice; returns
    ``(image, present_positions, vacancy_positions)`` with positions (row, col) in pixels."""
    rng = np.random.default_rng(seed)
    h, w = shape
    a = np.deg2rad(angle)
    v1 = np.array([-np.sin(a), np.cos(a)]) * period
    b = a + (np.pi / 2 if kind == "square" else np.pi / 3)
    v2 = np.array([-np.sin(b), np.cos(b)]) * period
    n = int(2 * max(h, w) / period) + 4
    i, j = np.meshgrid(np.arange(-n, n), np.arange(-n, n), indexing="ij")
    pos = i.reshape(-1, 1) * v1 + j.reshape(-1, 1) * v2 + np.array([h / 2 + offset[0], w / 2 + offset[1]])
    keep = ((pos[:, 0] > -4 * sigma) & (pos[:, 0] < h + 4 * sigma)
            & (pos[:, 1] > -4 * sigma) & (pos[:, 1] < w + 4 * sigma))
    pos = pos[keep]
    vac = rng.random(len(pos)) < vacancy_frac
    weight = np.where(rng.random(len(pos)) < light_frac, 0.5, 1.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full(shape, background)
    r = int(np.ceil(5 * sigma))
    for (pr, pc), wt, v in zip(pos, weight, vac):
        if v:
            continue
        r0, r1 = max(0, int(pr) - r), min(h, int(pr) + r + 2)
        c0, c1 = max(0, int(pc) - r), min(w, int(pc) + r + 2)
        if r0 >= r1 or c0 >= c1:
            continue
        d2 = (yy[r0:r1, c0:c1] - pr) ** 2 + (xx[r0:r1, c0:c1] - pc) ** 2
        img[r0:r1, c0:c1] += wt * np.exp(-d2 / (2 * sigma ** 2))
    if dent:
        img *= 1 - 0.6 * np.exp(-((yy - 0.45 * h) ** 2 + (xx - 0.55 * w) ** 2) / (2 * (h / 6) ** 2))
    return img, pos[~vac], pos[vac]


def interior(points, shape, margin):
    p = np.asarray(points).reshape(-1, 2)
    m = ((p[:, 0] >= margin) & (p[:, 0] <= shape[0] - 1 - margin)
         & (p[:, 1] >= margin) & (p[:, 1] <= shape[1] - 1 - margin))
    return p[m]


def score(found, truth, shape, period):
    found = interior(found, shape, period / 2)
    truth = interior(truth, shape, period / 2)
    fi, ti, d = match_columns(found, truth, period / 3)
    precision = len(fi) / max(1, len(found))
    recall = len(ti) / max(1, len(truth))
    f1 = 2 * precision * recall / max(1e-12, precision + recall)
    return f1, float(np.sqrt(np.mean(d ** 2))) if len(d) else np.inf


@pytest.mark.parametrize("kind,period,angle", [("square", 12.8, 17.0), ("hex", 12.8, 41.0), ("square", 7.0, 3.0),
                                               ("hex", 24.0, 75.0)])
def test_clean_lattice_found_exactly(kind, period, angle):
    img, cols, _ = render_lattice(kind=kind, period=period, angle=angle, sigma=period / 8)
    f1, rmse = score(find_columns(img, period), cols, img.shape, period)
    assert f1 == 1.0
    assert rmse < 0.06  # sub-pixel refinement, not integer peaks (integer peaks give ~0.4 px)


def test_refinement_beats_integer_peaks():
    img, cols, _ = render_lattice()
    _, rmse_int = score(find_columns(img, 12.8, refine=False), cols, img.shape, 12.8)
    _, rmse_ref = score(find_columns(img, 12.8), cols, img.shape, 12.8)
    assert rmse_int > 0.25
    assert rmse_ref < rmse_int / 5


@pytest.mark.parametrize("kind", ["square", "hex"])
def test_high_dose_poisson_f1_near_one(kind):
    img, cols, _ = render_lattice(kind=kind, seed=3)
    noisy = np.random.default_rng(1).poisson(img * 100.0).astype(np.float32)
    f1, rmse = score(find_columns(noisy, 12.8), cols, img.shape, 12.8)
    assert f1 >= 0.99
    assert rmse < 0.15


def test_columns_in_dent_and_light_columns_found_vacancies_not():
    img, cols, vac = render_lattice(dent=True, light_frac=0.3, vacancy_frac=0.06, seed=5)
    assert len(interior(vac, img.shape, 6.4)) >= 5
    found = find_columns(img, 12.8)
    f1, _ = score(found, cols, img.shape, 12.8)
    assert f1 == 1.0
    near_vacancy = match_columns(found, vac, 12.8 / 3)[0]
    assert len(near_vacancy) == 0


@pytest.mark.parametrize("edge", [80, 30])
def test_vacuum_ripples_are_not_columns_but_columns_painted_in_vacuum_are(edge):
    # A crystal on the left, vacuum on the right holding a smooth ripple of up to 4 % of a column's peak (what a
    # denoiser leaves in vacuum) and three painted columns of 35 % of a column's peak. With edge 30 the vacuum holds
    # most of the image's maxima.
    img, cols, _ = render_lattice(shape=(192, 192), seed=3)
    yy, xx = np.mgrid[0:192, 0:192].astype(np.float64)
    crystal = xx < edge
    img = np.where(crystal, img, 0.1)
    cols = cols[cols[:, 1] < edge - 3 * 1.6]
    rng = np.random.default_rng(0)
    from scipy import ndimage

    ripple = ndimage.gaussian_filter(rng.standard_normal(img.shape), 2.0)
    img = img + np.where(crystal, 0.0, 0.04 * ripple / np.abs(ripple[:, 100:]).max())
    painted = np.array([[40.0, 140.0], [96.0, 160.0], [150.0, 120.0]])
    for r, c in painted:
        img = img + 0.35 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 1.6 ** 2))
    found = find_columns(img, 12.8)
    in_vacuum = found[found[:, 1] > edge + 12.8]
    assert len(in_vacuum) == 3
    assert len(match_columns(in_vacuum, painted, 2.0)[0]) == 3
    f1, _ = score(found[found[:, 1] < edge - 3 * 1.6], cols, img.shape, 12.8)
    assert f1 >= 0.99


def test_invariant_to_gain_and_offset():
    img, _, _ = render_lattice(seed=2)
    a = find_columns(img, 12.8)
    b = find_columns(1234.0 * img - 77.0, 12.8)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bad_inputs_raise_input_error():
    img, _, _ = render_lattice(shape=(64, 64))
    with pytest.raises(InputError):
        find_columns(np.stack([img, img]), 12.8)
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError):
        find_columns(bad, 12.8)
    with pytest.raises(InputError):
        find_columns(img, 1.0)
    with pytest.raises(InputError):
        find_columns(img, 12.8, threshold_rel=-1)
    with pytest.raises(InputError):
        match_columns(np.zeros((1, 2)), np.zeros((1, 2)), 0.0)


def test_flat_image_has_no_columns():
    assert find_columns(np.ones((64, 64)), 12.8).shape == (0, 2)


def test_match_one_to_one_and_max_cardinality():
    # Greedy nearest-first would pair f0-t0 and leave f1 alone; the optimum pairs both.
    found = np.array([[0.0, 0.1], [0.0, -0.4]])
    truth = np.array([[0.0, 0.0], [0.0, 0.6]])
    fi, ti, d = match_columns(found, truth, 0.55)
    assert sorted(zip(fi.tolist(), ti.tolist())) == [(0, 1), (1, 0)]
    np.testing.assert_allclose(d, [0.4, 0.5])
    # Two found near one truth: only one pair; nothing beyond max_dist.
    fi, ti, d = match_columns(np.array([[0.0, 0.1], [0.0, -0.1], [5.0, 5.0]]), np.array([[0.0, 0.0]]), 1.0)
    assert len(fi) == 1 and ti.tolist() == [0] and d[0] == pytest.approx(0.1)
    empty = match_columns(np.zeros((0, 2)), truth, 1.0)
    assert all(len(x) == 0 for x in empty)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_match_recovers_permutation_of_jittered_points(n, seed):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(20), indexing="ij"), -1).reshape(-1, 2)[:n] * 10.0
    perm = rng.permutation(n)
    found = grid[perm] + rng.uniform(-2, 2, size=(n, 2))
    fi, ti, d = match_columns(found, grid, 10.0 / 3)
    assert len(ti) == n
    assert np.array_equal(perm[fi], ti)
    assert np.all(d <= 10.0 / 3)


def test_match_scales_to_many_columns():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(160), np.arange(160), indexing="ij"), -1).reshape(-1, 2) * 12.8
    found = grid + rng.normal(0, 0.5, grid.shape)
    fi, ti, d = match_columns(found, grid, 12.8 / 3)
    assert len(fi) == len(grid)
    assert np.sqrt(np.mean(d ** 2)) == pytest.approx(0.5 * np.sqrt(2), rel=0.05)


@pytest.mark.parametrize("lattice", ["square", "rect", "hex", "perovskite"])
def test_simulated_micrographs_all_lattices(lattice):
    """The project's simulator (scan distortion, tears, dents, heavy/light columns, correlated noise): every column
    of the noise-free truth is found, and at high dose the noisy image gives F1 ~ 1."""
    from data_prep.simulate import simulate

    res = simulate(lattice=lattice, shape=(160, 160), dose=200, vacancy_frac=0.04, heavy_frac=0.05,
                   light_frac=0.05, dents=2, seed=9, angle_deg=27.0)
    f1_truth, rmse_truth = score(find_columns(res.truth, res.period_px), res.columns, res.truth.shape, res.period_px)
    assert f1_truth == 1.0 and rmse_truth < 0.1
    f1_noisy, rmse_noisy = score(find_columns(res.noisy, res.period_px), res.columns, res.truth.shape, res.period_px)
    assert f1_noisy >= 0.99 and rmse_noisy < 0.25
    assert len(match_columns(find_columns(res.truth, res.period_px), res.vacancies, res.period_px / 3)[0]) == 0
