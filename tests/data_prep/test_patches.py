"""Atom-counted patches: seamless synthetic mosaic, rotation, atom counts at any zoom, intensity matching."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from data_prep.io import write_micrograph
from data_prep.lattice import angle_difference, measure_lattice
from data_prep.patches import (
    PeriodicCell,
    PrepConfig,
    SyntheticLattice,
    extract_atom_patches,
    lattice_patches,
    periodic_variance,
    prepare_dataset,
    rotation_to_match,
    synthetic_mosaic,
    to_model_scale,
)
from data_prep.simulate import simulate, synthetic_lattice
from stem_denoise.common.columns import find_columns
from stem_denoise.common.errors import ConfigError, InputError


def _normalised(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.5, 99.5])
    return (img.astype(np.float64) - lo) / (hi - lo)


@pytest.fixture(scope="module")
def square_synthetic():
    return SyntheticLattice.from_image(synthetic_lattice("square", period_px=24.0, n_cells=8))


# ---------------------------------------------------------------------------------------------------------------
# mosaic and rotation
# ---------------------------------------------------------------------------------------------------------------
def _periodicity_error(img: np.ndarray, t: np.ndarray) -> np.ndarray:
    """|img(y + t) - img(y)| for a lattice translation t (px), by cubic interpolation; NaN where y + t is outside."""
    h, w = img.shape
    rr, cc = np.mgrid[0:h, 0:w].astype(float)
    moved = ndimage.map_coordinates(img, [rr + t[0], cc + t[1]], order=3, mode="constant", cval=np.nan)
    return np.abs(moved - img)


def test_mosaic_has_no_seam():
    # 160 px of a 17.3 px lattice is 9.25 periods: repeating the image as it is leaves a seam every 160 px
    syn = synthetic_lattice("square", period_px=17.3, n_cells=10)[:160, :160]
    mosaic = synthetic_mosaic(syn, (480, 480))
    naive = np.tile(_normalised(syn), (3, 3))
    t_col = np.array([0.0, 17.3])
    t_row = np.array([17.3, 0.0])
    cols = np.arange(480)
    joins = np.zeros(480, bool)
    for k in (160, 320):
        joins |= (cols < k) & (cols + 17.3 >= k - 1)  # pairs (c, c + period) that straddle a join
    inner = slice(24, 456)
    for img, seamless in ((mosaic, True), (naive, False)):
        e_col = _periodicity_error(img, t_col)[inner]
        e_row = _periodicity_error(img, t_row)[:, inner]
        at_join = np.nanmean(np.concatenate([e_col[:, joins].ravel(), e_row[joins, :].ravel()]))
        inside = np.nanmean(np.concatenate([e_col[:, ~joins][:, 24:-24].ravel(), e_row[~joins][24:-24].ravel()]))
        if seamless:
            assert at_join <= 1.5 * inside + 1e-3 * img.std(), (at_join, inside)
        else:
            assert at_join > 5 * inside, (at_join, inside)  # the check can fail
    # and the mosaic is the synthetic image itself where they overlap
    err = np.abs(mosaic[:160, :160] - _normalised(syn))[8:-8, 8:-8]
    assert err.max() < 0.01 * (_normalised(syn).max() - _normalised(syn).min())


def test_rotation_by_270_clockwise_is_rot90():
    tile = np.random.default_rng(0).random((7, 11))  # no symmetry at all
    cell = PeriodicCell.from_tile(tile)
    mosaic = np.tile(tile, (6, 4))  # 42 x 44
    np.testing.assert_allclose(cell.render(mosaic.shape), mosaic, atol=1e-6)
    # the reference recipe's "270 degrees clockwise" is a quarter turn counter-clockwise: np.rot90
    turned = cell.render((44, 42), rotation_deg=-270.0, origin=(1.0, 0.0))
    np.testing.assert_allclose(turned, np.rot90(mosaic), atol=1e-6)
    half = cell.render((42, 44), rotation_deg=180.0, origin=(1.0, 1.0))
    np.testing.assert_allclose(half, np.rot90(mosaic, 2), atol=1e-6)


@pytest.mark.parametrize("rotation,expected", [(-270.0, 100.0), (30.0, 40.0)])
def test_rotation_turns_the_lattice_counter_clockwise(rotation, expected):
    syn = SyntheticLattice.from_image(synthetic_lattice("rect", period_px=16.0, n_cells=8, angle_deg=10.0))
    assert syn.angle_deg == pytest.approx(10.0, abs=0.2)
    out = synthetic_mosaic(syn, (256, 256), rotation_deg=rotation)
    info = measure_lattice(out)
    assert info.lattice == "rect"
    assert angle_difference(info.angle_deg, expected, "rect") < 0.3
    assert info.period_px == pytest.approx(16.0, rel=0.005)


def test_b_patches_take_the_micrographs_orientation_and_period(square_synthetic):
    r = simulate(shape=(384, 384), period_px=9.0, angle_deg=27.0, dose=30.0, seed=4)
    info = measure_lattice(_normalised(r.noisy))
    rot = rotation_to_match(square_synthetic, info)
    assert -45.0 <= rot < 45.0
    big, _ = lattice_patches(square_synthetic, 1, atoms=20, patch_px=256, rotation_deg=rot, rng=0)
    got = measure_lattice(big[0])
    assert angle_difference(got.angle_deg, r.angle_deg, "square") < 0.5
    assert got.period_px == pytest.approx(256 / 20, rel=0.01)


# ---------------------------------------------------------------------------------------------------------------
# atom counts
# ---------------------------------------------------------------------------------------------------------------
def _per_side(patches: np.ndarray, period: float) -> float:
    return float(np.sqrt(np.mean([len(find_columns(p, period)) for p in patches])))


@pytest.fixture(scope="module")
def zooms():
    """The same specimen at two zooms (8 and 20 px per period), normalised, with their measured lattices."""
    out = {}
    for p in (8.0, 20.0):
        r = simulate(shape=(384, 384), period_px=p, angle_deg=17.0, dose=50.0, dents=0, seed=1)
        x = _normalised(r.noisy)
        out[p] = (r, x, measure_lattice(x))
    return out


def test_patches_hold_n_atoms_whatever_the_zoom(zooms):
    sides = {}
    for p, (r, x, info) in zooms.items():
        ap = extract_atom_patches(x, info, atoms=5, patch_px=64, n=10, rng=3)
        assert ap.patches.shape == (10, 64, 64) and ap.patches.dtype == np.float32
        assert ap.window_px[0] == pytest.approx(5 * p, rel=0.01)
        # true columns inside each patch's window of the source
        c = r.columns
        true = []
        for pos in ap.positions:
            inside = ((c[:, 0] >= pos[0] - 0.5) & (c[:, 0] < pos[0] - 0.5 + ap.window_px[0])
                      & (c[:, 1] >= pos[1] - 0.5) & (c[:, 1] < pos[1] - 0.5 + ap.window_px[1]))
            true.append(inside.sum())
        assert abs(np.sqrt(np.mean(true)) - 5) <= 0.5
        sides[p] = _per_side(ap.patches, 12.8)  # found by the shared column finder in the patches
        assert abs(sides[p] - 5) <= 0.5, sides
    assert abs(sides[8.0] - sides[20.0]) <= 0.25
    # the reference recipe's failure, for contrast: plain 64 px crops hold 8 or 3.2 atoms per side
    raw8 = np.stack([zooms[8.0][1][i:i + 64, i:i + 64] for i in (0, 100, 200)])
    assert _per_side(raw8, 8.0) > 7


def test_b_patches_hold_n_atoms(square_synthetic):
    b, origins = lattice_patches(square_synthetic, 10, atoms=5, patch_px=64, rotation_deg=17.0, rng=1)
    assert b.shape == (10, 64, 64) and origins.shape == (10, 2)
    assert abs(_per_side(b, 12.8) - 5) <= 0.5
    b4, _ = lattice_patches(square_synthetic, 6, atoms=4, patch_px=64, rotation_deg=0.0, rng=1)
    assert abs(_per_side(b4, 16.0) - 4) <= 0.5


def test_to_model_scale_and_small_images():
    img = np.random.default_rng(0).random((200, 300)).astype(np.float32)
    out, (sy, sx) = to_model_scale(img, 20.0, 12.8)
    assert out.shape == (128, 192) and sy == pytest.approx(0.64) and sx == pytest.approx(0.64)
    assert out.mean() == pytest.approx(img.mean(), abs=0.01)  # the antialiased resampler keeps the level
    with pytest.raises(InputError, match="a patch needs 5 x 5"):
        extract_atom_patches(img[:90, :90], 20.0, n=2)  # 4.5 periods


# ---------------------------------------------------------------------------------------------------------------
# synthetic lattice checks and intensity matching
# ---------------------------------------------------------------------------------------------------------------
def test_synthetic_lattice_refines_translations_and_rejects_non_lattices():
    syn = SyntheticLattice.from_image(synthetic_lattice("hex", period_px=13.1, n_cells=10, angle_deg=7.0))
    assert syn.period_px == pytest.approx(13.1, abs=0.01)
    assert max(syn.cost) < 1e-3
    with pytest.raises(InputError):
        SyntheticLattice.from_image(np.random.default_rng(0).random((128, 128)))
    with pytest.raises(InputError):
        SyntheticLattice.from_image(np.ones((64, 64)))


@pytest.mark.parametrize("lattice,dose", [("square", 5.0), ("hex", 50.0), ("perovskite", 20.0)])
def test_periodic_variance_is_noise_free(lattice, dose):
    r = simulate(lattice=lattice, shape=(320, 320), period_px=14.0, angle_deg=21.0, dose=dose, dents=0, seed=2)
    lo, hi = np.percentile(r.noisy, [0.5, 99.5])
    x, t = (r.noisy - lo) / (hi - lo), (r.truth - lo) / (hi - lo)
    info = measure_lattice(x)
    from data_prep.lattice import lattice_vectors

    b1, b2 = lattice_vectors(info)
    est = periodic_variance(x, [b1, b2, b1 + b2, b1 - b2], info.period_px)
    hp = t - ndimage.gaussian_filter(t, info.period_px)
    true = hp[20:-20, 20:-20].var()
    assert est == pytest.approx(true, rel=0.12)
    if dose <= 20:  # where noise matters, a plain variance of the high-passed image would be far off
        hpx = x - ndimage.gaussian_filter(x, info.period_px)
        assert hpx[20:-20, 20:-20].var() > 1.3 * true


def test_b_patches_get_the_micrographs_level_and_contrast(tmp_path, square_synthetic):
    r = simulate(shape=(320, 320), period_px=10.0, angle_deg=33.0, dose=15.0, dents=0, background_slow=0.0,
                 seed=5)
    write_micrograph(tmp_path / "m.tif", r.noisy, dtype="float32")
    cfg = PrepConfig(per_image=40, test_frac=0.0, dents=0, progress=False, preview=False)
    prepare_dataset([tmp_path / "m.tif"], square_synthetic, tmp_path / "data", cfg)
    man = json.loads((tmp_path / "data" / "manifest.json").read_text())
    lo, hi = man["micrographs"][0]["norm"]["lo"], man["micrographs"][0]["norm"]["hi"]
    truth, _ = to_model_scale((r.truth - lo) / (hi - lo), man["micrographs"][0]["lattice"]["period_px"], 12.8)
    b = np.stack([tifffile.imread(p) for p in sorted((tmp_path / "data" / "trainB").glob("*.tif"))])
    a = np.stack([tifffile.imread(p) for p in sorted((tmp_path / "data" / "trainA").glob("*.tif"))])
    t_mean, t_std = float(truth.mean()), float(truth.std())
    assert float(b.mean()) == pytest.approx(t_mean, abs=0.1 * t_std)
    assert float(b.mean()) == pytest.approx(float(a.mean()), abs=0.1 * t_std)
    assert float(b.std()) == pytest.approx(t_std, rel=0.15)
    assert float(a.std()) > 1.1 * float(b.std())  # A is noisy, B clean at the same contrast


def test_manifest_holds_each_micrographs_noise_model(tmp_path, square_synthetic):
    """The estimated noise model goes into the manifest in raw and in normalised units, with the native period."""
    sims = [simulate(shape=(320, 320), period_px=10.0, angle_deg=20.0, dose=12.0, gain=3.0, dents=0, seed=6),
            simulate(shape=(320, 320), period_px=14.0, angle_deg=61.0, dose=40.0, gain=1.0, noise_corr_row=0.3,
                     noise_corr_col=-0.1, dents=0, seed=7)]
    for k, r in enumerate(sims):
        write_micrograph(tmp_path / f"m{k}.tif", r.noisy + 200.0 * k, dtype="float32")  # and a detector offset
    cfg = PrepConfig(per_image=4, test_frac=0.0, dents=0, progress=False, preview=False)
    prepare_dataset([tmp_path / "m0.tif", tmp_path / "m1.tif"], square_synthetic, tmp_path / "data", cfg)
    man = json.loads((tmp_path / "data" / "manifest.json").read_text())
    for k, (m, r) in enumerate(zip(man["micrographs"], sims)):
        noise, gain = m["noise"], float(r.params["gain"])
        true_dose = float(np.percentile(r.truth, 99.5)) / gain  # counts at a column peak, as the estimator means it
        assert noise["raw"]["reliable"] and noise["normalised"]["reliable"]
        assert noise["normalised"]["dose"] == pytest.approx(true_dose, rel=0.15)
        assert noise["raw"]["gain"] == pytest.approx(gain, rel=0.15)
        assert noise["raw"]["offset"] == pytest.approx(200.0 * k, abs=0.1 * gain * true_dose)
        span = m["norm"]["hi"] - m["norm"]["lo"]
        n = noise["normalised"]
        assert n["gain"] == pytest.approx(noise["raw"]["gain"] / span)
        assert n["read_noise"] == pytest.approx(noise["raw"]["read_noise"] / span)
        assert n["row_offset"] == pytest.approx(noise["raw"]["row_offset"] / span)
        assert n["offset"] == pytest.approx((noise["raw"]["offset"] - m["norm"]["lo"]) / span)
        assert n["corr_row"] == noise["raw"]["corr_row"] and n["corr_col"] == noise["raw"]["corr_col"]
        assert noise["period_px"] == pytest.approx(m["lattice"]["period_px"]) and noise["scale"] == m["scale"]
    assert abs(man["micrographs"][1]["noise"]["normalised"]["corr_row"] - 0.3) < 0.05


def test_a_micrograph_without_a_noise_model_gets_null_and_a_warning(tmp_path, square_synthetic, monkeypatch):
    import data_prep.patches as patches

    def refuse(*args, **kwargs):
        raise InputError("too few usable pixels to estimate a noise model")

    monkeypatch.setattr(patches, "estimate_noise", refuse)
    r = simulate(shape=(256, 256), period_px=10.0, dose=20.0, dents=0, seed=8)
    write_micrograph(tmp_path / "m.tif", r.noisy, dtype="float32")
    cfg = PrepConfig(per_image=4, test_frac=0.0, dents=0, progress=False, preview=False)
    summary = prepare_dataset([tmp_path / "m.tif"], square_synthetic, tmp_path / "data", cfg)
    man = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert man["micrographs"][0]["noise"] is None and man["counts"]["trainA"] == 4
    assert [w for w in summary["warnings"] if "noise model not estimated" in w and "\n" not in w]


def test_config_validation():
    with pytest.raises(ConfigError):
        PrepConfig(atoms=0)
    with pytest.raises(ConfigError):
        PrepConfig(patch_px=16, atoms=5)  # 3.2 px per period
    with pytest.raises(ConfigError):
        PrepConfig(test_frac=1.0)
    with pytest.raises(ConfigError):
        PrepConfig(angle="sideways")
    with pytest.raises(ConfigError):
        PrepConfig(per_image=2.5)
    with pytest.raises(ConfigError, match="noise_max_pixels"):
        PrepConfig(noise_max_pixels=100)
    assert PrepConfig(angle="90").angle == 90.0
    assert PrepConfig().model_period_px == pytest.approx(12.8)
