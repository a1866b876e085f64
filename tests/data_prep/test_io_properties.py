"""Property tests: write_micrograph then read_micrograph gives back the values, dtype and pixel size."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from data_prep.io import MicrographMeta, open_micrograph_memmap, plausible_pixel_size, read_micrograph, write_micrograph

DTYPES = ["uint8", "uint16", "int16", "float32", "float64"]
UNITS = ["pm", "nm", "um"]


@st.composite
def images(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = (draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    if dtype.kind == "f":
        # any finite float32 value (subnormals too), exactly representable after reading as float32
        elements = st.floats(allow_nan=False, allow_infinity=False, width=32)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    return draw(arrays(dtype, shape, elements=elements))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(img=images(), pixel=st.floats(1e-3, 1e3, allow_nan=False), unit=st.sampled_from(UNITS),
       with_meta=st.booleans())
@pytest.mark.filterwarnings("ignore::stem_denoise.common.errors.MetadataWarning")
def test_write_read_round_trip(img, pixel, unit, with_meta):
    meta = MicrographMeta(img.dtype.name, pixel, unit, "", img.shape) if with_meta else None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.tif"
        write_micrograph(path, img, meta)
        back, m = read_micrograph(path, validate=False)
        assert [p.name for p in Path(d).iterdir()] == ["a.tif"]
        assert back.dtype == np.float32 and back.shape == img.shape
        np.testing.assert_array_equal(back, img.astype(np.float32))
        assert m.source_dtype == img.dtype.name
        assert m.shape == img.shape
        if with_meta and plausible_pixel_size(pixel, unit):
            assert m.unit == unit
            assert abs(m.pixel_size - pixel) <= 1e-6 * pixel
        else:  # no metadata, or a pixel size outside 0.1 pm - 1 mm, which is never written
            assert m.pixel_size is None and m.unit is None
        # the memory-mapped view of the same file holds the stored samples exactly
        mm = open_micrograph_memmap(path)
        assert mm is not None and mm.dtype.name == img.dtype.name
        np.testing.assert_array_equal(mm, img)
        del mm


@settings(max_examples=40, deadline=None)
@given(values=arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 40)),
                     elements=st.floats(-1e6, 1e6, allow_nan=False)),
       dtype=st.sampled_from(["uint8", "uint16", "int16"]))
def test_integer_output_is_rounded_and_clipped(values, dtype):
    info = np.iinfo(dtype)
    meta = MicrographMeta(dtype, None, None, "", values.shape)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.tif"
        write_micrograph(path, values, meta)
        back, m = read_micrograph(path, validate=False)
    expected = np.clip(np.rint(values), info.min, info.max)
    np.testing.assert_array_equal(back, expected.astype(np.float32))
    assert m.source_dtype == dtype
