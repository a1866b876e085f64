"""Streamed resampling of a micrograph to the model's scale and back, row strip by row strip.

:class:`Resampler` presents the resampled (and affinely rescaled) image as an array-like that reads only the source
rows each requested strip needs, so the resampled image never exists in memory; :class:`_BackResampler` turns the
model-space rows the tiler finishes back into source rows as soon as all their taps are present. Both apply the
separable operators of :func:`stem_denoise.common.resample.resample_operator` (Keys cubic, antialiased when
shrinking). Used by :func:`cyclegan.infer.denoise_array`.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from stem_denoise.common.resample import _Operator
from stem_denoise.common.tiling import release_pages


class Resampler:
    """A 2-D image resampled and affinely rescaled row strip by row strip, read lazily from ``source``.

    ``Resampler(source, rows_op, cols_op, offset, scale)[r0:r1]`` is
    ``rows_op @ ((source - offset) / scale) @ cols_op.T`` restricted to output rows ``r0:r1``; only the source
    rows those output rows need are read. It has ``.shape`` and 2-D slicing, so
    :func:`stem_denoise.common.tiling.iter_map_tiles` can tile it without the resampled image ever existing in memory.
    Source rows above the last strip read are handed back to the OS when ``source`` is a memmap.
    """

    def __init__(self, source, rows_op: _Operator, cols_op: _Operator, offset: float = 0.0, scale: float = 1.0):
        if tuple(source.shape) != (rows_op.n_in, cols_op.n_in):
            raise ValueError("operators do not fit the source shape")
        self.source = source
        self.rows_op = rows_op
        self.cols_op = cols_op
        self.offset = np.float32(offset)
        self.scale = np.float32(scale)
        self.shape = (rows_op.n_out, cols_op.n_out)
        self._released = 0

    def _source_rows(self, j0: int, j1: int) -> np.ndarray:
        block = np.asarray(self.source[j0:j1], dtype=np.float32)
        if self.offset != 0 or self.scale != 1:
            block = (block - self.offset) / self.scale
        return block

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key, slice(None))
        rows, cols = key
        r0, r1, _ = rows.indices(self.shape[0])
        if r1 <= r0:
            return np.zeros((0, self.shape[1]), np.float32)[:, cols]
        j0 = int(self.rows_op.lo[r0:r1].min())
        j1 = int(self.rows_op.hi[r0:r1].max())
        block = self.rows_op.apply_rows(self._source_rows(j0, j1), r0, r1, j0)
        block = self.cols_op.apply_cols(block)
        if j0 > self._released:
            release_pages(self.source, self._released, j0)
            self._released = j0
        return np.ascontiguousarray(block[:, cols], dtype=np.float32)


class _BackResampler:
    """Collects finished model-space rows and turns them into source rows as soon as their taps are present."""

    def __init__(self, rows_op: _Operator, cols_op: _Operator):
        self.rows_op = rows_op
        self.cols_op = cols_op
        self.buf = np.zeros((0, cols_op.n_in), np.float32)
        self.buf0 = 0  # model row held in buf[0]
        self.next_row = 0  # next source row to produce

    def feed(self, row0: int, block: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        if row0 != self.buf0 + self.buf.shape[0]:
            raise RuntimeError("model rows must arrive in order")
        self.buf = np.concatenate([self.buf, block]) if self.buf.size else block
        have = self.buf0 + self.buf.shape[0]
        n = self.rows_op.n_out
        y1 = self.next_row
        while y1 < n and self.rows_op.hi[y1] <= have:
            y1 += 1
        if y1 > self.next_row:
            y0 = self.next_row
            out = self.rows_op.apply_rows(self.buf, y0, y1, self.buf0)
            yield y0, self.cols_op.apply_cols(out)
            self.next_row = y1
            if y1 < n:
                drop = int(self.rows_op.lo[y1:].min()) - self.buf0
                if drop > 0:
                    self.buf = self.buf[drop:].copy()
                    self.buf0 += drop
