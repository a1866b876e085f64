"""The STEM simulator: geometry, intensities, defects, dents, scan distortion, noise model, files."""
import json
import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from data_prep.io import read_micrograph
from data_prep.simulate import (
    Dent,
    SimParams,
    lattice_basis,
    load_simulation,
    save_simulation,
    simulate,
    synthetic_lattice,
)
from stem_denoise.common.errors import ConfigError, InputError

# a clean, undistorted setting in which every number is known
CLEAN = dict(noise=False, background=0.0, background_slow=0.0, scan_jitter_px=0.0, tear_rate=0.0)


def _lag1(e):
    e = e - e.mean()
    v = (e * e).mean()
    return float((e[:, 1:] * e[:, :-1]).mean() / v), float((e[1:, :] * e[:-1, :]).mean() / v)


def _peak_near(img, rc, r=1):
    i, j = int(round(rc[0])), int(round(rc[1]))
    return float(img[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].max())


def test_same_seed_same_output_and_other_seed_differs():
    kw = dict(shape=(96, 128), dents=2, vacancy_frac=0.05, heavy_frac=0.05, tear_rate=20, seed=7)
    a, b = simulate(**kw), simulate(**kw)
    assert np.array_equal(a.noisy, b.noisy) and np.array_equal(a.truth, b.truth)
    assert np.array_equal(a.columns, b.columns) and np.array_equal(a.vacancies, b.vacancies)
    assert a.params == b.params
    c = simulate(**{**kw, "seed": 8})
    assert not np.array_equal(a.noisy, c.noisy)


def test_params_round_trip_through_json_reproduce_the_image():
    r = simulate(shape=(80, 80), dents=2, position_noise_px=0.2, tear_rate=30, vacancy_frac=0.1, seed=3)
    p = SimParams.from_dict(json.loads(json.dumps(r.params)))
    r2 = simulate(p)
    assert np.array_equal(r.noisy, r2.noisy) and np.array_equal(r.columns, r2.columns)


@pytest.mark.parametrize(
    "bad,expected",
    [
        (dict(lattice="cubic"),
         "lattice: expected one of 'square', 'rect', 'hex', 'perovskite' or 'honeycomb', got 'cubic'"),
        (dict(dose=-1.0), "dose must be > 0.0, got -1.0"),
        (dict(dose="5"), "dose: expected a number, got str '5'"),
        (dict(period_px=1.0), "period_px must be >= 2.0, got 1.0"),
        (dict(shape=(4, 100)), "shape[0] must be >= 8, got 4"),
        (dict(shape=(64.5, 64)), "shape[0]: expected an integer, got float 64.5"),
        (dict(vacancy_frac=0.7, heavy_frac=0.5), "vacancy_frac + heavy_frac + light_frac must be <= 1"),
        (dict(dents=[{"shape": "gaussian", "center": [10, 10], "radius_px": 5, "depth": 1.5}]),
         "dents[0].depth must be < 1.0, got 1.5"),
        (dict(dents=[{"shape": "blob"}]), "dents[0].shape: expected one of"),
        (dict(dents=[{"shape": "gaussian", "size": 3}]), "dents[0]: unknown key 'size'"),
        (dict(dents=True), "dents: expected an integer, got bool True"),
        (dict(noise_corr_row=0.8), "noise_corr_row must be <= 0.45, got 0.8"),
        (dict(dent_shapes=("square",), dents=1), "dent_shapes[0]: expected one of"),
        (dict(dent_depth=(0.5, 0.2)), "dent_depth must be [low, high] with low <= high"),
        (dict(seed=-1), "seed must be >= 0, got -1"),
        (dict(angle_deg=float("inf")), "angle_deg: expected a finite number"),
        (dict(dose_max=3), "unknown key 'dose_max'; known keys: lattice, shape,"),
    ],
)
def test_bad_parameters_raise_one_line_config_error_naming_the_key(bad, expected):
    with pytest.raises(ConfigError) as info:
        simulate(**{"shape": (64, 64), **bad})
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    with pytest.raises(ConfigError) as again:
        SimParams.from_dict({"shape": [64, 64], **bad})
    assert str(again.value) == str(info.value)
    assert issubclass(ConfigError, InputError)


def test_dents_are_checked_when_made_and_params_when_changed():
    with pytest.raises(ConfigError, match=r"^depth must be < 1.0, got 1.5$"):
        Dent("gaussian", (10, 10), 5, depth=1.5)
    with pytest.raises(ConfigError, match="wobble and phases"):
        Dent("irregular", wobble=(0.1,))
    p = SimParams(shape=(64, 64), dents=1)
    with pytest.raises(ConfigError, match=r"^dose must be > 0.0, got 0.0$"):
        p.dose = 0.0
    assert p.dose == 100.0 and p.replace(seed=3).seed == 3 and p.seed == 0
    schema = SimParams.model_json_schema()
    assert schema["additionalProperties"] is False and schema["properties"]["dose"]["exclusiveMinimum"] == 0


def test_dose_is_the_expected_count_at_a_nominal_column_peak():
    dose = 37.0
    r = simulate(shape=(96, 96), period_px=16.0, probe_sigma_px=1.5, dose=dose, origin=(8.0, 8.0), **CLEAN)
    assert r.truth.dtype == np.float32 and r.noisy.dtype == np.float32
    # columns sit exactly on pixel centres here; isolated peaks (period >> sigma) reach the dose
    peaks = [r.truth[int(round(y)), int(round(x))] for y, x in r.columns]
    np.testing.assert_allclose(peaks, dose, rtol=1e-3)
    np.testing.assert_allclose(r.column_weight, 1.0)
    # background adds dose * background at thickness 1
    rb = simulate(shape=(96, 96), period_px=16.0, probe_sigma_px=1.5, dose=dose, origin=(8.0, 8.0),
                  **{**CLEAN, "background": 0.2})
    assert float(rb.truth.min()) == pytest.approx(0.2 * dose, rel=1e-3)


@pytest.mark.parametrize("lattice", ["square", "rect", "hex", "perovskite"])
def test_columns_lie_on_the_lattice_with_the_right_density(lattice):
    h = w = 160
    period, angle = 11.0, 23.0
    r = simulate(lattice=lattice, shape=(h, w), period_px=period, period2_px=15.0, angle_deg=angle, **CLEAN)
    a1, a2, motif = lattice_basis(lattice, period, angle, 15.0)
    basis = np.stack([a1, a2], axis=1)
    frac = (r.columns - r.columns[0]) @ np.linalg.inv(basis).T
    allowed = np.array([[m[0], m[1]] for m in motif])
    frac_mod = frac % 1.0
    dist = np.min(np.abs(((frac_mod[:, None, :] - allowed[None, :, :]) + 0.5) % 1.0 - 0.5).max(axis=2), axis=1)
    assert dist.max() < 1e-6
    cell = abs(np.linalg.det(basis))
    expected = h * w / cell * len(motif)
    assert abs(len(r.columns) - expected) < 0.06 * expected
    assert np.all((r.columns >= -0.5) & (r.columns <= h - 0.5))
    # nearest-neighbour spacing: period for square/rect/hex, a/sqrt(2) (A-B) for the perovskite cell
    d, _ = cKDTree(r.columns).query(r.columns, k=2)
    nn = period / math.sqrt(2.0) if lattice == "perovskite" else period
    np.testing.assert_allclose(np.median(d[:, 1]), nn, rtol=1e-6)


def test_perovskite_has_two_sublattices_of_given_weights():
    r = simulate(lattice="perovskite", shape=(128, 128), period_px=16.0, b_weight=0.4, **CLEAN)
    w = np.round(r.column_weight, 6)
    assert set(np.unique(w)) == {0.4, 1.0}
    assert abs((w == 1.0).sum() - (w == 0.4).sum()) < 0.1 * len(w)


def test_honeycomb_has_two_unequal_sublattices_a_period_over_root_three_apart():
    r = simulate(lattice="honeycomb", shape=(160, 160), period_px=18.0, b_weight=0.45, probe_sigma_px=1.5,
                 angle_deg=10.0, **CLEAN)
    w = np.round(r.column_weight, 6)
    strong, weak = r.columns[w == 1.0], r.columns[w == 0.45]
    assert set(np.unique(w)) == {0.45, 1.0} and abs(len(strong) - len(weak)) < 0.1 * len(w)
    d_sw, _ = cKDTree(strong).query(weak)  # every weak column's nearest strong one: a / sqrt(3)
    inner = np.all((weak > 20) & (weak < 140), axis=1)
    np.testing.assert_allclose(d_sw[inner], 18.0 / math.sqrt(3.0), rtol=1e-3)
    d_ss, _ = cKDTree(strong).query(strong, k=2)  # the strong sublattice alone is the hexagonal Bravais net
    np.testing.assert_allclose(np.median(d_ss[:, 1]), 18.0, rtol=1e-3)
    assert r.lattice == "hex" and r.period_px == pytest.approx(18.0)
    assert SimParams(lattice="honeycomb", period_px=18.0).resolved_sigma() == pytest.approx(0.11 * 18 / math.sqrt(3))


def test_nanoparticle_has_vacuum_around_it_and_lists_the_vacuum_sites_as_vacancies():
    kw = dict(shape=(192, 192), period_px=12.0, probe_sigma_px=1.4, dose=40.0, particle_radius_frac=0.6,
              background=0.1, background_slow=0.05, noise=False, scan_jitter_px=0.0, tear_rate=0.0)
    r = simulate(**kw)
    centre, radius = np.array([95.5, 95.5]), 0.6 * 96
    dist = np.hypot(*(r.columns - centre).T)
    assert dist.max() <= radius + 0.5 and len(r.columns) > 50
    vac_dist = np.hypot(*(r.vacancies - centre).T)
    assert (vac_dist > radius).sum() > 50  # the vacuum's lattice sites are there to count painted columns
    yy, xx = np.mgrid[0:192, 0:192]
    far = np.hypot(yy - 95.5, xx - 95.5) > radius + 12  # beyond the rim and the last columns' tails
    assert np.all(r.truth[far] == 0.0)  # vacuum: no column, no background
    assert r.truth[~far].mean() > 0.1 * 40.0 * 0.5
    full = simulate(**{**kw, "particle_radius_frac": None})
    assert len(full.columns) > 1.5 * len(r.columns) and len(full.vacancies) == 0


def test_vacancies_heavy_and_light_columns():
    kw = dict(shape=(192, 192), period_px=12.0, probe_sigma_px=1.4, vacancy_frac=0.1, heavy_frac=0.1,
              light_frac=0.1, heavy_factor=1.8, light_factor=0.5, dose=50.0, **CLEAN)
    r = simulate(**kw)
    n_sites = len(r.columns) + len(r.vacancies)
    assert 0.05 * n_sites < len(r.vacancies) < 0.15 * n_sites
    assert 0.05 * n_sites < len(r.heavy) < 0.15 * n_sites and 0.05 * n_sites < len(r.light) < 0.15 * n_sites
    assert not set(r.heavy) & set(r.light)
    np.testing.assert_allclose(r.column_weight[r.heavy], 1.8)
    np.testing.assert_allclose(r.column_weight[r.light], 0.5)
    # vacancies are lattice sites with no column: no column within half a period, nothing bright there
    d, _ = cKDTree(r.columns).query(r.vacancies)
    np.testing.assert_allclose(d.min(), 12.0, rtol=1e-6)
    inner = r.vacancies[np.all((r.vacancies > 3) & (r.vacancies < 189), axis=1)]
    assert max(_peak_near(r.truth, v) for v in inner) < 0.05 * 50.0
    heavy_peaks = [_peak_near(r.truth, r.columns[i]) for i in r.heavy]
    light_peaks = [_peak_near(r.truth, r.columns[i]) for i in r.light]
    assert min(heavy_peaks) > 1.6 * 50.0 and max(light_peaks) < 0.6 * 50.0


def test_dents_thin_the_specimen_and_scale_column_intensity():
    dent = Dent("gaussian", center=(100.0, 100.0), radius_px=60.0, depth=0.4)
    r = simulate(shape=(200, 200), period_px=10.0, dents=[dent], dose=40.0, **{**CLEAN, "background": 0.1})
    assert r.thickness.min() == pytest.approx(0.6, abs=0.01)
    assert abs(float(r.thickness[100, 100]) - 0.6) < 0.01 and float(r.thickness[0, 0]) > 0.98
    # column weight follows the thickness at the column
    i_c = np.argmin(np.hypot(*(r.columns - 100.0).T))
    assert r.column_weight[i_c] == pytest.approx(1.0 - 0.4 * math.exp(-np.sum((r.columns[i_c] - 100) ** 2) / 1800),
                                                 rel=1e-6)
    # the diffuse background scales too: the darkest pixels in the dent are 0.6 x the darkest far away
    assert float(r.truth[95:106, 95:106].min()) == pytest.approx(0.6 * float(r.truth[:12, :12].min()), rel=0.03)


@pytest.mark.parametrize("shape", ["gaussian", "elliptic", "irregular", "ramp"])
@pytest.mark.parametrize("seed", [3, 5])
def test_each_dent_shape_is_smooth_and_bounded(shape, seed):
    r = simulate(shape=(160, 160), dents=1, dent_shapes=(shape,), dent_depth=(0.3, 0.3), seed=seed, **CLEAN)
    t = r.thickness.astype(np.float64)
    assert t.min() == pytest.approx(0.7, abs=0.02) and t.max() <= 1.0 + 1e-6
    assert r.params["dents"][0]["shape"] == shape
    # smooth on the lattice scale: the rim is at least 1.5 periods wide, so the steepest slope is at most about
    # that of a cosine step of the full depth over 1.5 periods
    edge = 1.5 * r.params["period_px"]
    steepest = 0.3 * math.pi / (2.0 * edge)
    assert max(np.abs(np.diff(t, axis=0)).max(), np.abs(np.diff(t, axis=1)).max()) < 1.3 * steepest
    if shape == "ramp":  # a thickness gradient: thickness changes monotonically along one direction
        assert (t < 0.99).mean() > 0.5


def test_random_dents_are_recorded_and_within_bounds():
    r = simulate(shape=(128, 128), dents=3, dent_shapes=("gaussian", "elliptic", "irregular"), seed=2,
                 dent_depth=(0.2, 0.5), **CLEAN)
    assert len(r.params["dents"]) == 3
    assert all(0.2 <= d["depth"] <= 0.5 for d in r.params["dents"])
    assert r.thickness.min() < 0.9


def test_scan_distortion_column_positions_are_where_the_peaks_appear():
    """Returned positions match the intensity centroid of the rendered (distorted) truth around each column."""
    r = simulate(shape=(160, 160), period_px=16.0, angle_deg=20.0, probe_sigma_px=1.6, scan_jitter_px=0.5,
                 drift_px=(6.0, 8.0), scan_sine_px=1.0, tear_rate=20.0, noise=False, background=0.0,
                 background_slow=0.0)
    assert r.params["derived"]["tears"]
    img = r.truth.astype(np.float64)
    R = 5
    errs = []
    for y, x in r.columns:
        i, j = int(round(y)), int(round(x))
        if i - R < 0 or j - R - 3 < 0 or i + R >= 160 or j + R + 3 >= 160:
            continue
        win = img[i - R:i + R + 1, j - R - 3:j + R + 4]
        yy, xx = np.mgrid[i - R:i + R + 1, j - R - 3:j + R + 4]
        errs.append([(win * yy).sum() / win.sum() - y, (win * xx).sum() / win.sum() - x])
    errs = np.asarray(errs)
    assert len(errs) > 40
    assert np.sqrt((errs ** 2).mean()) < 0.05
    # and the distortion is real: the positions are not on a perfect lattice any more
    undistorted = simulate(shape=(160, 160), period_px=16.0, angle_deg=20.0, probe_sigma_px=1.6, **CLEAN)
    d, _ = cKDTree(undistorted.columns).query(r.columns)
    assert np.median(d) > 0.2


def test_noise_is_poisson_at_the_dose_when_white():
    r = simulate(shape=(256, 256), dose=30.0, noise_corr_row=0.0, noise_corr_col=0.0, row_offset=0.0,
                 read_noise=0.0, quantize=False, seed=1)
    e = r.noisy.astype(np.float64) - r.truth
    assert abs(e.mean()) < 0.02 * r.truth.mean()
    assert float((e ** 2).mean()) == pytest.approx(float(r.truth.mean()), rel=0.03)
    row, col = _lag1(e)
    assert abs(row) < 0.02 and abs(col) < 0.02


def test_default_noise_has_the_measured_real_correlations():
    """DESIGN: fast-scan neighbour correlation 0.23-0.33, about -0.1 down the columns; row offsets; integers."""
    for dose in (5.0, 100.0):
        r = simulate(shape=(256, 256), dose=dose, seed=2)
        e = r.noisy.astype(np.float64) - r.truth
        row, col = _lag1(e)
        assert 0.23 <= row <= 0.33, (dose, row)
        assert -0.15 <= col <= -0.05, (dose, col)
        assert np.array_equal(r.noisy, np.round(r.noisy))  # quantised


@pytest.mark.parametrize("rho_row,rho_col", [(0.4, -0.3), (0.1, 0.2)])
def test_noise_correlations_follow_the_parameters(rho_row, rho_col):
    r = simulate(shape=(256, 256), dose=60.0, noise_corr_row=rho_row, noise_corr_col=rho_col, row_offset=0.0,
                 quantize=False, seed=3)
    row, col = _lag1(r.noisy.astype(np.float64) - r.truth)
    assert row == pytest.approx(rho_row, abs=0.03) and col == pytest.approx(rho_col, abs=0.03)


def test_row_offsets_and_gain():
    r = simulate(shape=(256, 256), dose=50.0, row_offset=0.2, noise_corr_row=0.0, noise_corr_col=0.0,
                 quantize=False, seed=4)
    e = r.noisy.astype(np.float64) - r.truth
    expected = 0.2 * float(r.truth.mean())
    assert float(e.mean(axis=1).std()) == pytest.approx(expected, rel=0.2)
    g = simulate(shape=(64, 64), dose=50.0, gain=2.0, seed=4)
    g1 = simulate(shape=(64, 64), dose=50.0, gain=1.0, seed=4)
    np.testing.assert_allclose(g.truth, 2.0 * g1.truth, rtol=1e-6)


def test_low_dose_counts_are_small_integers():
    r = simulate(shape=(128, 128), dose=3.0, read_noise=0.0, row_offset=0.0, seed=5)
    assert r.truth.max() < 3.0 * 1.6
    assert np.array_equal(r.noisy, np.round(r.noisy))
    assert float(np.median(r.noisy)) <= 2.0


def test_save_and_load_round_trip(tmp_path):
    r = simulate(shape=(70, 90), dents=1, vacancy_frac=0.1, heavy_frac=0.1, light_frac=0.1, seed=9,
                 pixel_size_pm=12.5)
    paths = save_simulation(r, tmp_path, "s1")
    assert {p.name for p in paths.values()} == {"s1.tif", "s1_truth.tif", "s1_thickness.tif", "s1.json"}
    img, meta = read_micrograph(paths["noisy"])
    assert meta.pixel_size_in("pm") == pytest.approx(12.5)
    np.testing.assert_array_equal(img, r.noisy)
    back = load_simulation(paths["json"])
    for f in ("noisy", "truth", "thickness"):
        np.testing.assert_array_equal(getattr(back, f), getattr(r, f))
    for f in ("columns", "vacancies", "column_weight"):
        np.testing.assert_allclose(getattr(back, f), getattr(r, f), atol=1e-4)
    for f in ("heavy", "light"):
        np.testing.assert_array_equal(getattr(back, f), getattr(r, f))
    assert (back.period_px, back.angle_deg, back.lattice) == (r.period_px, r.angle_deg, r.lattice)
    doc = json.loads(paths["json"].read_text())
    assert doc["pixel_size_pm"] == 12.5 and doc["params"]["seed"] == 9
    with pytest.raises(InputError):
        save_simulation(r, tmp_path, "s1", overwrite=False)
    with pytest.raises(InputError):
        save_simulation(r, tmp_path / "missing", "s1")
    with pytest.raises(InputError):
        load_simulation(tmp_path / "s1_truth.tif")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError):
        load_simulation(tmp_path / "bad.json")


@pytest.mark.parametrize("lattice", ["square", "rect", "hex", "perovskite"])
def test_synthetic_lattice_is_clean_and_normalised(lattice):
    img = synthetic_lattice(lattice, period_px=16.0, n_cells=6)
    assert img.dtype == np.float32 and img.ndim == 2
    assert float(img.max()) == pytest.approx(1.0, abs=0.01) and float(img.min()) >= 0.0
    assert img.shape[1] == 96
    if lattice in ("square", "perovskite"):
        # whole unit cells at angle 0: the image repeats across its borders
        np.testing.assert_allclose(np.roll(img, 16, axis=1), img, atol=1e-5)
        np.testing.assert_allclose(np.roll(img, 16, axis=0), img, atol=1e-5)
