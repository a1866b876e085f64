"""Atom-column finder and one-to-one matching of column positions.

This is the one documented finder used everywhere in the project (benchmark metrics, patch checks, tiled-inference
tests), so that "a column was found" always means the same thing:

1. **Smooth at the probe scale.** Gaussian with ``sigma = period_px / 8`` (about the probe width of an
   atomic-resolution HAADF image) -- a matched filter for column peaks that leaves neighbouring columns apart.
2. **Remove the background floor and normalise the local contrast.** The floor is the minimum of the smoothed
   image over a 1.2-period window, smoothed with ``sigma = period_px / 2``; it follows background, dents and
   thickness ramps. The height above the floor is divided by its local RMS (Gaussian window of 1.5 periods), so
   columns in a thin region (a dent) are as detectable as columns in a thick one, while a column of half the
   intensity of its neighbours keeps half their contrast and a vacancy (no column, only background) stays near 0.
   The local RMS counts as at least half the image's strong-region RMS (its 95th percentile): without that floor
   the vacuum around a particle, where the RMS tends to 0, would turn ripples of 1-5 % of a column's height into
   "columns"; with it a dent down to half the thickness keeps its full contrast and a feature in vacuum must reach
   about a tenth of a column's height to count.
3. **Peaks.** Local maxima of that contrast map (3x3, ``skimage.feature.peak_local_max``); a maximum with a
   higher maximum closer than ``0.35 * period_px`` (Euclidean) is dropped; the rest must pass a threshold,
   ``threshold_rel`` times a reference column level, the 80th percentile of the contrast at the remaining maxima
   that reach a fifth of the 99th-percentile maximum (robust to bright heavy columns, to the small noise maxima
   between columns and to the many faint maxima of a large vacuum). The default ``threshold_rel``
   is 0.2: a site counts as a column when it stands above the floor by more than a fifth of a typical column's
   height (a weak perovskite B column of 0.3 x the A height, even in a dent, is found; an empty site is not).
4. **Sub-pixel refinement.** A least-squares 2-D quadratic fitted to the smoothed, background-free image in a
   ``(2k+1)^2`` window (``k = round(0.15 * period_px)``, at least 1) around each integer peak; the vertex is the
   position. Peaks too close to the border for the window keep their integer position.

Positions are ``(row, col)`` in pixels of the input image, pixel centres at integer coordinates.

The finder is tuned to see weak columns in clean images (outputs of denoisers, noise-free truths). On a raw
low-dose image it also reports noise bumps between columns (at 5 counts per column peak, bumps reach a fifth of a
column's height): count columns on a denoised or smoothed image, not on raw counts.

:func:`match_columns` pairs found and true positions one to one, never farther than ``max_dist`` pixels, maximising
the number of pairs and then minimising the summed distance (Hungarian assignment inside each connected group of
candidate pairs found with a KD-tree, so it scales to tens of thousands of columns).
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max

from stem_denoise.common.arrays import as_real_image
from stem_denoise.common.errors import InputError

DEFAULT_THRESHOLD_REL = 0.2
SMOOTH_FRAC = 1.0 / 8.0  # smoothing sigma in periods (probe scale)
MIN_DISTANCE_FRAC = 0.35  # minimum distance between two columns, in periods
REFINE_HALF_FRAC = 0.15  # half-width of the quadratic-fit window, in periods
REFERENCE_PERCENTILE = 80.0
FLOOR_WINDOW_FRAC = 1.2  # minimum-filter window of the background floor, in periods
RMS_FLOOR_FRAC = 0.5  # the local RMS never counts as less than this fraction of the image's strong-region RMS
RMS_REFERENCE_PERCENTILE = 95.0  # the strong-region RMS: this percentile of the local-RMS map
REFERENCE_FLOOR_FRAC = 0.2  # maxima below this fraction of the 99th-percentile maximum do not set the reference


def _check_image(image: np.ndarray, period_px: float) -> np.ndarray:
    arr = as_real_image(image, "find_columns image")
    if not np.isfinite(period_px) or period_px < 3.0:
        raise InputError(f"find_columns: period_px must be a finite number >= 3 px, got {period_px}")
    if min(arr.shape) < 3:
        raise InputError(f"find_columns: image {arr.shape} is too small")
    return arr


def gaussian_lowpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass of a 2-D image with ``sigma_px`` (pixels), reflect boundary, float64 out.

    For wide kernels (sigma >= 6 px) it is computed on a grid of f x f block means (``f = floor(sigma / 3)``) and
    interpolated back linearly: the block averaging adds less than 1 % to the kernel's width and the result is
    about ``f^3`` times cheaper, which matters for 2048^2 and larger micrographs.
    """
    arr = np.asarray(image, dtype=np.float64)
    sigma = float(sigma_px)
    f = int(sigma // 3) if sigma >= 6 else 1
    h, w = arr.shape
    if f <= 1 or min(h, w) < 4 * f:
        return ndimage.gaussian_filter(arr, sigma, mode="reflect")
    hp, wp = -(-h // f) * f, -(-w // f) * f
    padded = np.pad(arr, ((0, hp - h), (0, wp - w)), mode="symmetric")
    blocks = padded.reshape(hp // f, f, wp // f, f).mean(axis=(1, 3))
    sigma_blocks = np.sqrt(max(sigma * sigma - (f * f - 1) / 12.0, 0.25)) / f
    small = ndimage.gaussian_filter(blocks, sigma_blocks, mode="reflect")

    # Linear interpolation back to full resolution; cv2's pixel-centre convention puts block k's value at
    # pixel k * f + (f - 1) / 2, the centre of the block it averages.
    full = cv2.resize(small, (wp, hp), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(full[:h, :w], dtype=np.float64)


def column_contrast(image: np.ndarray, period_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(contrast, detail)`` maps used by :func:`find_columns`.

    ``detail`` is the probe-scale-smoothed image minus its local floor (image units: a column's height above the
    background between columns); ``contrast`` is ``detail`` divided by its local RMS over 1.5 periods
    (dimensionless: a few units at a column, about half that at a half-intensity column, about 0 at a vacancy).
    """
    arr = _check_image(image, period_px)
    smooth = ndimage.gaussian_filter(arr, SMOOTH_FRAC * period_px, mode="reflect")
    size = max(3, int(round(FLOOR_WINDOW_FRAC * period_px)) | 1)
    floor = gaussian_lowpass(ndimage.minimum_filter(smooth, size=size, mode="reflect"), 0.5 * period_px)
    detail = smooth - floor
    rms = np.sqrt(np.maximum(gaussian_lowpass(detail * detail, 1.5 * period_px), 0.0))
    strong = float(np.percentile(rms, RMS_REFERENCE_PERCENTILE))
    tiny = 1e-6 * float(np.max(rms)) if np.max(rms) > 0 else 1.0
    contrast = detail / np.maximum(rms, max(RMS_FLOOR_FRAC * strong, tiny))
    return contrast, detail


def _quadratic_design(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    dy = dy.ravel().astype(np.float64)
    dx = dx.ravel().astype(np.float64)
    design = np.stack([np.ones_like(dy), dy, dx, dy * dy, dy * dx, dx * dx], axis=1)
    return np.linalg.pinv(design), dy, dx


def _refine(detail: np.ndarray, peaks: np.ndarray, k: int) -> np.ndarray:
    """Sub-pixel vertices of a 2-D quadratic fitted around integer ``peaks`` (float (N,2))."""
    out = peaks.astype(np.float64)
    h, w = detail.shape
    inside = (peaks[:, 0] >= k) & (peaks[:, 0] < h - k) & (peaks[:, 1] >= k) & (peaks[:, 1] < w - k)
    if not np.any(inside):
        return out
    pinv, dy, dx = _quadratic_design(k)
    centers = peaks[inside].astype(np.int64)
    for _ in range(2):  # a second pass re-centres peaks whose vertex lies more than half a pixel away
        rows = centers[:, 0:1] + dy.astype(np.int64)[None, :]
        cols = centers[:, 1:2] + dx.astype(np.int64)[None, :]
        vals = detail[rows, cols]  # (N, (2k+1)^2)
        coef = vals @ pinv.T  # (N, 6): c, by, bx, ayy, axy, axx
        by, bx, ayy, axy, axx = coef[:, 1], coef[:, 2], coef[:, 3], coef[:, 4], coef[:, 5]
        det = 4.0 * ayy * axx - axy * axy
        ok = (ayy < 0) & (axx < 0) & (det > 0)
        safe = np.where(ok, det, 1.0)
        off_y = np.where(ok, (axy * bx - 2.0 * axx * by) / safe, 0.0)
        off_x = np.where(ok, (axy * by - 2.0 * ayy * bx) / safe, 0.0)
        bad = (np.abs(off_y) > k) | (np.abs(off_x) > k)
        off_y[bad] = 0.0
        off_x[bad] = 0.0
        shift_y = np.rint(off_y).astype(np.int64)
        shift_x = np.rint(off_x).astype(np.int64)
        new_centers = centers + np.stack([shift_y, shift_x], axis=1)
        movable = (
            (new_centers[:, 0] >= k) & (new_centers[:, 0] < h - k)
            & (new_centers[:, 1] >= k) & (new_centers[:, 1] < w - k)
        )
        moved = movable & ((shift_y != 0) | (shift_x != 0))
        result = centers + np.stack([off_y, off_x], axis=1)
        if not np.any(moved):
            break
        centers = np.where(moved[:, None], new_centers, centers)
    out[inside] = result
    return out


def _separated_maxima(contrast: np.ndarray, min_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Positive 3x3 local maxima of ``contrast``, minus every one that has a higher maximum within ``min_distance``
    px (Euclidean). Unlike a ``min_distance``-wide maximum filter, a dim column next to a bright one survives even
    when the bright column's flank is higher than the dim column's peak."""
    cand = peak_local_max(contrast, min_distance=1, threshold_abs=0.0, exclude_border=False)
    if len(cand) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    vals = contrast[cand[:, 0], cand[:, 1]]
    pairs = cKDTree(cand).query_pairs(min_distance, output_type="ndarray")
    keep = np.ones(len(cand), dtype=bool)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        i_lower = (vals[i] < vals[j]) | ((vals[i] == vals[j]) & (i > j))
        keep[np.where(i_lower, i, j)] = False
    return cand[keep], vals[keep]


def find_columns(
    image: np.ndarray,
    period_px: float,
    *,
    threshold_rel: float | None = None,
    refine: bool = True,
) -> np.ndarray:
    """Find atom columns (bright peaks) in a 2-D micrograph; return float ``(N, 2)`` ``(row, col)`` in pixels.

    ``period_px`` is the nearest-neighbour column spacing in pixels (as from ``measure_lattice``); it sets the
    smoothing (period/8), the background-floor window (1.2 periods), the minimum column separation (0.35 period)
    and the refinement window. ``threshold_rel`` (default 0.2) is the fraction of a typical column's background-free,
    above-floor contrast a peak needs to count. Intensities may be in any units and offset; slow background
    and dents do not change what is found. See the module docstring for the full rule.
    """
    thr_rel = DEFAULT_THRESHOLD_REL if threshold_rel is None else float(threshold_rel)
    if not np.isfinite(thr_rel) or thr_rel < 0:
        raise InputError(f"find_columns: threshold_rel must be >= 0, got {threshold_rel}")
    contrast, detail = column_contrast(image, period_px)
    peaks, values = _separated_maxima(contrast, MIN_DISTANCE_FRAC * period_px)
    if len(peaks) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    top = float(np.percentile(values, 99.0))
    reference = float(np.percentile(values[values >= REFERENCE_FLOOR_FRAC * top], REFERENCE_PERCENTILE))
    peaks = peaks[values > thr_rel * reference]
    if not refine:
        return peaks.astype(np.float64)
    k = max(1, int(round(REFINE_HALF_FRAC * period_px)))
    return _refine(detail, peaks, k)


def match_columns(
    found: np.ndarray, truth: np.ndarray, max_dist: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair found and true column positions one to one within ``max_dist`` pixels.

    Returns ``(idx_found, idx_truth, dist)``: integer index arrays into ``found`` and ``truth`` and the distances
    (pixels) of the matched pairs, sorted by ``idx_truth``. The pairing maximises the number of pairs and then
    minimises their summed distance; unmatched positions are simply absent.
    """
    found = np.asarray(found, dtype=np.float64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(max_dist) or max_dist <= 0:
        raise InputError(f"match_columns: max_dist must be > 0, got {max_dist}")
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
    if len(found) == 0 or len(truth) == 0:
        return empty
    pairs = cKDTree(found).sparse_distance_matrix(cKDTree(truth), max_dist, output_type="ndarray")
    if len(pairs) == 0:
        return empty
    fi = pairs["i"].astype(np.int64)
    ti = pairs["j"].astype(np.int64)
    dd = pairs["v"].astype(np.float64)
    nf = len(found)
    # Connected groups of the bipartite candidate graph: nodes 0..nf-1 are found, nf.. are truth.
    graph = coo_matrix((np.ones(len(fi)), (fi, nf + ti)), shape=(nf + len(truth),) * 2)
    _, labels = connected_components(graph, directed=False)
    group = labels[fi]
    order = np.argsort(group, kind="stable")
    fi, ti, dd, group = fi[order], ti[order], dd[order], group[order]
    bounds = np.flatnonzero(np.diff(group)) + 1
    out_f, out_t, out_d = [], [], []
    for sl in np.split(np.arange(len(fi)), bounds):
        if len(sl) == 1:
            out_f.append(fi[sl])
            out_t.append(ti[sl])
            out_d.append(dd[sl])
            continue
        uf, inv_f = np.unique(fi[sl], return_inverse=True)
        ut, inv_t = np.unique(ti[sl], return_inverse=True)
        big = 1e6 * (1.0 + max_dist)  # non-edges: cost so high that more pairs always win
        cost = np.full((len(uf), len(ut)), big)
        cost[inv_f, inv_t] = dd[sl]
        r, c = linear_sum_assignment(cost)
        real = cost[r, c] < big
        out_f.append(uf[r[real]])
        out_t.append(ut[c[real]])
        out_d.append(cost[r[real], c[real]])
    idx_f = np.concatenate(out_f)
    idx_t = np.concatenate(out_t)
    dist = np.concatenate(out_d)
    order = np.argsort(idx_t, kind="stable")
    return idx_f[order], idx_t[order], dist[order]
