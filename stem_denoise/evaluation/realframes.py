"""No-truth checks of a denoiser's output on a real micrograph: what must not change.

A real frame has no ground truth, so a denoiser is judged on what it must leave alone:

* **The unit-cell average.** The image is averaged over every cell of its measured lattice
  (:func:`cell_average`): it is sampled at fractional lattice coordinates ``(u, v)`` on a regular grid of each cell
  by bilinear interpolation, and the samples of all cells inside the image are averaged. Noise averages away,
  the motif stays; raw and output are averaged on exactly the same cells (:class:`CellGeometry`, computed once on
  the raw frame), so the two averages must agree: Pearson ``cell_r`` near 1 and, site by site, the same relative
  column heights (a weak sublattice that a strong prior took for noise shows here first).
* **The column count** with the project's finder (:func:`stem_denoise.common.columns.find_columns`), on the raw frame
and on
  the output after the same light smoothing (Gaussian sigma = column spacing / 10; the same treatment of both, so
  that the identity counts the same and only what the denoiser changed counts). The column spacing is the shortest
  distance between two distinct column sites of the raw cell average (a perovskite's A-B distance, not its cell
  edge), unless given. The counts at further smoothings (0.07-0.2 spacings) are reported beside it
  (``counts_by_smoothing``, a diagnostic: a raw count that falls fast with a little more smoothing while the
  output's stays holds noise-driven detections).
* **The residual** ``raw - output`` must hold no lattice: its power in narrow windows at the raw frame's Bragg
  peaks, relative to the raw frame's power there. It should also look like the raw noise: its lag-1 correlations
  along rows and down columns are reported beside those of a truth-free noise estimate of the raw frame
  (:func:`raw_noise`: the frame with every significant spectral feature and the slow background removed).

Column sites of a cell average (:func:`cell_sites`) are its local maxima on the periodic cell (wrap-around) that
stand out by a prominence of at least 5 % of the strongest site's height above the average's minimum; a site's
relative height is its height above that minimum divided by the strongest site's, in raw and in output alike.

Local lattice refinement. Scan drift and line wobble shear a real lattice, so one global lattice blurs the
average. With ``local=True`` the displacement of the lattice from the measured (global) one is found by geometric
phase analysis: for each of the strongest low-order Bragg peaks ``g`` the image is demodulated,
``H_g(r) = LP[I(r) exp(-2 pi i g.r)]``, with a Gaussian low-pass that is narrow down the columns (0.6 of the longer
cell edge: scan distortions change from one scan line to the next) and wide along the rows (2 cell edges). The
phase of ``H_g`` relative to its image-wide mean is ``-2 pi g.d(r)``; the displacement ``d`` follows by weighted
least squares over the peaks, first from the lowest orders alone (no phase unwrapping is needed while ``|g.d|``
stays below half a cycle, so the lowest orders reach farthest), then from every peak with its phase unwrapped
against that first estimate. Every cell is shifted by ``d`` at its centre. The demodulation runs on a cropped
spectrum of the zero-padded image, so it costs one FFT of the frame plus a few small inverse FFTs.

Units: positions and vectors in pixels, ``(row, col)`` with rows pointing down (as in :mod:`data_prep.lattice`);
intensities in the image's own units; frequencies in cycles per pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.spatial import cKDTree

from data_prep.lattice import LatticeInfo, lattice_vectors, measure_lattice
from stem_denoise.common.arrays import as_real_image
from stem_denoise.common.columns import find_columns, gaussian_lowpass
from stem_denoise.common.errors import InputError

__all__ = [
    "THRESHOLDS",
    "CellGeometry",
    "CellAverage",
    "cell_geometry",
    "cell_average",
    "relative_heights",
    "site_spacing",
    "cell_sites",
    "bragg_power_fraction",
    "lag1_correlations",
    "raw_noise",
    "real_frame_metrics",
    "check_real_frame",
    "METHOD_NAMES",
    "PEER_NAMES",
    "DEFAULT_REAL_DIR",
    "fixed_gaussian_method",
    "real_methods",
    "real_methods_from",
    "run_realcheck",
    "output_paths",
    "write_real_csv",
    "write_real_markdown",
    "real_frame_panel",
]

THRESHOLDS = {"cell_r": 0.98, "site_height_max_rel_err": 0.15, "count_rel_diff": 0.01, "bragg_power_frac": 0.05}
_HIGHER_IS_BETTER = {"cell_r"}

SITE_PROMINENCE = 0.05  # a site stands at least this fraction of the strongest site's height above its saddle
SPACING_PROMINENCE = 0.15  # sites this distinct set the column spacing (a dumbbell's second lobe does not)
LIGHT_SMOOTH_FRAC = 0.1  # Gaussian sigma (periods) of the light smoothing before counting raw columns
COUNT_SMOOTHINGS = (0.07, 0.13, 0.16, 0.2)  # further smoothings (periods) the counts are also reported at
BRAGG_ORDER = 4  # reciprocal lattice points h g1 + k g2 with |h|, |k| <= BRAGG_ORDER
BRAGG_SNR = 10.0  # a lattice point counts as a Bragg peak when its power is this far above the local floor
BRAGG_RADIUS_BINS = 2.0  # radius of the window around each Bragg peak, in Fourier bins of the frame
GPA_SNR = 30.0  # Bragg peaks used for the local refinement stand this far above the local floor
GPA_MAX_PEAKS = 6


# ------------------------------------------------------------------------------------------------ geometry

@dataclass
class CellGeometry:
    """Which cells of an image are averaged and where: reusable for another image of the same shape.

    ``a1``/``a2``: the lattice basis (row, col) in px; ``origin`` (row, col) px of cell (0, 0); ``cells`` (N, 2)
    integer indices ``(i, j)`` of the cells inside the image; ``shifts`` (N, 2) px the local displacement of each
    cell (zeros without local refinement), so that sample ``(u, v)`` of cell ``(i, j)`` lies at
    ``origin + (i + u) a1 + (j + v) a2 + shift``; ``n1`` x ``n2`` samples per cell along a1 x a2; ``shape`` of
    the image it was made for; ``lattice`` the measured lattice; ``local`` whether shifts were refined, and
    ``note`` why not when refinement was asked for but impossible; ``gpa_peaks`` the (h, k) orders used.
    """

    a1: np.ndarray
    a2: np.ndarray
    origin: np.ndarray
    cells: np.ndarray
    shifts: np.ndarray
    n1: int
    n2: int
    shape: tuple[int, int]
    lattice: LatticeInfo
    local: bool
    note: str = ""
    gpa_peaks: list = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return int(len(self.cells))

    def fractions(self) -> tuple[np.ndarray, np.ndarray]:
        """Fractional sample coordinates ``u`` (n1,) along a1 and ``v`` (n2,) along a2, in [0, 1)."""
        return np.arange(self.n1) / self.n1, np.arange(self.n2) / self.n2

    def offsets(self) -> np.ndarray:
        """(n1, n2, 2) px offsets of the samples from their cell's corner."""
        u, v = self.fractions()
        return u[:, None, None] * self.a1[None, None, :] + v[None, :, None] * self.a2[None, None, :]

    def describe(self) -> dict:
        """JSON-able summary: lattice type, periods, angles, basis vectors, cell count, local refinement."""
        mag = np.hypot(self.shifts[:, 0], self.shifts[:, 1]) if len(self.shifts) else np.zeros(1)
        return {
            "type": self.lattice.lattice,
            "period_px": round(float(self.lattice.period_px), 4),
            "angle_deg": round(float(self.lattice.angle_deg), 3),
            "period2_px": round(float(self.lattice.period2_px), 4),
            "angle2_deg": round(float(self.lattice.angle2_deg), 3),
            "a1_px": [round(float(v), 4) for v in self.a1],
            "a2_px": [round(float(v), 4) for v in self.a2],
            "n_cells": self.n_cells,
            "samples": [int(self.n1), int(self.n2)],
            "local": bool(self.local),
            "max_shift_px": round(float(mag.max()), 3),
            "rms_shift_px": round(float(np.sqrt(np.mean(mag ** 2))), 3),
            "note": self.note,
        }


@dataclass
class CellAverage:
    """The average unit cell of an image: ``average`` (n1, n2) in image units, sample ``[k1, k2]`` at fractional
    coordinates ``(k1 / n1, k2 / n2)`` of the cell (periodic in both axes); ``geometry`` the cells it averages
    (pass it as ``lattice`` to average another image on the same cells); ``n_cells`` how many."""

    average: np.ndarray
    geometry: CellGeometry
    n_cells: int

    def render(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The periodic average painted into real space (``shape`` px, default two cells across), for display."""
        g = self.geometry
        if shape is None:
            ext = np.abs(np.stack([g.a1, g.a2, g.a1 + g.a2, g.a1 - g.a2])).max(axis=0)
            shape = (int(math.ceil(2 * ext[0])), int(math.ceil(2 * ext[1])))
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
        basis = np.stack([g.a1, g.a2], axis=1)
        frac = np.linalg.solve(basis, np.stack([yy.ravel(), xx.ravel()]))
        coords = np.stack([(frac[0] % 1.0) * g.n1, (frac[1] % 1.0) * g.n2])
        vals = ndimage.map_coordinates(self.average, coords, order=1, mode="grid-wrap")
        return vals.reshape(shape)


def _resolve_lattice(image: np.ndarray, lattice, period_px) -> LatticeInfo:
    if isinstance(lattice, LatticeInfo):
        return lattice
    if lattice is not None:
        raise InputError(f"lattice must be a LatticeInfo, a CellGeometry or None, got {type(lattice).__name__}")
    kwargs = {}
    if period_px is not None:
        p = float(period_px)
        if not (math.isfinite(p) and p >= 3.0):
            raise InputError(f"period_px must be a finite number >= 3 px, got {period_px}")
        kwargs["min_period_px"] = max(2.5, 0.7 * p)
    return measure_lattice(image, **kwargs)


def _samples(samples_per_period, a1, a2) -> tuple[int, int]:
    try:
        s = int(samples_per_period)
    except (TypeError, ValueError):
        raise InputError(f"samples_per_period must be an integer >= 4, got {samples_per_period!r}") from None
    if s < 4 or s > 256 or s != samples_per_period:
        raise InputError(f"samples_per_period must be an integer between 4 and 256, got {samples_per_period}")
    l1, l2 = float(np.hypot(*a1)), float(np.hypot(*a2))
    short = min(l1, l2)
    return max(s, int(round(s * l1 / short))), max(s, int(round(s * l2 / short)))


def _local_floor(power: np.ndarray, y: int, x: int, half: int) -> float:
    """Median of ``power`` (periodic) in a box of +-3*half bins around (y, x), the central +-half box left out."""
    h, w = power.shape
    r = 3 * half
    ys = np.arange(y - r, y + r + 1) % h
    xs = np.arange(x - r, x + r + 1) % w
    block = power[np.ix_(ys, xs)]
    mask = np.ones(block.shape, dtype=bool)
    mask[r - half:r + half + 1, r - half:r + half + 1] = False
    return float(np.median(block[mask]))


def _peak_power(power: np.ndarray, y: int, x: int, half: int) -> float:
    h, w = power.shape
    ys = np.arange(y - half, y + half + 1) % h
    xs = np.arange(x - half, x + half + 1) % w
    return float(power[np.ix_(ys, xs)].max())


def _displacement_field(image: np.ndarray, a1: np.ndarray, a2: np.ndarray):
    """Local displacement (px) of the lattice from the global one, by geometric phase analysis (module docstring).

    Returns ``(d, step, pad, peaks, note)``: ``d`` (2, My, Mx) on a grid of ``step`` px in the zero-padded frame
    (grid point (p, q) at image pixel ``(p * step - pad[0], q * step - pad[1])``), the (h, k) orders used, and a
    note; ``d`` is None when fewer than two non-collinear strong Bragg peaks exist.
    """
    h, w = image.shape
    l1, l2 = float(np.hypot(*a1)), float(np.hypot(*a2))
    p_long, p_short = max(l1, l2), min(l1, l2)
    sig_y, sig_x = 0.6 * p_long, 2.0 * p_long
    step = max(1, int(p_short // 4))
    pad = (int(math.ceil(3 * sig_y)), int(math.ceil(3 * sig_x)))
    ny = -(-(h + 2 * pad[0]) // step) * step
    nx = -(-(w + 2 * pad[1]) // step) * step
    my, mx = ny // step, nx // step
    x = image - gaussian_lowpass(image, p_long)
    padded = np.zeros((ny, nx), dtype=np.float32)
    padded[pad[0]:pad[0] + h, pad[1]:pad[1] + w] = x
    F = scipy.fft.fft2(padded)
    power = F.real ** 2 + F.imag ** 2

    G = np.linalg.inv(np.stack([a1, a2], axis=1))  # rows: reciprocal basis g1, g2 (cycles/px)
    half = max(1, int(round(max(ny / h, nx / w))))
    cands = []
    for hh, kk in ((1, 0), (0, 1), (1, 1), (1, -1), (2, 0), (0, 2), (2, 1), (1, 2), (2, -1), (1, -2)):
        g = hh * G[0] + kk * G[1]
        if abs(g[0]) >= 0.45 or abs(g[1]) >= 0.45:
            continue
        yb, xb = int(round(g[0] * ny)), int(round(g[1] * nx))
        pk = _peak_power(power, yb, xb, half)
        snr = pk / max(_local_floor(power, yb, xb, half), 1e-300)
        if snr >= GPA_SNR:
            cands.append((snr, (hh, kk), g))
    cands.sort(key=lambda c: -c[0])
    chosen = cands[:GPA_MAX_PEAKS]
    gs = np.array([c[2] for c in chosen]) if chosen else np.zeros((0, 2))
    if len(chosen) < 2 or np.linalg.matrix_rank(gs, tol=1e-9) < 2:
        return None, step, pad, [], "local refinement skipped: fewer than two non-collinear strong Bragg peaks"

    ky = scipy.fft.fftfreq(my, d=1.0 / my)  # integer bin offsets K, in FFT order
    kx = scipy.fft.fftfreq(mx, d=1.0 / mx)
    pp = np.arange(my)[:, None]
    qq = np.arange(mx)[None, :]
    inside = np.zeros((my, mx), dtype=bool)
    inside[int(math.ceil(pad[0] / step)):(pad[0] + h) // step,
           int(math.ceil(pad[1] / step)):(pad[1] + w) // step] = True
    phases, weights = [], []
    for _, _, g in chosen:
        gy, gx = g[0] * ny, g[1] * nx  # frequency in bins of the padded frame
        by, bx = int(round(gy)), int(round(gx))
        dy, dx = gy - by, gx - bx
        wy = np.exp(-2 * math.pi ** 2 * sig_y ** 2 * ((ky - dy) / ny) ** 2)
        wx = np.exp(-2 * math.pi ** 2 * sig_x ** 2 * ((kx - dx) / nx) ** 2)
        box = F[np.ix_((by + ky.astype(int)) % ny, (bx + kx.astype(int)) % nx)] * (wy[:, None] * wx[None, :])
        hmap = scipy.fft.ifft2(box) * np.exp(-2j * math.pi * (dy * pp / my + dx * qq / mx))
        ref = hmap[inside].mean()
        phases.append(np.angle(hmap * np.conj(ref)) / (2 * math.pi))  # = -g.d (cycles), wrapped to [-1/2, 1/2)
        weights.append(float(abs(ref)))
    weights = np.asarray(weights)
    if not np.all(weights > 0):
        return None, step, pad, [], "local refinement skipped: the Bragg peaks carry no phase"

    def solve(idx, targets):
        A = sum(weights[i] * np.outer(gs[i], gs[i]) for i in idx)
        b = -sum(weights[i] * gs[i][:, None, None] * targets[i][None] for i in idx)
        return np.einsum("ij,jpq->ipq", np.linalg.inv(A), b)

    # first the lowest orders (the widest range without phase wrapping), then every peak, its phase unwrapped
    # against the prediction of the first estimate
    order = np.argsort(np.hypot(gs[:, 0], gs[:, 1]), kind="stable")
    first = [int(order[0])]
    for i in order[1:]:
        if np.linalg.matrix_rank(gs[first + [int(i)]], tol=1e-9) == 2:
            first.append(int(i))
            break
    lim = 1.05 * float(np.hypot(*gs[first[-1]]))
    first += [int(i) for i in order if i not in first and np.hypot(*gs[i]) <= lim]
    d0 = solve(first, phases)
    unwrapped = []
    for i, ph in enumerate(phases):
        pred = -np.einsum("j,jpq->pq", gs[i], d0)
        unwrapped.append(pred + (ph - pred + 0.5) % 1.0 - 0.5)
    d = solve(range(len(gs)), unwrapped)
    return d, step, pad, [list(c[1]) for c in chosen], ""


def cell_geometry(image, lattice: LatticeInfo | None = None, *, period_px: float | None = None,
                  samples_per_period: int = 16, local: bool = True) -> CellGeometry:
    """The cells of ``image`` to average (see :class:`CellGeometry`), measured on that image.

    ``lattice``: a :class:`~data_prep.lattice.LatticeInfo` (default: measured with
    :func:`~data_prep.lattice.measure_lattice`, ignoring periodicities finer than 0.7 x ``period_px`` when that is
    given). ``samples_per_period`` samples along the shorter basis vector, proportionally more along the longer
    one. ``local``: refine each cell's position by geometric phase analysis (module docstring).
    A cell counts when all four of its (shifted) corners lie inside the image. Units: px.
    """
    img = as_real_image(image, "cell_average image")
    if min(img.shape) < 24:
        raise InputError(f"image {img.shape} is too small for a cell average (needs >= 24 x 24)")
    info = _resolve_lattice(img, lattice, period_px)
    a1, a2 = (np.asarray(v, dtype=np.float64) for v in lattice_vectors(info))
    if not (np.all(np.isfinite(a1)) and np.all(np.isfinite(a2))) or abs(a1[0] * a2[1] - a1[1] * a2[0]) < 1.0:
        raise InputError("lattice has a degenerate or non-finite basis")
    n1, n2 = _samples(samples_per_period, a1, a2)
    h, w = img.shape
    origin = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    basis = np.stack([a1, a2], axis=1)
    corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], dtype=np.float64) - origin
    frac = np.linalg.solve(basis, corners.T)
    lo = np.floor(frac.min(axis=1)).astype(int) - 1
    hi = np.ceil(frac.max(axis=1)).astype(int) + 1
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    cells = np.stack([ii.ravel(), jj.ravel()], axis=1)
    anchors = origin + cells @ np.stack([a1, a2])
    shifts = np.zeros_like(anchors)
    note, peaks, refined = "", [], False
    if local:
        d, step, pad, peaks, note = _displacement_field(img, a1, a2)
        if d is not None:
            centres = anchors + 0.5 * (a1 + a2)
            gy = (centres[:, 0] + pad[0]) / step
            gx = (centres[:, 1] + pad[1]) / step
            shifts = np.stack([ndimage.map_coordinates(d[k], [gy, gx], order=1, mode="nearest") for k in range(2)],
                              axis=1)
            refined = True
    corner_off = np.array([[0.0, 0.0], a1, a2, a1 + a2])
    pos = anchors[:, None, :] + shifts[:, None, :] + corner_off[None]
    ok = np.all((pos[..., 0] >= 0) & (pos[..., 0] <= h - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= w - 1), axis=1)
    if not np.any(ok):
        raise InputError(f"no whole unit cell of the lattice ({np.hypot(*a1):.1f} x {np.hypot(*a2):.1f} px) fits "
                         f"in the {h} x {w} image")
    return CellGeometry(a1=a1, a2=a2, origin=origin, cells=cells[ok], shifts=shifts[ok], n1=n1, n2=n2,
                        shape=(h, w), lattice=info, local=refined, note=note, gpa_peaks=peaks)


def _average_on(img: np.ndarray, geom: CellGeometry, chunk_samples: int = 2_000_000) -> np.ndarray:
    offs = geom.offsets().reshape(-1, 2)
    anchors = geom.origin + geom.cells @ np.stack([geom.a1, geom.a2]) + geom.shifts
    total = np.zeros(len(offs))
    per = max(1, chunk_samples // len(offs))
    for s in range(0, len(anchors), per):
        pos = anchors[s:s + per, None, :] + offs[None]
        vals = ndimage.map_coordinates(img, [pos[..., 0].ravel(), pos[..., 1].ravel()], order=1, mode="nearest")
        total += vals.reshape(pos.shape[:2]).sum(axis=0)
    return (total / len(anchors)).reshape(geom.n1, geom.n2)


def cell_average(image, lattice=None, *, period_px: float | None = None, samples_per_period: int = 16,
                 local: bool = True) -> CellAverage:
    """Average unit cell of ``image`` over all cells of its lattice (bilinear samples, image units).

    ``lattice``: None (measure it on ``image``), a :class:`~data_prep.lattice.LatticeInfo`, or a
    :class:`CellGeometry` -- e.g. ``cell_average(raw).geometry`` -- to average on exactly the same cells (same
    shape required; ``period_px``, ``samples_per_period`` and ``local`` are then ignored). Sample ``(u, v)`` of
    cell ``(i, j)`` is read at ``origin + (i + u) a1 + (j + v) a2 + shift_ij`` px, ``u`` and ``v`` on a regular
    grid of [0, 1), ``samples_per_period`` along the shorter vector; ``local`` refines the per-cell shifts (scan
    drift) by geometric phase analysis (module docstring). Raises :class:`InputError` for a bad image or lattice.
    """
    img = as_real_image(image, "cell_average image")
    if isinstance(lattice, CellGeometry):
        geom = lattice
        if tuple(img.shape) != tuple(geom.shape):
            raise InputError(f"cell geometry was made for a {geom.shape} image, got {img.shape}")
    else:
        geom = cell_geometry(img, lattice, period_px=period_px, samples_per_period=samples_per_period, local=local)
    return CellAverage(average=_average_on(img, geom), geometry=geom, n_cells=geom.n_cells)


def tiled_cell_average(image, lattice=None) -> np.ndarray:
    """A noise-free stand-in for a real frame: its unit-cell average (:func:`cell_average`, noise averaged away,
    every site at its measured height and shape) repeated over the frame's global lattice (cubic, periodic; the
    local shifts are not reproduced), same shape and units as ``image``. A denoiser run on it shows what its prior
    does to the frame's columns without any noise: a weak site pushed towards the background there is the prior's
    doing, not the noise's (``realcheck.py --noise-free``). ``lattice`` as for :func:`cell_average`."""
    img = as_real_image(image, "tiled_cell_average image")
    ca = cell_average(img, lattice)
    g = ca.geometry
    rows, cols = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(float)
    d = np.stack([rows.ravel() - g.origin[0], cols.ravel() - g.origin[1]])
    frac = np.linalg.solve(np.stack([g.a1, g.a2], axis=1), d)
    coords = [(frac[0] % 1.0) * g.n1, (frac[1] % 1.0) * g.n2]
    tiled = ndimage.map_coordinates(ca.average, coords, order=3, mode="grid-wrap")
    return tiled.reshape(img.shape).astype(img.dtype, copy=False)


# ------------------------------------------------------------------------------------------------ sites

def _torus_prominence(a: np.ndarray) -> np.ndarray:
    """Topographic prominence of every sample of a periodic 2-D array (0 where it is no local maximum).

    Union-find over samples in descending order with 8-connected, wrapped neighbours: when two regions meet at a
    level, the lower peak's prominence is its height above that level; the highest peak's is its height above the
    minimum.
    """
    n1, n2 = a.shape
    flat = a.ravel()
    order = np.argsort(-flat, kind="stable")
    parent = np.full(flat.size, -1, dtype=np.int64)  # a region's root is its highest sample, its peak
    prom = np.zeros(flat.size)

    def find(i):
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for idx in order:
        r, c = divmod(int(idx), n2)
        roots = set()
        for dy, dx in steps:
            nb = ((r + dy) % n1) * n2 + (c + dx) % n2
            if parent[nb] >= 0:
                roots.add(find(nb))
        parent[idx] = idx
        if not roots:
            continue
        roots = sorted(roots, key=lambda q: -flat[q])
        keep = roots[0]
        for q in roots[1:]:
            prom[q] = flat[q] - flat[idx]
            parent[q] = keep
        parent[idx] = keep
    root = find(int(order[0]))
    prom[root] = flat[root] - flat.min()
    return prom.reshape(a.shape)


def cell_sites(average: np.ndarray, *, min_prominence: float = SITE_PROMINENCE) -> np.ndarray:
    """Column sites of a periodic cell average: integer (K, 2) sample indices, strongest first.

    A site is a local maximum (8 wrapped neighbours) whose prominence -- its height above the highest saddle that
    joins it to a higher maximum -- is at least ``min_prominence`` times the strongest site's height above the
    average's minimum (its floor); shoulders and averaging noise stay out, a weak sublattice comes in.
    """
    a = np.asarray(average, dtype=np.float64)
    span = float(a.max() - a.min())
    if not span > 0:
        return np.zeros((0, 2), dtype=np.int64)
    prom = _torus_prominence(a)
    idx = np.flatnonzero(prom.ravel() >= min_prominence * span)
    idx = idx[np.argsort(-a.ravel()[idx], kind="stable")]
    return np.stack(np.unravel_index(idx, a.shape), axis=1).astype(np.int64)


def site_spacing(sites: np.ndarray, geom: CellGeometry) -> float | None:
    """Shortest distance (px) between two column sites, periodic images included (None with no site)."""
    if len(sites) == 0:
        return None
    frac = sites / np.array([geom.n1, geom.n2], dtype=np.float64)
    pos = frac @ np.stack([geom.a1, geom.a2])
    best = math.inf
    for i in range(-2, 3):
        for j in range(-2, 3):
            t = i * geom.a1 + j * geom.a2
            diff = pos[:, None, :] - pos[None, :, :] + t
            dist = np.hypot(diff[..., 0], diff[..., 1])
            if i == 0 and j == 0:
                dist[np.diag_indices(len(pos))] = math.inf
            best = min(best, float(dist.min()))
    return best


def relative_heights(avg: np.ndarray, sites: np.ndarray) -> np.ndarray:
    floor = float(avg.min())
    vals = avg[sites[:, 0], sites[:, 1]] - floor
    ref = float(vals[0])
    if not ref > 0:
        return np.zeros(len(sites))
    return vals / ref


# ------------------------------------------------------------------------------------------------ residual

def _periodic_part(u: np.ndarray) -> np.ndarray:
    """Moisan's periodic component of ``u``: the image without the FFT's border discontinuity (linear in u)."""
    from stem_denoise.evaluation.filters import _periodic_smooth

    return _periodic_smooth(u)[0]


def _bragg_windows(power: np.ndarray, vectors, *, order: int = BRAGG_ORDER, snr: float = BRAGG_SNR,
                   radius_bins: float = BRAGG_RADIUS_BINS) -> np.ndarray:
    """Boolean mask (full FFT layout) of the windows around every significant Bragg peak of a lattice, DC out."""
    a1, a2 = vectors
    h, w = power.shape
    G = np.linalg.inv(np.stack([a1, a2], axis=1))
    mask = np.zeros((h, w), dtype=bool)
    r = int(math.ceil(radius_bins))
    half = 1
    for hh in range(-order, order + 1):
        for kk in range(-order, order + 1):
            if hh == 0 and kk == 0:
                continue
            g = hh * G[0] + kk * G[1]
            if abs(g[0]) >= 0.5 or abs(g[1]) >= 0.5:
                continue
            yb, xb = g[0] * h, g[1] * w
            yi, xi = int(round(yb)), int(round(xb))
            if math.hypot(yi, xi) <= radius_bins + 1:
                continue  # too close to DC (slow features), not a Bragg peak of this frame
            if _peak_power(power, yi, xi, half) < snr * max(_local_floor(power, yi, xi, max(half, r)), 1e-300):
                continue
            ys = np.arange(yi - r, yi + r + 1)
            xs = np.arange(xi - r, xi + r + 1)
            dist = np.hypot(ys[:, None] - yb, xs[None, :] - xb)
            sel = dist <= radius_bins
            mask[np.ix_(ys % h, xs % w)] |= sel
    return mask


def bragg_power_fraction(raw, output, lattice_vectors_px) -> tuple[float, int]:
    """Power of ``raw - output`` at the raw frame's Bragg peaks over the raw frame's power there.

    ``lattice_vectors_px``: ``(a1, a2)`` (row, col) px. The windows (radius 2 Fourier bins) sit at every lattice
    point ``h g1 + k g2`` (``|h|, |k| <= 4``, below Nyquist, DC and its neighbourhood excluded) where the raw
    power spectrum (periodic component, no border cross) stands 10 x above its local floor. Returns
    ``(fraction, number of peaks)``; the fraction is 0 for ``output == raw`` and about 1 when the output holds
    no lattice.
    """
    r = as_real_image(raw, "raw")
    o = as_real_image(output, "output")
    a1, a2 = (np.asarray(v, dtype=np.float64) for v in lattice_vectors_px)
    Fr = scipy.fft.fft2(_periodic_part(r - r.mean()))
    pr = Fr.real ** 2 + Fr.imag ** 2
    mask = _bragg_windows(pr, (a1, a2))
    res = r - o
    Fe = scipy.fft.fft2(_periodic_part(res - res.mean()))
    pe = Fe.real ** 2 + Fe.imag ** 2
    denom = float(pr[mask].sum())
    frac = float(pe[mask].sum() / denom) if denom > 0 else float("nan")
    return frac, _count_windows(mask)


def _ring_median(power: np.ndarray) -> np.ndarray:
    """Median of a full-layout power spectrum over rings one bin wide (of the shorter axis), as a map."""
    h, w = power.shape
    n = min(h, w)
    ring = np.hypot(scipy.fft.fftfreq(h)[:, None] * n, scipy.fft.fftfreq(w)[None, :] * n).astype(np.int64)
    flat = ring.ravel()
    order = np.argsort(flat, kind="stable")
    rs = flat[order]
    vals = power.ravel()[order]
    bounds = np.flatnonzero(np.diff(rs)) + 1
    med = np.zeros(int(rs[-1]) + 1)
    for idx, chunk in zip(np.split(rs, bounds), np.split(vals, bounds)):
        med[idx[0]] = np.median(chunk)
    return med[ring]


def raw_noise(image, long_period_px: float, *, snr: float = 4.0) -> np.ndarray:
    """The noise of a raw frame, estimated without truth: the image with every significant spectral feature
    removed (image units).

    Fourier bins of the periodic component whose power, averaged over 3 x 3 bins, stands ``snr`` times above the
    median power at the same spatial frequency (Bragg peaks, however drift broadens them, and other lattice or
    scan structure) are zeroed with a one-bin margin, and so is every frequency below half a cycle per
    ``long_period_px`` (the slow background); what is left is mostly noise, with the noise's own correlations.
    """
    x = as_real_image(image, "image")
    F = scipy.fft.fft2(_periodic_part(x - x.mean()))
    power = ndimage.uniform_filter(F.real ** 2 + F.imag ** 2, 3, mode="wrap")
    notch = ndimage.binary_dilation(power > snr * _ring_median(power), iterations=1)
    h, w = x.shape
    notch |= np.hypot(scipy.fft.fftfreq(h)[:, None], scipy.fft.fftfreq(w)[None, :]) < 0.5 / float(long_period_px)
    return np.real(scipy.fft.ifft2(np.where(notch, 0, F)))


def _count_windows(mask: np.ndarray) -> int:
    _, n = ndimage.label(mask)
    return int(n)


def lag1_correlations(image) -> tuple[float | None, float | None]:
    """Lag-1 correlation of an image with itself one pixel along the rows and one pixel down the columns
    (mean removed; None for a constant image)."""
    x = as_real_image(image, "image")
    x = x - x.mean()

    def corr(p, q):
        den = math.sqrt(float(np.sum(p * p)) * float(np.sum(q * q)))
        return float(np.sum(p * q)) / den if den > 0 else None

    return corr(x[:, :-1], x[:, 1:]), corr(x[:-1, :], x[1:, :])


def _bond_spread(cols: np.ndarray, pixel_pm: float) -> float | None:
    if len(cols) < 3:
        return None
    dist, _ = cKDTree(cols).query(cols, k=2)
    return float(np.std(dist[:, 1]) * pixel_pm)


def _rounded(v, nd=6):
    if v is None:
        return None
    v = float(v)
    return round(v, nd) if math.isfinite(v) else v


# ------------------------------------------------------------------------------------------------ metrics

def real_frame_metrics(raw, output, *, lattice=None, period_px: float | None = None,
                       pixel_size_pm: float | None = None) -> dict:
    """No-truth checks of a denoiser's ``output`` against the ``raw`` frame it came from (module docstring).

    ``lattice``: None (measured on ``raw``), a :class:`~data_prep.lattice.LatticeInfo` or a :class:`CellGeometry`
    of ``raw`` (reuse one for several outputs of the same frame); the output is always averaged on the raw frame's
    cells. ``period_px``: the nearest-neighbour column spacing (px) for the column finder and the light smoothing
    (sigma = period/10) applied to raw and output before counting; default the shortest distance between two
    distinct column sites (prominence >= 15 %) of the raw cell average, kept between a quarter and one times the
    shorter lattice vector. ``pixel_size_pm`` adds the bond-length
    spread (pm). Returns a JSON-able dict: ``cell_r``, ``sites`` (fractional and px position, relative heights in
    raw and output, relative error), ``n_sites``, ``site_height_max_rel_err``, ``n_columns_raw``,
    ``n_columns_out``, ``count_rel_diff``, ``bragg_power_frac``, ``n_bragg_peaks``, ``resid_corr_row``/``_col``,
    ``raw_hp_corr_row``/``_col``, ``bond_spread_pm``/``bond_spread_pm_raw`` (with a pixel size), ``period_px``,
    ``period_source`` and ``lattice`` (a description). Undefined values are None.
    """
    r = as_real_image(raw, "raw")
    o = as_real_image(output, "output")
    if r.shape != o.shape:
        raise InputError(f"raw {r.shape} and output {o.shape} differ in shape")
    if pixel_size_pm is not None and not (math.isfinite(float(pixel_size_pm)) and float(pixel_size_pm) > 0):
        raise InputError(f"pixel_size_pm must be a positive number, got {pixel_size_pm}")
    geom = lattice if isinstance(lattice, CellGeometry) else cell_geometry(r, lattice, period_px=period_px)
    if tuple(geom.shape) != tuple(r.shape):
        raise InputError(f"cell geometry was made for a {geom.shape} image, got {r.shape}")
    avg_raw = _average_on(r, geom)
    avg_out = _average_on(o, geom)

    m: dict = {}
    sr, so = float(avg_raw.std()), float(avg_out.std())
    m["cell_r"] = (float(np.corrcoef(avg_raw.ravel(), avg_out.ravel())[0, 1]) if sr > 0 and so > 0
                   else (1.0 if np.array_equal(avg_raw, avg_out) else 0.0))

    sites = cell_sites(avg_raw)
    h_raw = relative_heights(avg_raw, sites) if len(sites) else np.zeros(0)
    h_out = relative_heights(avg_out, sites) if len(sites) else np.zeros(0)
    basis = np.stack([geom.a1, geom.a2])
    site_list = []
    errs = []
    for s, hr, ho in zip(sites, h_raw, h_out):
        frac = s / np.array([geom.n1, geom.n2], dtype=np.float64)
        px = frac @ basis
        err = abs(ho - hr) / hr if hr > 0 else None
        if err is not None:
            errs.append(err)
        site_list.append({"u": round(float(frac[0]), 4), "v": round(float(frac[1]), 4),
                          "row_px": round(float(px[0]), 3), "col_px": round(float(px[1]), 3),
                          "h_raw": _rounded(hr), "h_out": _rounded(ho), "rel_err": _rounded(err)})
    m["sites"] = site_list
    m["n_sites"] = len(site_list)
    m["site_height_max_rel_err"] = float(max(errs)) if errs else None

    if period_px is not None:
        period, source = float(period_px), "given"
        if not (math.isfinite(period) and period >= 3.0):
            raise InputError(f"period_px must be a finite number >= 3 px, got {period_px}")
    else:
        spacing = site_spacing(cell_sites(avg_raw, min_prominence=SPACING_PROMINENCE), geom)
        short = min(float(np.hypot(*geom.a1)), float(np.hypot(*geom.a2)))
        if spacing is None:
            period, source = short, "lattice (no site in the cell average)"
        else:
            period, source = min(max(spacing, short / 4.0, 3.0), short), "cell-average sites"
    smooth_raw = ndimage.gaussian_filter(r, LIGHT_SMOOTH_FRAC * period, mode="reflect")
    cols_raw = find_columns(smooth_raw, period)
    cols_out = find_columns(ndimage.gaussian_filter(o, LIGHT_SMOOTH_FRAC * period, mode="reflect"), period)
    m["n_columns_raw"] = int(len(cols_raw))
    m["n_columns_out"] = int(len(cols_out))
    m["count_rel_diff"] = (abs(len(cols_out) - len(cols_raw)) / len(cols_raw)) if len(cols_raw) else None
    # Diagnostic, not a check: the counts at other light smoothings ("0.13:846/844" = raw/output at 0.13 periods).
    # A raw count that falls quickly with a little more smoothing while the output's stays holds noise detections.
    m["counts_by_smoothing"] = ";".join(
        f"{f:g}:{len(find_columns(ndimage.gaussian_filter(r, f * period, mode='reflect'), period))}/"
        f"{len(find_columns(ndimage.gaussian_filter(o, f * period, mode='reflect'), period))}"
        for f in COUNT_SMOOTHINGS)

    frac, n_peaks = bragg_power_fraction(r, o, (geom.a1, geom.a2))
    raw_hp = raw_noise(r, max(float(np.hypot(*geom.a1)), float(np.hypot(*geom.a2))))
    m["bragg_power_frac"] = frac if math.isfinite(frac) else None
    m["n_bragg_peaks"] = n_peaks
    m["resid_corr_row"], m["resid_corr_col"] = lag1_correlations(r - o)
    m["raw_hp_corr_row"], m["raw_hp_corr_col"] = lag1_correlations(raw_hp)
    if pixel_size_pm is not None:
        m["bond_spread_pm"] = _bond_spread(cols_out, float(pixel_size_pm))
        m["bond_spread_pm_raw"] = _bond_spread(cols_raw, float(pixel_size_pm))
    m["period_px"] = round(period, 4)
    m["period_source"] = source
    m["lattice"] = geom.describe()
    for k, v in list(m.items()):
        if isinstance(v, (float, np.floating)):
            m[k] = _rounded(v)
    return m


def check_real_frame(metrics: dict, thresholds: dict = THRESHOLDS) -> dict:
    """Pass/fail of :func:`real_frame_metrics` against ``thresholds`` (``cell_r`` is a minimum, the others
    maxima); a metric that is missing or undefined fails. Returns ``{"pass": bool, "failures": [one line each]}``.
    """
    if not isinstance(metrics, dict):
        raise InputError(f"metrics must be a dict, got {type(metrics).__name__}")
    unknown = set(thresholds) - set(THRESHOLDS)
    if unknown:
        raise InputError(f"unknown threshold(s) {sorted(unknown)}; known: {', '.join(THRESHOLDS)}")
    why = {
        "cell_r": "unit-cell averages of raw and output differ",
        "site_height_max_rel_err": "a column site's relative height changed",
        "count_rel_diff": "column count changed",
        "bragg_power_frac": "the residual holds lattice signal",
    }
    failures = []
    for key, limit in thresholds.items():
        try:
            limit = float(limit)
        except (TypeError, ValueError):
            raise InputError(f"threshold {key} must be a number, got {limit!r}") from None
        v = metrics.get(key)
        if v is None or not math.isfinite(float(v)):
            failures.append(f"{key} undefined ({why[key]} cannot be checked)")
            continue
        v = float(v)
        if key in _HIGHER_IS_BETTER:
            if v < limit:
                failures.append(f"{key} {v:.4f} < {limit:g}: {why[key]}")
        elif v > limit:
            extra = ""
            if key == "count_rel_diff":
                extra = f" ({metrics.get('n_columns_raw')} raw, {metrics.get('n_columns_out')} output)"
            failures.append(f"{key} {v:.4f} > {limit:g}: {why[key]}{extra}")
    return {"pass": not failures, "failures": failures}


# ------------------------------------------------------------------------------------------------ real-frame runs

METHOD_NAMES = ("noisy", "gaussian_1px", "gaussian_2px", "median", "nlm", "bm3d", "bragg")
#: The shared real frames beside the repository (``../shared/real/``): the default of every command that scores real
#: frames, used where the folder exists.
DEFAULT_REAL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "real"
PEER_NAMES = ("n2v2", "structn2v", "supervised")  # the learned peers (opt-in: N2V trains on every frame)
CSV_COLUMNS = (
    "frame", "method", "label", "pass", "cell_r", "site_height_max_rel_err", "n_sites", "n_columns_raw",
    "n_columns_out", "count_rel_diff", "counts_by_smoothing", "bragg_power_frac", "n_bragg_peaks", "resid_corr_row",
    "resid_corr_col", "raw_hp_corr_row", "raw_hp_corr_col", "bond_spread_pm", "bond_spread_pm_raw", "period_px",
    "lattice", "n_cells", "max_shift_px", "pixel_size_pm", "height", "width", "time_s", "failures", "notes",
)


def fixed_gaussian_method(sigma_px: float):
    """A :class:`stem_denoise.evaluation.benchmark.Method` blurring with a fixed Gaussian of ``sigma_px`` (px): the
    truth-free stand-in for the benchmark's oracle Gaussian."""
    from stem_denoise.evaluation import filters
    from stem_denoise.evaluation.benchmark import Method

    sigma = float(sigma_px)

    def fn(noisy, ctx):
        return filters.gaussian_denoise(noisy, sigma)

    return Method(f"gaussian_{sigma:g}px".replace(".", "p"), fn, f"Gaussian (fixed sigma {sigma:g} px)")


def real_methods(names=None, *, checkpoints=(), labels=(), device: str | None = None,
                 working_scale: str | None = None, n2v_steps: int | None = None,
                 supervised_model=None, noise_level_factor: float | None = None) -> tuple[list, list[str]]:
    """The methods to run on real frames and ``"name: reason"`` for those left out.

    ``names`` (default all of :data:`METHOD_NAMES`): the benchmark's classical filters
    (:func:`stem_denoise.evaluation.benchmark.classical_methods`) with the oracle Gaussian replaced by fixed Gaussians
    of sigma 1 and 2 px; BM3D only when its optional package is installed; and, asked for by name, the learned
    peers of :data:`PEER_NAMES`: CAREamics N2V2 / N2V2 + structN2V trained on each frame alone (``n2v_steps``
    overrides their budget; left out with the reason when CAREamics is missing) and the supervised-on-simulation
    baseline (``supervised_model``: its export, required). Every path in ``checkpoints`` adds a CycleGAN generator
    (:func:`stem_denoise.evaluation.benchmark.cyclegan_method`), labelled by ``labels`` in order where given, run at
    ``working_scale`` with ``noise_level_factor`` (:func:`cyclegan.infer.denoise_array`).
    """
    import dataclasses

    from stem_denoise.evaluation import filters
    from stem_denoise.evaluation.benchmark import (
        available_n2v_method,
        classical_methods,
        cyclegan_method,
        supervised_method,
    )

    wanted = list(METHOD_NAMES if names is None else names)
    bad = [n for n in wanted if n not in METHOD_NAMES + PEER_NAMES]
    if bad:
        raise InputError(f"unknown method(s) {bad}; choose from {', '.join(METHOD_NAMES + PEER_NAMES)}")
    checkpoints, labels = list(checkpoints or ()), list(labels or ())
    if len(labels) > len(checkpoints):
        raise InputError(f"{len(labels)} --label for {len(checkpoints)} --checkpoint: at most one per checkpoint")
    classical = classical_methods()
    methods, skipped = [], []
    for name in wanted:
        if name == "gaussian_1px":
            methods.append(fixed_gaussian_method(1.0))
        elif name == "gaussian_2px":
            methods.append(fixed_gaussian_method(2.0))
        elif name == "bm3d" and not filters.bm3d_available():
            skipped.append("bm3d: the optional 'bm3d' package is not installed (non-commercial licence)")
        elif name in ("n2v2", "structn2v"):
            m, why = available_n2v_method(name, steps=n2v_steps)
            if m is None:
                skipped.append(why)
            else:
                methods.append(m)
        elif name == "supervised":
            if supervised_model is None or not Path(supervised_model).is_file():
                raise InputError("method supervised needs the supervised baseline's export: "
                                 f"--supervised-model {supervised_model or 'PATH'} (no such file); "
                                 "benchmark.py --peers trains one")
            methods.append(supervised_method(supervised_model, device=device, working_scale=working_scale))
        else:
            m = classical[name]
            methods.append(dataclasses.replace(m, label="noisy input (identity)") if name == "noisy" else m)
    for k, ckpt in enumerate(checkpoints):
        path = Path(ckpt)
        if not path.is_file():
            raise InputError(f"--checkpoint {path}: no such file")
        m = cyclegan_method(path, device=device, working_scale=working_scale, noise_level_factor=noise_level_factor)
        name = "cyclegan" if len(checkpoints) == 1 else f"cyclegan{k + 1}"
        label = labels[k] if k < len(labels) else f"CycleGAN ({path.stem})"
        methods.append(dataclasses.replace(m, name=name, label=label))
    return methods, skipped


def real_methods_from(methods) -> list:
    """The benchmark's methods as they run on real frames (no truth): every oracle method (the oracle Gaussian) is
    replaced by fixed Gaussians of sigma 1 and 2 px, everything else runs as it is."""
    out, fixed_added = [], False
    for m in methods:
        if m.oracle:
            if not fixed_added:
                out += [fixed_gaussian_method(1.0), fixed_gaussian_method(2.0)]
                fixed_added = True
            continue
        out.append(m)
    return out


def _fmt_csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else f"{float(v):.6g}"
    return str(v)


def write_real_csv(rows, path) -> None:
    """``real_results.csv``: one line per (frame, method) with the columns of :data:`CSV_COLUMNS`."""
    import csv
    import io

    from stem_denoise.common.atomic import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([_fmt_csv(r.get(k)) for k in CSV_COLUMNS])
    atomic_write_bytes(path, buf.getvalue().encode())


def _cell(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return fmt.format(v)


def write_real_markdown(rows, path, *, frames: dict, skipped=(), errors=(), thresholds=THRESHOLDS) -> None:
    """``real_results.md``: how to read it, then one table per frame (``frames``: name -> description dict)."""
    from stem_denoise.common.atomic import atomic_write_bytes

    t = thresholds
    lines = [
        "# Real frames: checks without ground truth", "",
        "Each output is compared with the raw frame on what must not change (`stem_denoise.evaluation.realframes`):",
        f"*cell r*: Pearson r of the unit-cell averages of raw and output on the same cells (pass >= "
        f"{t.get('cell_r', 'n/a')}); *worst site*: largest relative change of a column site's height in the cell "
        f"average (pass <= {t.get('site_height_max_rel_err', 'n/a')}); *columns*: columns found on the lightly "
        f"smoothed raw frame / output (pass: differ by <= {100 * float(t.get('count_rel_diff', float('nan'))):g} %); "
        f"*Bragg %*: power of the residual (raw - output) at the raw Bragg peaks, in % of the raw power there "
        f"(pass <= {100 * float(t.get('bragg_power_frac', float('nan'))):g} %); *resid. corr.*: lag-1 correlation "
        "of the residual along rows / down columns, to compare with the raw noise's (in each frame's heading); "
        "*bond spread*: std of nearest-neighbour column distances in the output (raw in the heading).", "",
    ]
    by_frame: dict = {}
    for r in rows:
        by_frame.setdefault(r["frame"], []).append(r)
    for name, desc in frames.items():
        rs = by_frame.get(name, [])
        lines += [f"## {name}", ""]
        if desc.get("height") is None:
            lines += ["No lattice could be measured on this frame (see Errors); nothing was checked.", ""]
            continue
        lines.append(
            f"{desc.get('height')} x {desc.get('width')} px, pixel {_cell(desc.get('pixel_size_pm'), '{:.2f}')} pm; "
            f"lattice {desc.get('lattice', 'n/a')}, {desc.get('n_cells', 'n/a')} cells averaged (local shifts up "
            f"to {_cell(desc.get('max_shift_px'), '{:.2f}')} px); column spacing "
            f"{_cell(desc.get('period_px'), '{:.2f}')} px; {desc.get('n_sites', 'n/a')} column site(s) in the cell; "
            f"raw noise lag-1 corr. "
            f"{_cell(desc.get('raw_hp_corr_row'), '{:+.2f}')} / {_cell(desc.get('raw_hp_corr_col'), '{:+.2f}')}; "
            f"raw bond spread {_cell(desc.get('bond_spread_pm_raw'), '{:.1f}')} pm.")
        lines.append("")
        if not rs:
            lines += ["No method ran on this frame (see Errors).", ""]
            continue
        lines += ["| method | cell r | worst site | columns raw/out | Bragg % | resid. corr. row/col | bond spread pm "
                  "| time s | result |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            bragg = r.get("bragg_power_frac")
            verdict = "**pass**" if r.get("pass") else "FAIL: " + "; ".join(r.get("failures_list", []))
            lines.append(
                f"| {r['label']} | {_cell(r.get('cell_r'), '{:.4f}')} | "
                f"{_cell(r.get('site_height_max_rel_err'), '{:.3f}')} | {r.get('n_columns_raw')}/"
                f"{r.get('n_columns_out')} | {_cell(None if bragg is None else 100 * bragg, '{:.2f}')} | "
                f"{_cell(r.get('resid_corr_row'), '{:+.2f}')} / {_cell(r.get('resid_corr_col'), '{:+.2f}')} | "
                f"{_cell(r.get('bond_spread_pm'), '{:.1f}')} | {_cell(r.get('time_s'), '{:.2f}')} | {verdict} |")
        lines.append("")
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s}" for s in dict.fromkeys(skipped)] + [""]
    if errors:
        lines += ["## Errors", ""] + [f"- {e}" for e in errors] + [""]
    atomic_write_bytes(path, "\n".join(lines).encode())


def _crop_slices(shape, period_px: float) -> tuple[slice, slice]:
    h, w = shape
    size = int(min(320, max(128, round(10 * period_px))))
    ch, cw = min(h, size), min(w, size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def _site_images(geom: CellGeometry, sites_frac: np.ndarray, shape) -> np.ndarray:
    """Every lattice translate of the fractional site positions that falls inside a ``shape`` px render."""
    pts = []
    basis = np.stack([geom.a1, geom.a2])
    corners = np.array([[0, 0], [0, shape[1]], [shape[0], 0], [shape[0], shape[1]]], dtype=np.float64)
    frac = np.linalg.solve(basis.T, corners.T)
    lo = np.floor(frac.min(axis=1)).astype(int) - 1
    hi = np.ceil(frac.max(axis=1)).astype(int) + 1
    for i in range(lo[0], hi[0] + 1):
        for j in range(lo[1], hi[1] + 1):
            p = (sites_frac + np.array([i, j])) @ basis
            pts.append(p)
    if not pts:
        return np.zeros((0, 2))
    p = np.concatenate(pts)
    ok = (p[:, 0] >= -0.5) & (p[:, 0] <= shape[0] - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= shape[1] - 0.5)
    return p[ok]


def real_frame_panel(frame: str, raw: np.ndarray, outputs: dict, geometry: CellGeometry, rows, path, *,
                     thresholds=THRESHOLDS) -> None:
    """Figure for one real frame: top row a central crop of the raw frame and of every output (one grey scale);
    middle row the raw noise estimate (:func:`raw_noise`) and every residual ``raw - output`` on one symmetric
    scale; bottom row the raw and every output's unit-cell average on the same cells (two cells, real-space
    geometry, raw grey scale), with the raw column sites circled (red: height changed beyond the threshold)."""
    from stem_denoise.evaluation.report import _mpl, _save_fig

    plt = _mpl()
    by_name = {r["method"]: r for r in rows}
    names = [n for n in outputs if n in by_name]
    period = float(next(iter(by_name.values()))["period_px"]) if by_name else float(np.hypot(*geometry.a1))
    sl = _crop_slices(raw.shape, period)
    raw64 = np.asarray(raw, dtype=np.float64)
    crop = raw64[sl]
    lo, hi = np.percentile(crop, [0.5, 99.5])
    long_p = max(float(np.hypot(*geometry.a1)), float(np.hypot(*geometry.a2)))
    noise = raw_noise(raw64, long_p)[sl]
    rlim = 3.0 * float(noise.std()) or 1.0
    avg_raw = CellAverage(_average_on(raw64, geometry), geometry, geometry.n_cells)
    render_raw = avg_raw.render()
    clo, chi = float(render_raw.min()), float(render_raw.max())
    sites = cell_sites(avg_raw.average)
    sites_frac = sites / np.array([geometry.n1, geometry.n2], dtype=np.float64)
    site_pts = _site_images(geometry, sites_frac, render_raw.shape)
    limit = float(thresholds.get("site_height_max_rel_err", math.inf))

    ncol = len(names) + 1
    fig, axes = plt.subplots(3, ncol, figsize=(2.4 * ncol, 8.4), squeeze=False)
    for j, name in enumerate(["raw"] + names):
        ax_img, ax_res, ax_cell = axes[:, j]
        if name == "raw":
            ax_img.imshow(crop, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax_img.set_title("raw", fontsize=8)
            ax_res.imshow(noise, cmap="RdBu_r", vmin=-rlim, vmax=rlim, interpolation="nearest")
            ax_res.set_xlabel("raw noise estimate", fontsize=7)
            ax_cell.imshow(render_raw, cmap="gray", vmin=clo, vmax=chi, interpolation="nearest")
            ax_cell.set_xlabel(f"raw cell average ({geometry.n_cells} cells)", fontsize=7)
            ax_cell.scatter(site_pts[:, 1], site_pts[:, 0], s=40, facecolors="none", edgecolors="cyan",
                            linewidths=0.8)
        else:
            r = by_name[name]
            out = np.asarray(outputs[name], dtype=np.float64)
            verdict = "pass" if r.get("pass") else "FAIL"
            ax_img.imshow(out[sl], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax_img.set_title(f"{r['label']}\n{verdict}", fontsize=7)
            ax_res.imshow(raw64[sl] - out[sl], cmap="RdBu_r", vmin=-rlim, vmax=rlim, interpolation="nearest")
            bragg = r.get("bragg_power_frac")
            ax_res.set_xlabel(f"raw - output: Bragg {_cell(None if bragg is None else 100 * bragg, '{:.1f}')} %, "
                             f"corr {_cell(r.get('resid_corr_row'), '{:+.2f}')}/"
                             f"{_cell(r.get('resid_corr_col'), '{:+.2f}')}", fontsize=6)
            avg = CellAverage(_average_on(out, geometry), geometry, geometry.n_cells).render(render_raw.shape)
            ax_cell.imshow(avg, cmap="gray", vmin=clo, vmax=chi, interpolation="nearest")
            ax_cell.set_xlabel(f"cell r {_cell(r.get('cell_r'), '{:.4f}')}, worst site "
                              f"{_cell(r.get('site_height_max_rel_err'), '{:.3f}')}", fontsize=7)
            errs = np.array([s.get("rel_err") if s.get("rel_err") is not None else np.inf
                             for s in r.get("sites", [])])
            if len(errs) == len(sites):
                bad_frac = sites_frac[errs > limit]
                good_frac = sites_frac[errs <= limit]
                for fr, colour in ((good_frac, "cyan"), (bad_frac, "red")):
                    if len(fr):
                        pts = _site_images(geometry, fr, render_raw.shape)
                        ax_cell.scatter(pts[:, 1], pts[:, 0], s=40, facecolors="none", edgecolors=colour,
                                        linewidths=0.8)
        for ax in (ax_img, ax_res, ax_cell):
            ax.set_xticks([])
            ax.set_yticks([])
    ys, xs = sl
    fig.suptitle(f"{frame}: {raw.shape[0]}x{raw.shape[1]} px, crop rows {ys.start}-{ys.stop}, cols "
                 f"{xs.start}-{xs.stop}; residual scale +-{rlim:.3g}", fontsize=9)
    fig.tight_layout(h_pad=1.5)
    _save_fig(fig, path)
    plt.close(fig)


def _frame_name(path) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)


def output_paths(out_dir, frames) -> list:
    """The files :func:`run_realcheck` writes into ``out_dir`` for ``frames`` (to refuse overwriting them)."""

    out = Path(out_dir)
    return [out / "real_results.csv", out / "real_results.md"] + [out / f"real_{_frame_name(Path(f))}.png"
                                                                   for f in frames]


def run_realcheck(frames, methods, out_dir, *, skipped=(), thresholds=THRESHOLDS, log=print,
                  period_factor: float = 1.0, noise_free: bool = False) -> dict:
    """Run every method on every real frame, score each output with :func:`real_frame_metrics` (the cell geometry
    and column spacing measured once per raw frame) and :func:`check_real_frame`, and write
    ``real_results.csv``, ``real_results.md`` and ``real_<frame>.png`` into ``out_dir``.

    Methods get a :class:`stem_denoise.evaluation.benchmark.MethodContext` whose ``period_px`` is the frame's column
    spacing
    (px), whose ``lattice_period_px`` (what the CycleGAN resamples by, as ``denoise.py`` would) is the measured
    lattice period times ``period_factor``, and whose pixel size is the file's. A method that raises is recorded
    and the others still run; so is a frame without a measurable lattice. ``noise_free``: every frame is replaced
    by its :func:`tiled_cell_average` first (what the methods do to the frame's columns without noise). Returns
    ``{"rows", "errors", "skipped", "paths", "frames"}``.
    """
    import time

    from data_prep.io import read_micrograph
    from stem_denoise.common.atomic import make_output_dir
    from stem_denoise.evaluation.benchmark import MethodContext, call_method

    out = make_output_dir(out_dir)
    rows, errors, skipped = [], [], list(skipped)
    frame_desc: dict = {}
    figures = []
    for path in frames:
        path = Path(path)
        name = _frame_name(path)
        try:
            raw, meta = read_micrograph(path)
            raw = np.ascontiguousarray(raw, dtype=np.float32)
            pixel_pm = meta.pixel_size_in("pm")
            t0 = time.perf_counter()
            if noise_free:
                raw = tiled_cell_average(raw)
            geom = cell_geometry(raw)
            base = real_frame_metrics(raw, raw, lattice=geom, pixel_size_pm=pixel_pm)
        except InputError as exc:
            errors.append(f"{name}: {exc}")
            log(f"error: {name}: {exc}")
            frame_desc[name] = {"height": None, "width": None}
            continue
        lat = base["lattice"]
        frame_desc[name] = {
            "height": raw.shape[0], "width": raw.shape[1], "pixel_size_pm": pixel_pm, "n_cells": lat["n_cells"],
            "lattice": f"{lat['type']} {lat['period_px']:.2f} x {lat['period2_px']:.2f} px",
            "max_shift_px": lat["max_shift_px"], "period_px": base["period_px"], "n_sites": base["n_sites"],
            "raw_hp_corr_row": base["raw_hp_corr_row"], "raw_hp_corr_col": base["raw_hp_corr_col"],
            "bond_spread_pm_raw": base.get("bond_spread_pm_raw"),
        }
        shown = f"{name} (noise-free: tiled cell average)" if noise_free else name
        log(f"{shown}: {raw.shape[0]}x{raw.shape[1]} px, {frame_desc[name]['lattice']}, {lat['n_cells']} cells, "
            f"column spacing {base['period_px']:.2f} px ({time.perf_counter() - t0:.1f} s)")
        outputs = {}
        frame_rows = []
        for m in methods:
            too_large = m.size_skip(raw.shape, name)
            if too_large:
                skipped.append(too_large)
                continue
            ctx = MethodContext(name, float(base["period_px"]), pixel_pm,
                                lattice_period_px=float(lat["period_px"]) * float(period_factor))
            out_img, elapsed = call_method(m, raw, ctx, name, skipped, errors)
            if out_img is None:
                continue
            met = real_frame_metrics(raw, out_img, lattice=geom, period_px=base["period_px"],
                                     pixel_size_pm=pixel_pm)
            verdict = check_real_frame(met, thresholds)
            row = {"frame": name, "method": m.name, "label": m.label, "pass": verdict["pass"],
                   "failures": " | ".join(verdict["failures"]), "failures_list": verdict["failures"],
                   "time_s": elapsed, "pixel_size_pm": pixel_pm, "height": raw.shape[0], "width": raw.shape[1],
                   "lattice": frame_desc[name]["lattice"], "n_cells": lat["n_cells"],
                   "max_shift_px": lat["max_shift_px"],
                   "notes": " ".join(f"{k}={v}" for k, v in sorted(ctx.notes.items()))}
            row.update({k: v for k, v in met.items() if k not in ("lattice",)})
            frame_rows.append(row)
            outputs[m.name] = out_img
            log(f"  {m.label:34s} cell r {_cell(met['cell_r'], '{:.4f}')}  worst site "
                f"{_cell(met['site_height_max_rel_err'], '{:.3f}')}  columns {met['n_columns_raw']}/"
                f"{met['n_columns_out']}  Bragg {_cell(met['bragg_power_frac'], '{:.4f}')}  "
                f"{'pass' if verdict['pass'] else 'FAIL'}  ({elapsed:.1f} s)")
        rows.extend(frame_rows)
        fig_path = out / f"real_{name}.png"
        real_frame_panel(shown, raw, outputs, geom, frame_rows, fig_path, thresholds=thresholds)
        figures.append(str(fig_path))
    csv_path, md_path = out / "real_results.csv", out / "real_results.md"
    write_real_csv(rows, csv_path)
    write_real_markdown(rows, md_path, frames=frame_desc, skipped=skipped, errors=errors, thresholds=thresholds)
    return {"rows": rows, "errors": errors, "skipped": skipped, "frames": frame_desc,
            "paths": {"csv": str(csv_path), "markdown": str(md_path), "figures": figures}}
