"""Per-micrograph intensity normalisation with robust percentiles.

Intensities stay physical until the network boundary: a micrograph is mapped to roughly [0, 1] with
``(image - lo) / (hi - lo)``, where ``lo`` and ``hi`` are low and high percentiles of the WHOLE
micrograph (never of a tile, so every tile of one image gets the same mapping), and mapped back with
:func:`denormalize`. Nothing is clipped: values below ``lo`` become negative and values above ``hi``
exceed 1, so the mapping is exactly invertible and bright outliers (heavy columns) survive.

Large images are sampled, deterministically: whole rows picked at random with a fixed seed (so a
periodic lattice cannot alias with a sampling stride) up to ``max_samples`` pixels. For a memmap only
those rows are read, a few at a time, and their pages are released again (see
:func:`data_prep.io.release_memmap_pages`). Percentiles of 4 M samples differ from the full-image ones
by far less than the noise.
"""
from __future__ import annotations

import math

import numpy as np

from data_prep.io import release_memmap_pages
from stem_denoise.common.errors import InputError

__all__ = ["DEFAULT_MAX_SAMPLES", "sample_pixels", "robust_range", "normalize", "denormalize"]

DEFAULT_MAX_SAMPLES = 1 << 22
_CHUNK_PIXELS = 1 << 22


def sample_pixels(image: np.ndarray, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0) -> np.ndarray:
    """Return up to ``max_samples`` finite pixel values of a 2-D image as a 1-D float64 array.

    All pixels when the image is small enough; otherwise whole rows chosen at random with ``seed``
    (sorted, without repetition), and random columns within them only if one row alone is longer than
    ``max_samples``. The same image, ``max_samples`` and ``seed`` always give the same samples.
    Non-finite values are dropped. Units: the image's own.
    """
    a = image if hasattr(image, "ndim") else np.asarray(image)
    if a.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {tuple(a.shape)}")
    h, w = int(a.shape[0]), int(a.shape[1])
    if h == 0 or w == 0:
        raise InputError(f"image has zero width or height ({h} x {w})")
    max_samples = int(max_samples)
    if max_samples < 1:
        raise InputError(f"max_samples must be positive, got {max_samples}")
    if h * w <= max_samples:
        s = np.asarray(a, dtype=np.float64).ravel()
    else:
        rng = np.random.default_rng(seed)
        n_rows = max(1, min(h, max_samples // w))
        rows = np.sort(rng.choice(h, size=n_rows, replace=False))
        block = np.empty((n_rows, w), dtype=np.float64)
        for i in range(0, n_rows, 16):
            block[i:i + 16] = a[rows[i:i + 16]]
            release_memmap_pages(a)  # keep a huge memmap's touched pages out of the resident set
        if n_rows * w > max_samples:
            cols = np.sort(rng.choice(w, size=max(1, max_samples // n_rows), replace=False))
            block = block[:, cols]
        s = block.ravel()
    if s.size and not np.isfinite(s).all():
        s = s[np.isfinite(s)]
    return s


def robust_range(
    image: np.ndarray,
    lo_pct: float = 0.5,
    hi_pct: float = 99.5,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Return (lo, hi): the ``lo_pct`` and ``hi_pct`` percentiles of a whole 2-D image, in its units.

    Computed on :func:`sample_pixels` (all pixels up to ``max_samples``, else a deterministic random
    set of rows), ignoring NaN/Inf. If the two percentiles coincide (a mostly flat image with a few
    features) the sample's min and max are used instead; a constant image raises :class:`InputError`,
    since it cannot be normalised.
    """
    lo_pct = float(lo_pct)
    hi_pct = float(hi_pct)
    if not (0.0 <= lo_pct < hi_pct <= 100.0):
        raise InputError(f"percentiles must satisfy 0 <= lo < hi <= 100, got lo={lo_pct}, hi={hi_pct}")
    s = sample_pixels(image, max_samples=max_samples, seed=seed)
    if s.size == 0:
        raise InputError("image has no finite pixels; cannot normalise it")
    lo, hi = (float(v) for v in np.percentile(s, [lo_pct, hi_pct]))
    if not hi > lo:
        lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        raise InputError(f"image is constant (every pixel is {lo:g}); cannot normalise it")
    return lo, hi


def _check_range(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"normalisation range must be finite, got lo={lo}, hi={hi}")
    if not hi > lo:
        raise InputError(f"normalisation range needs hi > lo, got lo={lo:g}, hi={hi:g} (constant image?)")
    return lo, hi


def _map_rows(image: np.ndarray, fn, out: np.ndarray | None) -> np.ndarray:
    a = image if hasattr(image, "ndim") else np.asarray(image)
    if out is None:
        out = np.empty(a.shape, dtype=np.float32)
    elif out.shape != a.shape:
        raise InputError(f"out has shape {out.shape}, image has {a.shape}")
    if a.ndim == 0 or a.shape[0] == 0:
        out[...] = fn(np.asarray(a, dtype=np.float64))
        return out
    row = max(1, math.prod(a.shape[1:]))
    step = max(1, _CHUNK_PIXELS // row)
    for r in range(0, a.shape[0], step):
        out[r:r + step] = fn(np.asarray(a[r:r + step], dtype=np.float64))
    return out


def normalize(image: np.ndarray, lo: float, hi: float, *, out: np.ndarray | None = None) -> np.ndarray:
    """Return ``(image - lo) / (hi - lo)`` as float32, with no clipping.

    ``lo`` and ``hi`` come from :func:`robust_range` of the whole micrograph; the image (any real
    dtype, any shape: a whole micrograph, a tile or a batch) is mapped elementwise, so a tile gives
    exactly the crop of the normalised whole. Arithmetic is float64 in row blocks, the result float32
    (written into ``out`` if given, e.g. a memmap). ``hi <= lo`` raises :class:`InputError`.
    """
    lo, hi = _check_range(lo, hi)
    span = hi - lo
    return _map_rows(image, lambda b: (b - lo) / span, out)


def denormalize(x: np.ndarray, lo: float, hi: float, *, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`normalize`: ``x * (hi - lo) + lo`` as float32, back in the micrograph's units."""
    lo, hi = _check_range(lo, hi)
    span = hi - lo
    return _map_rows(x, lambda b: b * span + lo, out)
