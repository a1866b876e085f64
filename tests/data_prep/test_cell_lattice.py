"""Domain B from the micrographs' own unit-cell average (data_prep/cell_lattice.py), with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from data_prep.cell_lattice import CellAverageLattice, CellAverageSource
from data_prep.lattice import measure_lattice
from data_prep.patches import PrepConfig, lattice_patches, prepare_dataset
from stem_denoise.common.errors import InputError
from stem_denoise.evaluation.realframes import cell_sites

PEROVSKITE = [(0.0, 0.0, 1.0), (0.5, 0.5, 0.35), (0.5, 0.0, 0.15), (0.0, 0.5, 0.15)]  # A, weak B, weaker O x 2


def _basis(period: float, angle_deg: float, period2: float | None = None):
    t = math.radians(angle_deg)
    u = np.array([-math.sin(t), math.cos(t)])
    v = np.array([math.cos(t), math.sin(t)])  # u turned by +90 deg as displayed
    return period * u, (period if period2 is None else period2) * v


def _render(motif, a1, a2, shape, sigma, *, background=0.05, origin=(3.3, 5.1), shear=None):
    """Gaussian columns at ``origin + (i + f1) a1 + (j + f2) a2`` of height ``h`` for every motif site ``(f1, f2,
    h)``; ``shear(rows)`` shifts each scan row sideways (px), as scan drift does."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if shear is not None:
        xx = xx + shear(yy)
    B = np.stack([a1, a2])
    frac = np.array([[0, 0], [0, w], [h, 0], [h, w]], dtype=np.float64) @ np.linalg.inv(B)
    lo, hi = np.floor(frac.min(0)) - 2, np.ceil(frac.max(0)) + 2
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    img = np.full(shape, float(background))
    r = int(math.ceil(4 * sigma))
    for f1, f2, height in motif:
        pos = np.asarray(origin) + np.stack([ii.ravel() + f1, jj.ravel() + f2], axis=1) @ B
        for py, px in pos:
            r0, r1 = max(0, int(py) - r), min(h, int(py) + r + 2)
            c0, c1 = max(0, int(px) - r - 8), min(w, int(px) + r + 10)
            if r0 >= r1 or c0 >= c1:
                continue
            dy = yy[r0:r1, c0:c1] - py
            dx = xx[r0:r1, c0:c1] - px
            img[r0:r1, c0:c1] += height * np.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
    return img


def _noisy(truth: np.ndarray, dose: float, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).poisson(truth * dose) / dose


def _heights_at(cell: np.ndarray, sites: np.ndarray, floor_idx) -> np.ndarray:
    vals = cell[sites[:, 0], sites[:, 1]] - cell[floor_idx]
    return vals / vals[0]


@pytest.fixture(scope="module")
def perovskite():
    a1, a2 = _basis(14.0, 7.0)
    truth = _render(PEROVSKITE, a1, a2, (224, 224), 1.3)
    noisy = _noisy(truth, dose=4.0)  # 4 counts at an A column, 1.4 at B, 0.6 at O: every single column is noise
    info = measure_lattice(noisy)
    lat = CellAverageSource().build(noisy, info, name="sim")
    ref = CellAverageSource().build(truth, info, name="truth")
    return truth, noisy, info, lat, ref


def test_every_weak_site_kept_at_its_true_relative_height(perovskite):
    _, _, info, lat, ref = perovskite
    assert isinstance(lat, CellAverageLattice)
    assert abs(info.period_px - 14.0) < 0.2  # measured as the perovskite cell, not a sublattice
    true_cell, cell = ref.cell().cell, lat.cell().cell
    assert true_cell.shape == cell.shape
    true_sites = cell_sites(true_cell)
    assert len(true_sites) == 4  # A, B and the two O sites
    floor = np.unravel_index(np.argmin(true_cell), true_cell.shape)
    want = _heights_at(true_cell, true_sites, floor)
    got = _heights_at(cell, true_sites, floor)
    np.testing.assert_allclose(want, [1.0, 0.35, 0.15, 0.15], atol=0.03)  # the probe tails barely lift them
    np.testing.assert_allclose(got, want, atol=0.04)
    # the site finder on the noisy frame's average finds the same four sites, each within 1 px
    found = cell_sites(cell)
    assert len(found) == 4
    g = lat.geometry
    px = lambda s: (s / np.array([g.n1, g.n2])) @ np.stack([g.a1, g.a2])  # noqa: E731
    for s in px(true_sites):
        d = s[None] - px(found)
        d = d - np.round(d @ np.linalg.inv(np.stack([g.a1, g.a2]))) @ np.stack([g.a1, g.a2])  # periodic
        assert np.hypot(d[:, 0], d[:, 1]).min() < 1.0
    rec = lat.record
    assert len(rec["sites"]) == 4 and rec["cells"] > 150 and rec["doublings"] == []
    assert sorted(s["height"] for s in rec["sites"])[-2] == pytest.approx(0.35, abs=0.06)
    assert rec["noise_rel"] < 0.02 and rec["max_disagreement"] < 0.15


def test_rendered_clean_patches_match_the_truths_cell_average(perovskite):
    _, _, _, lat, ref = perovskite
    got, origins = lattice_patches(lat, 6, atoms=5, patch_px=64, rng=3)
    want, _ = lattice_patches(ref, 6, atoms=5, patch_px=64, rng=3)
    assert got.shape == (6, 64, 64)
    for g, w in zip(got, want):
        assert np.corrcoef(g.ravel(), w.ravel())[0, 1] > 0.98
    # rendered at the micrograph's own orientation: no rotation is needed
    from data_prep.patches import rotation_to_match

    assert rotation_to_match(lat, lat.info) == pytest.approx(0.0, abs=1e-9)


def test_dumbbells_stay_two_columns():
    a1, a2 = _basis(16.0, 0.0, period2=22.0)
    sep = 0.3  # of a1: 4.8 px apart, probe sigma 1.2 px
    motif = [(0.5 - sep / 2, 0.5, 1.0), (0.5 + sep / 2, 0.5, 0.75)]
    truth = _render(motif, a1, a2, (224, 224), 1.2)
    lat = CellAverageSource().build(_noisy(truth, dose=5.0), name="dumbbells")
    ref = CellAverageSource().build(truth, lat.info, name="truth")
    g = lat.geometry

    def spacing(sites):
        d = (sites[0] - sites[1]) / np.array([g.n1, g.n2])
        d = (d - np.round(d)) @ np.stack([g.a1, g.a2])  # nearest periodic image
        return float(np.hypot(*d))

    for sigma in (0.0, 0.6):  # as averaged, and anti-aliased as for a 1.25x shrink to the model's scale
        sites, want = cell_sites(lat.cell(sigma).cell), cell_sites(ref.cell(sigma).cell)
        assert len(want) == 2 and len(sites) == 2, sigma
        # the two overlapping probes pull the maxima a little together, in the truth's average as much
        assert 3.5 < spacing(want) < 5.0
        assert spacing(sites) == pytest.approx(spacing(want), abs=0.5)
    heights = sorted(s["height"] for s in lat.record["sites"])
    want = sorted(s["height"] for s in ref.record["sites"])
    assert heights[0] == pytest.approx(want[0], abs=0.06)


def test_superlattice_found_when_the_lattice_is_measured_as_a_sublattice():
    a1, a2 = _basis(14.0, 7.0)
    truth = _render([(0.0, 0.0, 1.0), (0.5, 0.5, 0.8)], a1, a2, (224, 224), 1.3)
    noisy = _noisy(truth, dose=8.0)
    info = measure_lattice(noisy)
    assert info.period_px == pytest.approx(14.0 / math.sqrt(2), abs=0.2)  # A and B read as one finer lattice
    lat = CellAverageSource().build(noisy, info, name="sub")
    assert len(lat.record["doublings"]) == 1
    edges = sorted(np.hypot(*t) for t in lat.basis)
    np.testing.assert_allclose(edges, [14.0, 14.0], atol=0.2)
    heights = sorted(s["height"] for s in lat.record["sites"])
    assert len(heights) == 2 and heights[0] == pytest.approx(0.8, abs=0.07)
    # the scale still follows the micrograph's measured period
    assert lat.period_px == pytest.approx(info.period_px)


def test_scan_drift_is_registered_and_two_motifs_are_refused():
    a1, a2 = _basis(14.0, 7.0)
    shear = lambda y: 4.0 * np.sin(2 * np.pi * y / 224.0)  # noqa: E731  line wobble of +-4 px, 0.3 period
    truth = _render(PEROVSKITE, a1, a2, (224, 224), 1.3, shear=shear)
    lat = CellAverageSource().build(_noisy(truth, dose=8.0), name="drift")
    assert lat.record["local_registration"] and lat.record["max_shift_px"] > 2.0
    heights = sorted(s["height"] for s in lat.record["sites"])
    assert len(heights) == 4
    np.testing.assert_allclose(heights, [0.15, 0.15, 0.35, 1.0], atol=0.06)

    left = _render(PEROVSKITE, a1, a2, (224, 224), 1.3)
    right = _render([(0.0, 0.0, 1.0), (0.5, 0.5, 0.9)], a1, a2, (224, 224), 1.3)
    mixed = np.where(np.arange(224)[None, :] < 112, left, right)
    with pytest.raises(InputError) as exc:
        CellAverageSource().build(_noisy(mixed, dose=20.0), name="mixed.tif")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("mixed.tif: its unit cells do not share one motif")


def test_no_lattice_is_one_line_input_error():
    noise = np.random.default_rng(0).normal(size=(128, 128))
    with pytest.raises(InputError) as exc:
        CellAverageSource().build(noise, name="noise.tif")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("noise.tif: no lattice found for a cell average")


def test_prepare_dataset_renders_domain_b_from_each_micrographs_cell_average(tmp_path, perovskite):
    truth, noisy, _, _, _ = perovskite
    tifffile.imwrite(tmp_path / "m.tif", (noisy * 4).astype(np.float32))
    cfg = PrepConfig(per_image=6, test_frac=0.0, dents=0, progress=False, preview=False)
    summary = prepare_dataset([tmp_path / "m.tif"], CellAverageSource(), tmp_path / "data", cfg)
    assert summary["counts"] == {"trainA": 6, "trainB": 6, "testA": 0}
    man = json.loads((tmp_path / "data" / "manifest.json").read_text())
    rec = man["micrographs"][0]
    assert man["synthetic"]["source"] == "cell-average"
    assert rec["rotation_deg"] == 0.0 and not rec["warnings"]
    assert len(rec["clean_lattice"]["sites"]) == 4
    assert rec["intensity"]["gain"] == pytest.approx(1.0, abs=0.1)  # already in the micrograph's units
    b = tifffile.imread(next((tmp_path / "data" / "trainB").glob("*.tif")))
    assert b.shape == (64, 64) and np.isfinite(b).all()
    with pytest.raises(InputError, match="angle must be 'auto'"):
        prepare_dataset([tmp_path / "m.tif"], CellAverageSource(), tmp_path / "data2",
                        PrepConfig(per_image=2, test_frac=0.0, dents=0, progress=False, preview=False, angle=90))


def test_cli_clean_from_options(tmp_path):
    from stem_denoise.commands.prepare_data import main

    with pytest.raises(InputError, match="--synthetic FILE is needed"):
        main(["--micrographs", str(tmp_path), "--out", str(tmp_path / "d")])
    with pytest.raises(InputError, match="exclude each other"):
        main(["--micrographs", str(tmp_path), "--out", str(tmp_path / "d"), "--synthetic", "s.tif",
              "--clean-from", "cell-average"])
