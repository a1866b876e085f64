"""The Lanczos downsampler of the super-resolution data term."""
from __future__ import annotations

import numpy as np
import pytest

from dip_baseline.lanczos import lanczos_downsample, lanczos_kernel_1d
from stem_denoise.common.errors import InputError


@pytest.mark.parametrize("scale", [2, 4])
def test_kernel_is_normalised_symmetric_and_lanczos_shaped(scale):
    k = lanczos_kernel_1d(scale, support=3)
    assert k.shape == (6 * scale,)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k[::-1])
    assert (k < 0).any()  # the Lanczos lobes, unlike a box or Gaussian
    assert k.argmax() in (3 * scale - 1, 3 * scale)


@pytest.mark.parametrize("scale", [2, 4])
def test_constant_and_ramp_come_out_exact_at_pixel_centres(scale):
    n = 24 * scale
    const = np.full((n, n), 3.5, np.float32)
    np.testing.assert_allclose(lanczos_downsample(const, scale), 3.5, rtol=1e-5)
    # A linear ramp is reproduced at the low-resolution pixel centres k*s + (s-1)/2 (away from the borders).
    y = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, n), np.float32)
    low = lanczos_downsample(y, scale)
    centres = np.arange(n // scale) * scale + (scale - 1) / 2
    np.testing.assert_allclose(low[3:-3, 5], centres[3:-3], atol=1e-3)


def test_bad_sizes_are_refused():
    with pytest.raises(InputError, match="multiple"):
        lanczos_downsample(np.zeros((10, 9), np.float32), 2)
    with pytest.raises(InputError):
        lanczos_kernel_1d(0)
