"""Measure the lattice period and orientation of an atomic-resolution micrograph from its Fourier transform.

Method: the (centre-cropped, at most ``max_size`` square) image minus its mean is apodised with a 2-D Hann window
and Fourier transformed with 2x zero padding. Bragg peaks are the local maxima of the power spectrum that stand far
above a separable noise floor (the median power of each spectrum row times that of each column: this absorbs
fast-scan-correlated noise and per-row offsets, whose power lies along the k_x = 0 line; capped at ten times the
median, or the column's median along k_x = 0, so that the window leakage of a noise-free image, whose true floor is
round-off, cannot bury the peaks it comes from) and above a fraction of the strongest peak; slow features (dents,
thickness ramps, background) live below a low-frequency cut of three Fourier bins. Each peak is located to sub-bin
precision by a parabola through the log power. Every pair of peaks among the strongest and the lowest-frequency
ones proposes a (Lagrange-reduced) reciprocal basis; a proposal must index the strong peaks, and the one whose
lattice is most *complete* (a significant peak at every predicted low-order point) wins, the smallest reciprocal
cell among equally complete ones. A stray peak from a dent or a scan artefact never makes a complete lattice. A
peak at half a basis vector that repeats across the lattice doubles the cell (a perovskite's A/B contrast, or
first-order peaks of a large period below the search band). Finally the basis is fitted by weighted least squares
to all indexed peaks, harmonics included, which gives a precision far below 1 % on the period. The real-space basis
is the inverse of the reciprocal one. At least about four periods must fit across the crop.

Conventions (shared with :mod:`data_prep.simulate`): vectors are ``(row, col)`` in pixels with rows pointing
down; an angle is measured counter-clockwise *as displayed* from the +x (column) axis, so a vector of length
``L`` at angle ``theta`` is ``L * (-sin theta, cos theta)``. ``period_px`` is the length of the primary
(shortest) real-space lattice vector and ``angle_deg`` its direction, folded by the lattice symmetry: into
[0, 90) for square lattices (the vector of the two perpendicular ones that lies in [0, 90)), [0, 60) for
hexagonal ones, [0, 180) otherwise. For "rect" the shorter vector is the primary one and ``period2_px`` the
longer; ``angle2_deg`` is the direction of the second basis vector (a1 turned by +90 deg for square/rect,
+60 deg for hex) in [0, 180). A two-sublattice cell (perovskite) is reported as its Bravais lattice when the
sublattices differ enough in intensity to give the cell's own Bragg peaks, else as the finer lattice.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from stem_denoise.common.errors import InputError

__all__ = ["LatticeInfo", "measure_lattice", "lattice_vectors", "fold_angle", "angle_difference"]

_FOLD = {"square": 90.0, "hex": 60.0}
_HK = np.array([(h, k) for h in range(-12, 13) for k in range(0, 13) if k > 0 or h > 0], dtype=np.float64)


@dataclass
class LatticeInfo:
    """Result of :func:`measure_lattice` (pixels and degrees; conventions in the module docstring).

    ``strength`` is the power of the strongest Bragg peak over the local noise floor (a confidence measure);
    ``n_peaks`` the number of Bragg peaks used in the fit; ``residual_px`` the rms misfit of those peaks, in
    units of the (unpadded) Fourier bin.
    """

    period_px: float
    angle_deg: float
    period2_px: float
    angle2_deg: float
    lattice: str
    strength: float = 0.0
    n_peaks: int = 0
    residual_px: float = 0.0

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in asdict(self).items()}


def fold_angle(angle_deg: float, lattice: str) -> float:
    """Fold an angle (degrees) by the symmetry of ``lattice``: [0, 90) square, [0, 60) hex, else [0, 180)."""
    fold = _FOLD.get("square" if lattice == "perovskite" else lattice, 180.0)
    a = float(angle_deg) % fold
    return 0.0 if a >= fold - 1e-9 else a


def angle_difference(a_deg: float, b_deg: float, lattice: str) -> float:
    """Smallest absolute difference between two angles modulo the lattice's symmetry fold (degrees)."""
    fold = _FOLD.get("square" if lattice == "perovskite" else lattice, 180.0)
    d = (float(a_deg) - float(b_deg)) % fold
    return min(d, fold - d)


def _unit(angle_deg: float) -> np.ndarray:
    t = math.radians(angle_deg)
    return np.array([-math.sin(t), math.cos(t)])


def _angle_of(v: np.ndarray) -> float:
    return math.degrees(math.atan2(-v[0], v[1]))


def lattice_vectors(info: LatticeInfo) -> tuple[np.ndarray, np.ndarray]:
    """The two real-space basis vectors ``(a1, a2)`` of a measured lattice as (row, col) arrays in pixels.

    ``a1`` has length ``period_px`` at ``angle_deg``; ``a2`` has length ``period2_px`` along ``angle2_deg``,
    turned so that it lies counter-clockwise (as displayed) of a1 by less than 180 deg (+90 deg for a square or
    rectangular lattice, +60 deg for a hexagonal one).
    """
    a1 = float(info.period_px) * _unit(float(info.angle_deg))
    ang2 = float(info.angle2_deg) % 180.0
    if (ang2 - float(info.angle_deg)) % 360.0 >= 180.0:
        ang2 += 180.0
    a2 = float(info.period2_px) * _unit(ang2)
    return a1, a2


# ----------------------------------------------------------------------------------------------------------------
def _prepare(image) -> np.ndarray:
    try:
        arr = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - anything that is not array-like
        raise InputError(f"cannot read the image as an array ({exc})") from None
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2:
        raise InputError(f"lattice measurement needs a 2-D image, got shape {arr.shape}")
    if arr.dtype.kind not in "uifb":
        raise InputError(f"lattice measurement needs a numeric image, got dtype {arr.dtype}")
    if min(arr.shape) < 24:
        raise InputError(f"image {arr.shape} is too small to measure a lattice (needs >= 24 x 24)")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError("image contains NaN or Inf values")
    return arr


def _subbin(logp: np.ndarray, iy: np.ndarray, ix: np.ndarray, rowflip: np.ndarray):
    """Parabolic sub-bin offsets of maxima at (iy, ix) of the half-plane ``logp`` along each axis (+-0.5 max).

    Column 0 is k_x = 0; its left neighbour is the mirrored bin ``(rowflip[iy], 1)`` since P(-k) = P(k).
    """
    h, w = logp.shape
    ym, yp = (iy - 1) % h, (iy + 1) % h
    xp = np.clip(ix + 1, 0, w - 1)
    c = logp[iy, ix]
    left = np.where(ix > 0, logp[iy, np.maximum(ix - 1, 0)], logp[rowflip[iy], 1])
    dy_den = logp[ym, ix] - 2 * c + logp[yp, ix]
    dx_den = left - 2 * c + logp[iy, xp]
    with np.errstate(divide="ignore", invalid="ignore"):
        dy = np.where(dy_den < 0, 0.5 * (logp[ym, ix] - logp[yp, ix]) / dy_den, 0.0)
        dx = np.where(dx_den < 0, 0.5 * (left - logp[iy, xp]) / dx_den, 0.0)
    return np.clip(dy, -0.5, 0.5), np.clip(dx, -0.5, 0.5)


def _reduce(b1: np.ndarray, b2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of a 2-D basis: shortest vector first, |b1.b2| <= |b1|^2 / 2."""
    b1, b2 = b1.astype(np.float64), b2.astype(np.float64)
    for _ in range(100):
        if b1 @ b1 > b2 @ b2:
            b1, b2 = b2, b1
        mu = round(float(b1 @ b2) / float(b1 @ b1))
        if mu == 0:
            break
        b2 = b2 - mu * b1
    if b1 @ b1 > b2 @ b2:
        b1, b2 = b2, b1
    return b1, b2


def _index(peaks: np.ndarray, g1: np.ndarray, g2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer indices (h, k) of peaks in the basis (g1, g2) and the fractional misfit of each."""
    G = np.stack([g1, g2], axis=1)
    hk = peaks @ np.linalg.inv(G).T
    hk_int = np.round(hk)
    return hk_int, np.abs(hk - hk_int).max(axis=1)


def _peak_near(P, S, k, ph, pw, cy, pad) -> tuple[float, float]:
    """Power and noise ratio of the strongest bin within +-pad bins of frequency ``k`` = (ky, kx)."""
    if k[1] < 0:
        k = -k
    y = int(round(k[0] * ph)) + cy
    x = int(round(k[1] * pw))
    ys = np.arange(y - pad, y + pad + 1) % ph
    xs = np.abs(np.arange(x - pad, x + pad + 1))
    xs = xs[xs < P.shape[1]]
    if len(xs) == 0:
        return 0.0, 0.0
    block = P[np.ix_(ys, xs)]
    i = np.unravel_index(int(np.argmax(block)), block.shape)
    return float(block[i]), float(S[ys[i[0]], xs[i[1]]])


def _peaks_on_lattice(sig, g1, g2, ph, pw, cy, k_floor, order=4):
    """Bins (iy, ix) of significant bins (``sig``) within one padded bin of the low-order lattice points."""
    out_y, out_x = [], []
    for h in range(-order, order + 1):
        for k in range(0, order + 1):
            if k == 0 and h <= 0:
                continue
            g = h * g1 + k * g2
            if g[1] < 0:
                g = -g
            if np.hypot(*g) < k_floor or abs(g[0]) >= 0.49 or g[1] > 0.49:
                continue
            y = int(round(g[0] * ph)) + cy
            x = int(round(g[1] * pw))
            if 1 <= y < ph - 1 and 1 <= x < sig.shape[1] - 1 and sig[y, x]:
                out_y.append(y)
                out_x.append(x)
    return np.asarray(out_y, dtype=int), np.asarray(out_x, dtype=int)


def _fit(peaks, power, g1, g2, n_min, tol_bins=0.4):
    """Weighted least-squares fit of the reciprocal basis to the peaks it indexes.

    Returns (g1, g2, indices used, rms misfit in unpadded bins). Weights are the peak amplitudes.
    """
    used = np.zeros(0, dtype=int)
    resid = 0.0
    for it in range(4):
        hk, mis = _index(peaks, g1, g2)
        err = np.hypot(*(hk @ np.stack([g1, g2]) - peaks).T) * n_min
        ok = (mis < 0.15) & np.any(hk != 0, axis=1)
        if it > 0:
            ok &= err < tol_bins
        if ok.sum() < 2 or np.linalg.matrix_rank(hk[ok]) < 2:
            break
        A = hk[ok]
        wts = np.sqrt(power[ok])
        wts = wts / wts.max()
        sol, *_ = np.linalg.lstsq(A * wts[:, None], peaks[ok] * wts[:, None], rcond=None)
        g1, g2 = sol[0], sol[1]
        used = np.flatnonzero(ok)
        resid = float(np.sqrt(np.mean(np.sum((A @ sol - peaks[ok]) ** 2, axis=1))) * n_min)
    return g1, g2, used, resid


def measure_lattice(
    image,
    *,
    max_size: int = 1024,
    pad: int = 2,
    min_period_px: float = 2.5,
    max_period_px: float | None = None,
    snr_min: float = 40.0,
    rel_min: float = 0.02,
) -> LatticeInfo:
    """Measure the dominant lattice of a micrograph: period (px) and orientation (degrees) of its basis vectors.

    ``image``: 2-D array in any units (at most ``max_size`` x ``max_size`` of its centre is used). ``pad``: zero
    padding factor of the FFT. Basis vectors with periods from ``min_period_px`` to ``max_period_px`` (default:
    crop size / 6) are searched directly; periods up to about crop size / 3 are found through the cell-doubling
    check. A Bragg peak must exceed ``snr_min`` times the local noise floor and ``rel_min`` times the strongest
    peak's power. Raises :class:`InputError` for a bad image or when no lattice is found. Conventions and method
    are described in the module docstring. About 0.3-0.6 s for a 2048 x 2048 image on a laptop-class CPU.
    """
    if int(max_size) < 32 or int(pad) < 1 or not 0 < float(rel_min) < 1 or not float(snr_min) > 0:
        raise InputError("measure_lattice: need max_size >= 32, pad >= 1, 0 < rel_min < 1 and snr_min > 0")
    if not float(min_period_px) >= 2.0:
        raise InputError(f"measure_lattice: min_period_px must be >= 2 (Nyquist), got {min_period_px}")
    arr = _prepare(image)
    h0, w0 = arr.shape
    size = int(max_size)
    ch, cw = min(h0, size), min(w0, size)
    y0, x0 = (h0 - ch) // 2, (w0 - cw) // 2
    crop = arr[y0:y0 + ch, x0:x0 + cw]
    crop = crop - crop.mean()
    if not np.any(crop) or float(crop.std()) <= 1e-12 * max(1.0, float(np.abs(arr).max())):
        raise InputError("image is constant: no lattice to measure")
    win = np.outer(np.hanning(ch + 2)[1:-1], np.hanning(cw + 2)[1:-1])
    ph, pw = int(pad) * ch, int(pad) * cw
    F = scipy.fft.rfft2(crop * win, s=(ph, pw), workers=-1)
    P = F.real ** 2 + F.imag ** 2  # (ph, pw//2+1): kx >= 0 half-plane
    P = np.fft.fftshift(P, axes=0)
    cy = ph // 2
    ky = (np.arange(ph) - cy) / ph  # cycles per pixel
    kx = np.arange(P.shape[1]) / pw
    kmag = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)

    # frequency band of admissible Bragg peaks
    n_min = min(ch, cw)
    max_period = float(max_period_px) if max_period_px is not None else n_min / 6.0
    k_lo = max(1.0 / max_period, 2.5 / n_min) * 0.9
    k_hi = min(0.5, 1.0 / float(min_period_px) * 1.0)
    # harmonics above the basis band are allowed as peaks (they refine the fit)
    band = (kmag >= k_lo) & (kmag <= 0.5 * math.sqrt(2.0))

    # separable noise floor: median over each column (k_x) and each row (k_y), normalised
    sub = P[::4, :]
    mx = np.median(sub, axis=0)
    my = np.median(P[:, ::4], axis=1)
    med = float(np.median(sub))
    if med <= 0:
        med = float(np.mean(P)) or 1.0
    floor = np.outer(my, mx) / med
    # with little noise the rows and columns through strong Bragg peaks carry window leakage that inflates a
    # separable floor (on a noise-free image the median is round-off, and a Bragg peak sharing its row and column
    # with other peaks -- any axis-aligned lattice -- would sink far below its own floor). So away from the
    # k_x = 0 band (per-row offsets) the floor cannot exceed 10 x the median, and inside that band, within the
    # search band, 10 x its column's median (the row-offset power, spread over k_y, that the band is there for);
    # below the search band (slow features) the separable floor stands
    cap = np.where(kx[None, :] * cw >= 3.0, med, np.where(kmag >= k_lo, np.maximum(mx, med)[None, :], np.inf))
    floor = np.minimum(floor, 10.0 * cap)
    floor = np.maximum(floor, 1e-300)
    S = P / floor

    # local maxima of the power within +-pad bins (one unpadded bin), in the admissible band
    fp = 2 * int(pad) + 1
    rowflip = (2 * cy - np.arange(ph)) % ph  # index of -k_y
    Pe = np.concatenate([P[rowflip][:, fp - 1:0:-1], P], axis=1)  # k_x < 0 mirrored: P(-k) = P(k)
    mxf = ndimage.maximum_filter(Pe, size=fp, mode="nearest")[:, fp - 1:]
    is_max = (P >= mxf) & band & (S > snr_min)
    iy, ix = np.nonzero(is_max)
    if len(iy) == 0:
        raise InputError("no lattice found: no Bragg peak stands out of the noise")
    power = P[iy, ix]
    strongest = float(power.max())
    keep = power >= rel_min * strongest
    iy, ix, power = iy[keep], ix[keep], power[keep]
    order = np.argsort(-power)[:48]
    iy, ix, power = iy[order], ix[order], power[order]
    strength = float(S[iy[0], ix[0]])

    logp = np.log(np.maximum(P, 1e-300))
    dy, dx = _subbin(logp, iy, ix, rowflip)
    peaks = np.stack([(iy + dy - cy) / ph, (ix + dx) / pw], axis=1)  # (ky, kx) cycles/px
    pk_mag = np.hypot(peaks[:, 0], peaks[:, 1])

    # significance map (dilated by one unpadded bin) to test predicted lattice points
    sig = (S > snr_min) & (P >= 0.25 * rel_min * strongest)
    sig_e = np.concatenate([sig[rowflip][:, fp - 1:0:-1], sig], axis=1)
    sig_d = ndimage.maximum_filter(sig_e, size=fp, mode="constant")[:, fp - 1:]
    k_floor = 3.0 / n_min

    def completeness(b1: np.ndarray, b2: np.ndarray, radius: float) -> float:
        """Fraction of the lattice points of basis (b1, b2) inside ``radius`` that show a significant peak."""
        vals = _values_at(sig_d, _HK @ np.stack([b1, b2]), radius, k_floor, ph, pw, cy)
        return float(vals.mean()) if len(vals) else 0.0

    # basis: among pairs of strong in-band peaks, the reduced bases that index the strong peaks; keep the most
    # complete lattice (every predicted point shows a peak), and among equally complete ones the smallest
    # reciprocal cell (the primitive cell); slow features give isolated peaks, never a complete lattice.
    # The pairs come from the ten strongest in-band peaks and the six of lowest frequency: with sharp columns on
    # a clean image many harmonics are about as strong as the first orders, and the first orders of a
    # two-sublattice cell (weaker than those of its finer sublattice) would otherwise never be proposed
    inband = np.flatnonzero(pk_mag <= k_hi)
    lowest = inband[np.argsort(pk_mag[inband], kind="stable")[:6]]
    inband = np.concatenate([inband[:10], np.setdiff1d(lowest, inband[:10])])
    strong = np.flatnonzero(power >= 0.1 * strongest)
    radius = float(pk_mag[strong].max())
    options = []
    for a in range(len(inband)):
        for b in range(a + 1, len(inband)):
            u, v = peaks[inband[a]], peaks[inband[b]]
            sin = abs(u[0] * v[1] - u[1] * v[0]) / (np.linalg.norm(u) * np.linalg.norm(v))
            if sin < math.sin(math.radians(15.0)):
                continue
            b1, b2 = _reduce(u, v)
            _, mis = _index(peaks[strong], b1, b2)
            if power[strong][mis < 0.12].sum() < 0.9 * power[strong].sum():
                continue
            cell = abs(b1[0] * b2[1] - b1[1] * b2[0])
            options.append((completeness(b1, b2, max(radius, 1.5 * float(np.linalg.norm(b2)))), cell, b1, b2))
    if not options:
        raise InputError("no lattice found: fewer than two non-collinear Bragg peaks")
    best = max(o[0] for o in options)
    good = [o for o in options if o[0] >= best - 0.15]
    _, _, b1, b2 = min(good, key=lambda o: o[1])
    basis = (b1, b2)
    g1, g2 = basis

    # superlattice check: a significant peak at half a basis vector means the real-space cell is twice as large
    # (e.g. a perovskite's A/B contrast, or first-order peaks below the search band)
    for _ in range(4):
        found = False
        for cand in (0.5 * g1, 0.5 * g2, 0.5 * (g1 + g2), 0.5 * (g1 - g2)):
            if np.hypot(*cand) < 3.8 / n_min:  # the doubled cell must still fit about four times across
                continue
            pw_c, s_c = _peak_near(P, S, cand, ph, pw, cy, int(pad))
            # below the search band (near the slow features) only a strong peak counts: a true first-order peak
            # of a large period is strong, while a dent's spectrum there is weak
            need = rel_min if np.hypot(*cand) >= k_lo else 0.1
            if not (s_c > snr_min and pw_c >= need * strongest):
                continue
            # a real superlattice repeats at cand + G away from the centre; slow features (dents) do not
            n_coset = 0
            for G in (g1, g2, g1 + g2, g1 - g2, -g1, -g2, -g1 - g2, -g1 + g2):
                q = cand + G
                if np.hypot(*q) <= np.hypot(*cand) * 1.01 or max(abs(q[0]), abs(q[1])) >= 0.5:
                    continue
                pw_q, s_q = _peak_near(P, S, q, ph, pw, cy, int(pad))
                n_coset += bool(s_q > snr_min and pw_q >= 0.25 * rel_min * strongest)
            if n_coset >= 2:
                others = [v for v in (g1, g2, g1 + g2, g1 - g2)
                          if abs(cand[0] * v[1] - cand[1] * v[0]) > 1e-12]
                g1, g2 = _reduce(cand, min(others, key=lambda v: float(v @ v)))
                found = True
                break
        if not found:
            break
    # least-squares refinement: first on the detected peaks, then on every significant peak found next to a
    # point of the refined lattice (harmonics and weak reflections), dropping outliers by their misfit in bins
    g1, g2, used, resid = _fit(peaks, power, g1, g2, n_min)
    extra_y, extra_x = _peaks_on_lattice(sig, g1, g2, ph, pw, cy, k_floor)
    if len(extra_y):
        new = ~np.isin(extra_y * P.shape[1] + extra_x, iy * P.shape[1] + ix)
        if np.any(new):
            ey, ex = extra_y[new], extra_x[new]
            edy, edx = _subbin(logp, ey, ex, rowflip)
            peaks = np.concatenate([peaks, np.stack([(ey + edy - cy) / ph, (ex + edx) / pw], axis=1)])
            power = np.concatenate([power, P[ey, ex]])
            g1, g2, used, resid = _fit(peaks, power, g1, g2, n_min)
    g1, g2 = _reduce(g1, g2)

    G = np.stack([g1, g2], axis=0)  # rows g_i; real basis a_j with g_i . a_j = delta_ij
    A = np.linalg.inv(G)
    a1, a2 = _reduce(A[:, 0], A[:, 1])
    if a1 @ a2 < 0:
        a2 = -a2

    # sanity: at least three periods across the crop, and sharp Bragg peaks: the lattice points must hold far
    # more power than the points half-way between them (a smooth image -- a thickness map, a blob -- has a
    # spectrum without such contrast, whatever maxima it shows)
    across = n_min / float(np.linalg.norm(a2))
    if across < 3.0:
        raise InputError(f"no lattice found: the best candidate has a period of {np.linalg.norm(a2):.0f} px, "
                         f"fewer than 3 periods across the {n_min} px image")
    pts = _HK @ G
    rad = max(radius, 1.5 * float(np.linalg.norm(g2)))
    on = _values_at(mxf, pts, rad, k_floor, ph, pw, cy)
    off = _values_at(P, np.concatenate([pts + g1 / 2, pts + g2 / 2, pts + (g1 + g2) / 2]), rad, k_floor,
                     ph, pw, cy)
    contrast = float(on.sum() / max(off.sum(), 1e-300)) if len(on) else 0.0
    if contrast < 3.0:
        raise InputError(f"no lattice found: no sharp periodic peaks (peak contrast {contrast:.2g})")
    return _describe(a1, a2, strength, len(used), resid)


def _values_at(img: np.ndarray, pts: np.ndarray, radius: float, k_floor: float, ph: int, pw: int, cy: int):
    """Values of a half-plane spectrum map at frequencies ``pts`` (ky, kx) with k_floor <= |k| <= radius."""
    mag = np.hypot(pts[:, 0], pts[:, 1])
    ok = (mag >= k_floor) & (mag <= radius * 1.05) & (np.abs(pts[:, 0]) < 0.5) & (np.abs(pts[:, 1]) < 0.5)
    pts = pts[ok]
    pts = np.where(pts[:, 1:2] < 0, -pts, pts)
    yy = (np.round(pts[:, 0] * ph).astype(int) + cy) % ph
    xx = np.minimum(np.round(pts[:, 1] * pw).astype(int), img.shape[1] - 1)
    return img[yy, xx]


def _describe(a1: np.ndarray, a2: np.ndarray, strength: float, n_peaks: int, resid: float) -> LatticeInfo:
    """Classify a reduced real-space basis and report it in the folded convention."""
    l1, l2 = float(np.linalg.norm(a1)), float(np.linalg.norm(a2))
    gamma = math.degrees(math.acos(np.clip(a1 @ a2 / (l1 * l2), -1.0, 1.0)))  # in [60, 90]
    same = abs(l2 - l1) / l1 < 0.02
    if abs(gamma - 90.0) < 2.0:
        lattice = "square" if same else "rect"
    elif abs(gamma - 60.0) < 2.0 and same:
        lattice = "hex"
    else:
        lattice = "oblique"

    if lattice == "square":
        cands = [a1, -a1, a2, -a2]
    elif lattice == "hex":
        a3 = a2 - a1
        cands = [a1, -a1, a2, -a2, a3, -a3]
    else:
        cands = [a1, -a1]
    eps = 0.01  # a vector within eps degrees below 0 counts as 0 (numerical noise on an axis-aligned lattice)
    angles = [((_angle_of(v) + eps) % 360.0) - eps for v in cands]
    i = int(np.argmin(angles))
    v1 = cands[i]
    ang1 = max(angles[i], 0.0)
    # the second basis vector: the neighbour counter-clockwise of v1 (square/rect: +90, hex: +60)
    if lattice in ("square", "hex"):
        step = 90.0 if lattice == "square" else 60.0
        others = [v for v in cands if v is not v1]
        diffs = [abs(((_angle_of(v) - ang1 - step + 180.0) % 360.0) - 180.0) for v in others]
        v2 = others[int(np.argmin(diffs))]
    else:
        v2 = a2
    fold = _FOLD.get(lattice, 180.0)
    ang1 = ang1 % fold if ang1 >= fold else ang1  # rect/oblique: +-a1 are equivalent; else only by distortion
    return LatticeInfo(
        period_px=float(np.linalg.norm(v1)),
        angle_deg=float(ang1),
        period2_px=float(np.linalg.norm(v2)),
        angle2_deg=float(_angle_of(v2) % 180.0),
        lattice=lattice,
        strength=float(strength),
        n_peaks=int(n_peaks),
        residual_px=float(resid),
    )
