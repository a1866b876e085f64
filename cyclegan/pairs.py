"""The stochastic clean-to-noisy generator F and the training pairs of the default objective.

Why (see the README, "The denoiser's objective"): the classic CycleGAN's noisy cycle |F(G(a)) - a| can only be met
by a G that hides the noise realisation in its output for a deterministic F to restore. Here F is an explicit STEM
detector model with *fresh noise at every call*, so G learns from the clean cycle G(F(b)) = b, which is supervised by
construction, and gains nothing by hiding noise.

**The noise layer** (:func:`stem_noise`), in the clean image's units (a column peak = 1 above the floor): expected
counts ``lam = dose * clean``; Poisson shot noise; Gaussian read noise; a causal moving-average filter along the
fast-scan rows and then down the columns with lag-1 correlations ``corr_row`` / ``corr_col`` that keeps the
variance (the detector's finite bandwidth, and what real frames show); optional *scan streaks*, a long-range
correlation along the fast-scan rows (a causal exponential filter of coefficient ``streak_coef`` per pixel carrying the
fraction ``streak_weight`` of the variance: real frames recorded with a slow detector response show row correlations
of 0.4-0.8 that decay over 5-10 px, which an MA(1) cannot make); per-row flyback offsets of std ``row_offset
* mean(lam)`` (or ``row_offset_abs`` in the image's units). Its parameters are drawn per sample from
:class:`NoiseRanges` (wide ranges for the shipped model) or around the noise models estimated on the user's own
micrographs (:func:`data_prep.noise_model.estimate_noise`, stored in the data folder's manifest by
``scripts/prepare_data.py``; :func:`read_noise_estimates`, :func:`draw_estimated_noise`).

**Adversarial refinement** (:class:`NoiseRefiner`): the estimates are refined by a discriminator D_A that tells
real micrograph patches from clean patches put through the noise layer. The layer's Poisson sampling is not
differentiable, so the refiner has a differentiable twin of it (Gaussian noise of the same variance, ``counts +
read^2``, through the same MA(1) filters, row offsets and resampler); its learnable corrections (dose scale,
correlation shifts, read-noise and row-offset scales) are then applied to the Poisson layer that makes G's
training pairs.

**Scale in the loop** (:func:`make_pair`): the noise is added at the micrograph's native scale (a crop of a scene at
its native period), and then the noisy and the clean crop both pass through the *same* resampler inference uses
(:func:`stem_denoise.common.resample.resample_operator`, Keys cubic, antialiased when shrinking) to the model's
scale (e.g. 12.8 px per period). Upsampling correlates the noise and downsampling averages it, exactly as at
inference, so the model meets in training the interpolated noise it will meet. Both are normalised by the noisy
crop's robust 0.5 / 99.5 % percentiles, as inference normalises the whole micrograph.

Everything is a pure function of a ``torch.Generator``, so a batch is a pure function of (seed, step, rank) and a
resumed run draws the same pairs.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn

from cyclegan.synth import WORKING_SCALES
from stem_denoise.common.config import Config, Interval
from stem_denoise.common.resample import resample_operator

MARGIN_MODEL_PX = 4  # model px cut off every side after resampling (the resampler's mirrored border)
CORR_LIMIT = 0.45  # the largest |lag-1 correlation| of the noise layer's MA(1) filters
STREAK_COEF_LIMIT = 0.97  # the largest per-pixel decay of the scan-streak filter


class NoiseRanges(Config):
    """Per-sample noise parameters, drawn uniformly (``dose`` log-uniformly) from these ranges.

    ``dose``: counts at a column peak; ``read_noise``: counts std; ``corr_row``/``corr_col``: lag-1 correlations
    along the rows / down the columns (|value| <= 0.45); ``white_frac``: fraction of samples with uncorrelated noise;
    ``row_offset``: per-row offset std as a fraction of the mean counts; ``clean_frac``: fraction of samples left
    noise-free (the identity term G(b) = b); ``streak_frac``: fraction of the correlated samples that also get scan
    streaks, with ``streak_weight`` (share of the variance) and ``streak_coef`` (per-pixel decay) drawn from their
    ranges (0: none, and no random numbers are drawn for them, so older runs resume exactly).
    """

    dose: Interval(gt=0.0) = (1.0, 60.0)
    read_noise: Interval(ge=0.0) = (0.0, 1.5)
    corr_row: Interval(-CORR_LIMIT, CORR_LIMIT) = (-0.3, 0.45)
    corr_col: Interval(-CORR_LIMIT, CORR_LIMIT) = (-0.3, 0.3)
    white_frac: float = Field(0.25, ge=0.0, le=1.0)
    row_offset: Interval(ge=0.0) = (0.0, 0.04)
    clean_frac: float = Field(0.05, ge=0.0, le=1.0)
    streak_frac: float = Field(0.0, ge=0.0, le=1.0)
    streak_weight: Interval(0.0, 1.0) = (0.2, 0.9)
    streak_coef: Interval(0.0, STREAK_COEF_LIMIT) = (0.5, 0.95)


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen).item())


def draw_noise(gen: torch.Generator, ranges: NoiseRanges) -> dict:
    """One sample's noise parameters from ``ranges`` (a plain dict: dose, read_noise, corr_row, corr_col,
    row_offset, clean)."""
    clean = torch.rand((), generator=gen).item() < ranges.clean_frac
    dose = log_uniform(gen, *ranges.dose)
    white = torch.rand((), generator=gen).item() < ranges.white_frac
    cr = 0.0 if white else _u(gen, *ranges.corr_row)
    cc = 0.0 if white else _u(gen, *ranges.corr_col)
    out = {"dose": dose, "read_noise": _u(gen, *ranges.read_noise), "corr_row": cr, "corr_col": cc,
           "row_offset": _u(gen, *ranges.row_offset), "clean": bool(clean)}
    if ranges.streak_frac > 0:
        streaky = torch.rand((), generator=gen).item() < ranges.streak_frac and not white
        weight, coef = _u(gen, *ranges.streak_weight), _u(gen, *ranges.streak_coef)
        if streaky:
            out.update(streak_weight=weight, streak_coef=coef)
    return out


def _clip_corr(rho: float) -> float:
    return max(-CORR_LIMIT, min(CORR_LIMIT, float(rho)))


def ma1_coefficient(rho: float) -> float:
    """Coefficient c of e_t + c * e_{t-1} whose lag-1 autocorrelation c / (1 + c^2) is ``rho`` (|rho| <= 0.5)."""
    if abs(rho) < 1e-12:
        return 0.0
    rho = max(-0.499, min(0.499, rho))
    return (1.0 - math.sqrt(1.0 - 4.0 * rho * rho)) / (2.0 * rho)


def _ma1_apply(e: torch.Tensor, c, norm, dim: int) -> torch.Tensor:
    """``(e_t + c * e_{t-1}) / norm`` along ``dim`` (-1 along the rows, -2 down the columns); the first sample is
    kept."""
    if dim == -1:
        return torch.cat([e[..., :1], (e[..., 1:] + c * e[..., :-1]) / norm], dim=-1)
    return torch.cat([e[..., :1, :], (e[..., 1:, :] + c * e[..., :-1, :]) / norm], dim=-2)


def _ma1(e: torch.Tensor, rho: float, dim: int) -> torch.Tensor:
    """Causal MA(1) filter along ``dim`` (-1 rows' fast-scan direction, -2 down the columns) keeping the variance."""
    c = ma1_coefficient(rho)
    if c == 0.0:
        return e
    return _ma1_apply(e, c, math.sqrt(1.0 + c * c), dim)


@functools.lru_cache(maxsize=64)
def _streak_taps(coef: float) -> torch.Tensor:
    """Taps ``coef^k`` (k = 0.. until below 1 %, at most 128) of the causal streak filter, unit sum of squares, as a
    conv1d weight (1, 1, K) flipped so that tap k weighs the sample k pixels back."""
    n = 1 if coef <= 0 else min(128, int(math.ceil(math.log(0.01) / math.log(coef))) + 1)
    taps = torch.tensor([coef ** k for k in range(n)], dtype=torch.float64)
    taps = taps / torch.sqrt((taps * taps).sum())
    return taps.flip(0).to(torch.float32).view(1, 1, -1)


def scan_streaks(e: torch.Tensor, params: dict) -> torch.Tensor:
    """Noise ``e`` (..., H, W) with a share ``w = params["streak_weight"]`` of its variance replaced by its causal
    exponential filter along the rows (``params["streak_coef"]`` per pixel): ``(sqrt(1 - w) e + sqrt(w) (h * e)) /
    norm``, ``h`` of unit energy and ``norm`` such that the variance of white noise is kept (its lag-1 correlation
    along the rows becomes about 0.45 at w = 0.5, coef = 0.9 and 0.68 at w = 0.8, coef = 0.93; nothing changes down
    the columns). Without those keys (or at 0) ``e`` is returned as it is."""
    w, coef = float(params.get("streak_weight", 0.0)), float(params.get("streak_coef", 0.0))
    if w <= 0 or coef <= 0:
        return e
    taps = _streak_taps(coef).to(e.device, e.dtype)
    rows = e.reshape(-1, 1, e.shape[-1])
    smooth = torch.nn.functional.conv1d(torch.nn.functional.pad(rows, (taps.shape[-1] - 1, 0)), taps)
    a, b = math.sqrt(1.0 - w), math.sqrt(w)
    norm = math.sqrt(1.0 + 2.0 * a * b * float(taps[0, 0, -1]))  # cross term: e_t meets itself in tap 0
    return (a * e + b * smooth.reshape(e.shape)) / norm


def log_uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    """A value drawn log-uniformly from [lo, hi] (both > 0) with ``gen``."""
    return math.exp(_u(gen, math.log(lo), math.log(hi)))


def stem_noise(clean: torch.Tensor, params: dict, gen: torch.Generator) -> torch.Tensor:
    """Noisy version of a clean (H, W) image (see the module docstring), same units out.

    ``params["dose"]`` is counts per unit of clean intensity above ``params.get("offset", 0)`` (the image value of
    zero counts): with a clean scene in column-peak units and offset 0, the counts at a column peak.
    ``read_noise`` is in counts; per-row offsets have std ``row_offset * mean(counts)`` (counts) plus
    ``row_offset_abs`` (the clean image's units).
    """
    dose = float(params["dose"])
    off = float(params.get("offset", 0.0))
    lam = (clean - off).clamp_min(0.0) * dose
    counts = torch.poisson(lam, generator=gen)
    e = counts - lam
    if params.get("read_noise", 0.0) > 0:
        e = e + float(params["read_noise"]) * torch.randn(lam.shape, generator=gen)
    e = scan_streaks(e, params)
    e = _ma1(e, float(params.get("corr_row", 0.0)), dim=-1)
    e = _ma1(e, float(params.get("corr_col", 0.0)), dim=-2)
    ro = float(params.get("row_offset", 0.0))
    if ro > 0:
        e = e + ro * float(lam.mean()) * torch.randn((lam.shape[0], 1), generator=gen)
    ra = float(params.get("row_offset_abs", 0.0))
    if ra > 0:
        e = e + ra * dose * torch.randn((lam.shape[0], 1), generator=gen)
    return (lam + e) / dose + off


@functools.lru_cache(maxsize=512)
def resample_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Dense (n_out, n_in) float32 matrix of the inference resampler
    (:func:`stem_denoise.common.resample.resample_operator`)."""
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


def native_crop(scene_image: np.ndarray, native_period: float, model_period: float, crop_px: int,
                gen: torch.Generator, *, scale_jitter: float = 0.08) -> torch.Tensor:
    """A random square crop of a clean native-scale scene, in a random dihedral orientation, whose side resamples to
    ``crop_px + 2 * MARGIN_MODEL_PX`` model px at a native-to-model scale of ``model_period / native_period`` times
    a random factor within +-``scale_jitter`` (the lattice measurement's own error, and lattices whose columns sit
    off the measured period)."""
    s = (model_period / native_period) * math.exp(_u(gen, -scale_jitter, scale_jitter))
    outer = crop_px + 2 * MARGIN_MODEL_PX
    n_nat = max(4, int(round(outer / s)))
    h, w = scene_image.shape
    if n_nat > min(h, w):
        n_nat = min(h, w)
    r0 = int(torch.randint(0, h - n_nat + 1, (), generator=gen))
    c0 = int(torch.randint(0, w - n_nat + 1, (), generator=gen))
    clean = torch.from_numpy(np.ascontiguousarray(scene_image[r0:r0 + n_nat, c0:c0 + n_nat]))
    return _dihedral(clean, int(torch.randint(0, 8, (), generator=gen)))


def make_pair(scene_image: np.ndarray, native_period: float, model_period: float, crop_px: int,
              gen: torch.Generator, noise: dict, *, scale_jitter: float = 0.08,
              norm_jitter: float = 0.05, scale_in_loop: bool = True,
              renormalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean) crops of ``crop_px`` model px from a clean native-scale scene (see the module docstring).

    The crop and scale as :func:`native_crop`, then :func:`pair_from_crop`. ``noise`` as from :func:`draw_noise`.
    """
    clean = native_crop(scene_image, native_period, model_period, crop_px, gen, scale_jitter=scale_jitter)
    return pair_from_crop(clean, crop_px, gen, noise, norm_jitter=norm_jitter, scale_in_loop=scale_in_loop,
                          renormalise=renormalise)


def pair_from_crop(clean: torch.Tensor, crop_px: int, gen: torch.Generator, noise: dict, *,
                   norm_jitter: float = 0.05, scale_in_loop: bool = True,
                   renormalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean) crops of ``crop_px`` model px from a clean native-scale crop (:func:`native_crop`).

    The noise is added at the native scale, then both are resampled to ``crop_px + 2 * MARGIN_MODEL_PX`` and the
    margins cut off. ``scale_in_loop=False`` (the ablation) resamples the clean crop to the model's scale first and
    adds the noise there. ``renormalise=False`` keeps the scene's own units (patches already normalised per
    micrograph) instead of normalising by the noisy crop's robust range.
    """
    outer = crop_px + 2 * MARGIN_MODEL_PX
    if not scale_in_loop:
        clean = resample(clean, outer)
    noisy = clean.clone() if noise.get("clean") else stem_noise(clean, noise, gen)
    if renormalise:
        q = torch.quantile(noisy.flatten(), torch.tensor([0.005, 0.995]))
        lo, hi = float(q[0]), float(q[1])
        span = max(hi - lo, 1e-3)
        lo += _u(gen, -norm_jitter, norm_jitter) * span
        span *= math.exp(_u(gen, -norm_jitter, norm_jitter))
    else:
        lo, span = 0.0, 1.0
    noisy_m = resample(noisy, outer) if scale_in_loop else noisy
    clean_m = resample(clean, outer) if scale_in_loop else clean
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
    """Batches of (noisy, clean) model-scale pairs drawn from a :class:`cyclegan.synth.SceneBank`.

    ``working_scale``: which length maps to ``model_period``: "cell" (the scene's lattice period, as the lattice
    measurement reports it) or "sites" (the period times the scene's ``site_factor``: the nearest column spacing of
    a multi-site cell, the rule of :func:`cyclegan.infer.site_spacing_factor`, so that a model trained this way and
    run at the "sites" scale meets the same magnification at training and at inference)."""

    def __init__(self, bank, *, model_period: float, crop_px: int, ranges: NoiseRanges,
                 scale_jitter: float = 0.08, scale_in_loop: bool = True, working_scale: str = "cell") -> None:
        if working_scale not in WORKING_SCALES:
            raise ValueError(f"working_scale must be one of {', '.join(WORKING_SCALES)}, got {working_scale!r}")
        self.working_scale = working_scale
        self.bank = bank
        self.model_period = float(model_period)
        self.crop_px = int(crop_px)
        self.ranges = ranges
        self.scale_jitter = float(scale_jitter)
        self.scale_in_loop = bool(scale_in_loop)

    def batch(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(int(n)):
            i = int(torch.randint(0, len(self.bank), (), generator=gen))
            scene = self.bank[i]
            noise = draw_noise(gen, self.ranges)
            # the period that maps to the model's: the cell's, or at the "sites" scale the nearest column spacing's
            native = scene.period_px * (getattr(scene, "site_factor", 1.0) if self.working_scale == "sites" else 1.0)
            x, y = make_pair(scene.image, native, self.model_period, self.crop_px, gen, noise,
                             scale_jitter=self.scale_jitter, scale_in_loop=self.scale_in_loop)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs)[:, None], torch.stack(ys)[:, None]


# -------------------------------------------------------------------------------------------------------------------
# Noise drawn around the estimates of the user's own micrographs
# -------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EstimatedNoise:
    """One micrograph's noise model in the units of its normalised patches, as the noise layer takes it.

    ``dose``: counts per normalised unit (``1 / gain``); ``offset``: normalised value of zero counts;
    ``read_noise``: counts; ``corr_row``/``corr_col``: lag-1 correlations; ``row_offset_abs``: per-row offset std in
    normalised units; ``period_px``: the micrograph's measured lattice period in its own (native) pixels;
    ``peak_dose``: counts at a column peak (for people); ``source``: the micrograph.
    """

    dose: float
    offset: float
    read_noise: float
    corr_row: float
    corr_col: float
    row_offset_abs: float
    period_px: float
    peak_dose: float
    reliable: bool
    source: str

    @classmethod
    def from_manifest(cls, noise: dict, source: str = "") -> "EstimatedNoise":
        """From a micrograph's ``noise`` record of ``manifest.json`` (:mod:`data_prep.patches`); ValueError if it
        does not describe a usable noise model."""
        n = noise["normalised"]
        gain = float(n["gain"])
        est = cls(dose=1.0 / gain if gain > 0 else math.nan, offset=float(n["offset"]),
                  read_noise=float(n["read_noise"]) / gain if gain > 0 else math.nan,
                  corr_row=_clip_corr(float(n["corr_row"])), corr_col=_clip_corr(float(n["corr_col"])),
                  row_offset_abs=float(n["row_offset"]), period_px=float(noise["period_px"]),
                  peak_dose=float(n["dose"]), reliable=bool(n.get("reliable", True)), source=str(source))
        values = (est.dose, est.offset, est.read_noise, est.row_offset_abs, est.period_px, est.peak_dose)
        if not all(math.isfinite(v) for v in values) or not (est.dose > 0 and est.peak_dose > 0
                                                               and est.period_px >= 2):
            raise ValueError("not a usable noise model")
        if est.read_noise < 0 or est.row_offset_abs < 0:
            raise ValueError("negative read noise or row offsets")
        return est


def read_noise_estimates(data_dir) -> list[EstimatedNoise]:
    """The noise models of the training micrographs of a data folder (its ``manifest.json``, written by
    ``scripts/prepare_data.py``); [] without a manifest or estimates. Records that are null or unusable are left out;
    when some estimates are marked reliable, only those are used."""
    path = Path(data_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    out = []
    for m in manifest.get("micrographs", []) if isinstance(manifest, dict) else []:
        if not isinstance(m, dict) or m.get("split", "train") != "train" or not isinstance(m.get("noise"), dict):
            continue
        try:
            out.append(EstimatedNoise.from_manifest(m["noise"], str(m.get("source", ""))))
        except (KeyError, TypeError, ValueError):
            continue
    reliable = [e for e in out if e.reliable]
    return reliable or out


def draw_estimated_noise(gen: torch.Generator, estimates: list[EstimatedNoise], spread: float,
                         clean_frac: float = 0.0) -> tuple[dict, EstimatedNoise]:
    """One sample's noise parameters around a random micrograph's estimate, and that estimate.

    The dose, read noise and row offsets are scaled by independent log-uniform factors within ``exp(+-spread)``, the
    correlations shifted by up to +-``spread / 6`` (kept within +-0.45); a ``clean_frac`` share of the samples is
    flagged noise-free (the identity term). Units as :class:`EstimatedNoise`, keys as :func:`stem_noise` takes them.
    """
    est = estimates[int(torch.randint(0, len(estimates), (), generator=gen))]
    clean = torch.rand((), generator=gen).item() < clean_frac
    s, c = float(spread), float(spread) / 6.0
    params = {
        "dose": est.dose * math.exp(_u(gen, -s, s)),
        "offset": est.offset,
        "read_noise": est.read_noise * math.exp(_u(gen, -s, s)),
        "corr_row": _clip_corr(est.corr_row + _u(gen, -c, c)),
        "corr_col": _clip_corr(est.corr_col + _u(gen, -c, c)),
        "row_offset_abs": est.row_offset_abs * math.exp(_u(gen, -s, s)),
        "clean": bool(clean),
    }
    return params, est


@dataclass
class SoftSample:
    """Inputs of one sample of the refiner's differentiable noise (:meth:`NoiseRefiner.forward`): the clean crop at the
    scale the noise is added at, its noise parameters before refinement, standard normal draws for the pixels and the
    rows, and the model-scale sides (``outer`` before the margins are cut, ``crop`` after)."""

    clean: torch.Tensor
    params: dict
    eps: torch.Tensor
    rows: torch.Tensor
    outer: int
    crop: int

    @classmethod
    def draw(cls, clean: torch.Tensor, params: dict, crop: int, gen: torch.Generator) -> "SoftSample":
        eps = torch.randn(clean.shape, generator=gen)
        rows = torch.randn((clean.shape[0], 1), generator=gen)
        return cls(clean, params, eps, rows, crop + 2 * MARGIN_MODEL_PX, crop)


def _ma1_soft(e: torch.Tensor, rho: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`_ma1` with a differentiable coefficient: ``c = 2 rho / (1 + sqrt(1 - 4 rho^2))`` (no 0/0 at rho = 0)."""
    c = 2.0 * rho / (1.0 + torch.sqrt(1.0 - 4.0 * rho * rho))
    return _ma1_apply(e, c, torch.sqrt(1.0 + c * c), dim)


class NoiseRefiner(nn.Module):
    """Learnable corrections to estimated noise parameters, refined adversarially (module docstring).

    Parameters (all zero at the start: the identity correction): ``log_dose`` (dose scale ``exp(log_dose)``),
    ``corr_row_shift``/``corr_col_shift`` (a correlation ``rho`` becomes ``0.45 tanh(atanh(rho / 0.45) + shift)``, so
    it stays within +-0.45), ``log_row_offset`` and ``log_read_noise`` (scales of the row offsets and the read
    noise). ``reference`` (lag-1 correlations along rows and down columns, e.g. the estimates' mean) only sets which
    refined correlations :meth:`summary` reports.
    """

    def __init__(self, reference: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__()
        self.log_dose = nn.Parameter(torch.zeros(()))
        self.corr_row_shift = nn.Parameter(torch.zeros(()))
        self.corr_col_shift = nn.Parameter(torch.zeros(()))
        self.log_row_offset = nn.Parameter(torch.zeros(()))
        self.log_read_noise = nn.Parameter(torch.zeros(()))
        self.reference = (float(reference[0]), float(reference[1]))

    @staticmethod
    def _shift_corr(rho, shift: torch.Tensor) -> torch.Tensor:
        base = torch.atanh(torch.as_tensor(float(rho) / CORR_LIMIT, dtype=shift.dtype, device=shift.device)
                           .clamp(-0.998, 0.998))
        return CORR_LIMIT * torch.tanh(base + shift)

    def _refined_tensors(self, params: dict) -> dict:
        return {
            "dose": float(params["dose"]) * torch.exp(self.log_dose),
            "read_noise": float(params.get("read_noise", 0.0)) * torch.exp(self.log_read_noise),
            "corr_row": self._shift_corr(params.get("corr_row", 0.0), self.corr_row_shift),
            "corr_col": self._shift_corr(params.get("corr_col", 0.0), self.corr_col_shift),
            "row_offset_abs": float(params.get("row_offset_abs", 0.0)) * torch.exp(self.log_row_offset),
        }

    @torch.no_grad()
    def refine(self, params: dict) -> dict:
        """``params`` (as :func:`stem_noise` takes them) with the corrections applied, as plain floats: no gradient
        reaches the refiner through what is made from them."""
        out = dict(params)
        out.update({k: float(v) for k, v in self._refined_tensors(params).items()})
        return out

    @torch.no_grad()
    def summary(self) -> dict[str, float]:
        """The corrections, for the training log: scales of dose, read noise and row offsets, and the refined
        correlations of :attr:`reference`."""
        return {
            "noise_dose_scale": float(torch.exp(self.log_dose)),
            "noise_read_scale": float(torch.exp(self.log_read_noise)),
            "noise_row_offset_scale": float(torch.exp(self.log_row_offset)),
            "noise_corr_row": float(self._shift_corr(self.reference[0], self.corr_row_shift)),
            "noise_corr_col": float(self._shift_corr(self.reference[1], self.corr_col_shift)),
        }

    def forward(self, samples: list[SoftSample]) -> torch.Tensor:
        """Differentiable noisy model-scale crops ``(n, 1, crop, crop)`` (float32) of ``samples``.

        Per sample: ``lam = dose * max(clean - offset, 0)`` counts; noise ``sqrt(lam + read^2) * eps`` (the Gaussian
        of the Poisson + read noise variance); the MA(1) filters along the rows and down the columns; row offsets;
        back to the clean image's units; then the inference resampler to ``outer`` model px (a dense matrix product)
        and the margins cut off, as :func:`pair_from_crop` does.
        """
        dev = self.log_dose.device
        out = []
        for smp in samples:
            p = self._refined_tensors(smp.params)
            clean = smp.clean.to(dev, torch.float32)
            off = float(smp.params.get("offset", 0.0))
            lam = (clean - off).clamp_min(0.0) * p["dose"]
            var = lam + p["read_noise"] ** 2
            e = torch.sqrt(var.clamp_min(1e-12)) * smp.eps.to(dev, torch.float32)
            e = scan_streaks(e, smp.params)
            e = _ma1_soft(e, p["corr_row"], dim=-1)
            e = _ma1_soft(e, p["corr_col"], dim=-2)
            noisy = torch.maximum(clean, torch.full_like(clean, off)) + e / p["dose"]
            noisy = noisy + p["row_offset_abs"] * smp.rows.to(dev, torch.float32)
            if noisy.shape[-1] != smp.outer:
                m = resample_matrix(noisy.shape[-1], smp.outer).to(dev)
                noisy = m @ noisy @ m.T
            k = MARGIN_MODEL_PX
            out.append(noisy[k:k + smp.crop, k:k + smp.crop])
        return torch.stack(out)[:, None]
