"""Training patches counted in atoms: micrographs -> domain A, the synthetic lattice -> domain B.

The seed project's GAN lost atoms on patches whose atom count differed from its training patches. Here every
patch, of either domain, holds ``atoms x atoms`` lattice periods in ``patch_px x patch_px`` pixels, so the model
sees one scale, ``model_period_px = patch_px / atoms`` pixels per period (12.8 px by default: 5 x 5 atoms in 64 px).

**Domain A** (:func:`extract_atom_patches`). A micrograph, normalised as a whole, is resampled by
``model_period_px / period_px`` (its measured period; with the inference resampler, common.resample), and
``patch_px`` squares are cut at random whole-pixel offsets of the resampled image. The patch's window in the
source is ``atoms`` periods on a side wherever the micrograph's zoom.

**Domain B** (:class:`SyntheticLattice`, :func:`synthetic_mosaic`, :func:`lattice_patches`). The synthetic image
is cut to whole periods and repeated without seams, rotated to the micrographs' orientation, scaled to their
period and cropped at random offsets. Cutting to "whole periods" is done in lattice coordinates, which works for
any lattice orientation and non-integer periods: the lattice is measured (:func:`data_prep.lattice.measure_lattice`),
its two shortest translations are checked (the image shifted by one must equal itself; if the measured vector
joins two different sublattices a shorter combination that does is used) and refined by minimising the
difference between the image and itself shifted by the largest multiple that fits;
one unit cell is then sampled on a fine grid of fractional coordinates, averaged over every whole cell in the
image. Repeating that cell (periodic spline interpolation) *is* the seamless mosaic; rotation, scaling and
cropping happen in one resampling step, with Gaussian anti-aliasing when the lattice is shrunk.

Angles: degrees, counter-clockwise as displayed (rows point down), as in :mod:`data_prep.lattice`. A rotation of
the synthetic image by ``+90`` is the seed's "270 degrees clockwise" (``np.rot90``). With ``angle="auto"`` the
synthetic is turned so its primary lattice vector lies along each micrograph's (by the smallest angle the
lattice's symmetry allows).

**Intensities.** Patches of both domains are in normalised micrograph units (:mod:`data_prep.normalize`, whole
micrograph, not clipped). The synthetic lattice carries no physical scale, so by default (``match_intensity``)
its B patches are given the matched micrograph's mean level and lattice contrast: ``B = level + gain * (S -
mean(S))`` with ``gain = sqrt(var_A / var_S)``, where ``var_S`` is the variance of the synthetic unit cell and
``var_A`` the variance of the micrograph's periodic (lattice) signal, measured free of noise as its
autocovariance at a lattice translation (shot noise and the fast-scan correlated noise do not reach one period;
translations within one scan row are skipped because per-row offsets correlate along a row), after removing
the slow part (Gaussian, sigma = one period). So a generator mapping A to B keeps the micrograph's intensity
scale. ``level`` is the flat level outside dents from :func:`data_prep.dents.fit_dent_amplitude`.

**Dented targets.** Per training micrograph a dent mask is measured (:func:`data_prep.dents.dent_mask`, in the
model's pixel space at half its resolution -- 6.4 px per period by default, plenty for a map that varies over
periods, and four times cheaper -- so its windows follow the period) and its amplitude fitted. ``dents = K``
dented targets per mask are synthetic images at the micrograph's zoom (same field of view, rendered in the
model's pixel space) with K different random lattice offsets, each with the mask applied
(:func:`data_prep.dents.dented_targets`); the micrograph's B patches are crops of those targets at random
positions, so a patch lands on the dent as often as an A patch does. Only the crops are rendered, never the K
whole images.

:func:`prepare_dataset` writes everything (formats below); ``scripts/prepare_data.py`` is its command line.
``DATA/trainA``, ``DATA/trainB``, ``DATA/testA``: float32 single-channel TIFFs of ``patch_px`` squared;
``DATA/manifest.json``: global ``patch_px``, ``atoms_per_patch``, ``period_px`` (model space), the config, the
synthetic's lattice, one record per micrograph (split, normalisation, lattice, scale, rotation, dent fit,
intensity match, noise model) and one per patch (file, domain, source, position and window in source pixels, scale,
period, angle; for B the plane origin, rotation and dent target/position); ``DATA/preview.png``: an 8-bit picture for
people only (A patches, B patches, and the most dented micrograph with its mask and a dented target).

**Noise model.** Every micrograph's detector noise is estimated (:func:`data_prep.noise_model.estimate_noise`, on
the raw micrograph at its measured period; large micrographs on a central crop of ``noise_max_pixels``) and stored
in its manifest record as ``noise``: ``raw`` (the estimate in the micrograph's own units), ``normalised`` (the
same model in the units of its patches: ``gain``, ``read_noise`` and ``row_offset`` divided by ``hi - lo``,
``offset`` mapped like a pixel, ``dose`` and the correlations unchanged, plus ``reliable``), the native
``period_px`` and the model ``scale``. Training draws its noise around these (:mod:`cyclegan.pairs`). A
micrograph whose noise cannot be estimated gets ``"noise": null`` and a warning.

Limits: the synthetic and the micrographs must be measured as the same lattice. A two-sublattice cell
(perovskite) can be reported either as its cell or as the finer lattice of the two sublattices; if a micrograph
and the synthetic are reported differently, the scale is off by sqrt(2). Differences in lattice type or period
ratio are reported as warnings.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Sequence

import cv2
import numpy as np
import tifffile
from pydantic import ConfigDict, Field, field_validator, model_validator
from scipy import ndimage, optimize
from tqdm.auto import tqdm

from stem_denoise.common.config import Config
from stem_denoise.common.errors import InputError
from stem_denoise.common.atomic import check_output_location, make_output_dir, remove_created_dirs
from stem_denoise.common.resample import resample_image
from data_prep import dents as _dents
from data_prep.io import list_micrographs, read_micrograph, validate_image
from data_prep.lattice import LatticeInfo, lattice_vectors, measure_lattice
from data_prep.noise_model import NoiseEstimate, central_crop, estimate_noise
from data_prep.normalize import normalize, robust_range

__all__ = [
    "PrepConfig",
    "PeriodicCell",
    "SyntheticLattice",
    "AtomPatches",
    "display_angle",
    "rotation_matrix",
    "rotation_to_match",
    "synthetic_mosaic",
    "to_model_scale",
    "crop_patches",
    "extract_atom_patches",
    "lattice_patches",
    "periodic_variance",
    "prepare_dataset",
    "normalised_noise",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "stem-denoise-patches"
_SYMMETRY_FOLD = {"square": 90.0, "perovskite": 90.0, "hex": 60.0}


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------
class PrepConfig(Config):
    """Settings of :func:`prepare_dataset` (validated on creation; bad values raise :class:`ConfigError`).

    ``atoms``: lattice periods per patch side; ``patch_px``: patch side in pixels (the model's pixel space has
    ``patch_px / atoms`` px per period). ``per_image``: patches cut from each micrograph (A), and B patches made
    for each training micrograph. ``test_frac``: fraction of whole micrographs held back for ``testA`` (at least
    one when there are two or more micrographs and the fraction is > 0). ``angle``: ``"auto"`` (match each
    micrograph's measured orientation) or degrees counter-clockwise to turn the synthetic image (the seed's
    "270 clockwise" is 90). ``dents``: dented targets per dent mask (0: no dents in domain B). ``dent_*``: the
    mask recipe (:func:`data_prep.dents.dent_mask`; window and blur overrides in the model's pixels) and how it
    is applied (``"scale"`` or ``"add"``).
    ``match_intensity``: give B patches each micrograph's level and lattice contrast (see module docstring).
    ``lo_pct``/``hi_pct``: robust normalisation percentiles. ``noise_max_pixels``: the noise model of a micrograph
    is estimated on a central crop of at most this many pixels (512 x 512 by default: under a second). ``seed``:
    every random choice. ``overwrite``: replace an existing dataset folder. ``preview``: write ``preview.png``.
    ``progress``: tqdm bar.
    """

    model_config = ConfigDict(frozen=False)

    atoms: int = Field(5, ge=1)
    patch_px: int = Field(64, ge=8)
    per_image: int = Field(200, ge=1)
    test_frac: float = Field(0.1, ge=0.0, lt=1.0)
    angle: Literal["auto"] | float = "auto"
    dents: int = Field(20, ge=0)
    dent_method: Literal[_dents.DENT_METHODS] = "seed"
    dent_polarity: Literal["dark", "bright"] = "dark"
    dent_scale: Literal["period", "pixels"] = "period"
    dent_mode: Literal["scale", "add"] = "scale"
    dent_threshold: float = Field(128.0, ge=0.0, le=255.0)
    dent_window_px: float | None = Field(None, ge=1.0)
    dent_blur_px: float | None = Field(None, ge=0.0)
    match_intensity: bool = True
    lo_pct: float = Field(0.5, ge=0.0, le=100.0)
    hi_pct: float = Field(99.5, ge=0.0, le=100.0)
    noise_max_pixels: int = Field(1 << 18, ge=48 * 48)
    seed: int = Field(0, ge=0)
    overwrite: bool = False
    preview: bool = True
    progress: bool = True

    @field_validator("angle", mode="before")
    @classmethod
    def _angle(cls, value: Any) -> Any:
        """``"auto"`` or a finite number of degrees (a string such as ``"90"`` is accepted)."""
        if isinstance(value, str):
            if value.strip().lower() == "auto":
                return "auto"
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"must be 'auto' or a number of degrees, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be 'auto' or a number of degrees, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {value!r}")
        return float(value)

    @model_validator(mode="after")
    def _consistent(self) -> "PrepConfig":
        if self.patch_px / self.atoms < 4.0:
            raise ValueError(f"patch_px / atoms = {self.patch_px / self.atoms:.2f} px per period is too few to "
                             "resolve a column (need >= 4)")
        if not self.lo_pct < self.hi_pct:
            raise ValueError(f"need lo_pct < hi_pct, got {self.lo_pct!r}, {self.hi_pct!r}")
        return self

    @property
    def model_period_px(self) -> float:
        """Lattice period in the model's pixel space: ``patch_px / atoms``."""
        return self.patch_px / self.atoms


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------
def display_angle(vector: Sequence[float]) -> float:
    """Direction of a (row, col) vector in degrees, counter-clockwise as displayed from +x, in (-180, 180]."""
    return math.degrees(math.atan2(-float(vector[0]), float(vector[1])))


def rotation_matrix(angle_deg: float) -> np.ndarray:
    """2 x 2 matrix turning (row, col) vectors counter-clockwise as displayed by ``angle_deg`` degrees."""
    t = math.radians(float(angle_deg))
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s], [s, c]])


def _fold_signed(angle_deg: float, fold: float) -> float:
    """Fold an angle into [-fold/2, fold/2)."""
    return (float(angle_deg) + fold / 2.0) % fold - fold / 2.0


@dataclass
class PeriodicCell:
    """One unit cell of a periodic image, sampled on a fractional-coordinate grid, and its renderer.

    ``cell[i, j]`` is the image at ``origin + (i / nu) * basis[0] + (j / nv) * basis[1]`` (positions (row, col)
    in source pixels); ``basis`` rows are the two translation vectors. :meth:`sample` evaluates the infinite
    periodic image anywhere by periodic cubic-spline interpolation of the cell, so repeating it never shows a
    seam.
    """

    cell: np.ndarray
    basis: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def __post_init__(self) -> None:
        self.cell = np.asarray(self.cell, dtype=np.float64)
        self.basis = np.asarray(self.basis, dtype=np.float64).reshape(2, 2)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(2)
        if self.cell.ndim != 2 or min(self.cell.shape) < 2:
            raise InputError(f"a periodic cell needs a 2-D sample grid, got shape {self.cell.shape}")
        if abs(np.linalg.det(self.basis)) < 1e-6:
            raise InputError("the two lattice translations are parallel")
        self._inv = np.linalg.inv(self.basis)
        self._coeffs = ndimage.spline_filter(self.cell, order=3, mode="grid-wrap")

    @classmethod
    def from_tile(cls, tile: np.ndarray) -> "PeriodicCell":
        """A cell that is a whole image repeated as is (translations: its height down, its width across)."""
        t = np.asarray(tile, dtype=np.float64)
        return cls(cell=t, basis=np.array([[t.shape[0], 0.0], [0.0, t.shape[1]]]))

    @property
    def mean(self) -> float:
        return float(self.cell.mean())

    @property
    def variance(self) -> float:
        """Variance of the periodic image over space (grid points cover the cell uniformly)."""
        return float(self.cell.var())

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Values (float64) of the infinite periodic image at source positions ``(rows, cols)`` (any shape)."""
        pts = np.stack([np.asarray(rows, dtype=np.float64) - self.origin[0],
                        np.asarray(cols, dtype=np.float64) - self.origin[1]], axis=-1)
        frac = pts @ self._inv  # (…, 2) fractional coordinates along basis[0], basis[1]
        nu, nv = self.cell.shape
        coords = np.stack([frac[..., 0] * nu, frac[..., 1] * nv], axis=0)
        return ndimage.map_coordinates(self._coeffs, coords, order=3, mode="grid-wrap", prefilter=False)

    def render(
        self,
        shape: Sequence[int],
        *,
        scale: float = 1.0,
        rotation_deg: float = 0.0,
        origin: Sequence[float] = (0.0, 0.0),
    ) -> np.ndarray:
        """Render the periodic image turned by ``rotation_deg`` (ccw as displayed) and magnified by ``scale``.

        Output pixel ``(r, c)`` shows the plane point ``y = (r, c) + origin``; it takes the value of the source
        at ``rotation(-rotation_deg) @ y / scale``. Returns float32 of ``shape`` (no anti-aliasing: see
        :meth:`SyntheticLattice.render`).
        """
        h, w = (int(v) for v in shape)
        rr, cc = np.meshgrid(np.arange(h, dtype=np.float64) + float(origin[0]),
                             np.arange(w, dtype=np.float64) + float(origin[1]), indexing="ij")
        src_r, src_c = _plane_to_source(rr, cc, scale, rotation_deg)
        return self.sample(src_r, src_c).astype(np.float32)


def _plane_to_source(rows: np.ndarray, cols: np.ndarray, scale: float, rotation_deg: float):
    """Inverse map of the render: plane (row, col) -> source (row, col) = R(-theta) y / scale."""
    inv = rotation_matrix(-rotation_deg) / float(scale)
    return inv[0, 0] * rows + inv[0, 1] * cols, inv[1, 0] * rows + inv[1, 1] * cols


def _shift_cost(coeffs: np.ndarray, image: np.ndarray, shift: np.ndarray, var: float, margin: int = 2) -> float:
    """Mean squared difference between an image and itself shifted by ``shift`` (px), over 2 x variance."""
    h, w = image.shape
    dy, dx = float(shift[0]), float(shift[1])
    r0 = int(math.ceil(max(0.0, -dy))) + margin
    r1 = int(math.floor(min(h - 1.0, h - 1.0 - dy))) - margin
    c0 = int(math.ceil(max(0.0, -dx))) + margin
    c1 = int(math.floor(min(w - 1.0, w - 1.0 - dx))) - margin
    if r1 - r0 < 4 or c1 - c0 < 4:
        return float("inf")
    rr, cc = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
    moved = ndimage.map_coordinates(coeffs, [rr + dy, cc + dx], order=3, mode="nearest", prefilter=False)
    diff = image[r0:r1 + 1, c0:c1 + 1] - moved
    return float(np.mean(diff * diff) / (2.0 * var))


def _refine_translation(coeffs: np.ndarray, image: np.ndarray, t: np.ndarray, var: float) -> tuple[np.ndarray, float]:
    """Refine a lattice translation ``t`` by the largest multiple that still leaves 40 % overlap; return (t, cost)."""
    h, w = image.shape
    n = 1
    while abs((n + 1) * t[0]) <= 0.6 * h and abs((n + 1) * t[1]) <= 0.6 * w:
        n += 1
    start = n * np.asarray(t, dtype=np.float64)
    res = optimize.minimize(
        lambda d: _shift_cost(coeffs, image, d, var), start, method="Nelder-Mead",
        options={"xatol": 1e-3, "fatol": 1e-7, "initial_simplex": [start, start + [0.4, 0.0], start + [0.0, 0.4]]},
    )
    return np.asarray(res.x) / n, float(res.fun)


def _translation_basis(image: np.ndarray, v1: np.ndarray, v2: np.ndarray, max_cost: float = 0.1):
    """The two shortest true translations of a periodic image near the measured basis, refined; plus costs."""
    var = float(image.var())
    coeffs = ndimage.spline_filter(image, order=3, mode="nearest")
    cands = []
    for m in range(-2, 3):
        for n in range(-2, 3):
            if (m, n) == (0, 0):
                continue
            t = m * v1 + n * v2
            if t[0] < -1e-9 or (abs(t[0]) <= 1e-9 and t[1] < 0):
                continue  # keep one of +-t
            cands.append(t)
    cands.sort(key=lambda t: float(np.hypot(*t)))
    valid = []
    for t in cands:
        if _shift_cost(coeffs, image, t, var) < max_cost:
            if not valid:
                valid.append(t)
            else:
                a = valid[0]
                cross = abs(a[0] * t[1] - a[1] * t[0])
                if cross > 0.5 * np.hypot(*a) * np.hypot(*t):
                    valid.append(t)
                    break
    if len(valid) < 2:
        raise InputError(
            "the synthetic lattice image is not periodic enough to tile: no two lattice translations map it onto "
            "itself (is it a clean lattice image?)"
        )
    refined, costs = [], []
    for t in valid:
        r, c = _refine_translation(coeffs, image, t, var)
        refined.append(r)
        costs.append(c)
    return np.array(refined), costs


@dataclass
class SyntheticLattice:
    """A clean synthetic lattice image made seamlessly periodic (see the module docstring).

    Build with :meth:`from_image`. ``image``: the synthetic normalised to ~[0, 1] by robust percentiles of the
    whole image (``norm`` = (lo, hi)); ``info``: its measured lattice; ``basis``: the two refined translations
    (rows, (row, col) px); ``primary``: the measured primary lattice vector (refined when it is a translation),
    whose length is :attr:`period_px` and direction :attr:`angle_deg`; ``cost``: the residual of each
    translation (mean squared difference of the image and itself shifted, over twice its variance).
    """

    image: np.ndarray
    info: LatticeInfo
    basis: np.ndarray
    primary: np.ndarray
    norm: tuple[float, float]
    cost: tuple[float, float]
    source: str = "array"
    _cells: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_image(
        cls, image: np.ndarray, info: LatticeInfo | None = None, *, source: str = "array",
        lo_pct: float = 0.5, hi_pct: float = 99.5, max_size: int = 512,
    ) -> "SyntheticLattice":
        """Measure (unless ``info`` is given), normalise and check a synthetic lattice image (2-D, any units).

        Normalised by robust percentiles of the whole image; only its central ``max_size`` square is used to find
        and average the unit cell (plenty for a clean lattice, and it keeps large images quick).
        """
        arr = np.asarray(image)
        validate_image(arr, min_size=8, name=source)
        lo, hi = robust_range(arr, lo_pct, hi_pct)
        h0, w0 = arr.shape
        ch, cw = min(h0, int(max_size)), min(w0, int(max_size))
        y0, x0 = (h0 - ch) // 2, (w0 - cw) // 2
        x = normalize(arr[y0:y0 + ch, x0:x0 + cw], lo, hi).astype(np.float64)
        if info is None:
            # A faint fixed dither: the Bragg-peak finder judges peaks against the noise floor, which a noise-free
            # image does not have (measure_lattice fails on some clean images without it).
            dither = np.random.default_rng(0).normal(0.0, 1e-3, x.shape)
            try:
                info = measure_lattice(x + dither, max_period_px=min(x.shape) / 2.5)
            except InputError as exc:
                raise InputError(f"{source}: no lattice found in the synthetic image ({exc})") from None
        v1, v2 = (np.asarray(v, dtype=np.float64) for v in lattice_vectors(info))
        if min(x.shape) < 2.2 * max(np.hypot(*v1), np.hypot(*v2)):
            raise InputError(
                f"{source}: the synthetic image ({x.shape[0]} x {x.shape[1]} px) must hold at least about two "
                f"periods ({info.period_px:.1f} px) along each side"
            )
        try:
            basis, cost = _translation_basis(x, v1, v2)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
        primary = v1.copy()
        for t in basis:
            for sign in (1.0, -1.0):
                if np.hypot(*(sign * t - v1)) < 0.03 * np.hypot(*v1):
                    primary = sign * t
        return cls(image=x, info=info, basis=basis, primary=primary, norm=(lo, hi), cost=tuple(cost),
                   source=source)

    @property
    def period_px(self) -> float:
        return float(np.hypot(*self.primary))

    @property
    def angle_deg(self) -> float:
        """Direction of the primary vector, degrees ccw as displayed, in [0, 180)."""
        return display_angle(self.primary) % 180.0

    def cell(self, sigma: float = 0.0) -> PeriodicCell:
        """The unit cell averaged over all whole cells of the image, after a Gaussian blur of ``sigma`` px."""
        key = round(float(sigma), 2)
        if key in self._cells:
            return self._cells[key]
        img = ndimage.gaussian_filter(self.image, key, mode="reflect") if key > 0 else self.image
        h, w = img.shape
        t1, t2 = self.basis
        nu = int(np.clip(math.ceil(2.0 * np.hypot(*t1)), 16, 256))
        nv = int(np.clip(math.ceil(2.0 * np.hypot(*t2)), 16, 256))
        origin = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
        inv = np.linalg.inv(self.basis)
        corners = (np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], dtype=np.float64) - origin) @ inv
        ks = np.arange(math.floor(corners[:, 0].min()) - 1, math.ceil(corners[:, 0].max()) + 1)
        ls = np.arange(math.floor(corners[:, 1].min()) - 1, math.ceil(corners[:, 1].max()) + 1)
        u = np.arange(nu) / nu
        v = np.arange(nv) / nv
        fu = (ks[:, None, None, None] + u[None, None, :, None])  # (K, 1, nu, 1)
        fv = (ls[None, :, None, None] + v[None, None, None, :])  # (1, L, 1, nv)
        rows = origin[0] + fu * t1[0] + fv * t2[0]
        cols = origin[1] + fu * t1[1] + fv * t2[1]
        margin = 2.0 + 3.0 * key
        ok = (rows >= margin) & (rows <= h - 1 - margin) & (cols >= margin) & (cols <= w - 1 - margin)
        # use only whole cells: every grid point of the cell inside
        whole = ok.all(axis=(2, 3))
        if not whole.any():
            raise InputError(f"{self.source}: the synthetic image holds no whole unit cell away from its border")
        coeffs = ndimage.spline_filter(img, order=3, mode="nearest")
        kk, ll = np.nonzero(whole)
        vals = ndimage.map_coordinates(coeffs, [rows[kk, ll].ravel(), cols[kk, ll].ravel()], order=3,
                                       mode="nearest", prefilter=False)
        cell = vals.reshape(len(kk), nu, nv).mean(axis=0)
        pc = PeriodicCell(cell=cell, basis=self.basis, origin=origin)
        self._cells[key] = pc
        return pc

    def render(
        self,
        shape: Sequence[int],
        *,
        period_px: float | None = None,
        rotation_deg: float = 0.0,
        origin: Sequence[float] = (0.0, 0.0),
    ) -> np.ndarray:
        """The seamless mosaic turned by ``rotation_deg`` (ccw as displayed) and scaled to ``period_px``.

        ``period_px``: the output's lattice period (default: the synthetic's own). When that shrinks the lattice
        the cell is first blurred with sigma = ``(1 / scale - 1) / 2`` source px (anti-aliasing, as
        ``skimage.transform.rescale`` does). float32 of ``shape``, in the synthetic's normalised units.
        """
        scale = 1.0 if period_px is None else float(period_px) / self.period_px
        return self.cell(_antialias_sigma(scale)).render(shape, scale=scale, rotation_deg=rotation_deg,
                                                         origin=origin)


def _antialias_sigma(scale: float) -> float:
    return max(0.0, (1.0 / float(scale) - 1.0) / 2.0)


def _as_synthetic(synthetic: Any, info: LatticeInfo | None = None) -> SyntheticLattice:
    if isinstance(synthetic, SyntheticLattice):
        return synthetic
    return SyntheticLattice.from_image(np.asarray(synthetic), info)


def synthetic_mosaic(
    synthetic: Any,
    shape: Sequence[int],
    *,
    period_px: float | None = None,
    rotation_deg: float = 0.0,
    origin: Sequence[float] = (0.0, 0.0),
    info: LatticeInfo | None = None,
) -> np.ndarray:
    """A seamless mosaic of the synthetic lattice of ``shape`` px, turned and scaled (float32, normalised units).

    ``synthetic``: a 2-D lattice image (any units; measured with ``measure_lattice`` unless ``info`` is given) or
    a :class:`SyntheticLattice`. ``rotation_deg``: degrees counter-clockwise as displayed (90 = the seed's
    "270 clockwise"); ``period_px``: the mosaic's lattice period in px (default: the synthetic's); ``origin``:
    plane position (px) of the mosaic's pixel (0, 0).
    """
    syn = _as_synthetic(synthetic, info)
    return syn.render(shape, period_px=period_px, rotation_deg=rotation_deg, origin=origin)


def rotation_to_match(synthetic: SyntheticLattice, info: LatticeInfo) -> float:
    """Degrees (ccw as displayed) to turn the synthetic so its primary vector lies along the micrograph's.

    The smallest such turn under the micrograph lattice's symmetry (90 deg square, 60 deg hex, else 180 deg).
    """
    b1, _ = lattice_vectors(info)
    fold = _SYMMETRY_FOLD.get(info.lattice, 180.0)
    return _fold_signed(display_angle(b1) - display_angle(synthetic.primary), fold)


# ----------------------------------------------------------------------------------------------------------------
# domain A
# ----------------------------------------------------------------------------------------------------------------
def _period_of(lattice_info: LatticeInfo | float) -> float:
    p = float(lattice_info.period_px if hasattr(lattice_info, "period_px") else lattice_info)
    if not math.isfinite(p) or p <= 0:
        raise InputError(f"lattice period must be a positive number of pixels, got {p}")
    return p


def to_model_scale(
    image: np.ndarray, period_px: float, model_period_px: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample an image so its lattice period becomes ``model_period_px``; return (float32 image, (sy, sx)).

    Uses the project's one resampler (:func:`stem_denoise.common.resample.resample_operator`: Keys cubic, antialiased when
    shrinking), the same that inference uses, so training patches carry the interpolated noise the model meets at
    inference. The output size is the input size times ``model_period_px / period_px``, rounded; ``(sy, sx)`` are
    the exact per-axis factors (output px per input px) that rounding leaves. Pixel edges map to pixel edges.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {arr.shape}")
    s = float(model_period_px) / float(period_px)
    h, w = arr.shape
    oh, ow = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (oh, ow) == (h, w):
        return arr.copy(), (1.0, 1.0)
    return resample_image(arr, (oh, ow)), (oh / h, ow / w)


def crop_patches(image: np.ndarray, n: int, patch_px: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``patch_px`` squares of an image at whole-pixel offsets.

    Returns (patches (n, patch_px, patch_px) float32, top-left corners (n, 2) int (row, col)).
    """
    h, w = image.shape
    if h < patch_px or w < patch_px:
        raise InputError(f"image of {h} x {w} px is smaller than one {patch_px} px patch")
    r = rng.integers(0, h - patch_px + 1, size=n)
    c = rng.integers(0, w - patch_px + 1, size=n)
    idx_r = r[:, None, None] + np.arange(patch_px)[None, :, None]
    idx_c = c[:, None, None] + np.arange(patch_px)[None, None, :]
    return np.asarray(image[idx_r, idx_c], dtype=np.float32), np.stack([r, c], axis=1)


@dataclass
class AtomPatches:
    """Patches of ``atoms x atoms`` periods from one image (see :func:`extract_atom_patches`).

    ``patches``: (n, patch_px, patch_px) float32 in the image's units; ``model_positions``: (n, 2) int top-left
    (row, col) in the resampled image; ``positions``: (n, 2) float top-left edge in source px; ``window_px``:
    (rows, cols) size of each patch's window in source px; ``scale``: (sy, sx) model px per source px;
    ``period_px``: the source period used.
    """

    patches: np.ndarray
    model_positions: np.ndarray
    positions: np.ndarray
    window_px: tuple[float, float]
    scale: tuple[float, float]
    period_px: float


def _too_small(h: int, w: int, period: float, atoms: int, name: str) -> InputError:
    return InputError(
        f"{name}: {h} x {w} px at a lattice period of {period:.2f} px holds {h / period:.1f} x {w / period:.1f} "
        f"periods; a patch needs {atoms} x {atoms}"
    )


def extract_atom_patches(
    image: np.ndarray,
    lattice_info: LatticeInfo | float,
    atoms: int = 5,
    patch_px: int = 64,
    n: int = 100,
    rng: np.random.Generator | int | None = None,
    *,
    name: str = "image",
) -> AtomPatches:
    """Cut ``n`` patches of ``atoms x atoms`` lattice periods, each resampled to ``patch_px`` square.

    ``image``: a 2-D micrograph (any units; normalise the whole micrograph first for training data);
    ``lattice_info``: its :class:`LatticeInfo` (or the period in px). The image is resampled so one period is
    ``patch_px / atoms`` px (see :func:`to_model_scale`) and cropped at random offsets; every patch thus holds
    the same number of atoms whatever the zoom. Raises :class:`InputError` when the image is smaller than a patch.
    """
    period = _period_of(lattice_info)
    rng = np.random.default_rng(rng)
    model, scale = to_model_scale(image, period, patch_px / atoms)
    h, w = np.asarray(image).shape
    if min(model.shape) < patch_px:
        raise _too_small(h, w, period, atoms, name)
    patches, pos = crop_patches(model, int(n), int(patch_px), rng)
    src = pos / np.array(scale)
    return AtomPatches(patches=patches, model_positions=pos, positions=src,
                       window_px=(patch_px / scale[0], patch_px / scale[1]), scale=scale, period_px=period)


# ----------------------------------------------------------------------------------------------------------------
# intensity matching
# ----------------------------------------------------------------------------------------------------------------
def periodic_variance(image: np.ndarray, vectors: Sequence[np.ndarray], period_px: float, *,
                      max_size: int = 512, min_row_shift: float = 2.0) -> float:
    """Variance of the lattice (periodic) signal of a noisy image, in its units squared.

    The image's slow part (Gaussian, sigma = ``period_px``) is removed and its autocovariance evaluated
    (bilinearly) at each lattice translation in ``vectors`` ((row, col) px) that spans at least
    ``min_row_shift`` rows; the largest value is returned. Noise correlated over less than a period does not
    contribute; a vector that is not a true translation (e.g. between two sublattices) gives a smaller value and
    loses. At most the central ``max_size`` square is used.
    """
    arr = np.asarray(image, dtype=np.float64)
    h, w = arr.shape
    ch, cw = min(h, max_size), min(w, max_size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = arr[y0:y0 + ch, x0:x0 + cw]
    hp = crop - _dents.gaussian_blur(crop, float(period_px))
    hp -= hp.mean()
    fh, fw = 2 * ch, 2 * cw
    F = np.fft.rfft2(hp, s=(fh, fw))
    acf = np.fft.irfft2(F.real ** 2 + F.imag ** 2, s=(fh, fw))
    ones = np.fft.rfft2(np.ones_like(hp), s=(fh, fw))
    counts = np.fft.irfft2(ones.real ** 2 + ones.imag ** 2, s=(fh, fw))
    acf = acf / np.maximum(counts, 1.0)
    usable = [np.asarray(v, dtype=np.float64) for v in vectors]
    tall = [v for v in usable if abs(v[0]) >= min_row_shift]
    vals = []
    for v in tall or usable:
        if abs(v[0]) > ch / 2 or abs(v[1]) > cw / 2:
            continue
        r, c = v[0] % fh, v[1] % fw
        vals.append(float(ndimage.map_coordinates(acf, [[r], [c]], order=1, mode="grid-wrap")[0]))
    if not vals:
        raise InputError("image too small to measure its lattice contrast")
    return max(vals)


@dataclass
class _Intensity:
    level: float
    gain: float
    syn_mean: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        return self.level + self.gain * (values - self.syn_mean)


def _lattice_translations(info: LatticeInfo, scale: tuple[float, float]) -> list[np.ndarray]:
    b1, b2 = (np.asarray(v, dtype=np.float64) * np.array(scale) for v in lattice_vectors(info))
    return [b1, b2, b1 + b2, b1 - b2]


# ----------------------------------------------------------------------------------------------------------------
# domain B
# ----------------------------------------------------------------------------------------------------------------
def lattice_patches(
    synthetic: SyntheticLattice,
    n: int,
    *,
    atoms: int = 5,
    patch_px: int = 64,
    rotation_deg: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` domain-B patches: the seamless synthetic mosaic turned by ``rotation_deg``, at ``patch_px / atoms``
    px per period, cut at random offsets. Returns (patches (n, p, p) float32 in the synthetic's normalised units,
    plane origins (n, 2) px)."""
    rng = np.random.default_rng(rng)
    origins = rng.uniform(0.0, 1.0e4, size=(int(n), 2))
    return _render_b(synthetic, origins, patch_px, patch_px / atoms, rotation_deg), origins


def _render_b(synthetic: SyntheticLattice, origins: np.ndarray, patch_px: int, period_px: float,
              rotation_deg: float) -> np.ndarray:
    scale = period_px / synthetic.period_px
    cell = synthetic.cell(_antialias_sigma(scale))
    g = np.arange(patch_px, dtype=np.float64)
    rr = origins[:, 0, None, None] + g[None, :, None]
    cc = origins[:, 1, None, None] + g[None, None, :]
    rr, cc = np.broadcast_arrays(rr, cc)
    src_r, src_c = _plane_to_source(rr, cc, scale, rotation_deg)
    return cell.sample(src_r, src_c).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# prepare_dataset
# ----------------------------------------------------------------------------------------------------------------
def _finite(obj: Any) -> Any:
    """``obj`` as plain JSON values (numpy scalars and arrays, tuples, paths converted) with non-finite floats
    (NaN, Inf) as null: the manifest is strict JSON."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    elif isinstance(obj, os.PathLike):
        obj = os.fspath(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_finite(v) for v in obj]
    return obj


def _safe_relative(name: Any) -> str | None:
    """``name`` as a relative path that stays inside its folder, or None."""
    if not isinstance(name, str) or not name:
        return None
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts or not parts:
        return None
    return str(PurePosixPath(*parts))


def _own_files(manifest: dict) -> set[str]:
    """Every file an earlier prepare_data run wrote, as its manifest lists them (relative paths)."""
    names = set(manifest.get("files") or []) if isinstance(manifest.get("files"), list) else set()
    for rec in manifest.get("patches") or []:
        if isinstance(rec, dict):
            names.add(rec.get("file"))
    names |= {MANIFEST_NAME, "preview.png"}
    return {n for n in (_safe_relative(x) for x in names) if n is not None}


def _check_out_dir(out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike | None]) -> tuple[Path, set[str]]:
    """Refuse an unusable ``out`` before any work; return its real path (symlinks followed) and the files of an
    earlier dataset there that ``overwrite`` may replace (empty when there is none)."""
    check_output_location(out, inputs)
    real = Path(os.path.realpath(out))
    if real.exists() and not real.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if not real.is_dir():
        return real, set()
    entries = [e for e in real.iterdir() if not e.name.startswith(".prepare_data.")]
    if not entries:
        if not os.access(real, os.W_OK | os.X_OK):
            raise InputError(f"output folder {out} is not writable")
        return real, set()
    if not overwrite:
        raise InputError(f"{out} is not empty; pass --overwrite to replace it")
    mpath = real / MANIFEST_NAME
    if not mpath.is_file():
        raise InputError(
            f"{out} is not empty and holds no {MANIFEST_NAME}: refusing to replace a folder that prepare_data "
            "did not write")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise InputError(f"{out} holds a {MANIFEST_NAME} that prepare_data did not write: refusing to replace "
                         f"anything in it")
    for sub in ("trainA", "trainB", "testA"):
        d = real / sub
        if os.path.lexists(d) and (d.is_symlink() or not d.is_dir()):
            raise InputError(f"{out / sub} is not a plain folder (a file or a link): refusing to write into it")
    if not os.access(real, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out} is not writable")
    return real, _own_files(manifest)


def _load_synthetic(synthetic: Any, cfg: PrepConfig) -> SyntheticLattice:
    if isinstance(synthetic, SyntheticLattice):
        return synthetic
    if isinstance(synthetic, (str, os.PathLike)):
        p = Path(synthetic)
        if not p.exists():
            raise InputError(f"{p}: synthetic lattice image not found")
        if p.is_dir():
            raise InputError(f"{p}: the synthetic lattice must be one image file, not a folder")
        img, _ = read_micrograph(p)
        return SyntheticLattice.from_image(img, source=str(p), lo_pct=cfg.lo_pct, hi_pct=cfg.hi_pct)
    return SyntheticLattice.from_image(np.asarray(synthetic), source="synthetic array",
                                       lo_pct=cfg.lo_pct, hi_pct=cfg.hi_pct)


def _simulation_companions(folder: Path) -> set[str]:
    """Truth and thickness maps that sit next to simulated micrographs (listed in their simulation JSON)."""
    skip: set[str] = set()
    for js in folder.glob("*.json"):
        try:
            doc = json.loads(js.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict) and doc.get("kind") == "stem-denoise-simulation":
            files = doc.get("files") or {}
            for key in ("truth", "thickness"):
                if isinstance(files.get(key), str):
                    skip.add(os.path.realpath(folder / files[key]))
        elif isinstance(doc, dict) and doc.get("kind") == "stem-denoise-simulated-dataset":
            syn = doc.get("synthetic_lattice") or {}
            names = [syn.get("file"), *(syn.get("per_lattice") or {}).values()] if isinstance(syn, dict) else []
            skip.update(os.path.realpath(folder / n) for n in names if isinstance(n, str))
    return skip


def _list_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """:func:`data_prep.io.list_micrographs`, leaving out the truth/thickness companions of simulated micrographs
    found in a folder (so a folder written by the simulator can be given as it is)."""
    out: list[Path] = []
    seen: set[str] = set()
    if not inputs:
        raise InputError("no input micrographs given")
    for item in inputs:
        files = list_micrographs([item])
        if Path(item).is_dir():
            skip = _simulation_companions(Path(item))
            files = [f for f in files if os.path.realpath(f) not in skip]
            if not files:
                raise InputError(f"{item}: folder holds no micrographs (only simulation truth maps)")
        for f in files:
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def _split(n: int, test_frac: float, seed: int) -> set[int]:
    if n < 2 or test_frac <= 0:
        return set()
    n_test = min(n - 1, max(1, int(round(test_frac * n))))
    order = np.random.default_rng([int(seed), 7]).permutation(n)
    return {int(i) for i in order[:n_test]}


def _write_tiffs(folder: Path, names: list[str], patches: np.ndarray) -> None:
    for name, patch in zip(names, patches):
        tifffile.imwrite(folder / name, np.ascontiguousarray(patch, dtype=np.float32), photometric="minisblack")


def _stretch8(img: np.ndarray, size: tuple[int, int] | None = None, limits=None) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    if size is not None and a.shape != size:
        interp = cv2.INTER_AREA if a.shape[0] > size[0] else cv2.INTER_NEAREST
        a = cv2.resize(a, (size[1], size[0]), interpolation=interp)
    lo, hi = np.percentile(a, [0.5, 99.5]) if limits is None else limits
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)


def _preview(path: Path, a_patches: list[np.ndarray], b_patches: list[np.ndarray], panel: dict | None) -> None:
    """8-bit picture: a row of A patches, a row of B patches, then micrograph / dent mask / dented target."""
    cols = 6
    tile = 96
    gap = 4
    label_h = 16
    width = cols * tile + (cols + 1) * gap
    rows_img = []

    def labelled_row(title: str, images: list[np.ndarray], size: int, n: int) -> np.ndarray:
        row = np.full((label_h + size + gap, width), 255, np.uint8)
        cv2.putText(row, title, (gap, label_h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1, cv2.LINE_AA)
        step = (width - gap) // n
        if images:
            lo, hi = np.percentile(np.stack(images[:n]), [0.5, 99.5])
        for k, img in enumerate(images[:n]):
            x = gap + k * step
            row[label_h:label_h + size, x:x + size] = _stretch8(img, (size, size), (lo, hi))
        return row

    rows_img.append(labelled_row("domain A: micrograph patches", a_patches, tile, cols))
    rows_img.append(labelled_row("domain B: synthetic lattice patches at the micrographs' orientation, "
                                 "intensity and dents", b_patches, tile, cols))
    if panel is not None:
        big = (width - 5 * gap) // 4
        row = labelled_row(f"{panel['name']}: micrograph / dent mask / dented target (whole field) / target zoom",
                           [], big, 4)
        for k, img in enumerate(panel["images"]):
            x = gap + k * (big + gap)
            row[label_h:label_h + big, x:x + big] = _fit8(img, big)
        rows_img.append(row)
    out = np.vstack(rows_img)
    ok, buf = cv2.imencode(".png", out)
    if not ok:
        raise InputError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _fit8(img: np.ndarray, size: int) -> np.ndarray:
    """8-bit ``size`` square holding the image at its aspect ratio (area-averaged), white margins."""
    h, w = img.shape
    f = size / max(h, w)
    oh, ow = max(1, int(round(h * f))), max(1, int(round(w * f)))
    out = np.full((size, size), 255, np.uint8)
    y0, x0 = (size - oh) // 2, (size - ow) // 2
    out[y0:y0 + oh, x0:x0 + ow] = _stretch8(img, (oh, ow))
    return out


def _preview_panel(src: dict, display: int = 320, zoom: int = 160) -> dict:
    """Micrograph, mask and one dented target over the whole field (display resolution), plus a zoom of the
    target at the model's resolution around the dent."""
    model, mask, amplitude = src["model"], src["mask"], src["amplitude"]
    syn: SyntheticLattice = src["syn"]
    h, w = model.shape
    f = min(1.0, display / max(h, w))
    dh, dw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    m = np.zeros((h, w)) if mask is None else mask

    def target(shape, scale, origin, mcrop):
        lat = syn.render(shape, period_px=src["period"] * scale, rotation_deg=src["rotation"], origin=origin)
        t = src["inten"].apply(lat.astype(np.float64))
        if amplitude is None:
            return t
        return _dents.dented_targets(t, mcrop, amplitude, mode=src["mode"], offset=src["level"],
                                     zero_level=src["zero_level"])

    small_mask = cv2.resize(m.astype(np.float32), (dw, dh), interpolation=cv2.INTER_AREA)
    whole = target((dh, dw), dh / h, np.asarray(src["origin"]) * dh / h, small_mask)
    cy, cx = (h / 2.0, w / 2.0) if float(m.sum()) <= 0 else ndimage.center_of_mass(m)
    zh, zw = min(h, zoom), min(w, zoom)
    y0 = int(np.clip(round(cy - zh / 2), 0, h - zh))
    x0 = int(np.clip(round(cx - zw / 2), 0, w - zw))
    zoomed = target((zh, zw), 1.0, np.asarray(src["origin"]) + [y0, x0], m[y0:y0 + zh, x0:x0 + zw])
    return {"name": src["name"], "images": [model, m, whole, zoomed]}


def _finalise(staging: Path, real: Path, old_files: set[str], existed: bool) -> None:
    """Put the finished dataset in ``staging`` into the folder ``real``.

    A new folder is one rename. Into an existing folder the files of the earlier dataset (``old_files``, from its
    manifest) are first moved aside, then the new files are moved in (the manifest last), then the old ones are
    deleted: anything else in the folder -- files prepare_data did not write -- stays where it is, and a failure
    on the way puts everything back.
    """
    if not existed:
        if real.exists():
            raise InputError(f"{real} was created by another run while this one was working; this run's dataset "
                             f"was discarded and nothing of the other's was touched")
        os.rename(staging, real)
        return
    root = os.path.realpath(real)
    trash = real / f".prepare_data.old-{secrets.token_hex(4)}"
    trash.mkdir()
    moved: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    made: list[Path] = []
    try:
        for rel in sorted(old_files, key=lambda n: (n == MANIFEST_NAME, n), reverse=True):  # manifest first
            src = real / rel
            if not os.path.lexists(src) or (src.is_dir() and not src.is_symlink()):
                continue
            parent = os.path.realpath(src.parent)
            if parent != root and not parent.startswith(root + os.sep):
                continue  # never follow a link out of the folder
            dst = trash / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
            moved.append((src, dst))
        new_files = sorted((f for f in staging.rglob("*") if not f.is_dir()),
                           key=lambda f: (f.name == MANIFEST_NAME, str(f)))  # manifest last
        for f in new_files:
            target = real / f.relative_to(staging)
            if not target.parent.is_dir():
                target.parent.mkdir()
                made.append(target.parent)
            if os.path.lexists(target):
                raise InputError(f"{target} is in the way: prepare_data did not write it (it is not in the earlier "
                                 f"dataset's manifest); move it away and run again")
            os.rename(f, target)
            placed.append(target)
    except BaseException:
        for t in reversed(placed):
            with contextlib.suppress(OSError):
                t.unlink()
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        for src, dst in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(dst, src)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)  # holds only files the earlier run wrote
    shutil.rmtree(staging, ignore_errors=True)


def prepare_dataset(
    micrograph_paths: Sequence[str | os.PathLike] | str | os.PathLike,
    synthetic_path_or_array: Any,
    out_dir: str | os.PathLike,
    cfg: PrepConfig | None = None,
) -> dict:
    """Build ``trainA``/``trainB``/``testA`` patch folders, ``manifest.json`` and ``preview.png`` in ``out_dir``.

    ``micrograph_paths``: files and/or folders of micrographs (:func:`data_prep.io.list_micrographs`);
    ``synthetic_path_or_array``: the clean synthetic lattice image (file, array or :class:`SyntheticLattice`), or a
    :class:`data_prep.cell_lattice.CellAverageSource`: every training micrograph's B patches then come from its own
    unit-cell average (every site at its measured height and shape; ``cfg.angle`` must be "auto").
    Whole micrographs are held back for ``testA``. Each micrograph is read, normalised as a whole
    (robust percentiles), its lattice measured, and cut into atom-counted patches; each training micrograph also
    gets ``per_image`` B patches at its orientation, intensity and dents (module docstring). Everything is
    written to a hidden staging folder and moved into place at the end, so a failure or an interrupt leaves no
    partial dataset (and no folder it created). ``out_dir`` may not be, hold or lie inside an input (symlinks
    followed; a linked ``out_dir`` stays a link). A non-empty ``out_dir`` is refused unless ``cfg.overwrite``, and
    then only one holding a previous dataset's ``manifest.json``: exactly the files that manifest lists are
    replaced, anything else in the folder is kept. The manifest lists every file written under ``files``.
    Returns a summary dict (counts, paths, elapsed_s).
    """
    t0 = time.perf_counter()
    cfg = PrepConfig() if cfg is None else cfg
    cfg.validate()
    if isinstance(micrograph_paths, (str, os.PathLike)):
        micrograph_paths = [micrograph_paths]
    paths = _list_inputs(micrograph_paths)
    from data_prep.cell_lattice import is_cell_average
    cell_src = synthetic_path_or_array if is_cell_average(synthetic_path_or_array) else None
    if cell_src is not None and cfg.angle != "auto":
        raise InputError("angle must be 'auto' with the cell-average clean source: each micrograph's own cell "
                         "average already has its orientation")
    if isinstance(synthetic_path_or_array, (str, os.PathLike)):
        syn_real = os.path.realpath(synthetic_path_or_array)
        paths = [p for p in paths if os.path.realpath(p) != syn_real]
        if not paths:
            raise InputError("no micrographs left once the synthetic lattice image is set apart")
    out = Path(out_dir)
    syn_input = synthetic_path_or_array if isinstance(synthetic_path_or_array, (str, os.PathLike)) else None
    real, old_files = _check_out_dir(out, cfg.overwrite, [*micrograph_paths, *paths, syn_input])
    existed = real.is_dir()
    syn = _load_synthetic(synthetic_path_or_array, cfg) if cell_src is None else None
    test_idx = _split(len(paths), float(cfg.test_frac), cfg.seed)
    P = int(cfg.patch_px)
    model_period = cfg.model_period_px

    created: list[Path] = []  # folders above --out that this run makes (removed again if it fails)
    if existed:  # staged inside the folder itself: the renames stay on its file system, links stay links
        staging = real / f".prepare_data.partial-{secrets.token_hex(4)}"
    else:
        make_output_dir(real.parent, created)
        staging = real.parent / f".{real.name}.partial-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
    except OSError as exc:
        remove_created_dirs(created)
        raise InputError(f"output folder {out} cannot be written: {exc.strerror or exc}") from None
    try:
        for sub in ("trainA", "trainB", "testA"):
            (staging / sub).mkdir()
        micro_records: list[dict] = []
        patch_records: list[dict] = []
        warnings: list[str] = []
        preview_a: list[np.ndarray] = []
        preview_b: list[np.ndarray] = []
        panel: dict | None = None
        best_dent = -1.0
        bar = tqdm(paths, desc="prepare_data", unit="micrograph", disable=not cfg.progress, dynamic_ncols=True)
        for i, path in enumerate(bar):
            rng = np.random.default_rng([int(cfg.seed), i])
            split = "test" if i in test_idx else "train"
            img, meta = read_micrograph(path)
            lo, hi = robust_range(img, cfg.lo_pct, cfg.hi_pct)
            x = normalize(img, lo, hi)
            noise_src = np.array(central_crop(img, cfg.noise_max_pixels))  # a copy: the micrograph goes now
            del img
            try:
                info = measure_lattice(x)
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from None
            if cell_src is not None and split == "train":  # domain B from this micrograph's own cell average
                syn = cell_src.build(x, info, name=str(path), norm=(lo, hi))
            model, scale = to_model_scale(x, info.period_px, model_period)
            if min(model.shape) < P:
                raise _too_small(x.shape[0], x.shape[1], info.period_px, cfg.atoms, str(path))
            h, w = x.shape
            del x
            stem = f"m{i:03d}_{_safe_stem(path)}"
            a, a_pos = crop_patches(model, cfg.per_image, P, rng)
            folder = "trainA" if split == "train" else "testA"
            a_names = [f"{stem}_{k:05d}.tif" for k in range(len(a))]
            _write_tiffs(staging / folder, a_names, a)
            record: dict[str, Any] = {
                "index": i, "source": str(path), "split": split, "shape": [h, w],
                "pixel_size": meta.pixel_size, "unit": meta.unit, "norm": {"lo": lo, "hi": hi},
                "lattice": info.to_dict(), "scale": list(scale), "model_shape": list(model.shape),
                "n_patches_A": len(a),
                "noise": _noise_record(noise_src, info.period_px, lo, hi, scale, str(path), warnings),
            }
            del noise_src
            for name, pos in zip(a_names, a_pos):
                patch_records.append({
                    "file": f"{folder}/{name}", "domain": "A", "split": split, "source": str(path),
                    "micrograph": i, "position": [float(pos[0] / scale[0]), float(pos[1] / scale[1])],
                    "window_px": [P / scale[0], P / scale[1]], "model_position": [int(pos[0]), int(pos[1])],
                    "scale": list(scale), "period_px": info.period_px, "angle_deg": info.angle_deg,
                })
            if split == "train" and len(preview_a) < 6:
                preview_a.extend(a[:3][: 6 - len(preview_a)])
            if split == "train":
                b, b_recs, extra, preview_i = _b_for_micrograph(syn, model, info, scale, lo, hi, cfg, rng)
                b_names = [f"{stem}_{k:05d}.tif" for k in range(len(b))]
                _write_tiffs(staging / "trainB", b_names, b)
                for name, rec in zip(b_names, b_recs):
                    rec.update({"file": f"trainB/{name}", "domain": "B", "split": "train",
                                "source": syn.source, "matched_to": str(path), "micrograph": i,
                                "period_px": model_period})
                    patch_records.append(rec)
                record.update(extra)
                if cell_src is not None:
                    record["clean_lattice"] = syn.record
                warnings.extend(f"{path}: {wmsg}" for wmsg in extra.get("warnings", []))
                if len(preview_b) < 6:  # one plain crop and the two most dented ones
                    dented = np.argsort([-r.get("dent", {}).get("mean_mask", 0.0) for r in b_recs])
                    picks = [0] + [int(k) for k in dented if k != 0][:2]
                    preview_b.extend(b[k] for k in picks[: 6 - len(preview_b)])
                depth = abs(extra["dent"].get("amplitude", 0.0)) * extra["dent"].get("r", 0.0) ** 2
                if panel is None or depth > best_dent:
                    best_dent = depth
                    panel = dict(preview_i, name=Path(path).name)
            micro_records.append(record)
            bar.set_postfix_str(f"{Path(path).name}: period {info.period_px:.1f} px")
        bar.close()
        if not any(m["split"] == "train" for m in micro_records):
            raise InputError("no training micrographs left after holding back the test set")
        counts = {sub: sum(1 for r in patch_records if r["file"].startswith(sub + "/"))
                  for sub in ("trainA", "trainB", "testA")}
        manifest = {
            "kind": MANIFEST_KIND,
            "version": 1,
            "patch_px": P,
            "atoms_per_patch": int(cfg.atoms),
            "period_px": model_period,
            "config": cfg.to_dict(),
            "synthetic": {
                "source": syn.source, "shape": list(syn.image.shape), "norm": list(syn.norm),
                "lattice": syn.info.to_dict(), "period_px": syn.period_px, "angle_deg": syn.angle_deg,
                "translations": syn.basis.tolist(), "translation_cost": list(syn.cost),
            } if cell_src is None else {"source": cell_src.source, "per_micrograph": "clean_lattice"},
            "counts": counts,
            "micrographs": micro_records,
            "warnings": warnings,
            "patches": patch_records,
        }
        # every file this run writes, so that a later --overwrite removes exactly these and nothing else
        manifest["files"] = sorted({r["file"] for r in patch_records} | {MANIFEST_NAME}
                                   | ({"preview.png"} if cfg.preview else set()))
        text = json.dumps(_finite(manifest), indent=1, allow_nan=False)
        (staging / MANIFEST_NAME).write_text(text)
        if cfg.preview:
            _preview(staging / "preview.png", preview_a, preview_b,
                     _preview_panel(panel) if panel is not None else None)
        _finalise(staging, real, old_files, existed)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created_dirs(created)
        raise
    elapsed = time.perf_counter() - t0
    return {
        "out_dir": str(out),
        "manifest": str(out / MANIFEST_NAME),
        "preview": str(out / "preview.png") if cfg.preview else None,
        "n_micrographs": len(paths),
        "n_train": len(paths) - len(test_idx),
        "n_test": len(test_idx),
        "counts": counts,
        "n_dented": sum(1 for m in micro_records if m.get("dent", {}).get("applied")),
        "patch_px": P,
        "atoms_per_patch": int(cfg.atoms),
        "period_px": model_period,
        "warnings": warnings,
        "elapsed_s": elapsed,
    }


def normalised_noise(est: NoiseEstimate, lo: float, hi: float) -> dict:
    """A noise estimate in raw micrograph units turned into the units of its normalised patches
    (``(raw - lo) / (hi - lo)``): gain, read noise and row offsets scale by ``1 / (hi - lo)``, the offset maps like a
    pixel value, the dose (counts) and the correlations do not change."""
    span = float(hi) - float(lo)
    return {"gain": est.gain / span, "offset": (est.offset - float(lo)) / span, "read_noise": est.read_noise / span,
            "row_offset": est.row_offset / span, "corr_row": est.corr_row, "corr_col": est.corr_col,
            "dose": est.dose, "reliable": bool(est.reliable)}


def _noise_record(image: np.ndarray, period_px: float, lo: float, hi: float, scale: tuple[float, float],
                  source: str, warnings: list[str]) -> dict | None:
    """The manifest's ``noise`` entry of one micrograph (module docstring), or None with a warning."""
    try:
        est = estimate_noise(image, period_px, max_pixels=max(image.size, 48 * 48))
    except InputError as exc:
        warnings.append(f"{source}: noise model not estimated ({str(exc).splitlines()[0]})")
        return None
    if not est.reliable:
        warnings.append(f"{source}: noise model uncertain ({est.notes})")
    return {"normalised": normalised_noise(est, lo, hi), "raw": est.to_dict(), "period_px": float(period_px),
            "scale": [float(v) for v in scale]}


def _safe_stem(path: str | os.PathLike) -> str:
    stem = Path(path).stem
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    return keep[:60] or "micrograph"


def _b_for_micrograph(
    syn: SyntheticLattice,
    model: np.ndarray,
    info: LatticeInfo,
    scale: tuple[float, float],
    lo: float,
    hi: float,
    cfg: PrepConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[dict], dict, dict]:
    """B patches for one training micrograph (already in the model's pixel space): orientation, intensity, dents."""
    P = int(cfg.patch_px)
    period = cfg.model_period_px
    n = int(cfg.per_image)
    warnings: list[str] = []
    rotation = rotation_to_match(syn, info) if cfg.angle == "auto" else float(cfg.angle)
    ratio_a = info.period2_px / info.period_px
    s1, s2 = (np.hypot(*v) for v in lattice_vectors(syn.info))
    ratio_s = max(s1, s2) / min(s1, s2)
    if abs(ratio_a - ratio_s) > 0.05 * ratio_s or (info.lattice == "hex") != (syn.info.lattice == "hex"):
        warnings.append(
            f"lattice differs from the synthetic's ({info.lattice}, periods {info.period_px:.2f}/"
            f"{info.period2_px:.2f} px vs {syn.info.lattice}, ratio {ratio_s:.3f})"
        )

    # dents: mask in the model's pixel space, amplitude fitted on the low-pass
    zero_level = (0.0 - lo) / (hi - lo)
    mask = None
    fit = None
    if cfg.dents > 0:
        # The mask varies on the scale of periods: measure it at half the model's resolution (6.4 px per period by
        # default, 4x fewer pixels) unless the seed's literal pixel windows are asked for, and bring it back.
        half = cfg.dent_scale == "period" and period >= 8.0 and min(model.shape) >= 4 * P
        small = cv2.resize(model, (model.shape[1] // 2, model.shape[0] // 2), interpolation=cv2.INTER_AREA) \
            if half else model
        f = small.shape[0] / model.shape[0]
        mask_s = _dents.dent_mask(
            small, period * f, method=cfg.dent_method, polarity=cfg.dent_polarity, scale=cfg.dent_scale,
            threshold=cfg.dent_threshold,
            window_px=None if cfg.dent_window_px is None else max(1.0, cfg.dent_window_px * f),
            blur_px=None if cfg.dent_blur_px is None else cfg.dent_blur_px * f,
        )
        fit = _dents.fit_dent_amplitude(small, mask_s, period * f, polarity=cfg.dent_polarity,
                                        threshold=cfg.dent_threshold)
        mask = cv2.resize(mask_s, (model.shape[1], model.shape[0]), interpolation=cv2.INTER_LINEAR) if half \
            else mask_s
        level = fit.offset
    else:
        level = float(np.mean(model))
    mode = cfg.dent_mode
    if fit is not None and mode == "scale" and level - zero_level <= 1e-6:
        warnings.append("flat level not above the zero level; dents added instead of scaled")
        mode = "add"

    # intensity: the micrograph's level and lattice contrast
    syn_cell = syn.cell(_antialias_sigma(period / syn.period_px))
    if cfg.match_intensity:
        var_a = periodic_variance(model, _lattice_translations(info, scale), period)
        if var_a <= 0:
            warnings.append("lattice contrast not measurable; B patches keep the synthetic's contrast")
            gain = 1.0
        else:
            gain = math.sqrt(var_a / max(syn_cell.variance, 1e-12))
        inten = _Intensity(level=level, gain=gain, syn_mean=syn_cell.mean)
    else:
        inten = _Intensity(level=syn_cell.mean, gain=1.0, syn_mean=syn_cell.mean)
        var_a = None
    # the dent in the B patches' units: the same relative depth when they keep the synthetic's own scale
    dent_amp, dent_level, dent_zero = (fit.amplitude if fit is not None else 0.0), level, zero_level
    if fit is not None and not cfg.match_intensity:
        syn_zero = (0.0 - syn.norm[0]) / (syn.norm[1] - syn.norm[0])
        dent_amp = fit.amplitude / max(level - zero_level, 1e-6) * (syn_cell.mean - syn_zero)
        dent_level, dent_zero = syn_cell.mean, syn_zero

    # K virtual dented targets (lattice offsets), B patches cropped from them at random positions
    k_targets = int(cfg.dents) if fit is not None else 1
    target_origins = rng.uniform(0.0, 1.0e4, size=(k_targets, 2))
    which = rng.integers(0, k_targets, size=n)
    _, pos = crop_patches(model, n, P, rng)
    origins = target_origins[which] + pos
    lat = _render_b(syn, origins, P, period, rotation)
    b = inten.apply(lat.astype(np.float64))
    if fit is not None:
        idx_r = pos[:, 0, None, None] + np.arange(P)[None, :, None]
        idx_c = pos[:, 1, None, None] + np.arange(P)[None, None, :]
        m = mask[idx_r, idx_c]
        b = _dents.dented_targets(b, m, dent_amp, mode=mode, offset=dent_level, zero_level=dent_zero)
    b = b.astype(np.float32)
    recs = []
    for k in range(n):
        rec: dict[str, Any] = {
            "origin": [float(origins[k, 0]), float(origins[k, 1])],
            "rotation_deg": rotation,
            "scale": period / syn.period_px,
            "angle_deg": (syn.angle_deg + rotation) % 180.0,
        }
        if fit is not None:
            rec["dent"] = {"target": int(which[k]), "position": [float(pos[k, 0] / scale[0]),
                                                                 float(pos[k, 1] / scale[1])],
                           "model_position": [int(pos[k, 0]), int(pos[k, 1])],
                           "mean_mask": float(m[k].mean())}
        recs.append(rec)

    preview = {"model": model, "mask": mask, "amplitude": dent_amp if fit is not None else None, "syn": syn,
               "rotation": rotation, "inten": inten, "mode": mode, "level": dent_level, "zero_level": dent_zero,
               "origin": target_origins[0], "period": period}
    extra = {
        "rotation_deg": rotation,
        "intensity": {"level": inten.level, "gain": inten.gain, "synthetic_mean": inten.syn_mean,
                      "lattice_variance": var_a, "matched": bool(cfg.match_intensity)},
        "zero_level": zero_level,
        "dent": ({**fit.as_dict(), "applied": True, "mode": mode, "targets": k_targets, "amplitude_B": dent_amp}
                 if fit is not None else {"applied": False}),
        "n_patches_B": n,
        "warnings": warnings,
    }
    return b, recs, extra, preview

