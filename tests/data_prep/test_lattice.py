"""Lattice period/orientation measurement: the accuracy floor on simulated micrographs, conventions, errors."""
import math

import numpy as np
import pytest

from data_prep.lattice import LatticeInfo, angle_difference, fold_angle, lattice_vectors, measure_lattice
from data_prep.simulate import Dent, simulate, synthetic_lattice
from stem_denoise.common.errors import InputError


def _cases(lattice, n, seed):
    """Random (period 6-40 px log-uniform, angle 0-360, dose 3-100 log-uniform, size 384-512) cases.

    The extremes (period 6 and 40, dose 3) are always included.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        period = [6.0, 40.0][i] if i < 2 else float(np.exp(rng.uniform(math.log(6), math.log(40))))
        dose = 3.0 if i in (0, 2) else float(np.exp(rng.uniform(math.log(3), math.log(100))))
        angle = float(rng.uniform(0, 360))
        size = int(rng.choice([384, 448, 512]))
        ratio = float(rng.uniform(1.15, 1.6))
        out.append(pytest.param(lattice, period, dose, angle, size, ratio, 100 * seed + i,
                                id=f"{lattice}-p{period:.1f}-d{dose:.0f}-a{angle:.0f}"))
    return out


FLOOR_CASES = _cases("square", 6, 1) + _cases("rect", 6, 2) + _cases("hex", 6, 3)


@pytest.mark.parametrize("lattice,period,dose,angle,size,ratio,seed", FLOOR_CASES)
def test_floor_period_1pc_angle_half_degree(lattice, period, dose, angle, size, ratio, seed):
    """FLOOR: period error <= 1 %, angle error <= 0.5 deg, with dents, background, scan noise, low dose."""
    r = simulate(lattice=lattice, shape=(size, size), period_px=period, period2_px=ratio * period,
                 angle_deg=angle, dose=dose, dents=2, dent_shapes=("gaussian", "elliptic", "irregular", "ramp"),
                 background=0.15, background_slow=0.1, vacancy_frac=0.02, heavy_frac=0.03, seed=seed)
    m = measure_lattice(r.noisy)
    assert m.lattice == r.lattice
    assert abs(m.period_px - r.period_px) / r.period_px <= 0.01
    assert angle_difference(m.angle_deg, r.angle_deg, r.lattice) <= 0.5
    if lattice == "rect":
        assert abs(m.period2_px - r.period2_px) / r.period2_px <= 0.01
    fold = {"square": 90.0, "hex": 60.0}.get(lattice, 180.0)
    assert 0.0 <= m.angle_deg < fold


def _hand_made_lattice(a1, a2, size=256, sigma=1.5):
    """Gaussian columns at integer combinations of a1, a2 (row, col) -- built without the simulator."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size))
    c = np.array([size / 2.0, size / 2.0])
    n = int(size / min(np.linalg.norm(a1), np.linalg.norm(a2))) + 2
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            p = c + i * np.asarray(a1) + j * np.asarray(a2)
            if -5 < p[0] < size + 5 and -5 < p[1] < size + 5:
                img += np.exp(-((yy - p[0]) ** 2 + (xx - p[1]) ** 2) / (2 * sigma ** 2))
    return img


def test_angle_convention_counter_clockwise_as_displayed():
    """A neighbour up and to the right (row decreases, col increases) at 30 deg reads 30 deg, not 150 or -30."""
    p, t = 14.0, math.radians(30.0)
    a1 = (-p * math.sin(t), p * math.cos(t))  # up-right on screen
    a2 = (-1.5 * p * math.cos(t), -1.5 * p * math.sin(t))  # +90 deg, longer: a rectangular lattice
    m = measure_lattice(_hand_made_lattice(a1, a2))
    assert m.lattice == "rect"
    assert m.period_px == pytest.approx(14.0, rel=1e-3) and m.period2_px == pytest.approx(21.0, rel=1e-3)
    assert m.angle_deg == pytest.approx(30.0, abs=0.05)
    assert m.angle2_deg == pytest.approx(120.0, abs=0.05)


def test_square_is_folded_into_0_90_and_hex_into_0_60():
    p = 12.0
    for angle, expect in ((100.0, 10.0), (185.0, 5.0), (-20.0, 70.0)):
        r = simulate(shape=(256, 256), period_px=p, angle_deg=angle, dose=80.0, seed=1)
        m = measure_lattice(r.noisy)
        assert m.lattice == "square" and m.angle_deg == pytest.approx(expect, abs=0.1)
        assert r.angle_deg == pytest.approx(expect, abs=1e-9)
        assert m.angle2_deg == pytest.approx((expect + 90.0) % 180.0, abs=0.2)
    r = simulate(lattice="hex", shape=(256, 256), period_px=p, angle_deg=75.0, dose=80.0, seed=2)
    m = measure_lattice(r.noisy)
    assert m.lattice == "hex" and m.angle_deg == pytest.approx(15.0, abs=0.1)
    assert m.angle2_deg == pytest.approx(75.0, abs=0.2)
    assert fold_angle(100.0, "square") == 10.0 and fold_angle(-10.0, "hex") == 50.0
    assert fold_angle(190.0, "rect") == 10.0
    assert angle_difference(89.9, 0.1, "square") == pytest.approx(0.2)


def test_lattice_vectors_index_every_column():
    """The measured basis vectors take any column to its neighbours: all columns sit on integer combinations."""
    r = simulate(lattice="hex", shape=(320, 320), period_px=13.0, angle_deg=37.0, dose=60.0, scan_jitter_px=0.0,
                 tear_rate=0.0, seed=4)
    m = measure_lattice(r.noisy)
    a1, a2 = lattice_vectors(m)
    assert np.linalg.norm(a1) == pytest.approx(m.period_px) and np.linalg.norm(a2) == pytest.approx(m.period2_px)
    cross = a1[0] * a2[1] - a1[1] * a2[0]  # x1*y2 - y1*x2 with x = col, y = -row: > 0 when a2 is counter-clockwise
    assert cross > 0
    assert math.degrees(math.acos(a1 @ a2 / (np.linalg.norm(a1) * np.linalg.norm(a2)))) == pytest.approx(60, abs=0.2)
    frac = (r.columns - r.columns[len(r.columns) // 2]) @ np.linalg.inv(np.stack([a1, a2], axis=1)).T
    assert np.abs(frac - np.round(frac)).max() < 0.08
    # a hand-made LatticeInfo (e.g. an explicit angle) gives the vectors its numbers say
    b1, b2 = lattice_vectors(LatticeInfo(10.0, 90.0, 20.0, 0.0, "rect"))
    np.testing.assert_allclose(b1, [-10.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(b2, [0.0, -20.0], atol=1e-9)


def test_perovskite_reports_its_bravais_cell_when_the_sublattices_differ():
    r = simulate(lattice="perovskite", shape=(384, 384), period_px=20.0, angle_deg=12.0, b_weight=0.5, dose=30.0,
                 dents=1, seed=5)
    m = measure_lattice(r.noisy)
    assert (m.lattice, r.lattice) == ("square", "square")
    assert m.period_px == pytest.approx(20.0, rel=0.01) and m.angle_deg == pytest.approx(12.0, abs=0.5)
    # equal A and B columns are one square lattice of spacing a / sqrt(2), turned by 45 degrees
    r = simulate(lattice="perovskite", shape=(384, 384), period_px=20.0, angle_deg=12.0, b_weight=1.0, dose=30.0,
                 seed=5)
    m = measure_lattice(r.noisy)
    assert m.period_px == pytest.approx(20.0 / math.sqrt(2.0), rel=0.01)
    assert m.angle_deg == pytest.approx(57.0, abs=0.5)


def test_robust_to_row_offsets_tearing_drift_and_deep_dents():
    dents = [Dent("ramp", depth=0.6, angle_deg=30.0), Dent("elliptic", (200.0, 200.0), 150.0, 0.7, 0.5, 20.0)]
    for lattice, angle in (("square", 0.0), ("rect", 90.0), ("hex", 30.0)):
        r = simulate(lattice=lattice, shape=(448, 448), period_px=11.0, angle_deg=angle, dose=3.0, dents=dents,
                     row_offset=0.5, tear_rate=10.0, scan_jitter_px=0.3, drift_px=(1.0, 1.0), seed=6)
        m = measure_lattice(r.noisy)
        assert m.lattice == r.lattice
        assert abs(m.period_px / r.period_px - 1.0) <= 0.01
        assert angle_difference(m.angle_deg, r.angle_deg, r.lattice) <= 0.5


def test_large_image_uses_a_centre_crop_and_small_patches_work():
    r = simulate(shape=(1200, 1000), period_px=9.0, angle_deg=21.0, dose=10.0, seed=7)
    m = measure_lattice(r.noisy, max_size=512)
    assert m.period_px == pytest.approx(9.0, rel=0.005) and m.angle_deg == pytest.approx(21.0, abs=0.2)
    # a 64 px patch holding 5 x 5 atoms (period 12.8 px) still measures
    r = simulate(shape=(64, 64), period_px=12.8, angle_deg=10.0, dose=50.0, seed=8)
    m = measure_lattice(r.noisy)
    assert m.period_px == pytest.approx(12.8, rel=0.02) and m.angle_deg == pytest.approx(10.0, abs=1.0)


def test_integer_images_and_the_clean_synthetic_lattice():
    r = simulate(shape=(256, 256), period_px=14.0, angle_deg=5.0, dose=200.0, seed=9)
    m = measure_lattice(r.noisy.astype(np.uint16))
    assert m.period_px == pytest.approx(14.0, rel=0.005)
    for lattice in ("square", "rect", "hex"):
        m = measure_lattice(synthetic_lattice(lattice, period_px=20.0, n_cells=10))
        assert m.lattice == lattice
        assert m.period_px == pytest.approx(20.0, rel=1e-3) and m.angle_deg == pytest.approx(0.0, abs=0.01)


# --- noise-free images: the spectrum's "noise floor" is round-off and window leakage, not noise ----------------
_CLEAN_PERIODS = (6.0, 7.7, 9.5, 12.8, 17.3, 23.1, 31.0, 40.0)
_CLEAN_ANGLES = (0.0, 17.0, 45.0, 90.0, 121.3)
# what each type reports: a perovskite with unequal A and B columns is its a x a square cell
_EXPECTED = {"square": "square", "rect": "rect", "hex": "hex", "perovskite": "square"}


def _check_clean(m, lattice, period, angle, label, period2=None):
    expect = _EXPECTED[lattice]
    assert m.lattice == expect, (label, m)
    assert abs(m.period_px / period - 1.0) <= 0.01, (label, m)
    assert angle_difference(m.angle_deg, angle, expect) <= 0.5, (label, m)
    assert 0.0 <= m.angle_deg < {"square": 90.0, "hex": 60.0}.get(expect, 180.0), (label, m)
    step = 60.0 if expect == "hex" else 90.0  # a2 is the reported a1 turned counter-clockwise
    assert angle_difference(m.angle2_deg, m.angle_deg + step, "rect") <= 0.5, (label, m)
    if period2 is not None:
        assert abs(m.period2_px / period2 - 1.0) <= 0.01, (label, m)


@pytest.mark.parametrize("period", _CLEAN_PERIODS, ids=[f"p{p:g}" for p in _CLEAN_PERIODS])
@pytest.mark.parametrize("lattice", ["square", "rect", "hex", "perovskite"])
def test_clean_synthetic_lattices_period_1pc_angle_half_degree(lattice, period):
    """Every lattice type, periods 6-40 px, 6-12 cells, several angles: period <= 1 %, angle <= 0.5 deg.

    A noise-free image gives the significance test no noise to stand on; the measurement must still work (the
    hex image of 6 rows of 6 px period is only 31 px tall).
    """
    i = _CLEAN_PERIODS.index(period)
    for k in range(3):
        n_cells = 6 + (i + 3 * k) % 7  # every count from 6 to 12 occurs, each period gets three different ones
        angle = _CLEAN_ANGLES[(i + 2 * k) % len(_CLEAN_ANGLES)]
        img = synthetic_lattice(lattice, period_px=period, n_cells=n_cells, angle_deg=angle)
        m = measure_lattice(img)
        _check_clean(m, lattice, period, angle, (n_cells, angle, img.shape),
                     period2=1.4 * period if lattice == "rect" else None)


def test_reported_clean_squares_measure():
    """The clean squares once reported as 'fewer than two non-collinear Bragg peaks' and as 'oblique, 6.9 px'."""
    for period, n_cells in ((17.3, 10), (12.8, 10), (40.0, 6)):
        m = measure_lattice(synthetic_lattice("square", period_px=period, n_cells=n_cells))
        _check_clean(m, "square", period, 0.0, (period, n_cells))


@pytest.mark.parametrize(
    "period,n_cells,angle,sigma,b_weight",
    [
        (10.2, 9, 90.0, 2.0, 0.7),  # broad columns, faint A/B contrast, cell axes along the scan: the first-order
        (8.3, 10, 0.0, 1.2, 0.7),  # peaks of the a x a cell sit on the k_x = 0 line of the spectrum
        (12.9, 12, 0.0, 2.3, 0.7),
        (20.0, 12, 90.0, 0.94, 0.3),  # sharp columns: many harmonics as strong as the cell's first orders
        (38.6, 10, 45.0, 2.06, 0.3),
        (16.1, 12, 45.0, 0.94, 0.3),
        (14.0, 8, 27.0, None, 0.7),
        (24.0, 7, 63.0, None, 0.3),
    ],
)
def test_clean_perovskite_reports_its_cell_whatever_the_column_shape(period, n_cells, angle, sigma, b_weight):
    """A clean perovskite with unequal A and B columns is its a x a square cell, also through the prepare step's
    call (normalised image, periods up to a crop size / 2.5 searched directly)."""
    img = synthetic_lattice("perovskite", period_px=period, n_cells=n_cells, angle_deg=angle, probe_sigma_px=sigma,
                            b_weight=b_weight)
    _check_clean(measure_lattice(img), "perovskite", period, angle, "default")
    x = (img - img.min()) / (img.max() - img.min())
    _check_clean(measure_lattice(x, max_period_px=min(x.shape) / 2.5), "perovskite", period, angle, "max_period")


def test_clean_lattices_in_other_units_and_dtypes():
    """The same clean image as uint8, uint16, or float in counts on an offset measures the same."""
    for lattice, period, n_cells, angle in (("square", 12.8, 10, 0.0), ("hex", 9.5, 8, 45.0),
                                            ("rect", 7.7, 12, 90.0), ("perovskite", 17.3, 6, 17.0)):
        img = synthetic_lattice(lattice, period_px=period, n_cells=n_cells, angle_deg=angle)
        scaled = img / img.max()
        for name, x in (("uint8", np.round(scaled * 255).astype(np.uint8)),
                        ("uint16", np.round(scaled * 60000).astype(np.uint16)),
                        ("counts", 1000.0 + 3e4 * img.astype(np.float64))):
            _check_clean(measure_lattice(x), lattice, period, angle, (lattice, name),
                         period2=1.4 * period if lattice == "rect" else None)


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).poisson(5.0, (256, 256)).astype(np.float64),  # noise, no lattice
        np.full((128, 128), 3.0),  # constant
        np.zeros((16, 300)),  # too small
        np.ones(1000),  # 1-D
        np.array([["a"] * 64] * 64),  # not numbers
    ],
    ids=["noise", "constant", "small", "1d", "strings"],
)
def test_no_lattice_or_bad_input_raises_input_error(image):
    with pytest.raises(InputError):
        measure_lattice(image)


def test_smooth_or_textured_images_without_a_lattice_raise():
    """A clean thickness map, smooth blobs, ring-band noise and a 1-D grating are not 2-D lattices."""
    rng = np.random.default_rng(3)
    n = 384
    yy, xx = np.mgrid[0:n, 0:n]
    thickness = simulate(shape=(n, n), dents=3, dent_shapes=("irregular", "elliptic"), seed=1).thickness
    blobs = sum(np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * r * r))
                for c, r in zip(rng.uniform(0, n, (40, 2)), rng.uniform(5, 25, 40)))
    k = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    band = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * np.exp(-((k - 1 / 12) ** 2) / 5e-5)))
    grating = np.cos(2 * np.pi * (xx * 0.6 + yy * 0.8) / 13) + rng.normal(0, 1, (n, n))
    for img in (thickness, blobs, rng.poisson(5 + 20 * blobs).astype(float), band, grating):
        with pytest.raises(InputError, match="no lattice"):
            measure_lattice(img)


def test_nan_raises_input_error():
    img = simulate(shape=(128, 128), seed=1).noisy.copy()
    img[5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        measure_lattice(img)
