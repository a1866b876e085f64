"""The clean synthetic lattice of domain B: its unit cell, the seamless mosaic, and the rotation that matches it
to a micrograph (method and angle conventions: :mod:`data_prep.patches`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage, optimize

from data_prep.io import validate_image
from data_prep.lattice import LatticeInfo, lattice_vectors, measure_lattice
from data_prep.normalize import normalize, robust_range
from stem_denoise.common.errors import InputError

_SYMMETRY_FOLD = {"square": 90.0, "perovskite": 90.0, "hex": 60.0}


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
