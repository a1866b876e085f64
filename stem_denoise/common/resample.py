"""The one resampler of the project: a separable, banded linear operator between pixel-centre-aligned grids.

Inference resamples every micrograph to the model's atom scale with it, data preparation cuts its training patches
with it, and the stochastic objective passes every training pair through it (scale in the loop), so the network
meets at training exactly the interpolated noise it meets at inference.

Keys cubic weights (a = -0.5), stretched by ``n_in / n_out`` when shrinking (so it also low-passes: antialiasing),
mirror boundaries, each output sample's weights summing to 1 (constants stay constant). Output sample ``i`` sits at
input coordinate ``(i + 0.5) * n_in / n_out - 0.5``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from stem_denoise.common.errors import InputError
from stem_denoise.common.tiling import reflect_index

__all__ = ["resample_operator", "resample_image"]


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    x2, x3 = x * x, x * x * x
    near = (a + 2) * x3 - (a + 3) * x2 + 1
    far = a * x3 - 5 * a * x2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@dataclass(frozen=True)
class _Operator:
    """A banded (n_out, n_in) resampling matrix (sparse) and, per output sample, the input range it reads."""

    n_in: int
    n_out: int
    matrix: sparse.csr_matrix | None  # None: identity
    lo: np.ndarray  # (n_out,) first input index used by each output sample
    hi: np.ndarray  # (n_out,) last input index used + 1

    @property
    def identity(self) -> bool:
        return self.matrix is None

    def apply_rows(self, block: np.ndarray, r0: int, r1: int, c0: int) -> np.ndarray:
        """Output rows ``r0:r1`` from ``block`` = input rows ``c0 : c0 + len(block)`` (axis 0)."""
        if self.identity:
            return block[r0 - c0:r1 - c0]
        m = self.matrix[r0:r1, c0:c0 + block.shape[0]]
        return np.asarray(m @ block, dtype=np.float32)

    def apply_cols(self, block: np.ndarray) -> np.ndarray:
        """Resample axis 1 of ``block`` (all n_in columns present) to n_out columns."""
        if self.identity:
            return block
        return np.ascontiguousarray(np.asarray(self.matrix @ block.T, dtype=np.float32).T)


def resample_operator(n_in: int, n_out: int) -> _Operator:
    """Resampling operator from ``n_in`` to ``n_out`` samples on pixel-centre-aligned grids.

    Output sample ``i`` sits at input coordinate ``(i + 0.5) * n_in / n_out - 0.5``. Keys cubic (a = -0.5) weights,
    stretched by ``n_in / n_out`` when shrinking (antialiasing), mirror boundaries, rows normalised to sum 1.
    """
    if n_in < 1 or n_out < 1:
        raise InputError(f"cannot resample {n_in} px to {n_out} px")
    if n_in == n_out:
        idx = np.arange(n_out, dtype=np.int64)
        return _Operator(n_in, n_out, None, idx, idx + 1)
    ratio = n_in / n_out
    stretch = max(1.0, ratio)
    support = 2.0 * stretch
    centre = (np.arange(n_out) + 0.5) * ratio - 0.5
    first = np.floor(centre - support).astype(np.int64) + 1
    taps = int(math.ceil(2 * support)) + 1
    idx = first[:, None] + np.arange(taps)[None, :]
    w = _keys_cubic((idx - centre[:, None]) / stretch)
    w /= w.sum(axis=1, keepdims=True)
    idx = reflect_index(idx, n_in)
    used = w != 0
    lo = np.where(used, idx, n_in).min(axis=1)
    hi = np.where(used, idx, -1).max(axis=1) + 1
    rows = np.repeat(np.arange(n_out), taps)
    m = sparse.csr_matrix((w.ravel().astype(np.float32), (rows, idx.ravel())), shape=(n_out, n_in))
    m.sum_duplicates()
    return _Operator(n_in, n_out, m, lo, hi)


def resample_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a whole 2-D image to ``shape`` (rows, cols) with :func:`resample_operator`; float32 out."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {arr.shape}")
    rows = resample_operator(arr.shape[0], int(shape[0]))
    cols = resample_operator(arr.shape[1], int(shape[1]))
    out = rows.apply_rows(arr, 0, rows.n_out, 0)
    return np.ascontiguousarray(cols.apply_cols(np.asarray(out, dtype=np.float32)), dtype=np.float32)
