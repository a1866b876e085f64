"""Checks on numpy arrays that several packages share."""
from __future__ import annotations

import numpy as np

from stem_denoise.common.errors import InputError


def as_real_image(image, name: str = "image") -> np.ndarray:
    """Return ``image`` as a 2-D float64 array (no copy when it already is one).

    Raises :class:`InputError` naming ``name`` when the array is not 2-D, not real-valued numeric, or holds NaN
    or Inf.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{name} must be real-valued, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf")
    return arr
