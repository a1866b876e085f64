"""ADF/HAADF-STEM micrograph simulator with known ground truth.

The model is the incoherent imaging approximation: every atom column is a probe-blurred peak (a 2-D Gaussian
of width ``probe_sigma_px``) whose height scales with the column's scattering weight and with the local specimen
thickness. On top come a thickness-proportional diffuse background, a slow additive background, scan
distortions (per-row line jitter, slow drift, a sinusoidal line wobble, occasional tearing) and a detector model:
Poisson shot noise at a given dose, Gaussian read noise, noise correlated along the fast-scan rows (and slightly
anti-correlated down the columns, as measured on real frames), per-row flyback offsets and quantisation. The
correlation is a causal moving-average filter of the shot and read noise (the detector's finite bandwidth along
the scan), scaled to keep the noise variance, so the defaults give lag-1 correlations of 0.28 along the rows
and -0.1 down the columns whatever the dose; the noise-free ``truth`` is the expected image.

Units: positions and lengths in pixels, ``(row, col)`` with rows pointing down; intensities in detector units
(``gain`` units per detected electron; with the default ``gain=1`` they are counts). ``dose`` is the expected
number of counts at the peak of a nominal column (weight 1, thickness 1) above the background.

Angle convention (shared with :mod:`data_prep.lattice`): an angle is measured counter-clockwise *as displayed*
from the +x (column) axis, so a vector of length ``L`` at angle ``theta`` is ``L * (-sin(theta), cos(theta))`` in
``(row, col)``. ``SimResult.angle_deg`` is folded by the lattice's symmetry exactly as
:func:`data_prep.lattice.measure_lattice` reports it, so the measured angle equals the simulated one.

Everything is vectorised: columns are rendered as small Gaussian stamps (exact, per-row scan shifts included)
accumulated with ``np.bincount``; smooth fields are evaluated analytically at the distorted specimen coordinates.
The same parameters and seed always give the same output.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence, Union

import numpy as np
from pydantic import ConfigDict, Discriminator, Field, Tag, model_validator

from data_prep.io import MicrographMeta, read_micrograph, write_micrograph
from stem_denoise.common.atomic import atomic_write_bytes
from stem_denoise.common.config import Config, Interval
from stem_denoise.common.errors import ConfigError, InputError

__all__ = [
    "LATTICES",
    "DENT_SHAPES",
    "Dent",
    "SimParams",
    "SimResult",
    "simulate",
    "save_simulation",
    "load_simulation",
    "synthetic_lattice",
    "lattice_basis",
    "canonical_angle",
]

LATTICES = ("square", "rect", "hex", "perovskite", "honeycomb")
DENT_SHAPES = ("gaussian", "elliptic", "irregular", "ramp")

# Seed-sequence streams, so that changing one group of parameters does not change the random draws of another.
_STREAMS = ("lattice", "defects", "dents", "scan", "background", "noise", "offsets", "origin")


# ----------------------------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------------------------
class Dent(Config):
    """One smooth thinner region of the specimen.

    ``shape``: "gaussian" (isotropic Gaussian profile, ``radius_px`` = 2 sigma), "elliptic" (flat-bottomed ellipse
    with a smooth cosine rim; ``aspect`` = minor/major axis, major axis along ``angle_deg``), "irregular" (blob whose
    radius wobbles with the polar angle, smooth rim) or "ramp" (a thickness gradient: thickness falls linearly by
    ``depth`` across the image along ``angle_deg``; ``center`` and ``radius_px`` unused). ``center`` is
    ``(row, col)`` in specimen pixels; ``depth`` in (0, 1) is the fractional thickness loss at the dent's deepest
    point. ``edge_px`` is the least width of the rim (and least Gaussian sigma x 2), so that a dent varies slowly
    on the scale of the lattice; None means 1.5 lattice periods.
    """

    model_config = ConfigDict(frozen=False)

    shape: Literal[DENT_SHAPES] = "gaussian"
    center: tuple[float, float] = (0.0, 0.0)
    radius_px: float = Field(50.0, ge=0.0)
    depth: float = Field(0.3, gt=0.0, lt=1.0)
    aspect: float = Field(1.0, gt=0.0, le=1.0)
    angle_deg: float = 0.0
    wobble: tuple[float, ...] = ()  # irregular: relative radius amplitudes of harmonics 2, 3, ...
    phases: tuple[float, ...] = ()  # irregular: phases (rad) of those harmonics
    edge_px: float | None = Field(None, ge=0.0)  # least width of the rim (px); default 1.5 lattice periods

    @model_validator(mode="after")
    def _consistent(self) -> "Dent":
        if self.shape != "ramp" and not self.radius_px > 0:
            raise ValueError(f"dent radius_px must be > 0, got {self.radius_px}")
        if len(self.wobble) != len(self.phases):
            raise ValueError("dent wobble and phases must have the same length")
        return self


def _dents_kind(value: object) -> str:
    return "count-of-dents" if isinstance(value, int) else "list-of-dents"


# ``dents``: a count of random dents, or the dents themselves (Dent objects or dicts).
_DentsSpec = Annotated[Union[Annotated[int, Field(ge=0), Tag("count-of-dents")],
                             Annotated[tuple[Dent, ...], Tag("list-of-dents")]], Discriminator(_dents_kind)]


class SimParams(Config):
    """Parameters of one simulated micrograph (validated on creation; a bad value raises :class:`ConfigError`).

    Geometry: ``lattice`` ("square", "rect", "hex" = triangular net of columns, "perovskite" = square cell with an
    A column at the corner and a weaker B column (weight ``b_weight``) at the centre, as ABO3 along [001],
    "honeycomb" = hexagonal cell with a column at (0, 0) and a weaker one (weight ``b_weight``) at (1/3, 1/3) of
    the cell, two unequal sublattices as in MoS2 along [001]);
    ``shape`` (rows, cols); ``period_px`` = length of the primary lattice vector a1 (the unit-cell edge for
    perovskite); ``period2_px`` = length of a2 for "rect" (default 1.4 x period); ``angle_deg`` = direction of a1
    (see module docstring); a2 is a1 turned by +90 deg (+60 for hex and honeycomb). ``origin`` (row, col) of one
    column; random when None. ``probe_sigma_px``: Gaussian probe sigma (default 0.11 x the shortest column
    spacing, at least 0.8 px). ``position_noise_px``: static random column displacements (std, px).

    Specimen: ``vacancy_frac``, ``heavy_frac``, ``light_frac`` of lattice sites become vacancies, heavier
    (x ``heavy_factor``) or lighter (x ``light_factor``) columns. ``dents``: number of random dents (shapes drawn
    from ``dent_shapes``, depth from ``dent_depth``, radius as a fraction of the shorter image side from
    ``dent_radius_frac``) or an explicit list of :class:`Dent` (or dicts). Thickness = product of (1 - depth x
    profile) over the dents, times the ramps; column heights and the diffuse background scale with it.

    Nanoparticle: ``particle_radius_frac`` (None: the crystal fills the frame) keeps only the columns within a
    disc of that fraction of half the shorter image side around the frame's centre; outside is vacuum (no
    columns, no background), and every lattice site in the vacuum inside the image is listed with the vacancies,
    so a column painted into the vacuum counts like a filled vacancy.

    Background (fractions of ``dose``): ``background`` = diffuse level proportional to thickness,
    ``background_slow`` = amplitude of a smooth additive field (a few long-wavelength cosines).

    Scan: ``scan_jitter_px`` = std of per-row x offsets; ``drift_px`` = (row, col) specimen drift over the whole
    frame; ``scan_sine_px``/``scan_sine_rows`` = amplitude/period of a sinusoidal line wobble; ``tear_rate`` =
    expected tears per 1000 rows, each shifting ``tear_rows`` consecutive rows by up to +-``tear_shift_px``.

    Detector: ``dose`` = expected counts at a nominal column peak; ``read_noise`` (counts std, white before the
    detector filter); ``noise_corr_row``/``noise_corr_col`` = lag-1 correlation of the noise along the fast-scan
    rows / down the columns (|value| <= 0.45); ``row_offset`` = std of per-row flyback offsets as a fraction of
    the mean expected counts; ``gain`` = output units per count; ``quantize`` rounds the output to whole units;
    ``noise=False`` returns the truth as the noisy image. ``pixel_size_pm`` is written to the TIFFs.
    """

    model_config = ConfigDict(frozen=False)

    lattice: Literal[LATTICES] = "square"
    shape: tuple[Annotated[int, Field(ge=8)], Annotated[int, Field(ge=8)]] = (512, 512)
    period_px: float = Field(12.8, ge=2.0)
    period2_px: float | None = Field(None, ge=2.0)
    angle_deg: float = 0.0
    origin: tuple[float, float] | None = None
    probe_sigma_px: float | None = Field(None, gt=0.0, le=50.0)
    b_weight: float = Field(0.5, ge=0.0)
    position_noise_px: float = Field(0.0, ge=0.0)
    dose: float = Field(100.0, gt=0.0)
    vacancy_frac: float = Field(0.0, ge=0.0, le=1.0)
    heavy_frac: float = Field(0.0, ge=0.0, le=1.0)
    heavy_factor: float = Field(1.6, ge=0.0)
    light_frac: float = Field(0.0, ge=0.0, le=1.0)
    light_factor: float = Field(0.6, ge=0.0)
    particle_radius_frac: float | None = Field(None, gt=0.0, le=1.0)
    dents: _DentsSpec = 0
    dent_shapes: tuple[Literal[DENT_SHAPES], ...] = ("gaussian", "elliptic", "irregular")
    dent_depth: Interval(gt=0.0, lt=1.0) = (0.2, 0.5)
    dent_radius_frac: Interval(gt=0.0) = (0.08, 0.25)
    background: float = Field(0.1, ge=0.0)
    background_slow: float = Field(0.05, ge=0.0)
    scan_jitter_px: float = Field(0.1, ge=0.0)
    drift_px: tuple[float, float] = (0.0, 0.0)
    scan_sine_px: float = Field(0.0, ge=0.0)
    scan_sine_rows: float = Field(64.0, gt=0.0)
    tear_rate: float = Field(0.5, ge=0.0)
    tear_shift_px: float = Field(2.0, ge=0.0)
    tear_rows: int = Field(3, ge=1)
    noise: bool = True
    read_noise: float = Field(0.5, ge=0.0)
    noise_corr_row: float = Field(0.28, ge=-0.45, le=0.45)
    noise_corr_col: float = Field(-0.1, ge=-0.45, le=0.45)
    row_offset: float = Field(0.01, ge=0.0)
    gain: float = Field(1.0, gt=0.0)
    quantize: bool = True
    pixel_size_pm: float | None = Field(10.0, gt=0.0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "SimParams":
        h, w = self.shape
        if h * w > 16384 * 16384:
            raise ValueError(f"shape {self.shape} is too large")
        if self.vacancy_frac + self.heavy_frac + self.light_frac > 1.0:
            raise ValueError("vacancy_frac + heavy_frac + light_frac must be <= 1")
        if isinstance(self.dents, int) and self.dents and not self.dent_shapes:
            raise ValueError("dent_shapes is empty")
        if abs(self.drift_px[0]) >= 0.5 * h:
            raise ValueError("drift_px[0] must be smaller than half the image height")
        return self

    def _dent_list(self) -> list[Dent]:
        return [] if isinstance(self.dents, int) else list(self.dents)

    # -- derived values ------------------------------------------------------------------------------------------
    def resolved_period2(self) -> float:
        if self.lattice == "rect":
            return float(self.period2_px) if self.period2_px is not None else 1.4 * float(self.period_px)
        return float(self.period_px)

    def resolved_sigma(self) -> float:
        if self.probe_sigma_px is not None:
            return float(self.probe_sigma_px)
        shortest = min(self.period_px, self.resolved_period2())
        if self.lattice == "perovskite":
            shortest = self.period_px / math.sqrt(2.0)
        elif self.lattice == "honeycomb":
            shortest = self.period_px / math.sqrt(3.0)
        return max(0.8, 0.11 * shortest)

    @classmethod
    def from_dict(cls, d: dict, where: str = "", base: "SimParams | None" = None) -> "SimParams":
        """Inverse of :meth:`to_dict` (also reads the ``params`` record of a saved simulation, whose ``derived``
        entry says what :func:`simulate` found); an unknown key or a bad value raises :class:`ConfigError`."""
        if isinstance(d, dict):
            d = {k: v for k, v in d.items() if k != "derived"}
        return super().from_dict(d, where, base)


# ----------------------------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SimResult:
    """Output of :func:`simulate`.

    ``noisy``/``truth``: float32 (H, W) in detector units (counts x gain); ``truth`` is the noise-free expected
    image with the same scan distortion. ``columns``: (N, 2) float (row, col) where the present columns appear in
    the distorted image (centroid of their rendered peak), restricted to the image. ``column_weight``: (N,) peak
    height of each column relative to ``dose`` (species weight x local thickness). ``vacancies``: (M, 2) where a
    lattice column is missing. ``heavy``/``light``: index arrays into ``columns``. ``thickness``: (H, W) float32,
    1 = nominal, dents < 1, at the distorted pixel positions. ``period_px``/``angle_deg``: the primary lattice
    vector as :func:`data_prep.lattice.measure_lattice` reports it (angle folded by the lattice symmetry);
    ``period2_px``/``angle2_deg``: the second basis vector likewise; ``lattice``: the Bravais lattice as measured
    ("square" for a perovskite cell, whose period is the cell edge). ``params``: JSON-able dict of the parameters
    actually used (random choices such as dents, origin and probe width resolved; ``SimParams.from_dict`` of it
    reproduces the image), with ``params["derived"]`` recording the scan tears and the y scale of the drift.
    """

    noisy: np.ndarray
    truth: np.ndarray
    columns: np.ndarray
    column_weight: np.ndarray
    vacancies: np.ndarray
    heavy: np.ndarray
    light: np.ndarray
    thickness: np.ndarray
    period_px: float
    angle_deg: float
    params: dict
    period2_px: float = 0.0
    angle2_deg: float = 0.0
    lattice: str = "square"

    @property
    def pixel_size_pm(self) -> float | None:
        return self.params.get("pixel_size_pm")


# ----------------------------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------------------------
def _unit(angle_deg: float) -> np.ndarray:
    """(row, col) unit vector at ``angle_deg`` (counter-clockwise as displayed, from +x)."""
    t = math.radians(angle_deg)
    return np.array([-math.sin(t), math.cos(t)])


def lattice_basis(lattice: str, period_px: float, angle_deg: float, period2_px: float | None = None):
    """Real-space basis of a lattice type: ``(a1, a2, motif)``.

    ``a1``/``a2`` are (row, col) vectors in pixels (a1 at ``angle_deg``, a2 at +90 deg, +60 deg for hex);
    ``motif`` is a list of ``(frac1, frac2, weight)`` sites in the cell (weight of the B site of a perovskite is
    filled in by the caller). Units: pixels and degrees.
    """
    if lattice not in LATTICES:
        raise ConfigError(f"lattice must be one of {LATTICES}, got {lattice!r}")
    p2 = period_px if period2_px is None or lattice != "rect" else period2_px
    a1 = period_px * _unit(angle_deg)
    if lattice in ("hex", "honeycomb"):
        a2 = period_px * _unit(angle_deg + 60.0)
    else:
        a2 = p2 * _unit(angle_deg + 90.0)
    motif = [(0.0, 0.0, 1.0)]
    if lattice == "perovskite":
        motif.append((0.5, 0.5, None))
    elif lattice == "honeycomb":
        motif.append((1.0 / 3.0, 1.0 / 3.0, None))
    return a1, a2, motif


def canonical_angle(angle_deg: float, lattice: str) -> float:
    """Fold a primary-vector angle by the lattice symmetry, as :func:`measure_lattice` reports it.

    square/perovskite: [0, 90); hex: [0, 60); rect/oblique: [0, 180). Degrees.
    """
    fold = {"square": 90.0, "perovskite": 90.0, "hex": 60.0}.get(lattice, 180.0)
    a = float(angle_deg) % fold
    if a >= fold - 1e-9:
        a = 0.0
    return a


def _canonical_vectors(lattice: str, period: float, period2: float, angle: float):
    """Return (period, angle, period2, angle2) of the reported primary and secondary vectors."""
    if lattice == "rect" and period2 < period:
        period, period2 = period2, period
        angle = angle + 90.0
    a = canonical_angle(angle, lattice)
    step = 60.0 if lattice == "hex" else 90.0
    a2 = (a + step) % 180.0
    return float(period), float(a), float(period2), float(a2)


# ----------------------------------------------------------------------------------------------------------------
# dents and thickness
# ----------------------------------------------------------------------------------------------------------------
def _smoothstep_edge(r: np.ndarray, width: float) -> np.ndarray:
    """1 inside r<1, smooth fall to 0 over a rim of relative ``width`` (cosine taper), 0 outside."""
    x = np.clip((r - (1.0 - width)) / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def _dent_profile(d: Dent, y: np.ndarray, x: np.ndarray, shape: tuple[int, int], edge: float) -> np.ndarray:
    """Profile in [0, 1] (1 at the deepest point) of a dent at specimen coordinates (y, x); rim >= ``edge`` px."""
    h, w = shape
    if d.shape == "ramp":
        u = _unit(d.angle_deg)
        proj = (y - h / 2.0) * u[0] + (x - w / 2.0) * u[1]
        half = 0.5 * (abs(u[0]) * h + abs(u[1]) * w)
        return np.clip(0.5 + proj / (2.0 * half), 0.0, 1.0)
    dy = y - d.center[0]
    dx = x - d.center[1]
    if d.shape == "gaussian":
        s = max(d.radius_px, edge) / 2.0
        return np.exp(-(dy * dy + dx * dx) / (2.0 * s * s))
    # elliptic / irregular: polar coordinates in the dent's frame
    u = _unit(d.angle_deg)
    along = dy * u[0] + dx * u[1]
    across = -dy * u[1] + dx * u[0]
    if d.shape == "elliptic":
        # a dent narrower than its rim is widened to the rim: no dent is sharper than ``edge``
        major, minor = max(d.radius_px, edge), max(d.radius_px * d.aspect, edge)
        r = np.sqrt((along / major) ** 2 + (across / minor) ** 2)
        return _smoothstep_edge(r, min(1.0, max(0.5, edge / minor)))
    theta = np.arctan2(across, along)
    rad = np.ones_like(theta)
    for k, (amp, ph) in enumerate(zip(d.wobble, d.phases), start=2):
        rad = rad + amp * np.cos(k * theta + ph)
    rad = np.maximum(rad, 0.3)
    shrink = max(0.3, 1.0 - float(np.sum(np.abs(d.wobble))))  # smallest radius factor over the angles
    radius = max(d.radius_px, edge / (d.aspect * shrink))
    r = np.sqrt(along * along + (across / d.aspect) ** 2) / (radius * rad)
    return _smoothstep_edge(r, min(1.0, max(0.6, edge / (radius * d.aspect * shrink))))


def _thickness(dents: Sequence[Dent], y: np.ndarray, x: np.ndarray, shape: tuple[int, int],
               period: float) -> np.ndarray:
    t = np.ones(np.broadcast_shapes(np.shape(y), np.shape(x)), dtype=np.float64)
    for d in dents:
        edge = 1.5 * period if d.edge_px is None else float(d.edge_px)
        t *= 1.0 - d.depth * _dent_profile(d, y, x, shape, edge)
    return np.maximum(t, 0.02)


def _random_dents(p: SimParams, rng: np.random.Generator) -> list[Dent]:
    h, w = p.shape
    side = min(h, w)
    out = []
    for _ in range(int(p.dents)):
        shape = str(rng.choice(list(p.dent_shapes)))
        depth = float(rng.uniform(*p.dent_depth))
        radius = float(rng.uniform(*p.dent_radius_frac)) * side
        center = (float(rng.uniform(0.15, 0.85) * h), float(rng.uniform(0.15, 0.85) * w))
        angle = float(rng.uniform(0.0, 180.0))
        aspect = float(rng.uniform(0.4, 0.9)) if shape in ("elliptic", "irregular") else 1.0
        wobble: tuple[float, ...] = ()
        phases: tuple[float, ...] = ()
        if shape == "irregular":
            wobble = tuple(float(v) for v in rng.uniform(0.05, 0.25, size=3) / np.arange(1, 4))
            phases = tuple(float(v) for v in rng.uniform(0, 2 * np.pi, size=3))
        if shape == "ramp":
            center, radius, aspect = (0.0, 0.0), 0.0, 1.0
        out.append(Dent(shape, center, radius, depth, aspect, angle, wobble, phases))
    return out


# ----------------------------------------------------------------------------------------------------------------
# scan distortion
# ----------------------------------------------------------------------------------------------------------------
def _scan_shifts(p: SimParams, rng: np.random.Generator) -> tuple[np.ndarray, float, list[dict]]:
    """Per-row x shift (specimen x = col + dx[row]) and the y scale (specimen y = row * yscale)."""
    h, _ = p.shape
    rows = np.arange(h, dtype=np.float64)
    dx = p.drift_px[1] * rows / h
    if p.scan_jitter_px > 0:
        dx = dx + rng.normal(0.0, p.scan_jitter_px, size=h)
    if p.scan_sine_px > 0:
        dx = dx + p.scan_sine_px * np.sin(2 * np.pi * rows / p.scan_sine_rows + rng.uniform(0, 2 * np.pi))
    tears = []
    n_tears = rng.poisson(p.tear_rate * h / 1000.0) if p.tear_rate > 0 else 0
    for _ in range(n_tears):
        r0 = int(rng.integers(0, h))
        n = int(rng.integers(1, int(p.tear_rows) + 1))
        shift = float(rng.uniform(-1.0, 1.0) * p.tear_shift_px)
        dx[r0:r0 + n] += shift
        tears.append({"row": r0, "rows": n, "shift_px": shift})
    yscale = 1.0 + p.drift_px[0] / h
    return dx, yscale, tears


# ----------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------
def _lattice_sites(p: SimParams, a1, a2, motif, origin, box) -> tuple[np.ndarray, np.ndarray]:
    """All sites (specimen (y, x)) of the lattice within ``box`` = (y0, y1, x0, x1) and their base weights."""
    y0, y1, x0, x1 = box
    basis = np.stack([a1, a2], axis=1)  # columns a1, a2; r = basis @ (m, n)
    inv = np.linalg.inv(basis)
    corners = np.array([[y0, x0], [y0, x1], [y1, x0], [y1, x1]], dtype=np.float64) - origin
    mn = corners @ inv.T
    m0, n0 = np.floor(mn.min(axis=0)).astype(int) - 1
    m1, n1 = np.ceil(mn.max(axis=0)).astype(int) + 1
    mm, nn = np.meshgrid(np.arange(m0, m1 + 1), np.arange(n0, n1 + 1), indexing="ij")
    mm = mm.ravel().astype(np.float64)
    nn = nn.ravel().astype(np.float64)
    pos_list, w_list = [], []
    for f1, f2, wt in motif:
        pos = origin + np.outer(mm + f1, a1) + np.outer(nn + f2, a2)
        keep = (pos[:, 0] >= y0) & (pos[:, 0] <= y1) & (pos[:, 1] >= x0) & (pos[:, 1] <= x1)
        pos_list.append(pos[keep])
        w_list.append(np.full(int(keep.sum()), p.b_weight if wt is None else wt))
    pos = np.concatenate(pos_list)
    weights = np.concatenate(w_list)
    # deterministic order: raster order of the positions
    order = np.lexsort((pos[:, 1], pos[:, 0]))
    return pos[order], weights[order]


def _apparent(Y: np.ndarray, X: np.ndarray, dx: np.ndarray, yscale: float, sigma: float) -> np.ndarray:
    """Where specimen points (Y, X) appear in the scan-distorted image: (row, col) in pixels.

    The row is exact for the linear y drift; the column is the centroid of the rendered peak over the scan rows
    it covers, each row shifted by its own ``dx`` (line jitter, wobble, tears).
    """
    h = len(dx)
    R = int(math.ceil(4.0 * sigma)) + 1
    offs = np.arange(-R, R + 1)
    r_app = Y / yscale
    rows = np.round(r_app).astype(np.int64)[:, None] + offs[None, :]
    gy = np.exp(-((rows * yscale - Y[:, None]) ** 2) / (2.0 * sigma * sigma))
    gy = np.where((rows >= 0) & (rows < h), gy, 0.0)
    wsum = gy.sum(axis=1)
    rdx = dx[np.clip(rows, 0, h - 1)]
    c_app = np.where(wsum > 0, (gy * (X[:, None] - rdx)).sum(axis=1) / np.maximum(wsum, 1e-300),
                     X - dx[np.clip(np.round(r_app).astype(np.int64), 0, h - 1)])
    return np.stack([r_app, c_app], axis=1)


def _render_columns(shape, Y, X, amp, sigma, dx, yscale, chunk=16384) -> np.ndarray:
    """Sum of Gaussian stamps (sigma px, peak heights ``amp``) of the columns at specimen (Y, X), scan-distorted.

    Pixel (i, j) sees specimen (i * yscale, j + dx[i]); each stamp row is evaluated exactly at its own shift.
    """
    h, w = shape
    R = int(math.ceil(4.0 * sigma)) + 1
    offs = np.arange(-R, R + 1)
    img = np.zeros(h * w, dtype=np.float64)
    inv2s2 = 1.0 / (2.0 * sigma * sigma)
    for s in range(0, len(Y), chunk):
        y = Y[s:s + chunk]
        x = X[s:s + chunk]
        a = amp[s:s + chunk]
        rows = np.round(y / yscale).astype(np.int64)[:, None] + offs[None, :]  # (n, S)
        gy = np.exp(-((rows * yscale - y[:, None]) ** 2) * inv2s2)  # (n, S)
        rdx = dx[np.clip(rows, 0, h - 1)]  # (n, S)
        cols = np.round(x[:, None] - rdx).astype(np.int64)[:, :, None] + offs[None, None, :]  # (n, S, S)
        gx = np.exp(-((cols + rdx[:, :, None] - x[:, None, None]) ** 2) * inv2s2)
        val = (a[:, None, None] * gy[:, :, None]) * gx
        ok = (rows[:, :, None] >= 0) & (rows[:, :, None] < h) & (cols >= 0) & (cols < w)
        idx = (rows[:, :, None] * w + cols)[ok]
        img += np.bincount(idx, weights=val[ok], minlength=h * w)
    return img.reshape(h, w)


def _slow_background(shape, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Smooth field in [0, 1]: a few long-wavelength cosines (wavelength 0.7-2.5 x the image size)."""
    h, w = shape
    size = float(max(h, w))
    total = np.zeros(np.broadcast_shapes(ys.shape, xs.shape))
    amps = []
    for _ in range(3):
        lam = rng.uniform(0.7, 2.5) * size
        u = _unit(rng.uniform(0, 360))
        a = rng.uniform(0.3, 1.0)
        total += a * np.cos(2 * np.pi * (ys * u[0] + xs * u[1]) / lam + rng.uniform(0, 2 * np.pi))
        amps.append(a)
    return 0.5 * (1.0 + total / sum(amps))


def _ma1_coefficient(rho: float) -> float:
    """Coefficient c of x + c*x_prev whose lag-1 autocorrelation c/(1+c^2) equals rho."""
    if abs(rho) < 1e-12:
        return 0.0
    return (1.0 - math.sqrt(1.0 - 4.0 * rho * rho)) / (2.0 * rho)


def _correlate_noise(e: np.ndarray, rho_row: float, rho_col: float) -> np.ndarray:
    """Causal separable MA(1) filter giving lag-1 correlations rho_row (along rows) and rho_col (down columns)."""
    a = _ma1_coefficient(rho_row)
    if a:
        f = e.copy()
        f[:, 1:] += a * e[:, :-1]
        f[:, 0] *= math.sqrt(1.0 + a * a)
        e = f / math.sqrt(1.0 + a * a)
    b = _ma1_coefficient(rho_col)
    if b:
        f = e.copy()
        f[1:, :] += b * e[:-1, :]
        f[0, :] *= math.sqrt(1.0 + b * b)
        e = f / math.sqrt(1.0 + b * b)
    return e


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def simulate(params: SimParams | None = None, **overrides) -> SimResult:
    """Simulate one ADF-STEM micrograph with its ground truth (see the module docstring for the model and units).

    ``overrides`` replace fields of ``params`` (or of the defaults), e.g. ``simulate(dose=5, lattice="hex")``.
    Deterministic for given parameters and seed.
    """
    p = params.replace(**overrides) if params is not None else SimParams(**overrides)
    h, w = int(p.shape[0]), int(p.shape[1])
    ss = np.random.SeedSequence(int(p.seed))
    rngs = dict(zip(_STREAMS, (np.random.default_rng(s) for s in ss.spawn(len(_STREAMS)))))

    sigma = p.resolved_sigma()
    period2 = p.resolved_period2()
    a1, a2, motif = lattice_basis(p.lattice, float(p.period_px), float(p.angle_deg), period2)

    # scan distortion and the specimen region the scan visits
    dx, yscale, tears = _scan_shifts(p, rngs["scan"])
    R = int(math.ceil(4.0 * sigma)) + 2
    box = (-R * yscale - 1, (h - 1) * yscale + R + 1, float(dx.min()) - R - 1, w - 1 + float(dx.max()) + R + 1)

    # lattice sites
    lrng = rngs["lattice"]
    if p.origin is None:
        frac = rngs["origin"].random(2)
        origin = np.array([h / 2.0, w / 2.0]) + frac[0] * a1 + frac[1] * a2
    else:
        origin = np.asarray(p.origin, dtype=np.float64)
    pos, base_w = _lattice_sites(p, a1, a2, motif, origin, box)
    if p.position_noise_px > 0:
        pos = pos + lrng.normal(0.0, p.position_noise_px, size=pos.shape)

    # defects; the vacuum around a nanoparticle
    u = rngs["defects"].random(len(pos))
    vac = u < p.vacancy_frac
    if p.particle_radius_frac is not None:
        centre = np.array([(h - 1) / 2.0 * yscale, (w - 1) / 2.0])
        radius = float(p.particle_radius_frac) * 0.5 * min(h, w)
        vac = vac | (np.hypot(pos[:, 0] - centre[0], pos[:, 1] - centre[1]) > radius)
    heavy = (u >= p.vacancy_frac) & (u < p.vacancy_frac + p.heavy_frac)
    light = (u >= p.vacancy_frac + p.heavy_frac) & (u < p.vacancy_frac + p.heavy_frac + p.light_frac)
    species_w = base_w * np.where(heavy, p.heavy_factor, 1.0) * np.where(light, p.light_factor, 1.0)

    # dents / thickness
    if isinstance(p.dents, (int, np.integer)):
        dents = _random_dents(p, rngs["dents"])
    else:
        dents = p._dent_list()
    present = ~vac
    t_col = _thickness(dents, pos[present, 0], pos[present, 1], (h, w), max(float(p.period_px), period2))
    col_w = species_w[present] * t_col

    # render the columns
    img = _render_columns((h, w), pos[present, 0], pos[present, 1], col_w * p.dose, sigma, dx, yscale)
    app = _apparent(pos[present, 0], pos[present, 1], dx, yscale, sigma)

    # smooth fields at the distorted specimen coordinates of every pixel
    ys = (np.arange(h, dtype=np.float64) * yscale)[:, None]
    xs = np.arange(w, dtype=np.float64)[None, :] + dx[:, None]
    thick = _thickness(dents, ys, xs, (h, w), max(float(p.period_px), period2))
    specimen = 1.0
    if p.particle_radius_frac is not None:  # no specimen in the vacuum: a smooth rim of about one probe width
        specimen = np.clip((radius + sigma - np.hypot(ys - centre[0], xs - centre[1])) / (2.0 * sigma), 0.0, 1.0)
        thick = thick * specimen
    img += p.dose * p.background * thick
    if p.background_slow > 0:
        img += p.dose * p.background_slow * specimen * _slow_background((h, w), rngs["background"], ys, xs)
    lam = img  # expected counts

    truth = (lam * p.gain).astype(np.float32)
    if p.noise:
        nrng = rngs["noise"]
        counts = nrng.poisson(np.maximum(lam, 0.0)).astype(np.float64)
        e = counts - lam
        if p.read_noise > 0:
            e += nrng.normal(0.0, p.read_noise, size=lam.shape)
        e = _correlate_noise(e, float(p.noise_corr_row), float(p.noise_corr_col))
        if p.row_offset > 0:
            e += (p.row_offset * float(lam.mean())) * rngs["offsets"].normal(0.0, 1.0, size=(h, 1))
        out = (lam + e) * p.gain
        if p.quantize:
            out = np.round(out)
        noisy = out.astype(np.float32)
    else:
        noisy = truth.copy()

    # bookkeeping: what lies inside the image
    def inside(rc):
        return (rc[:, 0] >= -0.5) & (rc[:, 0] <= h - 0.5) & (rc[:, 1] >= -0.5) & (rc[:, 1] <= w - 0.5)

    keep = inside(app)
    columns = app[keep]
    column_weight = col_w[keep]
    heavy_idx = np.flatnonzero(heavy[present][keep])
    light_idx = np.flatnonzero(light[present][keep])
    vac_app = _apparent(pos[vac, 0], pos[vac, 1], dx, yscale, sigma) if vac.any() else np.zeros((0, 2))
    vac_app = vac_app[inside(vac_app)]

    rep_lattice = {"perovskite": "square", "honeycomb": "hex"}.get(p.lattice, p.lattice)
    period, angle, p2, angle2 = _canonical_vectors(rep_lattice, float(p.period_px), period2, float(p.angle_deg))
    used = p.to_dict()
    used.update(
        {
            "probe_sigma_px": sigma,
            "period2_px": period2,
            "origin": [float(origin[0]), float(origin[1])],
            "dents": [d.to_dict() for d in dents],
            "derived": {"tears": tears, "y_scale": yscale},
        }
    )
    return SimResult(
        noisy=noisy,
        truth=truth,
        columns=columns.astype(np.float64),
        column_weight=column_weight.astype(np.float64),
        vacancies=vac_app.astype(np.float64),
        heavy=heavy_idx.astype(np.int64),
        light=light_idx.astype(np.int64),
        thickness=thick.astype(np.float32),
        period_px=period,
        angle_deg=angle,
        params=used,
        period2_px=p2,
        angle2_deg=angle2,
        lattice=rep_lattice,
    )


def synthetic_lattice(
    lattice: str = "square",
    period_px: float = 24.0,
    n_cells: int = 10,
    *,
    angle_deg: float = 0.0,
    period2_px: float | None = None,
    probe_sigma_px: float | None = None,
    b_weight: float = 0.5,
    background: float = 0.0,
) -> np.ndarray:
    """A small clean lattice image of the kind a physicist hands over: float32 in [0, 1], no noise or distortion.

    The image holds ``n_cells`` unit cells (rows of columns for hex) along each axis (``n_cells * period``
    pixels, rounded); with ``angle_deg=0`` square, rect and perovskite images are periodic across their borders
    when the periods are whole pixels (hex ones vertically only for even ``n_cells``). Peaks are Gaussian (sigma as in
    :class:`SimParams`) of height 1 for an A column (``b_weight``
    for a perovskite B column) on a flat ``background`` (0 = vacuum). Units: pixels, degrees.
    """
    if lattice not in LATTICES:
        raise ConfigError(f"lattice must be one of {LATTICES}, got {lattice!r}")
    if int(n_cells) < 1:
        raise ConfigError("n_cells must be >= 1")
    p2 = (1.4 * period_px if period2_px is None else period2_px) if lattice == "rect" else period_px
    if lattice in ("hex", "honeycomb"):  # n_cells rows of columns, sqrt(3)/2 periods apart
        rows = int(round(n_cells * period_px * math.sqrt(3.0) / 2.0))
    else:
        rows = int(round(n_cells * p2))
    cols = int(round(n_cells * period_px))
    p = SimParams(
        lattice=lattice,
        shape=(rows, cols),
        period_px=period_px,
        period2_px=period2_px,
        angle_deg=angle_deg,
        origin=(p2 / 2.0 if lattice not in ("hex", "honeycomb") else period_px * math.sqrt(3.0) / 4.0,
                period_px / 2.0),
        probe_sigma_px=probe_sigma_px,
        b_weight=b_weight,
        dose=1.0,
        background=background,
        background_slow=0.0,
        scan_jitter_px=0.0,
        tear_rate=0.0,
        noise=False,
    )
    return simulate(p).truth


# ----------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------
def _write_tif(path: Path, image: np.ndarray, pixel_size_pm: float | None, overwrite: bool) -> None:
    meta = MicrographMeta(
        source_dtype="float32",
        pixel_size=pixel_size_pm,
        unit="pm" if pixel_size_pm is not None else None,
        path=str(path),
        shape=(int(image.shape[0]), int(image.shape[1])),
        extra={},
    )
    write_micrograph(path, np.asarray(image, dtype=np.float32), meta, dtype="float32", overwrite=overwrite)


def save_simulation(result: SimResult, out_dir, stem: str, *, overwrite: bool = True) -> dict:
    """Write ``{stem}.tif`` (noisy), ``{stem}_truth.tif``, ``{stem}_thickness.tif`` and ``{stem}.json``.

    The JSON holds the parameters, column positions (row, col px), column weights, vacancies, heavy/light
    indices, period, angle and pixel size. The images are float32 TIFFs carrying the pixel size (pm); each file
    is written atomically, the JSON last, so a JSON on disk means a complete set. With ``overwrite=False`` an
    existing file raises :class:`InputError`. Returns ``{"noisy", "truth", "thickness", "json"}`` -> paths.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(f"output folder {out} does not exist")
    if not stem or "/" in stem or "\\" in stem:
        raise InputError(f"bad file stem {stem!r}")
    px = result.params.get("pixel_size_pm")
    paths = {
        "noisy": out / f"{stem}.tif",
        "truth": out / f"{stem}_truth.tif",
        "thickness": out / f"{stem}_thickness.tif",
        "json": out / f"{stem}.json",
    }
    if not overwrite:
        for path in paths.values():
            if path.exists():
                raise InputError(f"{path} exists; pass --overwrite to replace it")
    _write_tif(paths["noisy"], result.noisy, px, overwrite)
    _write_tif(paths["truth"], result.truth, px, overwrite)
    _write_tif(paths["thickness"], result.thickness, px, overwrite)
    doc = {
        "kind": "stem-denoise-simulation",
        "version": 1,
        "files": {k: v.name for k, v in paths.items() if k != "json"},
        "shape": [int(v) for v in result.noisy.shape],
        "lattice": result.lattice,
        "period_px": result.period_px,
        "angle_deg": result.angle_deg,
        "period2_px": result.period2_px,
        "angle2_deg": result.angle2_deg,
        "pixel_size_pm": px,
        "params": result.params,
        "columns": np.round(result.columns, 4).tolist(),
        "column_weight": np.round(result.column_weight, 5).tolist(),
        "vacancies": np.round(result.vacancies, 4).tolist(),
        "heavy": result.heavy.tolist(),
        "light": result.light.tolist(),
    }
    atomic_write_bytes(paths["json"], json.dumps(doc, separators=(",", ":")).encode("utf-8"), overwrite)
    return paths


def load_simulation(json_path) -> SimResult:
    """Read back what :func:`save_simulation` wrote (the TIFFs are found next to the JSON)."""
    path = Path(json_path)
    if not path.is_file():
        raise InputError(f"{path}: no such simulation file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable simulation JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "stem-denoise-simulation":
        raise InputError(f"{path}: not a simulation JSON written by save_simulation")
    try:
        files = doc["files"]
        images = {k: read_micrograph(path.parent / files[k], validate=False)[0]
                  for k in ("noisy", "truth", "thickness")}

        def arr(key, dtype, ncol=None):
            a = np.asarray(doc[key], dtype=dtype)
            if ncol is not None:
                a = a.reshape(-1, ncol)
            return a

        return SimResult(
            noisy=images["noisy"],
            truth=images["truth"],
            columns=arr("columns", np.float64, 2),
            column_weight=arr("column_weight", np.float64),
            vacancies=arr("vacancies", np.float64, 2),
            heavy=arr("heavy", np.int64),
            light=arr("light", np.int64),
            thickness=images["thickness"],
            period_px=float(doc["period_px"]),
            angle_deg=float(doc["angle_deg"]),
            params=doc["params"],
            period2_px=float(doc.get("period2_px", doc["period_px"])),
            angle2_deg=float(doc.get("angle2_deg", 0.0)),
            lattice=str(doc.get("lattice", "square")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: incomplete simulation JSON ({exc})") from None
