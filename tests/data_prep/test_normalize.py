"""Whole-micrograph normalisation: robust percentiles, no clipping, exact inverse, tile invariance."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.normalize import denormalize, normalize, robust_range, sample_pixels
from stem_denoise.common.errors import InputError


def lattice(shape, period=8.0, dose=200.0, seed=0):
    """Gaussian columns on a square lattice with Poisson noise: a crude HAADF image (counts)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    clean = (np.cos(np.pi * y / period) ** 2 * np.cos(np.pi * x / period) ** 2) ** 4
    return rng.poisson(dose * clean + 5.0).astype(np.float32)


def test_small_image_uses_every_pixel():
    img = lattice((100, 120))
    lo, hi = robust_range(img)
    assert (lo, hi) == tuple(np.percentile(img.astype(np.float64), [0.5, 99.5]))
    assert robust_range(img, 2, 98) == tuple(np.percentile(img.astype(np.float64), [2, 98]))


def test_normalize_maps_lo_hi_to_0_1_without_clipping_and_inverts():
    img = np.array([[-10.0, 0.0, 5.0], [10.0, 20.0, 1000.0]], dtype=np.float32)
    x = normalize(img, 0.0, 10.0)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, [[-1.0, 0.0, 0.5], [1.0, 2.0, 100.0]])
    back = denormalize(x, 0.0, 10.0)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, img)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_round_trip_recovers_integer_counts(dtype):
    img = lattice((64, 80), dose=100.0).astype(dtype)
    lo, hi = robust_range(img)
    x = normalize(img, lo, hi)
    assert x.dtype == np.float32 and 0.0 < np.median(x) < 1.0
    back = denormalize(x, lo, hi)
    if np.dtype(dtype).kind in "iu":
        np.testing.assert_array_equal(np.rint(back), img)
    np.testing.assert_allclose(back, img.astype(np.float64), atol=1e-4 * (hi - lo))


def test_a_tile_normalises_exactly_like_its_crop_of_the_whole():
    img = lattice((200, 260))
    lo, hi = robust_range(img)
    whole = normalize(img, lo, hi)
    tile = normalize(img[37:101, 50:114], lo, hi)
    np.testing.assert_array_equal(tile, whole[37:101, 50:114])
    batch = normalize(np.stack([img[:64, :64], img[64:128, :64]]), lo, hi)
    np.testing.assert_array_equal(batch[1], whole[64:128, :64])


def test_large_image_subsample_is_deterministic_and_close_to_the_full_percentiles(monkeypatch):
    # period 8 would alias with a stride-8 grid; random rows cannot
    img = lattice((1024, 1024), period=8.0)
    full = np.percentile(img.astype(np.float64), [0.5, 99.5])
    a = robust_range(img, max_samples=50_000)
    b = robust_range(img, max_samples=50_000)
    assert a == b
    assert len(sample_pixels(img, max_samples=50_000)) <= 50_000
    assert a[0] == pytest.approx(full[0], abs=2.0)
    assert a[1] == pytest.approx(full[1], rel=0.03)
    # a different seed gives a different, equally good sample
    c = robust_range(img, max_samples=50_000, seed=7)
    assert c[1] == pytest.approx(full[1], rel=0.03)


def test_very_wide_image_samples_columns_too():
    img = lattice((4, 5000))
    s = sample_pixels(img, max_samples=1000)
    assert len(s) == 1000
    assert set(np.unique(s)) <= set(np.unique(img).astype(np.float64))


def test_memmap_input_gives_the_same_range(tmp_path):
    img = lattice((512, 300))
    mm = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=img.shape)
    mm[:] = img
    mm.flush()
    ro = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert robust_range(ro, max_samples=10_000) == robust_range(img, max_samples=10_000)
    out = np.lib.format.open_memmap(tmp_path / "n.npy", mode="w+", dtype=np.float32, shape=img.shape)
    lo, hi = robust_range(ro)
    normalize(ro, lo, hi, out=out)
    np.testing.assert_array_equal(out, normalize(img, lo, hi))


def test_nan_pixels_are_ignored_by_the_range():
    img = lattice((50, 50))
    with_nan = img.copy()
    with_nan[3, 3] = np.nan
    with_nan[4, 4] = np.inf
    lo, hi = robust_range(with_nan)
    finite = with_nan[np.isfinite(with_nan)].astype(np.float64)
    assert (lo, hi) == tuple(np.percentile(finite, [0.5, 99.5]))


def test_mostly_flat_image_falls_back_to_min_max():
    img = np.zeros((100, 100), np.float32)
    img[50, 50] = 9.0  # one feature: both percentiles are 0
    assert robust_range(img) == (0.0, 9.0)


def test_constant_and_bad_ranges_raise():
    with pytest.raises(InputError, match=r"constant \(every pixel is 3\)"):
        robust_range(np.full((10, 10), 3.0))
    with pytest.raises(InputError, match="no finite pixels"):
        robust_range(np.full((4, 4), np.nan))
    with pytest.raises(InputError, match="hi > lo"):
        normalize(np.ones((2, 2)), 1.0, 1.0)
    with pytest.raises(InputError, match="hi > lo"):
        denormalize(np.ones((2, 2)), 2.0, 1.0)
    with pytest.raises(InputError, match="finite"):
        normalize(np.ones((2, 2)), 0.0, np.inf)
    with pytest.raises(InputError, match="percentiles"):
        robust_range(np.arange(16.0).reshape(4, 4), 60, 40)
    with pytest.raises(InputError, match="2-D"):
        robust_range(np.arange(16.0))
    with pytest.raises(InputError, match="out has shape"):
        normalize(np.ones((2, 2)), 0, 1, out=np.empty((3, 3), np.float32))
