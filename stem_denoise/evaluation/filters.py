"""Classical denoising filters a microscopist would otherwise use, as numpy-in/numpy-out functions.

Every filter takes a 2-D image in the micrograph's own units (detector counts for the simulator) and returns a
float32 image of the same shape and units.

* :func:`gaussian_denoise` and :func:`gaussian_oracle` -- Gaussian blur; the oracle picks the sigma that maximises
  PSNR against the truth (an upper bound on what the filter can do, reported as such).
* :func:`median_denoise` -- median filter, window about a quarter period (odd, at least 3 px).
* :func:`nlm_denoise` -- non-local means (``skimage.restoration.denoise_nl_means``) in the Anscombe domain. Shot
  noise is Poisson: its variance grows with the signal, while NLM (and BM3D) assume one constant noise level. The
  standard trick is a variance-stabilising transform first: the generalised Anscombe transform
  ``2 / g * sqrt(g * x + 3/8 g^2 + s^2 - g * m)`` (gain ``g``, Gaussian read noise ``s``, offset ``m``) makes the
  noise roughly unit-variance Gaussian; the filter runs there with the noise sigma estimated from the data
  (:func:`estimate_sigma`, a wavelet MAD estimate); the exact unbiased inverse (Makitalo & Foi, closed-form
  approximation) brings the result back. Gain, offset and read noise come from the caller (the simulator writes
  counts: gain 1) or are estimated from the image (:func:`estimate_noise_model`).
* :func:`bm3d_denoise` -- BM3D in the same Anscombe domain, only when the optional ``bm3d`` package is installed
  (its licence allows non-commercial use only, so it is never a requirement: the ``bench`` extra); otherwise
  :class:`FilterUnavailable`. Given the noise's lag-1 row/column correlations it denoises with the matching noise
  power spectrum (:func:`correlated_psd`) instead of a white level.
* :func:`bragg_filter` -- the periodic (Bragg-peak) Fourier filter: keep Gaussian neighbourhoods of the lattice's
  reciprocal peaks plus a low-pass around DC. It averages the lattice over many cells, so it fills vacancies and
  hides point defects: it is the sanity check of the hallucination metric.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.restoration import denoise_nl_means

from stem_denoise.common.arrays import as_real_image
from stem_denoise.common.errors import InputError


class FilterUnavailable(RuntimeError):
    """An optional filter whose package is not installed."""


def _as_image(image: np.ndarray) -> np.ndarray:
    arr = as_real_image(image)
    if min(arr.shape) < 2:
        raise InputError(f"expected an image of at least 2 x 2 px, got shape {arr.shape}")
    return arr


# ---------------------------------------------------------------- Gaussian and median

def gaussian_denoise(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with ``sigma_px`` (pixels), reflect boundary."""
    return ndimage.gaussian_filter(_as_image(image), float(sigma_px), mode="reflect").astype(np.float32)


def gaussian_oracle(image: np.ndarray, truth: np.ndarray, sigmas: np.ndarray | None = None
                    ) -> tuple[np.ndarray, float]:
    """Gaussian blur with the sigma (px) that maximises PSNR against ``truth``; returns ``(output, sigma_px)``.

    This uses the truth and is an ORACLE: an upper bound for Gaussian filtering, not a usable method.
    Default sigmas: 24 values log-spaced between 0.3 and 8 px, refined once around the best.
    """
    img = _as_image(image)
    ref = _as_image(truth)
    if ref.shape != img.shape:
        raise InputError(f"truth {ref.shape} and image {img.shape} differ in shape")
    grid = np.geomspace(0.3, 8.0, 24) if sigmas is None else np.asarray(sigmas, dtype=np.float64)

    def err(s):
        return float(np.mean((ndimage.gaussian_filter(img, s, mode="reflect") - ref) ** 2))

    errs = [err(s) for s in grid]
    best = int(np.argmin(errs))
    if sigmas is None:
        lo = grid[max(0, best - 1)]
        hi = grid[min(len(grid) - 1, best + 1)]
        fine = np.linspace(lo, hi, 9)
        fine_errs = [err(s) for s in fine]
        sigma = float(fine[int(np.argmin(fine_errs))])
    else:
        sigma = float(grid[best])
    return gaussian_denoise(img, sigma), sigma


def median_size(period_px: float | None) -> int:
    """Median window (px): the odd integer nearest a quarter period, at least 3 (3 when the period is unknown)."""
    if period_px is None:
        return 3
    return max(3, int(2 * round((period_px / 4 - 1) / 2) + 1))


def median_denoise(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Median filter with a ``size`` x ``size`` window (px), reflect boundary."""
    if int(size) < 1:
        raise InputError(f"median size must be >= 1, got {size}")
    return ndimage.median_filter(_as_image(image), size=int(size), mode="reflect").astype(np.float32)


# ---------------------------------------------------------------- Anscombe domain

def _haar_hh(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finest diagonal Haar detail ``HH = (a - b - c + d) / 2`` of the 2x2 blocks and the blocks' mean."""
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    x = img[:h, :w]
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    return 0.5 * (a - b - c + d), 0.25 * (a + b + c + d)


def estimate_sigma(image: np.ndarray) -> float:
    """Standard deviation of white Gaussian noise (image units) from the finest diagonal Haar detail.

    Donoho's rule, ``median(|HH|) / 0.6745``, on ``HH = (a - b - c + d) / 2`` over 2x2 blocks: smooth signal
    cancels in ``HH`` and white noise keeps its variance.
    """
    hh, _ = _haar_hh(_as_image(image))
    return float(np.median(np.abs(hh)) / 0.6745)


def estimate_noise_model(image: np.ndarray, *, n_bins: int = 16) -> tuple[float, float]:
    """Estimate a linear noise model ``var(x) = gain * x + var0`` from one image (intensity units).

    The noise is sampled by the finest diagonal Haar detail (2x2 blocks; smooth column peaks nearly cancel in it),
    its robust variance (MAD) is measured in bins of the local mean (blocks' mean, blurred over 2 blocks) and a
    weighted line is fitted. Approximate: correlated noise biases it, but the Anscombe-domain filters estimate
    their own noise level afterwards, so mostly the ratio ``var0 / gain`` (the offset of the Poisson part) matters.
    Returns ``(gain, var0)`` with ``gain > 0``.
    """
    img = _as_image(image)
    hh, mean = _haar_hh(img)
    level = ndimage.gaussian_filter(mean, 2.0, mode="reflect")
    lo, hi = np.percentile(level, [1, 99])
    if not hi > lo:
        raise InputError("cannot estimate the noise model of a flat image")
    edges = np.linspace(lo, hi, n_bins + 1)
    idx = np.clip(np.digitize(level.ravel(), edges) - 1, 0, n_bins - 1)
    r = hh.ravel()
    xs, vs, ws = [], [], []
    for k in range(n_bins):
        sel = r[idx == k]
        if sel.size < 100:
            continue
        xs.append(float(np.mean(mean.ravel()[idx == k])))
        vs.append((np.median(np.abs(sel)) / 0.6745) ** 2)
        ws.append(sel.size)
    if len(xs) < 2:
        raise InputError("cannot estimate the noise model: too few pixels")
    gain, var0 = np.polyfit(np.asarray(xs), np.asarray(vs), 1, w=np.sqrt(np.asarray(ws)))
    if not gain > 0:
        gain = max(float(np.median(vs)) / max(float(np.median(xs)), 1e-12), 1e-12)
        var0 = 0.0
    return float(gain), float(var0)


def anscombe(x: np.ndarray, gain: float = 1.0, read_sigma: float = 0.0, offset: float = 0.0) -> np.ndarray:
    """Generalised Anscombe transform: Poisson(gain) + Gaussian(read_sigma) + offset -> ~unit-variance Gaussian."""
    g = float(gain)
    arg = g * (np.asarray(x, dtype=np.float64) - offset) + 0.375 * g * g + read_sigma ** 2
    return (2.0 / g) * np.sqrt(np.maximum(arg, 0.0))


def inverse_anscombe(d: np.ndarray, gain: float = 1.0, read_sigma: float = 0.0, offset: float = 0.0) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of :func:`anscombe` (Makitalo & Foi 2011/2013)."""
    g = float(gain)
    s = float(read_sigma) / g
    d = np.maximum(np.asarray(d, dtype=np.float64), 0.8)  # the expansion diverges near 0
    c = math.sqrt(1.5)
    y = 0.25 * d * d + 0.25 * c / d - 1.375 / d ** 2 + 0.625 * c / d ** 3 - 0.125 - s * s
    return np.maximum(y, 0.0) * g + offset


def _noise_model(img: np.ndarray, gain: float | None, read_sigma: float | None) -> tuple[float, float, float]:
    """(gain, read_sigma, offset) for the Anscombe transform; estimated where not given."""
    if gain is not None:
        if not gain > 0:
            raise InputError(f"gain must be > 0, got {gain}")
        return float(gain), float(read_sigma or 0.0), 0.0
    g, var0 = estimate_noise_model(img)
    # var = g * (x - m) -> offset m = -var0 / g; negative var0 is an offset, positive var0 is read noise.
    if var0 >= 0:
        return g, math.sqrt(var0), 0.0
    return g, float(read_sigma or 0.0), -var0 / g


def nlm_denoise(image: np.ndarray, period_px: float | None = None, *, gain: float | None = None,
                read_sigma: float | None = None, h_factor: float = 0.6) -> np.ndarray:
    """Non-local means in the Anscombe domain (see module docstring).

    Patch ``~period/2`` (odd, >= 5 px) and search distance one period (>= 6 px) so that the neighbouring
    columns are in the search window; ``h = h_factor * sigma`` with sigma estimated in the Anscombe domain.
    ``gain`` (intensity units per count) and ``read_sigma`` (intensity units) default to estimates from the image.
    """
    img = _as_image(image)
    g, rs, off = _noise_model(img, gain, read_sigma)
    z = anscombe(img, g, rs, off)
    sigma = float(estimate_sigma(z))
    patch = 5 if period_px is None else max(5, int(2 * round(period_px / 4) + 1))
    dist = 6 if period_px is None else max(6, int(round(period_px)))
    den = denoise_nl_means(z, patch_size=patch, patch_distance=dist, h=h_factor * sigma, sigma=sigma,
                           fast_mode=True, preserve_range=True)
    return inverse_anscombe(den, g, rs, off).astype(np.float32)


def bm3d_available() -> bool:
    """True when the optional ``bm3d`` package can be imported."""
    try:
        import bm3d  # noqa: F401
    except Exception:
        return False
    return True


def correlated_psd(shape: tuple[int, int], sigma: float, corr_row: float = 0.0, corr_col: float = 0.0) -> np.ndarray:
    """Power spectrum (FFT layout, ``bm3d``'s convention: ``sigma**2 * H * W`` for white noise) of noise with std
    ``sigma`` and lag-1 correlations ``corr_row`` along the rows (axis 1) and ``corr_col`` down the columns (axis 0),
    separable, each factor that of a variance-keeping MA(1) filter: ``1 + 2 rho cos(2 pi f)``. |rho| is clipped to
    0.49 (an MA(1) process cannot exceed 0.5)."""
    h, w = (int(v) for v in shape)
    rr = float(np.clip(corr_row, -0.49, 0.49))
    rc = float(np.clip(corr_col, -0.49, 0.49))
    fx = np.fft.fftfreq(w)[None, :]
    fy = np.fft.fftfreq(h)[:, None]
    shape_x = 1.0 + 2.0 * rr * np.cos(2.0 * np.pi * fx)
    shape_y = 1.0 + 2.0 * rc * np.cos(2.0 * np.pi * fy)
    return (float(sigma) ** 2 * h * w) * shape_y * shape_x


@contextlib.contextmanager
def _numpy_trapz():
    """BM3D's coloured-noise path (its ``bm4d`` helper, 4.2.5) calls ``np.trapz``, which NumPy 2 removed: lend it
    ``np.trapezoid`` (the same function) for the call only."""
    if hasattr(np, "trapz") or not hasattr(np, "trapezoid"):
        yield
        return
    np.trapz = np.trapezoid
    try:
        yield
    finally:
        del np.trapz


def bm3d_denoise(image: np.ndarray, *, gain: float | None = None, read_sigma: float | None = None,
                 corr_row: float = 0.0, corr_col: float = 0.0) -> np.ndarray:
    """BM3D in the Anscombe domain; raises :class:`FilterUnavailable` when the optional ``bm3d`` is missing.

    With ``corr_row``/``corr_col`` (lag-1 noise correlations along the rows / down the columns, e.g. from
    :func:`data_prep.noise_model.estimate_noise`) BM3D is given the noise's power spectrum
    (:func:`correlated_psd`) instead of a white level: BM3D's own way of handling correlated noise. The noise std
    in the Anscombe domain is estimated from the data (:func:`estimate_sigma`, which sees only the diagonal
    high-pass; for correlated noise it is rescaled to the full variance)."""
    try:
        import bm3d
    except Exception as exc:  # ImportError, or a broken optional install
        raise FilterUnavailable("the optional 'bm3d' package is not installed (non-commercial licence); "
                                "install the benchmark extra: pip install '.[bench]'") from exc
    img = _as_image(image)
    g, rs, off = _noise_model(img, gain, read_sigma)
    z = anscombe(img, g, rs, off)
    sigma = float(estimate_sigma(z))
    if corr_row or corr_col:
        # estimate_sigma measures the HH (diagonal) wavelet band, where MA(1) noise has (1 - rr)(1 - rc) of the
        # white power: undo that to get the pixel std
        rr = float(np.clip(corr_row, -0.49, 0.49))
        rc = float(np.clip(corr_col, -0.49, 0.49))
        sigma /= math.sqrt(max((1.0 - rr) * (1.0 - rc), 1e-3))
        psd = correlated_psd(z.shape, sigma, rr, rc)
        with _numpy_trapz():
            den = bm3d.bm3d(z, sigma_psd=psd)
    else:
        den = bm3d.bm3d(z, sigma_psd=sigma)
    den = np.asarray(den, dtype=np.float64).reshape(z.shape)
    return inverse_anscombe(den, g, rs, off).astype(np.float32)


# ---------------------------------------------------------------- Bragg (periodic) filter

def _periodic_smooth(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moisan's periodic + smooth decomposition: ``u = p + s`` with ``p`` free of the FFT's border cross."""
    h, w = u.shape
    v = np.zeros_like(u)
    v[0, :] += u[-1, :] - u[0, :]
    v[-1, :] += u[0, :] - u[-1, :]
    v[:, 0] += u[:, -1] - u[:, 0]
    v[:, -1] += u[:, 0] - u[:, -1]
    qy = 2.0 * np.cos(2.0 * np.pi * np.fft.fftfreq(h))[:, None]
    qx = 2.0 * np.cos(2.0 * np.pi * np.fft.fftfreq(w))[None, :]
    denom = qy + qx - 4.0
    denom[0, 0] = 1.0
    s_hat = np.fft.fft2(v) / denom
    s_hat[0, 0] = 0.0
    s = np.real(np.fft.ifft2(s_hat))
    return u - s, s


def find_bragg_peaks(image: np.ndarray, period_px: float, *, snr: float = 10.0, max_peaks: int = 48
                     ) -> np.ndarray:
    """Reciprocal-lattice peaks of a lattice image: float (K,2) frequencies ``(fy, fx)`` in cycles/px.

    Peaks are local maxima of the (lightly smoothed) power spectrum standing ``snr`` times above the median power
    at the same spatial frequency, beyond half the primary reciprocal spacing ``1/period_px`` from DC; at most
    ``max_peaks`` strongest. Both members of each ``+/-g`` pair are returned.
    """
    img = _as_image(image)
    p, _ = _periodic_smooth(img - img.mean())
    h, w = p.shape
    power = np.fft.fftshift(np.abs(np.fft.fft2(p)) ** 2)
    logp = np.log(power + 1e-30)
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
    fr = np.sqrt(fy * fy + fx * fx)
    step = 1.0 / min(h, w)
    ring = np.minimum((fr / step).astype(np.int64), int(0.75 / step))
    ring_med = np.zeros(ring.max() + 1)
    order = np.argsort(ring.ravel(), kind="stable")
    rs = ring.ravel()[order]
    vals = logp.ravel()[order]
    bounds = np.flatnonzero(np.diff(rs)) + 1
    for chunk_idx, chunk in zip(np.split(rs, bounds), np.split(vals, bounds)):
        ring_med[chunk_idx[0]] = np.median(chunk)
    excess = ndimage.gaussian_filter(logp, 0.7) - ring_med[ring]
    g = 1.0 / float(period_px)
    excess[fr < 0.5 * g] = -np.inf
    min_d = max(2, int(0.3 * g * min(h, w)))
    peaks = peak_local_max(np.where(np.isfinite(excess), excess, -1e9), min_distance=min_d,
                           threshold_abs=math.log(snr), exclude_border=False, num_peaks=max_peaks)
    if len(peaks) == 0:
        return np.zeros((0, 2))
    return np.stack([fy[peaks[:, 0], 0], fx[0, peaks[:, 1]]], axis=1)


def bragg_filter(image: np.ndarray, period_px: float | None = None, *, keep_frac: float = 0.15,
                 dc_frac: float = 0.25, snr: float = 10.0, max_peaks: int = 48) -> np.ndarray:
    """Periodic (Bragg-peak) Fourier filter of a lattice image.

    Keeps Gaussian neighbourhoods (sigma ``keep_frac / period_px`` cycles/px: real-space averaging over about one
    period either way) of every reciprocal peak found by :func:`find_bragg_peaks`, plus a Gaussian low-pass around
    DC (sigma ``dc_frac / period_px``) for slow intensity; everything else in the spectrum is removed. Border
    artefacts are avoided with the periodic + smooth decomposition (the smooth part is kept as it is).
    ``period_px`` defaults to :func:`data_prep.lattice.measure_lattice`.
    """
    img = _as_image(image)
    if period_px is None:
        from data_prep.lattice import measure_lattice
        period_px = float(measure_lattice(img).period_px)
    if not period_px >= 2:
        raise InputError(f"period_px must be >= 2, got {period_px}")
    mean = img.mean()
    p, s = _periodic_smooth(img - mean)
    h, w = img.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    g = 1.0 / float(period_px)
    sd_dc = dc_frac * g
    mask = np.exp(-(fy * fy + fx * fx) / (2 * sd_dc * sd_dc))
    sd = keep_frac * g
    for py, px in find_bragg_peaks(img, period_px, snr=snr, max_peaks=max_peaks):
        dy = (fy - py + 0.5) % 1.0 - 0.5  # wrap-around distance on the frequency torus
        dx = (fx - px + 0.5) % 1.0 - 0.5
        np.maximum(mask, np.exp(-dy * dy / (2 * sd * sd)) * np.exp(-dx * dx / (2 * sd * sd)), out=mask)
    out = np.real(np.fft.ifft2(np.fft.fft2(p) * mask)) + s + mean
    return out.astype(np.float32)
