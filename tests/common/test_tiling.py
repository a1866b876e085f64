"""Invariants of common.tiling: identity, constants, coverage, whole-image equivalence, streaming, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from stem_denoise.common.errors import InputError
from stem_denoise.common.tiling import TileGrid, iter_map_tiles, map_tiles, reflect_index, release_pages


def identity(batch):
    return batch


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 160),
    w=st.integers(1, 160),
    align=st.sampled_from([1, 2, 4, 8]),
    tile_units=st.integers(2, 12),
    overlap_frac=st.floats(0.0, 0.9),
    batch=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_identity_reproduces_input_for_any_shape(h, w, align, tile_units, overlap_frac, batch, seed):
    tile = tile_units * align
    overlap = int(overlap_frac * (tile_units - 1)) * align
    x = np.random.default_rng(seed).normal(100.0, 30.0, (h, w)).astype(np.float32)
    y = map_tiles(x, identity, tile=tile, overlap=overlap, batch_size=batch, align=align)
    assert y.shape == x.shape and y.dtype == np.float32
    # float64 accumulation of weights that sum to one: at most one float32 rounding step away
    np.testing.assert_allclose(y, x, rtol=2e-7, atol=0)


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (37, 53), (129, 64), (300, 77)])
def test_constant_stays_constant_and_every_pixel_is_covered(shape):
    x = np.full(shape, 1234.5, dtype=np.float32)
    calls = []

    def scaled(batch):
        calls.append(batch.shape)
        return batch * 2.0

    y = map_tiles(x, scaled, tile=32, overlap=12, batch_size=5)
    np.testing.assert_array_equal(y, np.float32(2469.0))
    grid = TileGrid.plan(shape, tile=32, overlap=12)
    assert sum(c[0] for c in calls) == grid.n_tiles
    assert all(c[0] <= 5 and c[1:] == (32, 32) for c in calls)
    # weights of all tiles sum to one at every canvas pixel, along both axes
    for starts, weights, length in ((grid.row_starts, grid.row_weights, grid.canvas[0]),
                                    (grid.col_starts, grid.col_weights, grid.canvas[1])):
        total = np.zeros(length)
        for s, wgt in zip(starts, weights):
            total[s:s + 32] += wgt
        np.testing.assert_allclose(total, 1.0, rtol=1e-12)


def test_ones_function_gives_ones_everywhere():
    """A pixel missed by every tile would come out 0 (or raise), never 1."""
    x = np.zeros((97, 203), np.float32)
    y = map_tiles(x, lambda b: np.ones_like(b), tile=40, overlap=18, batch_size=4)
    np.testing.assert_allclose(y, 1.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(150, 220), (97, 131)])
def test_local_operator_equals_whole_image_result(shape):
    """A local filter of radius r through tiles with margin >= r equals the filter on the whole image."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype(np.float32)
    r = 5

    def blur(batch):
        return ndimage.uniform_filter(batch, size=(1, 2 * r + 1, 2 * r + 1), mode="reflect")

    whole = blur(x[None])[0]
    tiled = map_tiles(x, blur, tile=48, overlap=2 * r + 6, margin=r, batch_size=3)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # with no margin the tile edges leak in: the result is measurably different
    leaky = map_tiles(x, blur, tile=48, overlap=2 * r + 6, margin=0, batch_size=3)
    assert np.abs(leaky - whole).max() > 1e-3


def test_align_keeps_strided_operators_on_the_whole_image_grid():
    """2x2 average pooling + nearest upsampling is equivariant to shifts by 2 only: align=2 makes tiles agree."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 170)).astype(np.float32)

    def pool(batch):
        b, h, w = batch.shape
        p = batch.reshape(b, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        return np.repeat(np.repeat(p, 2, axis=1), 2, axis=2)

    whole = pool(x[None])[0]
    tiled = map_tiles(x, pool, tile=40, overlap=10, margin=2, align=2)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    with pytest.raises(InputError, match="multiples of 2"):
        map_tiles(x, pool, tile=40, overlap=11, align=2)


def test_per_tile_offset_is_blended_smoothly():
    """A function with a different offset per tile leaves no step: neighbour differences stay below the ramp slope."""
    x = np.zeros((160, 160), np.float32)
    rng = np.random.default_rng(3)

    def offset(batch):
        return batch + rng.uniform(0, 1, size=(batch.shape[0], 1, 1)).astype(np.float32)

    tile, overlap, margin = 64, 32, 8
    y = map_tiles(x, offset, tile=tile, overlap=overlap, margin=margin)
    ramp = overlap - 2 * margin
    slope = np.pi / 2 / ramp  # max slope of sin^2 over `ramp` px, for an offset range of 1
    step = max(np.abs(np.diff(y, axis=0)).max(), np.abs(np.diff(y, axis=1)).max())
    assert step <= 2 * slope * 1.05  # two axes can add up
    hard = map_tiles(x, offset, tile=tile, overlap=0, margin=0)
    assert np.abs(np.diff(hard, axis=1)).max() > 0.05  # a hard-cut stitch shows steps


def test_batch_size_does_not_change_the_result():
    x = np.random.default_rng(4).normal(size=(90, 140)).astype(np.float32)

    def nonlinear(batch):
        return np.tanh(batch) + ndimage.gaussian_filter(batch, (0, 2, 2))

    a = map_tiles(x, nonlinear, tile=32, overlap=16, batch_size=1)
    b = map_tiles(x, nonlinear, tile=32, overlap=16, batch_size=7)
    np.testing.assert_array_equal(a, b)


def test_streaming_yields_rows_before_the_end_and_covers_each_row_once():
    x = np.random.default_rng(5).normal(size=(400, 64)).astype(np.float32)
    calls = []

    def count(batch):
        calls.append(len(batch))
        return batch

    grid = TileGrid.plan(x.shape, tile=32, overlap=8)
    seen = []
    first_at = None
    for row0, block in iter_map_tiles(x, count, tile=32, overlap=8, batch_size=2):
        if first_at is None:
            first_at = sum(calls)
        seen.append((row0, block.shape[0]))
        np.testing.assert_array_equal(block, x[row0:row0 + block.shape[0]])
    assert first_at < grid.n_tiles // 4
    rows = [r for r0, n in seen for r in range(r0, r0 + n)]
    assert rows == list(range(400))


def test_memmap_in_and_out(tmp_path):
    x = np.random.default_rng(6).normal(size=(130, 90)).astype(np.float32)
    src = np.memmap(tmp_path / "in.raw", dtype=np.float32, mode="w+", shape=x.shape)
    src[:] = x
    src.flush()
    src = np.memmap(tmp_path / "in.raw", dtype=np.float32, mode="r", shape=x.shape)
    out = np.memmap(tmp_path / "out.raw", dtype=np.float32, mode="w+", shape=x.shape)
    res = map_tiles(src, lambda b: b * 3.0, tile=32, overlap=8, out=out)
    assert res is out
    out.flush()
    del out, res
    back = np.fromfile(tmp_path / "out.raw", dtype=np.float32).reshape(x.shape)
    np.testing.assert_allclose(back, x * 3.0, rtol=1e-6)


def test_release_pages_keeps_data(tmp_path):
    mm = np.memmap(tmp_path / "a.raw", dtype=np.float32, mode="w+", shape=(64, 2048))
    mm[:] = np.arange(64, dtype=np.float32)[:, None]
    release_pages(mm, 0, 64)
    release_pages(mm[10:], 0, 20)
    release_pages(np.zeros((4, 4)), 0, 4)  # ordinary array: no-op
    np.testing.assert_array_equal(mm[:, 0], np.arange(64))
    mm.flush()
    del mm
    back = np.fromfile(tmp_path / "a.raw", dtype=np.float32).reshape(64, 2048)
    np.testing.assert_array_equal(back[:, -1], np.arange(64))


def test_reflect_index_matches_numpy_pad():
    for n in (1, 2, 5):
        a = np.arange(n)
        padded = np.pad(a, (0, 13), mode="reflect")
        np.testing.assert_array_equal(reflect_index(np.arange(n + 13), n), padded)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tile=32, overlap=32), "overlap"),
        (dict(tile=32, overlap=-1), "overlap"),
        (dict(tile=0, overlap=0), "tile"),
        (dict(tile=32, overlap=8, margin=4), "twice the margin"),
        (dict(tile=32, overlap=0, margin=1), "margin"),
        (dict(tile=30, overlap=8, align=4), "multiples"),
        (dict(tile=32, overlap=8, batch_size=0), "batch_size"),
        (dict(tile=32.0, overlap=8), "integer"),
    ],
)
def test_bad_parameters_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        map_tiles(np.zeros((50, 50), np.float32), identity, **kwargs)


def test_bad_image_or_function():
    with pytest.raises(InputError, match="2-D"):
        map_tiles(np.zeros((3, 50, 50), np.float32), identity, tile=16, overlap=4)
    with pytest.raises(InputError, match="nothing to tile"):
        map_tiles(np.zeros((0, 5), np.float32), identity, tile=16, overlap=4)
    with pytest.raises(ValueError, match="shape"):
        map_tiles(np.zeros((50, 50), np.float32), lambda b: b[:, :-1], tile=16, overlap=4)
    with pytest.raises(ValueError, match="NaN"):
        map_tiles(np.zeros((50, 50), np.float32), lambda b: b * np.nan, tile=16, overlap=4)


def test_shrink_gives_small_images_one_smaller_tile():
    x = np.random.default_rng(7).normal(size=(37, 300)).astype(np.float32)
    shapes = []

    def record(batch):
        shapes.append(batch.shape[1:])
        return batch

    y = map_tiles(x, record, tile=64, overlap=16, align=4, shrink=True)
    np.testing.assert_array_equal(y, x)
    assert set(shapes) == {(40, 64)}  # rows: one tile of 37 rounded up to 4; columns: full tiles
    shapes.clear()
    map_tiles(x, record, tile=64, overlap=16, align=4)
    assert set(shapes) == {(64, 64)}  # default: reflect-padded to a whole tile
