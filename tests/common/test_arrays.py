import numpy as np
import pytest

from stem_denoise.common.arrays import as_real_image
from stem_denoise.common.errors import InputError


def test_returns_float64_without_copy_when_possible():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert as_real_image(a) is a
    b = as_real_image(np.ones((2, 2), np.uint16))
    assert b.dtype == np.float64 and b.tolist() == [[1.0, 1.0], [1.0, 1.0]]


@pytest.mark.parametrize("bad, words", [
    (np.zeros(5), "2-D"),
    (np.zeros((2, 2), complex), "real-valued"),
    (np.array([["a", "b"]]), "real-valued"),
    (np.array([[1.0, np.nan]]), "NaN or Inf"),
    (np.array([[1.0, np.inf]]), "NaN or Inf"),
])
def test_refuses_with_the_name(bad, words):
    with pytest.raises(InputError, match=words) as exc:
        as_real_image(bad, "mask")
    assert str(exc.value).startswith("mask ")
