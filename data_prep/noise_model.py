"""Estimate a STEM detector noise model from one noisy atomic-resolution micrograph.

The model inverted is the one :func:`data_prep.simulate.simulate` draws from: expected counts ``lam`` per pixel;
shot and read noise ``Poisson(lam) - lam + N(0, read^2)``; a causal separable moving-average filter (along the
fast-scan rows, then down the columns) that keeps the variance and gives lag-1 correlations ``corr_row`` /
``corr_col``; per-row (flyback) offsets added to whole rows; then ``gain`` image units per count and an
``offset``. The pixel noise variance is a straight line in the signal ``s`` (image units),
``var = gain * (s - offset) + read_noise^2``: its slope is the gain.

Method. (1) Signal. The lattice is measured (:func:`data_prep.lattice.measure_lattice`); the origin and every
reciprocal-lattice point up to the farthest one whose power stands clearly above the noise floor get a Gaussian
pass band. In real space this filter averages lattice-equivalent pixels under a Gaussian envelope, so it follows
dents, background and gentle distortion; it runs as a normalised convolution of the zero-padded image (no
wrap-around at the borders). The envelope is the widest of 1.5, 1, 0.75, 0.5 cell edges before the
cross-validated prediction error stops falling (real frames, whose columns vary from cell to cell, get a narrow
one). One horizontal shift per row, shrunk by its noise (Wiener), takes out scan jitter and tears. The pass
bands cover a few per cent of frequency space, so the residual ``n`` (image minus signal) is almost only noise
with its correlations intact; what the filter took away is put back in every statistic from a separable model
of the noise spectrum fitted to the residual's periodogram. (2) Row offsets: the row means of ``n`` less what
the pixel noise explains; they are removed before everything else. (3) Correlations: lag-1 correlations of the
row-mean-free residual, corrected for the removed part of the spectrum and for the white rounding noise of
integer images. (4) Mean-variance: pixels are binned (16 quantile bins) by a leave-neighbourhood-out signal
level, whose noise is independent of the pixel's own (otherwise the skew of low-count Poisson noise tilts the
line); each bin sits at its expected true level (Tweedie's formula undoes the regression to the mean of a noisy
level) seen through the squared moving-average kernel; the bins' robust variances are fitted by a weighted
straight line, twice: the second fit leaves out the pixels and probe-sized spots the first finds improbable
(defects, tears). Large images are measured on a deterministic central crop of at most ``max_pixels``.

Offset convention. One straight line cannot tell an offset from read noise (both move the intercept ``b``). A
non-negative intercept is read noise with a zero offset (``read_noise = sqrt(b)``); a negative one is an offset
with no read noise (``offset = -b / gain``, where the line reaches zero variance): the smallest offset and the
smallest read noise consistent with the line. When both are present the offset comes out low by
``read_noise^2 / gain`` and the dose high by ``(read_noise / gain)^2`` counts. Rounding to whole image units adds
``1/12`` unit^2 to the variance and is counted as read noise.

For exports that were contrast-stretched (8-bit), ``gain``, ``offset`` and ``dose`` are *effective* values: only
the variance-to-mean ratio is measurable, so ``gain`` is image units per effective count and ``dose`` the number
of Poisson counts that gives the observed signal-to-noise ratio at a column peak.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from stem_denoise.common.arrays import as_real_image
from stem_denoise.common.errors import InputError

__all__ = ["NoiseEstimate", "central_crop", "estimate_noise"]

_MIN_SIDE = 48  # px; the smallest image side accepted
_ENVELOPES = (0.5, 0.75, 1.0, 1.5)  # envelope (Gaussian sigma) of the lattice filter tried, in cell edges
_SIG_THRESHOLD = 8.0  # a reciprocal-lattice point is signal when its power exceeds the floor this many times
_N_BINS = 16
_OUTLIER_Z = 5.0  # a pixel further from the model than this many standard deviations is an outlier
_SPOT_Z = 3.5  # a probe-sized spot whose mean residual is this many standard deviations away is a defect


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise model of one micrograph (image units unless stated; see :func:`estimate_noise`).

    ``gain``: image units per detected count (slope of the noise variance against the signal level).
    ``offset``: image value of zero detected counts. ``read_noise``: std of the signal-independent noise.
    ``dose``: detected counts at a column peak, ``(p99.5 of the signal estimate - offset) / gain``.
    ``corr_row`` / ``corr_col``: lag-1 correlation of the noise along the fast-scan rows (axis 1) / down the
    columns (axis 0), row offsets removed. ``row_offset``: std of the per-row (flyback) offsets beyond what the
    pixel noise explains. ``noise_std``: pixel noise std at the median signal level. ``period_px``: lattice
    period used, px (0 when no lattice was found). ``reliable``: False when the fit is ill-conditioned, with the
    reason in ``notes``.
    """

    gain: float
    offset: float
    read_noise: float
    dose: float
    corr_row: float
    corr_col: float
    row_offset: float
    noise_std: float
    period_px: float
    reliable: bool
    notes: str

    def to_dict(self) -> dict:
        """Plain JSON-able dict (floats, a bool and a str)."""
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, (bool, np.bool_)):
                out[k] = bool(v)
            elif isinstance(v, str):
                out[k] = v
            else:
                out[k] = float(v)
        return out


# ----------------------------------------------------------------------------------------------------------------
# input
# ----------------------------------------------------------------------------------------------------------------
def _check_image(image, max_pixels: int) -> np.ndarray:
    """The central crop (at most ``max_pixels``) of a valid 2-D image as float64; InputError otherwise."""
    arr = image if isinstance(image, np.ndarray) else np.asarray(image)
    if arr.ndim != 2:
        raise InputError(f"image must be a 2-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise InputError(f"image must hold real numbers, got dtype {arr.dtype}")
    if min(arr.shape) < _MIN_SIDE:
        raise InputError(f"image {arr.shape} is too small to estimate a noise model (needs >= {_MIN_SIDE} px a side)")
    if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
        raise InputError("image contains NaN or Inf")
    crop = as_real_image(central_crop(arr, max_pixels))  # float64, only the part that is measured
    lo, hi = float(crop.min()), float(crop.max())
    if not hi > lo:
        raise InputError(f"image is constant (every pixel is {lo:g}); there is no noise to measure")
    return crop


def _clip_levels(img: np.ndarray) -> list[float]:
    """The image's min and/or max when pixels pile up there (saturation or clipping of an export).

    The count at the extreme value is compared with what the next two levels in extrapolate to (a log-concave
    histogram, such as Poisson counts with a mode at zero, never exceeds ``n1^2 / n2``); a pile-up of at least
    1e-4 of the image and twice that extrapolation is a clip.
    """
    flat = img.ravel()
    out = []
    for v, side in ((float(flat.min()), 1.0), (float(flat.max()), -1.0)):
        n_at = int(np.count_nonzero(flat == v))
        if n_at < max(10, 1e-4 * flat.size):
            continue
        rest = flat[(flat - v) * side > 0]
        levels = np.unique(rest)
        if len(levels) < 2:
            continue
        v1, v2 = (levels[0], levels[1]) if side > 0 else (levels[-1], levels[-2])
        n1, n2 = int(np.count_nonzero(rest == v1)), int(np.count_nonzero(rest == v2))
        if n_at > 2.0 * n1 * n1 / max(n2, 1):
            out.append(v)
    return out


def central_crop(img: np.ndarray, max_pixels: int) -> np.ndarray:
    """Deterministic central crop (a view) of at most ``max_pixels`` pixels with about the image's aspect ratio:
    the part of an image :func:`estimate_noise` measures with that ``max_pixels``."""
    h, w = img.shape
    if h * w <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (h * w))
    ch = min(h, max(_MIN_SIDE, int(h * scale)))
    cw = min(w, max(_MIN_SIDE, max_pixels // ch))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return img[y0:y0 + ch, x0:x0 + cw]


# ----------------------------------------------------------------------------------------------------------------
# signal estimate
# ----------------------------------------------------------------------------------------------------------------
def _separable_floor(power: np.ndarray) -> np.ndarray:
    """Mean noise power per Fourier bin: product of row and column medians (robust to sparse Bragg peaks)."""
    col = np.median(power, axis=0)
    col = np.maximum(col, 1e-300)
    row = np.median(power / col[None, :], axis=1)
    return np.outer(row, col) / math.log(2.0)  # median of an exponential variable is ln 2 times its mean


def _basis(info) -> tuple[np.ndarray, np.ndarray]:
    """Real-space basis (row, col) px of a measured lattice: a2 is a1 turned by +90 deg (+60 for hex).

    Built from the primary angle and the lattice type, so that a second-vector angle reported on the far side of
    a fold cannot make the basis degenerate; an oblique lattice uses its reported second angle.
    """
    from data_prep.lattice import lattice_vectors

    t1 = math.radians(float(info.angle_deg))
    a1 = float(info.period_px) * np.array([-math.sin(t1), math.cos(t1)])
    step = {"square": 90.0, "rect": 90.0, "hex": 60.0}.get(info.lattice)
    if step is None:
        _, a2 = lattice_vectors(info)
        sin = abs(a1[0] * a2[1] - a1[1] * a2[0]) / (np.linalg.norm(a1) * np.linalg.norm(a2))
        if sin > 0.2:
            return a1, a2
        step = 90.0
    t2 = t1 + math.radians(step)
    return a1, float(info.period2_px) * np.array([-math.sin(t2), math.cos(t2)])


@dataclass(frozen=True)
class _Harmonics:
    """The reciprocal lattice ``h b1 + k b2`` (cycles/px, (ky, kx)) whose points up to ``radius`` carry signal."""

    b1: np.ndarray
    b2: np.ndarray
    radius: float


def _harmonics(info, shape: tuple[int, int], img: np.ndarray) -> _Harmonics | None:
    """The reciprocal-lattice points inside the Nyquist box that carry signal, or None when none does.

    A point is significant when the Hann-windowed power at one of its four nearest bins exceeds the separable
    noise floor ``_SIG_THRESHOLD`` times; since the harmonics of a column fade with frequency, every point up to
    the farthest significant one is kept.
    """
    a1, a2 = _basis(info)
    recip = np.linalg.inv(np.stack([a1, a2], axis=1))  # rows b_i with b_i . a_j = delta_ij
    b1, b2 = recip[0], recip[1]
    g = _lattice_grid(b1, b2)
    if not len(g):
        return None
    h, w = shape
    win = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(sfft.fft2((img - img.mean()) * win)) ** 2
    ratio = power / _separable_floor(power)
    iy = np.floor(g[:, 0] * h).astype(int)
    ix = np.floor(g[:, 1] * w).astype(int)
    best = np.zeros(len(g))
    for dy in (0, 1):
        for dx in (0, 1):
            best = np.maximum(best, ratio[(iy + dy) % h, (ix + dx) % w])
    sig = best > _SIG_THRESHOLD
    if not sig.any():
        return None
    return _Harmonics(b1, b2, float(np.max(np.hypot(g[sig, 0], g[sig, 1]))) * 1.0001)


def _lattice_grid(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """All points ``h b1 + k b2`` (cycles/px, (ky, kx)) other than the origin inside the Nyquist box."""
    n = int(math.ceil(0.75 / min(np.hypot(*b1), np.hypot(*b2)))) + 2
    hh, kk = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.stack([hh.ravel(), kk.ravel()], axis=1)
    g = hk @ np.stack([b1, b2])
    inside = (np.abs(g[:, 0]) < 0.5) & (np.abs(g[:, 1]) < 0.5) & np.any(hk != 0, axis=1)
    return g[inside]


def _bump_mask(shape: tuple[int, int], harm: _Harmonics | None, sk: float) -> np.ndarray:
    """Pass band on an FFT grid of ``shape``: Gaussian bumps (sigma ``sk`` cycles/px) at the origin and at the
    significant reciprocal-lattice points (the nearest one to each frequency; periodic across Nyquist)."""
    h, w = shape
    fy, fx = sfft.fftfreq(h), sfft.fftfreq(w)
    mask = np.exp(-(fy[:, None] ** 2 + fx[None, :] ** 2) / (2.0 * sk * sk))
    if harm is None:
        return mask
    inv = np.linalg.inv(np.stack([harm.b1, harm.b2]))  # (ky, kx) @ inv = fractional (h, k)
    reach = 4.0 * sk

    def nearest(qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
        hi = np.rint(qy * inv[0, 0] + qx * inv[1, 0])
        ki = np.rint(qy * inv[0, 1] + qx * inv[1, 1])
        gy = hi * harm.b1[0] + ki * harm.b2[0]
        gx = hi * harm.b1[1] + ki * harm.b2[1]
        keep = ((hi != 0) | (ki != 0)) & (np.abs(gy) < 0.5) & (np.abs(gx) < 0.5) & (np.hypot(gy, gx) <= harm.radius)
        return np.where(keep, np.exp(-((qy - gy) ** 2 + (qx - gx) ** 2) / (2.0 * sk * sk)), 0.0)

    np.maximum(mask, nearest(fy[:, None], fx[None, :]), out=mask)
    if harm.radius + reach < 0.5:
        return mask
    # bumps that wrap across the Nyquist edges
    for sy in (-1, 0, 1):
        for sx in (-1, 0, 1):
            if sy == 0 and sx == 0:
                continue
            rows = np.flatnonzero(np.abs(fy + sy) <= 0.5 + reach)
            cols = np.flatnonzero(np.abs(fx + sx) <= 0.5 + reach)
            if not len(rows) or not len(cols):
                continue
            iy, ix = np.ix_(rows, cols)
            mask[iy, ix] = np.maximum(mask[iy, ix], nearest(fy[rows, None] + sy, fx[None, cols] + sx))
    return mask


def _lattice_filter(img: np.ndarray, harm: _Harmonics | None, sx: float) -> np.ndarray:
    """Normalised convolution of ``img`` with the lattice pass band (envelope sigma ``sx`` px), no wrap-around."""
    h, w = img.shape
    pad = int(math.ceil(3.0 * sx))
    hp, wp = sfft.next_fast_len(h + 2 * pad, True), sfft.next_fast_len(w + 2 * pad, True)
    sk = 1.0 / (2.0 * math.pi * sx)
    half = wp // 2 + 1
    mask = _bump_mask((hp, wp), harm, sk)[:, :half]
    env = _bump_mask((hp, wp), None, sk)[:, :half]
    mean = float(img.mean())
    z = np.zeros((hp, wp))
    z[pad:pad + h, pad:pad + w] = img - mean
    num = sfft.irfft2(sfft.rfft2(z) * mask, s=(hp, wp))[pad:pad + h, pad:pad + w]
    z[:] = 0.0
    z[pad:pad + h, pad:pad + w] = 1.0
    den = sfft.irfft2(sfft.rfft2(z) * env, s=(hp, wp))[pad:pad + h, pad:pad + w]
    return num / np.maximum(den, 1e-6) + mean


def _dejitter(img: np.ndarray, sig: np.ndarray, iters: int = 2) -> np.ndarray:
    """Fit one horizontal shift per row (scan jitter, tears) as a first-order Taylor term of the signal.

    Each row's least-squares shift is shrunk towards zero by the share of its variance that noise explains
    (Wiener shrinkage: at low dose the fitted shifts are mostly noise). Returns the signal estimate with each
    row shifted by its amount (at most 3 px).
    """
    out = sig.copy()
    for _ in range(iters):
        grad = np.gradient(out, axis=1)
        r = img - out
        r = r - r.mean(axis=1, keepdims=True)
        g0 = grad - grad.mean(axis=1, keepdims=True)
        gg = np.maximum((g0 * g0).sum(axis=1), 1e-12)
        d = (r * g0).sum(axis=1) / gg
        # noise variance of each fitted shift, allowing for correlated noise along the row
        rest = r - d[:, None] * g0  # what the shift does not explain
        rho = float(np.clip((rest[:, 1:] * rest[:, :-1]).sum() / max((rest * rest).sum(), 1e-300), -0.5, 0.9))
        cg = (g0[:, 1:] * g0[:, :-1]).sum(axis=1) / gg
        var_d = np.median((rest * rest).mean(axis=1)) * np.maximum(1.0 + 2.0 * rho * cg, 0.1) / gg
        true_var = max(float(np.sum(gg * (d * d - var_d)) / np.sum(gg)), 0.0)  # precision-weighted moments
        d = np.clip(d * true_var / (true_var + var_d), -3.0, 3.0)
        out = out + d[:, None] * grad
    return out


def _leave_out(signal: np.ndarray, img: np.ndarray, band: np.ndarray, reach: int = 2, iters: int = 3) -> np.ndarray:
    """The signal estimate at each pixel without the contribution of that pixel's own neighbourhood.

    The filter kernel ``K`` (inverse transform of the pass band) weights the pixel itself and its neighbours; their
    data ``img(x - d)`` (offsets up to ``reach`` px) are replaced by the estimate there, itself computed without
    ``x`` (a few fixed-point rounds). The result's noise is independent of the pixel's own noise and of its
    correlated neighbours'. It serves to bin pixels (so that the skew of low-count Poisson noise, where a high
    local noise sum goes with a high local variance, cannot tilt the mean-variance line) and to cross-validate
    the filter's envelope.
    """
    h, w = band.shape
    kern = sfft.irfft2(band[:, : w // 2 + 1], s=(h, w))
    offs = np.arange(-reach, reach + 1)
    near = kern[np.ix_(offs % h, offs % w)]  # near[dy, dx] = K(dy, dx)
    out = signal
    for _ in range(iters):
        out = signal - ndimage.convolve(img - out, near, mode="wrap")
    return out


def _signal(img: np.ndarray, harm: _Harmonics | None, sx: float) -> np.ndarray:
    """Signal estimate: the lattice filter with envelope ``sx`` px, then one horizontal shift per row."""
    sig = _lattice_filter(img, harm, sx)
    return _dejitter(img, sig) if harm is not None else sig


def _choose_envelope(img: np.ndarray, harm: _Harmonics | None, cell: float
                     ) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """Envelope of the lattice filter (px) chosen by cross-validation, at most ``_ENVELOPES[-1]`` cell edges.

    Starting from the widest, the envelope is narrowed while the leave-neighbourhood-out prediction error of the
    image (on a central crop of at most 512 x 512 px) keeps falling: a real frame's columns vary from cell to
    cell (occupancy, strain, scan distortion) and a narrower envelope follows them; on a clean lattice the wide
    envelope wins, which keeps the signal estimate quiet. Returns the envelope and, when the whole image was
    used, its signal estimate and leave-out level (else None, None).
    """
    h, w = img.shape
    if harm is None:
        return min(_ENVELOPES[-1] * cell, max(h, w) / 6.0), None, None
    sub = central_crop(img, 512 * 512)
    sh, sw = sub.shape
    m = int(min(math.ceil(2.0 * _ENVELOPES[-1] * cell), min(sh, sw) // 6))
    best, best_err = None, math.inf
    for c in reversed(_ENVELOPES):
        sx = min(c * cell, max(h, w) / 6.0)
        sig = _signal(sub, harm, sx)
        band = _bump_mask((sh, sw), harm, 1.0 / (2.0 * math.pi * sx))
        level = _leave_out(sig, sub, band)
        err = float(np.mean((sub - level)[m:sh - m, m:sw - m] ** 2))
        if err >= best_err:
            break
        best, best_err = (sx, sig, level), err
    sx, sig, level = best
    if sub.shape != img.shape:  # the crop served only to choose; the whole image is filtered again
        return sx, None, None
    return sx, sig, level


# ----------------------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------------------
def _noise_spectrum(n: np.ndarray, good: np.ndarray, keep2: np.ndarray) -> np.ndarray:
    """Separable model of the noise power spectrum (mean 1 over the FFT grid of ``n``) from the residual.

    Bins where the signal estimate or the row-mean removal took power away (``keep2 < 0.9``) are left out. The
    column profile (along k_x) is the median over k_y of the periodogram, the row profile the median over k_x of
    the periodogram divided by the column profile; medians ignore the few bins of leftover signal. Each profile
    is then smoothed by a cosine series up to lag 4 (a noise autocorrelation reaching four pixels), which also
    fills the k_x = 0 column emptied by the row-mean removal.
    """
    x = np.where(good, n, 0.0)
    power = np.abs(sfft.fft2(x - x[good].mean())) ** 2
    power[keep2 < 0.9] = np.nan
    col = _cosine_fit(_nan_median(power, axis=0))
    row = _cosine_fit(_nan_median(power / col[None, :], axis=1))
    spec = np.outer(row, col)
    return spec / spec.mean()


def _nan_median(a: np.ndarray, axis: int) -> np.ndarray:
    """Median along ``axis`` ignoring NaNs (NaN where a line has no finite value); vectorised."""
    srt = np.sort(a, axis=axis)  # NaNs sort last
    cnt = np.sum(np.isfinite(a), axis=axis)
    lo = np.expand_dims(np.maximum((cnt - 1) // 2, 0), axis)
    hi = np.expand_dims(np.maximum(cnt // 2, 0), axis)
    med = 0.5 * (np.take_along_axis(srt, lo, axis) + np.take_along_axis(srt, hi, axis))
    med = np.squeeze(med, axis=axis)
    return np.where(cnt > 0, med, np.nan)


def _cosine_fit(v: np.ndarray, order: int = 4) -> np.ndarray:
    """Least-squares cosine series ``sum_l c_l cos(2 pi f l)`` (l <= ``order``) through the finite values of a
    periodic spectral profile sampled at the FFT frequencies; positive, mean normalised to 1."""
    f = sfft.fftfreq(len(v))
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() <= order + 1:
        return np.ones_like(v)
    basis = np.cos(2.0 * np.pi * np.outer(f, np.arange(order + 1)))
    coef, *_ = np.linalg.lstsq(basis[ok], v[ok], rcond=None)
    out = basis @ coef
    out = np.maximum(out, 0.02 * float(np.max(out)) if np.max(out) > 0 else 1.0)
    return out / out.mean()


def _correlations(n: np.ndarray, sel: np.ndarray, spec: np.ndarray, keep2: np.ndarray, white: float
                  ) -> tuple[float, float, float, float]:
    """Lag-1 noise correlations, corrected for what the signal estimate and the row-mean removal took away.

    ``n``: row-mean-free residual; ``sel``: pixels to use; ``spec``: noise spectrum model (mean 1); ``keep2``:
    power transfer of the residual; ``white``: variance of the rounding noise (removed from the correlations).
    Returns (corr_row, corr_col, kept, var): the fraction of the noise variance the residual keeps and the
    mean pixel noise variance, image units squared.
    """
    h, w = n.shape
    pr = sel[:, 1:] & sel[:, :-1]
    pc = sel[1:, :] & sel[:-1, :]
    obs0 = float(np.mean(n[sel] ** 2))
    obs_r = float((n[:, 1:] * n[:, :-1])[pr].sum() / max((0.5 * (n[:, 1:] ** 2 + n[:, :-1] ** 2))[pr].sum(), 1e-300))
    obs_c = float((n[1:, :] * n[:-1, :])[pc].sum() / max((0.5 * (n[1:, :] ** 2 + n[:-1, :] ** 2))[pc].sum(), 1e-300))
    kept = float(np.mean(keep2 * spec))
    var = obs0 / max(kept, 1e-3)
    lost = (1.0 - keep2) * spec
    cov_r = obs_r * obs0 + var * float(np.mean(lost * np.cos(2.0 * np.pi * sfft.fftfreq(w))[None, :]))
    cov_c = obs_c * obs0 + var * float(np.mean(lost * np.cos(2.0 * np.pi * sfft.fftfreq(h))[:, None]))
    base = max(var - white, 0.1 * var)
    return cov_r / base, cov_c / base, kept, var


def _ma1(rho: float) -> float:
    """Coefficient c of the causal filter x + c * x_prev whose lag-1 autocorrelation c / (1 + c^2) is rho."""
    rho = float(np.clip(rho, -0.49, 0.49))
    if abs(rho) < 1e-12:
        return 0.0
    return (1.0 - math.sqrt(1.0 - 4.0 * rho * rho)) / (2.0 * rho)


def _variance_blur(s: np.ndarray, rho_r: float, rho_c: float) -> np.ndarray:
    """The signal as the noise variance sees it: the squared causal MA(1) kernels applied to ``s``.

    A causal filter ``(x + c x_prev) / sqrt(1 + c^2)`` mixes the variance of a pixel with that of the one
    before it, weights ``1 / (1 + c^2)`` and ``c^2 / (1 + c^2)``; on columns a pixel or two wide this matters.
    """
    out = s.astype(np.float64, copy=True)
    for axis, rho in ((1, rho_r), (0, rho_c)):
        c2 = _ma1(rho) ** 2
        if c2 > 0:
            prev = np.concatenate([np.take(out, [0], axis=axis),
                                   np.take(out, np.arange(out.shape[axis] - 1), axis=axis)], axis=axis)
            out = (out + c2 * prev) / (1.0 + c2)
    return out


def _denoised_level(s: np.ndarray, a: float, b: float, f_eps: float) -> np.ndarray:
    """Expected true signal given its noisy estimate ``s`` (Tweedie's formula), against errors in variables.

    The estimate carries a share ``f_eps`` of the pixel noise: ``s = t + e`` with ``var(e) = f_eps (a t + b)``.
    For Gaussian ``e``, ``E[t | s] = s + var(e | t) d/ds log p(s)`` with ``p`` the density of ``s``; the variance
    is taken at the answer (a few fixed-point rounds), as it depends on the true level. ``p`` is a smoothed
    histogram in the variance-stabilised coordinate ``u = 2 sqrt(a s + b) / (a sqrt(f_eps))``, where the noise
    has unit width, with the smoothing's flattening of the score undone. Binning pixels by ``s`` but placing each
    bin at its expected true level removes the flattening of the mean-variance line that a noisy abscissa causes
    at low dose.
    """
    if not (a > 0 and f_eps > 0) or s.size < 2:
        return s
    floor = max(b, 0.0) + 1e-6 * max(a * float(np.max(np.abs(s))), 1e-12)
    arg = np.maximum(a * s + b, floor)
    u = 2.0 * np.sqrt(arg) / (a * math.sqrt(f_eps))
    lo, hi = float(u.min()), float(u.max())
    if hi - lo < 1e-9:
        return s
    width, smooth = 0.1, 0.25
    nb = int(min(20000, max(16, math.ceil((hi - lo) / width))))
    hist, edges = np.histogram(u, bins=nb, range=(lo, hi))
    step = (hi - lo) / nb
    dens = ndimage.gaussian_filter1d(hist.astype(np.float64), smooth / step, mode="constant") + 1e-3
    centres = 0.5 * (edges[:-1] + edges[1:])
    score_u = np.interp(u, centres, np.gradient(np.log(dens), centres)) * (1.0 + smooth ** 2 + step ** 2 / 12.0)
    sd = np.sqrt(f_eps * arg)
    dlogp = score_u / sd - a / (2.0 * arg)  # d/ds log p(s)
    t = s
    for _ in range(3):
        t = s + np.clip(f_eps * np.maximum(a * t + b, floor) * dlogp, -4.0 * sd, 4.0 * sd)
    return t


def _clipped_var(x: np.ndarray, z: float = _OUTLIER_Z) -> float:
    """Variance after iteratively dropping values beyond ``z`` standard deviations from the mean."""
    mu, v = float(np.mean(x)), float(np.var(x))
    for _ in range(5):
        keep = x[np.abs(x - mu) <= z * math.sqrt(max(v, 1e-300))]
        if not keep.size:
            break
        mu_new, v_new = float(np.mean(keep)), float(np.var(keep))
        done = abs(v_new - v) <= 1e-9 * max(v, 1e-300)
        mu, v = mu_new, v_new
        if done:
            break
    return v


def _binned_variance(level: np.ndarray, x: np.ndarray, abscissa: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantile bins of ``level``: each bin's mean ``abscissa``, the clipped variance of ``x`` and the count."""
    edges = np.quantile(level, np.linspace(0.0, 1.0, _N_BINS + 1))
    idx = np.clip(np.searchsorted(edges, level, side="right") - 1, 0, _N_BINS - 1)
    bs, bv, bn = [], [], []
    for k in range(_N_BINS):
        inb = idx == k
        if inb.sum() < 50:
            continue
        bs.append(float(abscissa[inb].mean()))
        bv.append(_clipped_var(x[inb]))
        bn.append(float(inb.sum()))
    return np.asarray(bs), np.asarray(bv), np.asarray(bn)


def _fit_line(s: np.ndarray, v: np.ndarray, nv: np.ndarray, spread: float = 1.0) -> tuple[float, float, float]:
    """Weighted straight line ``v = a s + b``; weights from the sampling variance ``2 v^2 spread / n``.

    ``spread`` is the loss of independent samples to correlated noise. Returns (a, b, standard error of a).
    """
    centre = float(np.mean(s))
    scale = max(float(np.std(s)), 1e-12 * max(abs(centre), 1e-300))
    A = np.stack([(s - centre) / scale, np.ones_like(s)], axis=1)  # centred and scaled: well conditioned
    wts = nv / np.maximum(v, 1e-300) ** 2
    a = c = 0.0
    se = math.inf
    for _ in range(3):
        cov = np.linalg.pinv(A.T @ (A * wts[:, None]))
        a, c = cov @ (A.T @ (wts * v))
        se = math.sqrt(max(2.0 * spread * cov[0, 0], 0.0))
        model = np.maximum(A @ np.array([a, c]), 0.05 * float(np.max(v)))
        wts = nv / model ** 2
    return float(a / scale), float(c - a * centre / scale), float(se / scale)


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def estimate_noise(image: np.ndarray, period_px: float | None = None, *, max_pixels: int = 2 ** 21) -> NoiseEstimate:
    """Estimate gain, offset, read noise, dose, noise correlations and row offsets from one micrograph.

    ``image``: 2-D array in the micrograph's own units (any real dtype). ``period_px``: the lattice period in
    pixels when known (it sets the filter scales; the orientation is always measured); measured with
    :func:`data_prep.lattice.measure_lattice` when None. ``max_pixels``: larger images are measured on a
    deterministic central crop of about this many pixels. Returns a :class:`NoiseEstimate` in image units
    (gain: image units per detected count; dose: counts at a column peak; correlations: lag-1 coefficients); the
    method and the offset convention are in the module docstring. For contrast-stretched exports (8-bit) the gain
    and dose are effective values: only the variance-to-mean ratio is measurable. Raises :class:`InputError` for
    an image that is not 2-D, holds NaN/Inf, is constant or is smaller than 48 px a side. Deterministic.
    """
    from data_prep.lattice import measure_lattice

    try:
        max_pixels = int(max_pixels)
        period_px = None if period_px is None else float(period_px)
    except (TypeError, ValueError):
        raise InputError(f"max_pixels must be an integer and period_px a number, got {max_pixels!r}, "
                         f"{period_px!r}") from None
    if max_pixels < _MIN_SIDE * _MIN_SIDE:
        raise InputError(f"max_pixels must be >= {_MIN_SIDE * _MIN_SIDE}, got {max_pixels}")
    if period_px is not None and not (math.isfinite(period_px) and period_px >= 2.0):
        raise InputError(f"period_px must be a finite number >= 2, got {period_px}")
    crop = _check_image(image, max_pixels)
    h, w = crop.shape
    notes: list[str] = []
    reliable = True

    # signal estimate: lattice pass band, then per-row shifts
    try:
        info = measure_lattice(crop)
    except InputError as exc:
        info = None
        notes.append(f"{exc}; the signal is a local mean")
        reliable = False
    if info is not None:
        period = float(period_px) if period_px is not None else float(info.period_px)
        cell = period * max(1.0, float(info.period2_px) / float(info.period_px))
        harm = _harmonics(info, (h, w), crop)
    else:
        period = float(period_px) if period_px is not None else 0.0
        cell = period if period > 0 else 8.0
        harm = None
    if info is not None and harm is None:
        notes.append("no Bragg peak stands above the noise; the signal is a local mean")
        reliable = False
    sx, signal, level = _choose_envelope(crop, harm, cell)
    sk = 1.0 / (2.0 * math.pi * sx)
    if signal is None:
        signal = _signal(crop, harm, sx)
        level = _leave_out(signal, crop, _bump_mask((h, w), harm, sk))
    resid = crop - signal

    # statistics away from the borders, where the filter has its full envelope
    m = int(min(math.ceil(2.0 * sx), min(h, w) // 6))
    sl = (slice(m, h - m), slice(m, w - m))
    n_all, lev, raw = resid[sl], level[sl], crop[sl]
    hi_, wi_ = n_all.shape
    band = _bump_mask((hi_, wi_), harm, sk)
    keep2 = (1.0 - band) ** 2
    keep2[:, 0] = 0.0  # the row means are removed as well
    white = 1.0 / 12.0 if bool(np.all(crop == np.round(crop))) else 0.0

    good = np.ones(n_all.shape, dtype=bool)
    clips = _clip_levels(crop)
    if clips:
        # a pixel whose level lies within a few noise widths of a clip level has a truncated noise distribution:
        # leave out such levels, at first with a global noise width, in the second pass with the fitted one
        at_limit = np.isin(raw, clips)
        notes.append(f"{100 * float(at_limit.mean()):.2g} % of pixels clipped at the image's min/max; levels near "
                     "the clip left out")
        width = 2.0 * 1.4826 * float(np.median(np.abs(n_all - np.median(n_all))))
        near_clip = np.zeros(raw.shape, dtype=bool)
        for c in clips:
            near_clip |= np.abs(signal[sl] - c) < 3.0 * width
        good &= ~(near_clip | ndimage.binary_dilation(at_limit, iterations=1))

    kern2 = sfft.irfft2(band[:, : wi_ // 2 + 1], s=(hi_, wi_)) ** 2
    kern2_hat = sfft.rfft2(kern2 / kern2.sum())

    def measure(good: np.ndarray, line: tuple[float, float] | None = None) -> dict | None:
        cnt = good.sum(axis=1)
        rows_ok = cnt >= 0.5 * wi_
        sel = good & rows_ok[:, None]
        if sel.sum() < 50 * _N_BINS:
            return None
        rmean = np.where(sel, n_all, 0.0).sum(axis=1) / np.maximum(cnt, 1)
        n_rm = n_all - rmean[:, None]
        spec = _noise_spectrum(n_rm, sel, keep2)
        rho_r, rho_c, kept, var = _correlations(n_rm, sel, spec, keep2, white)
        kept -= (1.0 + 1.6 * max(rho_r, 0.0)) / wi_  # the per-row shift fit takes one degree of freedom a row
        kept = max(kept, 0.05)
        s_eff = _variance_blur(lev, rho_r, rho_c)
        s = s_eff[sel]
        f2 = float(np.mean(band ** 2 * spec))  # share of the noise variance that the signal estimate holds
        abscissa = s
        if line is not None:
            abscissa = _denoised_level(s, line[0], line[1], f2)
        # the noise the filter takes away at a pixel mixes the variances of the pixels its kernel reaches: the
        # residual variance is kept * v(x) + f2 * ((K^2 * v)(x) - v(x)), with K^2 normalised and f2 its share
        mixed = sfft.irfft2(sfft.rfft2(s_eff) * kern2_hat, s=(hi_, wi_))[sel]
        abscissa = abscissa + f2 / kept * (mixed - s)
        x = n_rm[sel] / math.sqrt(kept)
        bs, bv, bn = _binned_variance(s, x, abscissa)
        return dict(rmean=rmean, rows_ok=rows_ok, n_row=float(np.mean(cnt[rows_ok])), n_rm=n_rm, spec=spec,
                    rho_r=rho_r, rho_c=rho_c, kept=kept, var=var, f2=f2, s_eff=s_eff, bs=bs, bv=bv, bn=bn)

    r = measure(good)
    if r is None or len(r["bs"]) < 3:
        raise InputError("too few usable pixels to estimate a noise model")
    spread = (1.0 + 2.0 * r["rho_r"] ** 2) * (1.0 + 2.0 * r["rho_c"] ** 2)
    a, b, se = _fit_line(r["bs"], r["bv"], r["bn"], spread)

    # second pass without the pixels and probe-sized spots that the first model finds improbable (defects, tears)
    var_px = np.maximum(a * r["s_eff"] + b, 0.05 * float(np.max(r["bv"])))
    bad = np.abs(r["n_rm"]) > _OUTLIER_Z * np.sqrt(var_px * r["kept"])
    sp = max(0.8, 0.12 * cell)
    fy, fx = sfft.fftfreq(hi_)[:, None], sfft.fftfreq(wi_)[None, :]
    smooth2 = np.exp(-4.0 * np.pi ** 2 * sp * sp * (fy * fy + fx * fx))  # |transfer|^2 of the Gaussian
    spot_frac = float(np.mean(smooth2 * keep2 * r["spec"]))
    spot = ndimage.gaussian_filter(r["n_rm"], sp, mode="reflect")
    bad |= np.abs(spot) > _SPOT_Z * np.sqrt(var_px * spot_frac)
    bad = ndimage.binary_dilation(bad, iterations=max(1, int(round(sp))))
    for c in clips:
        bad |= np.abs(r["s_eff"] - c) < 3.0 * np.sqrt(var_px)
    frac_bad = float(bad[good].mean())
    if frac_bad > 0.25:
        notes.append(f"{100 * frac_bad:.2g} % of pixels are outliers of a first fit: the model fits poorly")
        reliable = False
        bad[:] = False
    elif frac_bad > 0.01:
        notes.append(f"{100 * frac_bad:.2g} % of pixels excluded as outliers (defects, tears)")
    r2 = measure(good & ~bad, (a, b))
    if r2 is not None and len(r2["bs"]) >= 3:
        r = r2
        a, b, se = _fit_line(r["bs"], r["bv"], r["bn"], spread)
    corr_row, corr_col = float(r["rho_r"]), float(r["rho_c"])

    # row offsets: the variance of the row means beyond the share of the pixel noise
    rm = r["rmean"][r["rows_ok"]]
    keep_line = (1.0 - band[:, 0]) ** 2
    noise_part = r["var"] * float(np.mean(keep_line * r["spec"][:, 0])) / r["n_row"]
    ro2 = (_clipped_var(rm, 4.0) - noise_part) / max(float(np.mean(keep_line)), 1e-3)
    row_offset = math.sqrt(max(ro2, 0.0))

    # gain, offset and read noise from the line (offset convention in the module docstring)
    if not a > 0:
        reliable = False
        notes.append("the noise variance does not grow with the signal; gain from the variance-to-mean ratio")
        a = max(float(np.median(r["bv"])) / max(abs(float(np.median(r["bs"]))), 1e-12), 1e-12)
        b = 0.0
    elif se / a > 0.2:
        reliable = False
        notes.append(f"ill-conditioned fit: gain uncertain by {100 * se / a:.0f} % (signal range too narrow)")
    if b >= 0:
        offset, read = 0.0, math.sqrt(b)
    else:
        offset, read = -b / a, 0.0
    peak = float(np.percentile(signal[sl], 99.5))
    med_signal = float(np.median(signal[sl]))
    dose = (peak - offset) / a
    if any(c > peak - 3.0 * math.sqrt(max(a * (peak - offset) + read * read, 0.0)) for c in clips if c > med_signal):
        notes.append("the column peaks reach the clip level: the dose is a lower bound")
    noise_std = math.sqrt(max(a * (med_signal - offset) + read * read, 0.0))
    if white and noise_std < 0.5:
        reliable = False
        notes.append("noise below one grey level: quantisation dominates")
    if not dose > 0:
        reliable = False
        notes.append("the column peaks do not rise above the offset")
    return NoiseEstimate(
        gain=float(a),
        offset=float(offset),
        read_noise=float(read),
        dose=float(dose),
        corr_row=corr_row,
        corr_col=corr_col,
        row_offset=float(row_offset),
        noise_std=float(noise_std),
        period_px=float(period),
        reliable=bool(reliable),
        notes="; ".join(notes),
    )
