"""The stochastic clean-to-noisy generator F and the training pairs of the default objective.

Why (see the README, "The denoiser's objective"): the classic CycleGAN's noisy cycle |F(G(a)) - a| can only be met
by a G that hides the noise realisation in its output for a deterministic F to restore. Here F is an explicit STEM
detector model with *fresh noise at every call*, so G learns from the clean cycle G(F(b)) = b, which is supervised by
construction, and gains nothing by hiding noise.

**The noise layer** (:func:`stem_noise`), in the clean image's units (a column peak = 1 above the floor): expected
counts ``lam = dose * clean``; Poisson shot noise; Gaussian read noise; a causal moving-average filter along the
fast-scan rows and then down the columns with lag-1 correlations ``corr_row`` / ``corr_col`` that keeps the
variance (the detector's finite bandwidth, and what real frames show); per-row flyback offsets of std ``row_offset
* mean(lam)``. Its parameters are drawn per sample from :class:`NoiseRanges` (wide ranges for the shipped model) or
around a :class:`data_prep.noise_model.NoiseEstimate` measured on the user's own micrographs.

**Scale in the loop** (:func:`make_pair`): the noise is added at the micrograph's native scale (a crop of a scene at
its native period), and then the noisy and the clean crop both pass through the *same* resampler inference uses
(:func:`cyclegan.infer.resample_operator`, Keys cubic, antialiased when shrinking) to the model's scale (e.g.
12.8 px per period). Upsampling correlates the noise and downsampling averages it, exactly as at inference, so the
model meets in training the interpolated noise it will meet. Both are normalised by the noisy crop's robust 0.5 /
99.5 % percentiles, as inference normalises the whole micrograph.

Everything is a pure function of a ``torch.Generator``, so a batch is a pure function of (seed, step, rank) and a
resumed run draws the same pairs.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from cyclegan.infer import resample_operator

MARGIN_MODEL_PX = 4  # model px cut off every side after resampling (the resampler's mirrored border)


@dataclass(frozen=True)
class NoiseRanges:
    """Per-sample noise parameters, drawn uniformly (``dose`` log-uniformly) from these ranges.

    ``dose``: counts at a column peak; ``read_noise``: counts std; ``corr_row``/``corr_col``: lag-1 correlations
    along the rows / down the columns (|value| <= 0.45); ``white_frac``: fraction of samples with uncorrelated noise;
    ``row_offset``: per-row offset std as a fraction of the mean counts; ``clean_frac``: fraction of samples left
    noise-free (the identity term G(b) = b).
    """

    dose: tuple[float, float] = (1.0, 60.0)
    read_noise: tuple[float, float] = (0.0, 1.5)
    corr_row: tuple[float, float] = (-0.3, 0.45)
    corr_col: tuple[float, float] = (-0.3, 0.3)
    white_frac: float = 0.25
    row_offset: tuple[float, float] = (0.0, 0.04)
    clean_frac: float = 0.05

    def validate(self) -> None:
        from common.errors import ConfigError

        for name in ("dose", "read_noise", "corr_row", "corr_col", "row_offset"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ConfigError(f"noise.{name} must be [low, high] with low <= high, got {[lo, hi]}")
        if self.dose[0] <= 0:
            raise ConfigError("noise.dose must be > 0")
        if self.read_noise[0] < 0 or self.row_offset[0] < 0:
            raise ConfigError("noise.read_noise and noise.row_offset must be >= 0")
        for name in ("corr_row", "corr_col"):
            lo, hi = getattr(self, name)
            if lo < -0.45 or hi > 0.45:
                raise ConfigError(f"noise.{name} must lie within [-0.45, 0.45]")
        for name in ("white_frac", "clean_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"noise.{name} must be in [0, 1]")


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen).item())


def draw_noise(gen: torch.Generator, ranges: NoiseRanges) -> dict:
    """One sample's noise parameters from ``ranges`` (a plain dict: dose, read_noise, corr_row, corr_col,
    row_offset, clean)."""
    clean = torch.rand((), generator=gen).item() < ranges.clean_frac
    dose = math.exp(_u(gen, math.log(ranges.dose[0]), math.log(ranges.dose[1])))
    white = torch.rand((), generator=gen).item() < ranges.white_frac
    cr = 0.0 if white else _u(gen, *ranges.corr_row)
    cc = 0.0 if white else _u(gen, *ranges.corr_col)
    return {"dose": dose, "read_noise": _u(gen, *ranges.read_noise), "corr_row": cr, "corr_col": cc,
            "row_offset": _u(gen, *ranges.row_offset), "clean": bool(clean)}


def ma1_coefficient(rho: float) -> float:
    """Coefficient c of e_t + c * e_{t-1} whose lag-1 autocorrelation c / (1 + c^2) is ``rho`` (|rho| <= 0.5)."""
    if abs(rho) < 1e-12:
        return 0.0
    rho = max(-0.499, min(0.499, rho))
    return (1.0 - math.sqrt(1.0 - 4.0 * rho * rho)) / (2.0 * rho)


def _ma1(e: torch.Tensor, rho: float, dim: int) -> torch.Tensor:
    """Causal MA(1) filter along ``dim`` (-1 rows' fast-scan direction, -2 down the columns) keeping the variance."""
    c = ma1_coefficient(rho)
    if c == 0.0:
        return e
    out = e.clone()
    if dim == -1:
        out[..., 1:] = (e[..., 1:] + c * e[..., :-1]) / math.sqrt(1.0 + c * c)
    else:
        out[..., 1:, :] = (e[..., 1:, :] + c * e[..., :-1, :]) / math.sqrt(1.0 + c * c)
    return out


def stem_noise(clean: torch.Tensor, params: dict, gen: torch.Generator) -> torch.Tensor:
    """Noisy version of a clean (H, W) image in column-peak units (see the module docstring), same units out."""
    dose = float(params["dose"])
    lam = clean.clamp_min(0.0) * dose
    counts = torch.poisson(lam, generator=gen)
    e = counts - lam
    if params.get("read_noise", 0.0) > 0:
        e = e + float(params["read_noise"]) * torch.randn(lam.shape, generator=gen)
    e = _ma1(e, float(params.get("corr_row", 0.0)), dim=-1)
    e = _ma1(e, float(params.get("corr_col", 0.0)), dim=-2)
    ro = float(params.get("row_offset", 0.0))
    if ro > 0:
        e = e + ro * float(lam.mean()) * torch.randn((lam.shape[0], 1), generator=gen)
    return (lam + e) / dose


@functools.lru_cache(maxsize=512)
def resample_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Dense (n_out, n_in) float32 matrix of the inference resampler (:func:`cyclegan.infer.resample_operator`)."""
    op = resample_operator(int(n_in), int(n_out))
    if op.matrix is None:
        return torch.eye(n_in, dtype=torch.float32)
    return torch.from_numpy(np.asarray(op.matrix.todense(), dtype=np.float32))


def resample(img: torch.Tensor, n_out: int) -> torch.Tensor:
    """Resample a square (n, n) image to (n_out, n_out) with the inference resampler."""
    m = resample_matrix(img.shape[-2], n_out)
    return m @ img @ m.T


def _dihedral(img: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.rot90(img, k % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if k >= 4 else out


def make_pair(scene_image: np.ndarray, native_period: float, model_period: float, crop_px: int,
              gen: torch.Generator, noise: dict, *, scale_jitter: float = 0.08,
              norm_jitter: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean) crops of ``crop_px`` model px from a clean native-scale scene (see the module docstring).

    The native-to-model scale is ``model_period / native_period`` times a random factor within
    +-``scale_jitter`` (the lattice measurement's own error, and lattices whose columns sit off the measured
    period). ``noise`` as from :func:`draw_noise`.
    """
    s = (model_period / native_period) * math.exp(_u(gen, -scale_jitter, scale_jitter))
    outer = crop_px + 2 * MARGIN_MODEL_PX
    n_nat = max(4, int(round(outer / s)))
    h, w = scene_image.shape
    if n_nat > min(h, w):
        n_nat = min(h, w)
    r0 = int(torch.randint(0, h - n_nat + 1, (), generator=gen))
    c0 = int(torch.randint(0, w - n_nat + 1, (), generator=gen))
    clean = torch.from_numpy(np.ascontiguousarray(scene_image[r0:r0 + n_nat, c0:c0 + n_nat]))
    clean = _dihedral(clean, int(torch.randint(0, 8, (), generator=gen)))
    noisy = clean.clone() if noise.get("clean") else stem_noise(clean, noise, gen)
    q = torch.quantile(noisy.flatten(), torch.tensor([0.005, 0.995]))
    lo, hi = float(q[0]), float(q[1])
    span = max(hi - lo, 1e-3)
    lo += _u(gen, -norm_jitter, norm_jitter) * span
    span *= math.exp(_u(gen, -norm_jitter, norm_jitter))
    noisy_m = resample(noisy, outer)
    clean_m = resample(clean, outer)
    m = MARGIN_MODEL_PX
    noisy_m = (noisy_m[m:m + crop_px, m:m + crop_px] - lo) / span
    clean_m = (clean_m[m:m + crop_px, m:m + crop_px] - lo) / span
    return noisy_m.contiguous(), clean_m.contiguous()


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """The torch.Generator of one (seed, step, rank, stream): batches are pure functions of these."""
    ss = np.random.SeedSequence([int(seed), int(step), int(rank), int(stream), 90_211])
    g = torch.Generator()
    g.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1)))
    return g


class SyntheticPairs:
    """Batches of (noisy, clean) model-scale pairs drawn from a :class:`cyclegan.synth.SceneBank`."""

    def __init__(self, bank, *, model_period: float, crop_px: int, ranges: NoiseRanges,
                 scale_jitter: float = 0.08) -> None:
        self.bank = bank
        self.model_period = float(model_period)
        self.crop_px = int(crop_px)
        self.ranges = ranges
        self.scale_jitter = float(scale_jitter)

    def batch(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(int(n)):
            i = int(torch.randint(0, len(self.bank), (), generator=gen))
            scene = self.bank[i]
            noise = draw_noise(gen, self.ranges)
            x, y = make_pair(scene.image, scene.period_px, self.model_period, self.crop_px, gen, noise,
                             scale_jitter=self.scale_jitter)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs)[:, None], torch.stack(ys)[:, None]
