"""Property-based tests of common.tiling.map_tiles over random shapes, tiles, overlaps, margins, strides and dtypes.

tests/common/test_tiling.py already checks the identity on random float32 images; these add what it leaves out:
integer and float64 inputs, the contract of the batches ``fn`` receives, any pointwise function commuting with
tiling (constants stay constant, every pixel covered exactly once in weight), a memmap ``out``, and a local filter
through tiles with ``margin >= radius`` equalling the filter on the whole image.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from stem_denoise.common.tiling import map_tiles

DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def geometry(draw, max_side: int = 120):
    """A valid (shape, tile, overlap, margin, align, batch, shrink) for map_tiles."""
    align = draw(st.sampled_from([1, 2, 4]))
    tile = align * draw(st.integers(2, 16))
    overlap = align * draw(st.integers(0, tile // align - 1))
    margin = 0 if overlap == 0 else draw(st.integers(0, max(0, (overlap - 1) // 2)))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    return dict(shape=(h, w), tile=tile, overlap=overlap, margin=margin, align=align,
                batch_size=draw(st.integers(1, 6)), shrink=draw(st.booleans()))


def _image(shape, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(info.min, -30000), min(info.max, 60000)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)
    return (rng.normal(0, 1, shape) * 10 ** rng.uniform(-3, 4)).astype(dt)


def _kwargs(g: dict) -> dict:
    return {k: g[k] for k in ("tile", "overlap", "margin", "align", "batch_size", "shrink")}


@SETTINGS
@given(g=geometry(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_identity_reproduces_input_of_any_dtype(g, dtype, seed):
    x = _image(g["shape"], dtype, seed)
    seen = []

    def identity(batch):
        seen.append((batch.dtype, batch.shape))
        return batch

    y = map_tiles(x, identity, **_kwargs(g))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x.astype(np.float32), rtol=3e-7, atol=0)
    # fn always gets float32 batches of at most batch_size equal tiles
    assert seen and all(d == np.float32 and 1 <= s[0] <= g["batch_size"] and s[1:] == seen[0][1][1:]
                        for d, s in seen)


@SETTINGS
@given(g=geometry(), value=st.floats(-1e6, 1e6, allow_nan=False), dtype=st.sampled_from(["float32", "float64"]))
def test_constant_stays_constant_and_every_pixel_has_weight_one(g, value, dtype):
    x = np.full(g["shape"], value, dtype=dtype)
    y = map_tiles(x, lambda b: b, **_kwargs(g))
    np.testing.assert_allclose(y, np.float32(value), rtol=3e-7, atol=0)
    # a function that ignores its input and returns ones: any pixel missed by every tile would come out 0
    ones = map_tiles(x, lambda b: np.ones_like(b), **_kwargs(g))
    np.testing.assert_allclose(ones, 1.0, rtol=1e-6)


@SETTINGS
@given(g=geometry(), seed=st.integers(0, 2**16))
def test_pointwise_function_commutes_with_tiling(g, seed):
    x = _image(g["shape"], "float32", seed)

    def f(a):
        return np.tanh(a / 7.0) * 3.0 + 0.25 * a

    y = map_tiles(x, f, **_kwargs(g))
    np.testing.assert_allclose(y, f(x.astype(np.float64)), rtol=2e-6, atol=1e-6 * float(np.abs(x).max() + 1))


@settings(max_examples=15, deadline=None)
@given(g=geometry(max_side=90), seed=st.integers(0, 2**16))
def test_memmap_out_receives_the_same_result(tmp_path_factory, g, seed):
    x = _image(g["shape"], "uint16", seed)
    path = tmp_path_factory.mktemp("mm") / "out.dat"
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=g["shape"])
    res = map_tiles(x, lambda b: b * 0.5, out=out, **_kwargs(g))
    assert res is out or np.shares_memory(res, out)
    out.flush()
    back = np.memmap(path, dtype=np.float32, mode="r", shape=g["shape"])
    np.testing.assert_allclose(back, x.astype(np.float32) * 0.5, rtol=3e-7)


@SETTINGS
@given(radius=st.integers(1, 4), extra=st.integers(1, 12), tile_mult=st.integers(3, 8),
       h=st.integers(1, 110), w=st.integers(1, 110), shrink=st.booleans(), seed=st.integers(0, 2**16))
def test_local_filter_through_tiles_equals_whole_image(radius, extra, tile_mult, h, w, shrink, seed):
    """margin >= the filter's radius: every blended pixel comes from a tile that saw its whole neighbourhood.
    (Exact where the canvas needs no padding: align 1, and each side at least one tile or ``shrink``.)"""
    overlap = 2 * radius + extra
    tile = max(overlap + 1, tile_mult * radius * 2)
    assume(shrink or (h >= tile and w >= tile))
    x = _image((h, w), "float32", seed)

    def box(batch):
        return ndimage.uniform_filter(batch, size=(1, 2 * radius + 1, 2 * radius + 1), mode="reflect")

    whole = box(x[None].astype(np.float64))[0]
    tiled = map_tiles(x, box, tile=tile, overlap=overlap, margin=radius, batch_size=3, shrink=shrink)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5 * float(np.abs(x).max() + 1))
