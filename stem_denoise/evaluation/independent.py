"""Independent validation set: a second STEM simulator with a different imaging and noise model.

The denoisers are trained on :mod:`data_prep.simulate`; judged only on images from that simulator they could look
better than they are. This module is written separately from it (it shares no rendering or noise code) and differs
from it on purpose:

* **Noise** is white: Poisson shot noise on the expected counts, Gaussian read noise, a detector gain and a
  constant detector offset. No correlation between neighbouring pixels, no row offsets, no quantisation, no scan
  distortion.
* **Probes** are not Gaussian. Each case draws one of: ``"aberrated"`` (Gaussian core plus Lorentzian-like tails,
  a Moffat profile ``(1 + r^2/gamma^2)^-1.5`` carrying 12-25 % of the peak), ``"astigmatic"`` (elliptical Gaussian
  core, axis ratio 1.15-1.3, at most 1.2 for dumbbells, at a random orientation, weak tails) or ``"airy"`` (the
  diffraction pattern of a partly obstructed round aperture: an Airy-like core with a first bright ring of 5-8 % of
  the peak). Core sigma 0.075-0.1 P (0.06-0.075 P for dumbbells), at least 0.7 px. A column's core widens
  slightly with its scattering weight (heavier columns are broader, lighter ones narrower).
* **Backgrounds**: a constant pedestal, a diffuse background proportional to the specimen thickness, a linear
  thickness ramp across the field (10-25 % from the centre to the edge), and an amorphous (carbon-like) speckle
  texture with a correlation length of 1-2.5 px. The speckle is weak (about 1 % of a column peak) and the vacuum
  around a nanoparticle is exactly flat: the column finder normalises the local contrast, so any stronger texture
  in a thin or empty region would show as columns in the noise-free truth itself.
* **Lattices** (``kind``): ``"square"``; ``"hex"`` (triangular net); ``"honeycomb"`` (MoS2-like: two sublattices,
  the second at 0.3-0.5 of the first's height); ``"dumbbell"`` (Si [110]-like: a centred rectangular cell, edges
  ``2 P / sqrt(3)`` and ``sqrt(2)`` times that, with a pair of equal columns 0.43-0.46 ``P`` apart at every lattice
  point); ``"perovskite"`` (square cell, a weak B column of 0.35-0.45 of the A height at the cell centre);
  ``"nanoparticle"`` (a square or hexagonal crystal only inside an irregular blob, thicker in the middle, with
  vacuum around it). Every lattice has a random orientation and origin.
* **Specimen**: about 3 % vacancies, 5 % heavier (x1.45) and 5 % lighter (x0.65) columns, one or two dents
  (25-45 % thinner regions with irregular outlines and smooth rims, where column heights and the thickness
  background fall together). For the nanoparticle every lattice site in the vacuum that lies inside the image is a
  vacancy site of the column truth, so that a column painted into the vacuum near the particle counts as a filled
  vacancy (and any column painted into the vacuum as an invented one).

Units: positions in pixels, ``(row, col)``, pixel centres at integer coordinates. ``period_px`` ``P`` is the
nearest-neighbour distance of the lattice points, what a lattice measurement reports: the cell edge for square and
perovskite, the hexagonal lattice constant for hex, honeycomb and the nanoparticle, the distance between
neighbouring dumbbell centres for dumbbell. ``dose`` is the expected number of detected
electrons (counts) at the peak of an isolated column of the strongest sublattice at nominal thickness, above the
background. Images are in detector units: ``truth = offset + gain * expected_counts`` and
``noisy = offset + gain * Poisson(expected_counts) + Normal(0, read_sigma)``; ``gain`` in units per count,
``offset`` and ``read_sigma`` in detector units. The benchmark hands the methods neither gain nor offset (as with
real frames): filters that need a noise model estimate it from the image.

Everything is deterministic for a given ``(kind, dose, size, period_px, seed)``.

At the smallest periods (6-8 px) the finder cannot separate the partners of a dumbbell, nor always a weak
honeycomb column from its neighbours, even in the noise-free truth; such columns are left out of the scoring and
counted in ``Case.hidden_columns``, as for the main set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.special import j1

from stem_denoise.common.errors import ConfigError

INDEPENDENT_KINDS = ("square", "hex", "honeycomb", "dumbbell", "perovskite", "nanoparticle")
PROBES = ("aberrated", "astigmatic", "airy")
DEFAULT_DOSES = (2.0, 5.0, 10.0, 20.0)
DEFAULT_SIZE = 256
QUICK_SIZE = 128
MAX_SIZE = 512
MIN_CELLS = 8  # at least this many cells across the field
PERIOD_RANGE = (6.0, 40.0)  # px, spread over the full set
QUICK_PERIOD_RANGE = (6.0, 16.0)  # px, the quick set (128 px fields)

# Periods (pm) of a real specimen of each kind, for the pixel size: SrTiO3-like square and perovskite cells, Au
# [111] nearest neighbours, MoS2, Si [110] dumbbell centres, Au [001] columns.
_PERIOD_PM = {"square": 395.0, "hex": 288.0, "honeycomb": 316.0, "dumbbell": 333.0, "perovskite": 390.0,
              "nanoparticle_square": 204.0, "nanoparticle_hex": 288.0}

VACANCY_FRAC = 0.03
HEAVY_FRAC = 0.05
LIGHT_FRAC = 0.05
HEAVY_FACTOR = 1.45
LIGHT_FACTOR = 0.65
WIDTH_PER_WEIGHT = 0.12  # relative core widening per unit of species factor (heavy/light) above 1

_STREAMS = ("geometry", "specimen", "probe", "background", "detector", "noise")


# ------------------------------------------------------------------------------------------------ result

@dataclass
class IndependentImage:
    """One micrograph of the independent simulator (module docstring for the model and units).

    ``noisy``/``truth``: float32 (H, W) in detector units. ``expected_counts``: float64 (H, W), the noise-free
    image in counts (before gain and offset). ``columns``: (N, 2) present columns inside the image; ``vacancies``:
    (M, 2) empty lattice sites inside the image (for the nanoparticle: including every site in the vacuum);
    ``heavy``/``light``/``weak``: index arrays into ``columns`` (``weak``: the weaker sublattice of honeycomb and
    perovskite); ``column_height``: (N,) expected peak height of each column above the background, in counts;
    ``thickness``: (H, W) relative specimen thickness (1 nominal; 0 in the vacuum of a nanoparticle);
    ``period_px``: nearest-neighbour distance of the lattice points (px); ``pixel_size_pm``: from a real
    specimen's period; ``params``: JSON-able record of every choice made (probe, specimen, background, detector).
    """

    noisy: np.ndarray
    truth: np.ndarray
    expected_counts: np.ndarray
    columns: np.ndarray
    vacancies: np.ndarray
    heavy: np.ndarray
    light: np.ndarray
    weak: np.ndarray
    column_height: np.ndarray
    thickness: np.ndarray
    period_px: float
    pixel_size_pm: float
    params: dict = field(default_factory=dict)

    @property
    def gain(self) -> float:
        return float(self.params["detector"]["gain"])

    @property
    def offset(self) -> float:
        return float(self.params["detector"]["offset"])

    @property
    def read_sigma(self) -> float:
        return float(self.params["detector"]["read_sigma"])


# ------------------------------------------------------------------------------------------------ geometry

def _direction(angle_deg: float) -> np.ndarray:
    """(row, col) unit vector at ``angle_deg``, counter-clockwise as displayed from +x."""
    t = math.radians(angle_deg)
    return np.array([-math.sin(t), math.cos(t)])


def _cell(lattice: str, period: float, angle: float, rng: np.random.Generator):
    """Basis ``(a1, a2)`` (row, col) px and motif: a list of ``(offset_px (2,), weight, sublattice)``."""
    a1 = period * _direction(angle)
    if lattice == "square":
        a2 = period * _direction(angle + 90.0)
        motif = [(np.zeros(2), 1.0, 0)]
        return a1, a2, motif, {}
    if lattice == "hex":
        a2 = period * _direction(angle + 60.0)
        return a1, a2, [(np.zeros(2), 1.0, 0)], {}
    if lattice == "honeycomb":
        a2 = period * _direction(angle + 60.0)
        ratio = float(rng.uniform(0.3, 0.5))
        motif = [(np.zeros(2), 1.0, 0), ((a1 + a2) / 3.0, ratio, 1)]
        return a1, a2, motif, {"weak_ratio": ratio}
    if lattice == "perovskite":
        a2 = period * _direction(angle + 90.0)
        ratio = float(rng.uniform(0.35, 0.45))
        motif = [(np.zeros(2), 1.0, 0), ((a1 + a2) / 2.0, ratio, 1)]
        return a1, a2, motif, {"weak_ratio": ratio}
    if lattice == "dumbbell":
        # centred rectangular cell a x sqrt(2) a with a = 2 P / sqrt(3), so that P is the nearest distance
        # between dumbbell centres (what a lattice measurement reports)
        a1 = a1 * (2.0 / math.sqrt(3.0))
        a2 = math.sqrt(2.0) * float(np.hypot(*a1)) * _direction(angle + 90.0)
        sep = float(rng.uniform(0.43, 0.46)) * period
        half = 0.5 * sep * _direction(angle + 90.0)
        centre = (a1 + a2) / 2.0
        motif = [(-half, 1.0, 0), (half, 1.0, 0), (centre - half, 1.0, 0), (centre + half, 1.0, 0)]
        return a1, a2, motif, {"dumbbell_sep_px": sep}
    raise ConfigError(f"unknown lattice {lattice!r}")


def _sites(a1, a2, motif, origin, shape, margin: float):
    """All motif sites whose position lies within ``margin`` px of the image; returns positions, weights,
    sublattice ids."""
    h, w = shape
    corners = np.array([[-margin, -margin], [-margin, w + margin], [h + margin, -margin], [h + margin, w + margin]])
    inv = np.linalg.inv(np.stack([a1, a2], axis=1))  # (row, col) -> fractional (i, j)
    frac = (corners - origin) @ inv.T
    lo = np.floor(frac.min(axis=0)) - 2
    hi = np.ceil(frac.max(axis=0)) + 2
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    base = origin + ii.reshape(-1, 1) * a1 + jj.reshape(-1, 1) * a2
    pos, weight, sub = [], [], []
    for off, wgt, s in motif:
        p = base + off
        keep = ((p[:, 0] >= -margin) & (p[:, 0] <= h - 1 + margin)
                & (p[:, 1] >= -margin) & (p[:, 1] <= w - 1 + margin))
        pos.append(p[keep])
        weight.append(np.full(int(keep.sum()), wgt))
        sub.append(np.full(int(keep.sum()), s, dtype=np.int64))
    return np.concatenate(pos), np.concatenate(weight), np.concatenate(sub)


def _inside(points: np.ndarray, shape) -> np.ndarray:
    h, w = shape
    return (points[:, 0] >= -0.5) & (points[:, 0] <= h - 0.5) & (points[:, 1] >= -0.5) & (points[:, 1] <= w - 0.5)


# ------------------------------------------------------------------------------------------------ specimen

def _blob_radius(theta: np.ndarray, radius: float, harmonics: Sequence[tuple[int, float, float]]) -> np.ndarray:
    """Radius (px) of an irregular blob at polar angle ``theta``: ``radius * (1 + sum a_k cos(k theta + phi_k))``."""
    r = np.ones_like(theta)
    for k, amp, phase in harmonics:
        r = r + amp * np.cos(k * theta + phase)
    return radius * r


def _random_blob(rng: np.random.Generator, centre, radius: float, n_harm: int, max_amp: float) -> dict:
    harmonics = [(int(k), float(rng.uniform(0.3, 1.0) * max_amp), float(rng.uniform(0, 2 * math.pi)))
                 for k in range(2, 2 + n_harm)]
    return {"centre": [float(centre[0]), float(centre[1])], "radius_px": float(radius), "harmonics": harmonics}


def _blob_coords(blob: dict, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from the blob centre and the blob's radius in that direction (px)."""
    dy = y - blob["centre"][0]
    dx = x - blob["centre"][1]
    r = np.hypot(dy, dx)
    return r, _blob_radius(np.arctan2(dy, dx), blob["radius_px"], blob["harmonics"])


def _thickness(spec: dict, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Relative thickness at ``(y, x)`` px: the linear ramp times the dents (times the particle's dome)."""
    ramp = spec["ramp"]
    u = ((y - ramp["centre"][0]) * ramp["direction"][0] + (x - ramp["centre"][1]) * ramp["direction"][1])
    t = 1.0 + ramp["slope_per_px"] * u
    for dent in spec["dents"]:
        r, rad = _blob_coords(dent, y, x)
        inside = 0.5 * (1.0 - np.tanh((r - rad) / dent["rim_px"]))
        t = t * (1.0 - dent["depth"] * inside)
    particle = spec.get("particle")
    if particle is not None:
        r, rad = _blob_coords(particle, y, x)
        rel = np.clip(r / rad, 0.0, 1.0)
        dome = particle["edge_thickness"] + (1.0 - particle["edge_thickness"]) * np.sqrt(1.0 - rel * rel)
        t = t * dome
    return np.maximum(t, 0.05)


def _particle_mask(particle: dict, y: np.ndarray, x: np.ndarray, soft_px: float = 0.0) -> np.ndarray:
    """1 inside the nanoparticle, 0 in the vacuum; with ``soft_px`` a smooth rim ``2 * soft_px`` wide, exactly 0
    beyond it (the vacuum must be exactly flat: the column finder normalises the local contrast)."""
    r, rad = _blob_coords(particle, y, x)
    if soft_px <= 0:
        return (r < rad).astype(np.float64)
    t = np.clip((rad + soft_px - r) / (2.0 * soft_px), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)  # smoothstep from 1 at rad - soft_px to exactly 0 at rad + soft_px


# ------------------------------------------------------------------------------------------------ probes

def _airy_sigma_x(eps: float) -> float:
    """The argument ``x`` at which the obstructed-aperture Airy intensity falls to exp(-1/2) of its peak."""
    xs = np.linspace(1e-4, 3.0, 30001)
    prof = _airy(xs, eps)
    return float(xs[np.argmax(prof < math.exp(-0.5))])


def _airy(x: np.ndarray, eps: float) -> np.ndarray:
    """Intensity (peak 1) of the far field of a round aperture with a central obstruction of ``eps`` radii."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 1e-9)
    amp = 2.0 * j1(x) / x
    if eps > 0:
        ex = eps * x
        amp = amp - eps * eps * (2.0 * j1(ex) / ex)
        amp = amp / (1.0 - eps * eps)
    return amp * amp


def _random_probe(rng: np.random.Generator, period: float, kind: str, name: str | None = None) -> dict:
    """Draw a probe: its type, core sigma (px) and shape parameters."""
    name = name or PROBES[int(rng.integers(len(PROBES)))]
    frac = rng.uniform(0.06, 0.075) if kind == "dumbbell" else rng.uniform(0.075, 0.1)
    sigma = max(0.7, float(frac) * period)
    probe = {"type": name, "sigma_px": sigma}
    if name == "aberrated":
        probe.update(tail_frac=float(rng.uniform(0.12, 0.25)), tail_gamma=float(rng.uniform(2.0, 3.0)))
    elif name == "astigmatic":
        top = 1.2 if kind == "dumbbell" else 1.3  # a pair 0.42 P apart stays resolved
        probe.update(axis_ratio=float(rng.uniform(1.15, top)), axis_deg=float(rng.uniform(0, 180)),
                     tail_frac=0.05, tail_gamma=2.5)
    elif name == "airy":
        eps = float(rng.uniform(0.3, 0.45))
        probe.update(obstruction=eps, x_at_sigma=_airy_sigma_x(eps))
    else:
        raise ConfigError(f"unknown probe {name!r}; choose from {PROBES}")
    probe["support_px"] = float(max(14.0 * sigma, 6.0))
    return probe


def _probe_profile(probe: dict, dy: np.ndarray, dx: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Probe intensity (peak 1) at offsets ``(dy, dx)`` px from a column whose core is ``scale`` times the nominal
    width, smoothly cut off at the probe's support radius."""
    s = probe["sigma_px"] * scale
    r2 = (dy * dy + dx * dx) / (s * s)  # in core sigmas
    name = probe["type"]
    if name == "airy":
        prof = _airy(np.sqrt(r2) * probe["x_at_sigma"], probe["obstruction"])
    else:
        if name == "astigmatic":
            t = math.radians(probe["axis_deg"])
            u = (-math.sin(t) * dy + math.cos(t) * dx) / s
            v = (math.cos(t) * dy + math.sin(t) * dx) / s
            q = math.sqrt(probe["axis_ratio"])
            core = np.exp(-0.5 * ((u / q) ** 2 + (v * q) ** 2))
        else:
            core = np.exp(-0.5 * r2)
        tf = probe["tail_frac"]
        tail = (1.0 + r2 / probe["tail_gamma"] ** 2) ** -1.5
        prof = (1.0 - tf) * core + tf * tail
    r = np.sqrt(dy * dy + dx * dx)
    cut = probe["support_px"]
    taper = np.clip((cut - r) / (0.4 * cut), 0.0, 1.0)
    return prof * taper * taper * (3.0 - 2.0 * taper)  # smoothstep to zero at the support radius


def _render_columns(shape, pos: np.ndarray, heights: np.ndarray, scales: np.ndarray, probe: dict,
                    chunk_values: int = 2_000_000) -> np.ndarray:
    """Sum of probe-shaped column peaks (heights in counts) on an (H, W) grid; float64."""
    h, w = shape
    out = np.zeros(h * w, dtype=np.float64)
    if len(pos) == 0:
        return out.reshape(h, w)
    rad = int(math.ceil(probe["support_px"]))
    oy, ox = np.mgrid[-rad:rad + 1, -rad:rad + 1]
    oy = oy.ravel()
    ox = ox.ravel()
    per = max(1, chunk_values // len(oy))
    for start in range(0, len(pos), per):
        p = pos[start:start + per]
        cy = np.rint(p[:, 0]).astype(np.int64)
        cx = np.rint(p[:, 1]).astype(np.int64)
        yy = cy[:, None] + oy[None, :]
        xx = cx[:, None] + ox[None, :]
        dy = yy - p[:, 0:1]
        dx = xx - p[:, 1:2]
        vals = heights[start:start + per, None] * _probe_profile(probe, dy, dx, scales[start:start + per, None])
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        out += np.bincount((yy[ok] * w + xx[ok]), weights=vals[ok], minlength=h * w)
    return out.reshape(h, w)


# ------------------------------------------------------------------------------------------------ simulator

def resolved_size(size: int, period_px: float) -> int:
    """Field side (px): ``size``, raised so that at least 8 x 8 cells fit, at most 512."""
    return int(min(MAX_SIZE, max(int(size), int(math.ceil(MIN_CELLS * float(period_px))))))


def _check(kind: str, dose: float, size: int, period_px: float | None) -> None:
    if kind not in INDEPENDENT_KINDS:
        raise ConfigError(f"unknown independent kind {kind!r}; choose from {', '.join(INDEPENDENT_KINDS)}")
    if not (isinstance(dose, (int, float, np.floating, np.integer)) and math.isfinite(dose) and dose > 0):
        raise ConfigError(f"dose must be a positive number of counts, got {dose!r}")
    if not 32 <= int(size) <= MAX_SIZE:
        raise ConfigError(f"size must be between 32 and {MAX_SIZE} px, got {size}")
    if period_px is not None and not (math.isfinite(period_px) and 4.0 <= period_px <= 64.0):
        raise ConfigError(f"period_px must be between 4 and 64 px, got {period_px}")


def render_independent(kind: str, dose: float, *, size: int = DEFAULT_SIZE, period_px: float | None = None,
                       seed: int = 0) -> IndependentImage:
    """Simulate one micrograph of the independent set (module docstring for the model and units).

    ``kind``: one of :data:`INDEPENDENT_KINDS`; ``dose``: counts at a nominal column peak; ``size``: field side in
    px (raised to fit 8 x 8 cells, at most 512); ``period_px``: primary lattice period (drawn log-uniformly in
    6-40 px when None). Deterministic for the arguments.
    """
    _check(kind, dose, size, period_px)
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, INDEPENDENT_KINDS.index(kind), 0x1D])
    rng = dict(zip(_STREAMS, (np.random.default_rng(s) for s in ss.spawn(len(_STREAMS)))))
    g = rng["geometry"]
    period = float(period_px) if period_px is not None else float(
        math.exp(g.uniform(math.log(PERIOD_RANGE[0]), math.log(PERIOD_RANGE[1]))))
    n = resolved_size(size, period)
    shape = (n, n)
    angle = float(g.uniform(0.0, 180.0))

    lattice = kind
    if kind == "nanoparticle":
        lattice = ("square", "hex")[int(g.integers(2))]
    a1, a2, motif, cell_info = _cell(lattice, period, angle, g)
    origin = np.array([n / 2.0, n / 2.0]) + g.random() * a1 + g.random() * a2

    probe = _random_probe(rng["probe"], period, kind)
    pos, base_w, sub = _sites(a1, a2, motif, origin, shape, margin=probe["support_px"])

    # specimen: defects, ramp, dents, particle
    sp = rng["specimen"]
    u = sp.random(len(pos))
    vac = u < VACANCY_FRAC
    heavy = (u >= VACANCY_FRAC) & (u < VACANCY_FRAC + HEAVY_FRAC)
    light = (u >= VACANCY_FRAC + HEAVY_FRAC) & (u < VACANCY_FRAC + HEAVY_FRAC + LIGHT_FRAC)
    weight = base_w * np.where(heavy, HEAVY_FACTOR, 1.0) * np.where(light, LIGHT_FACTOR, 1.0)  # relative height

    ramp_dir = _direction(float(sp.uniform(0, 360)))
    ramp_amp = float(sp.uniform(0.1, 0.25))  # thickness change from the centre to the edge of the field
    spec = {"ramp": {"centre": [n / 2.0, n / 2.0], "direction": [float(ramp_dir[0]), float(ramp_dir[1])],
                     "slope_per_px": ramp_amp / (n / 2.0)}, "dents": []}
    particle = None
    if kind == "nanoparticle":
        centre = np.array([n / 2.0, n / 2.0]) + sp.uniform(-0.06, 0.06, size=2) * n
        particle = _random_blob(sp, centre, float(sp.uniform(0.28, 0.34)) * n, 4, 0.09)
        particle["edge_thickness"] = float(sp.uniform(0.45, 0.6))
        spec["particle"] = particle
    n_dents = 1 if kind == "nanoparticle" else int(sp.integers(1, 3))
    for _ in range(n_dents):
        if particle is not None:
            c = np.asarray(particle["centre"]) + sp.uniform(-0.12, 0.12, size=2) * n
            radius = float(sp.uniform(0.08, 0.14)) * n
        else:
            c = sp.uniform(0.2, 0.8, size=2) * n
            radius = float(sp.uniform(0.12, 0.25)) * n
        dent = _random_blob(sp, c, radius, 2, 0.15)
        dent["depth"] = float(sp.uniform(0.25, 0.45))
        dent["rim_px"] = float(max(period, 0.2 * radius))
        spec["dents"].append(dent)

    present = ~vac
    if particle is not None:
        in_particle = _particle_mask(particle, pos[:, 0], pos[:, 1]) > 0.5
        present &= in_particle
    t_col = _thickness(spec, pos[present, 0], pos[present, 1])
    heights = float(dose) * weight[present] * t_col
    species = np.where(heavy, HEAVY_FACTOR, 1.0) * np.where(light, LIGHT_FACTOR, 1.0)
    scales = 1.0 + WIDTH_PER_WEIGHT * (species - 1.0)[present]
    img = _render_columns(shape, pos[present], heights, scales, probe)

    # backgrounds (counts)
    bg = rng["background"]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    thick = _thickness(spec, yy, xx)
    pedestal = float(bg.uniform(0.05, 0.15))
    diffuse = float(bg.uniform(0.05, 0.15))
    amorph = float(bg.uniform(0.06, 0.12))
    corr = float(bg.uniform(1.0, 2.5))
    field_ = ndimage.gaussian_filter(bg.normal(size=shape), corr, mode="wrap")
    field_ = (field_ - field_.mean()) / max(float(field_.std()), 1e-12)
    speckle = np.maximum(1.0 + 0.1 * field_, 0.0)
    if particle is not None:
        # the diffuse background and the amorphous shell fade over two periods to 0 at the outermost columns, so
        # that the edge of the particle is no step that the column finder could take for a row of columns
        inner = dict(particle, radius_px=particle["radius_px"] - 1.5 * period)
        soft = _particle_mask(inner, yy, xx, soft_px=period)
        thick = thick * soft
        speckle = speckle * soft  # an amorphous shell on the particle; the vacuum holds only the pedestal
    img += float(dose) * (pedestal + diffuse * thick + amorph * speckle)
    lam = np.maximum(img, 0.0)

    # detector
    det = rng["detector"]
    gain = float(math.exp(det.uniform(math.log(0.5), math.log(4.0))))
    offset = float(det.uniform(5.0, 40.0)) * gain
    read_sigma = float(det.uniform(0.3, 1.0)) * gain
    nr = rng["noise"]
    truth = offset + gain * lam
    noisy = offset + gain * nr.poisson(lam).astype(np.float64) + nr.normal(0.0, read_sigma, size=shape)

    # bookkeeping
    cols_all = pos[present]
    keep = _inside(cols_all, shape)
    columns = cols_all[keep]
    idx_present = np.flatnonzero(present)[keep]
    heavy_idx = np.flatnonzero(heavy[idx_present])
    light_idx = np.flatnonzero(light[idx_present])
    weak_idx = np.flatnonzero(sub[idx_present] == 1) if lattice in ("honeycomb", "perovskite") else \
        np.zeros(0, dtype=np.int64)
    empty = ~present
    vacancies = pos[empty][_inside(pos[empty], shape)]
    phys = _PERIOD_PM[f"nanoparticle_{lattice}" if kind == "nanoparticle" else kind]
    params = {
        "kind": kind, "lattice": lattice, "dose": float(dose), "size": n, "period_px": period, "angle_deg": angle,
        "origin": [float(origin[0]), float(origin[1])], "seed": int(seed), "cell": cell_info, "probe": probe,
        "specimen": {"vacancy_frac": VACANCY_FRAC, "heavy_frac": HEAVY_FRAC, "light_frac": LIGHT_FRAC,
                     "heavy_factor": HEAVY_FACTOR, "light_factor": LIGHT_FACTOR, **spec},
        "background": {"pedestal": pedestal, "diffuse": diffuse, "amorphous": amorph, "speckle_corr_px": corr},
        "detector": {"gain": gain, "offset": offset, "read_sigma": read_sigma},
        "pixel_size_pm": phys / period,
    }
    return IndependentImage(
        noisy=noisy.astype(np.float32), truth=truth.astype(np.float32), expected_counts=lam,
        columns=columns.astype(np.float64), vacancies=vacancies.astype(np.float64),
        heavy=heavy_idx.astype(np.int64), light=light_idx.astype(np.int64), weak=weak_idx.astype(np.int64),
        column_height=heights[keep].astype(np.float64), thickness=thick.astype(np.float32), period_px=period,
        pixel_size_pm=phys / period, params=params)


# ------------------------------------------------------------------------------------------------ cases

@dataclass
class IndependentSpec:
    """Parameters of one case of the independent set (arguments of :func:`independent_case`)."""

    name: str
    kind: str
    dose: float
    size: int
    period_px: float
    seed: int = 0


def case_name(kind: str, dose: float, period_px: float) -> str:
    """``ind_<kind>_d<dose>_p<period>``, e.g. ``ind_honeycomb_d5_p9.5`` (a decimal point in the dose is ``p``)."""
    dose_text = f"{float(dose):g}".replace(".", "p")
    return f"ind_{kind}_d{dose_text}_p{round(float(period_px), 1):g}"


def independent_case(kind: str, dose: float, *, size: int = DEFAULT_SIZE, period_px: float | None = None,
                     seed: int = 0):
    """One case of the independent set as an :class:`stem_denoise.evaluation.benchmark.Case` tagged
    ``source="independent"``.

    The column truth is restricted to the columns the finder sees in the noise-free truth (as for the main set,
    :func:`stem_denoise.evaluation.metrics.visible_columns`); ``hidden_columns`` counts the others. Gain and read noise
    are not handed on (``None``): the detector has an offset the methods are not told, so they estimate the noise model.
    """
    from stem_denoise.evaluation.benchmark import Case
    from stem_denoise.evaluation.metrics import ColumnTruth, visible_columns

    img = render_independent(kind, dose, size=size, period_px=period_px, seed=seed)
    cols = ColumnTruth(img.columns, img.vacancies, img.period_px, img.pixel_size_pm, img.heavy, img.light)
    cols, hidden = visible_columns(img.truth, cols)
    return Case(name=case_name(kind, dose, img.period_px), noisy=img.noisy, truth=img.truth,
                period_px=img.period_px, columns=cols, dose=float(dose), lattice=kind,
                pixel_size_pm=img.pixel_size_pm, gain=None, read_sigma=None, source="independent",
                vacancies_known=True, hidden_columns=hidden)


def case_from_spec(spec: IndependentSpec):
    """:func:`independent_case` of one :class:`IndependentSpec`."""
    return independent_case(spec.kind, spec.dose, size=spec.size, period_px=spec.period_px, seed=spec.seed)


def independent_specs(*, quick: bool = False, doses: Sequence[float] = DEFAULT_DOSES, seed: int = 0,
                      kinds: Sequence[str] | None = None, size: int | None = None) -> list[IndependentSpec]:
    """Every kind at every dose. Periods are log-spaced over 6-40 px (``quick``: 6-16 px on 128 px fields; default
    256 px, raised where a period needs more room for 8 x 8 cells) and dealt out so that every kind and every dose
    meets small and large periods. ``kinds``/``size`` restrict the kinds / set the field side."""
    kinds = tuple(kinds) if kinds else INDEPENDENT_KINDS
    bad = [k for k in kinds if k not in INDEPENDENT_KINDS]
    if bad:
        raise ConfigError(f"unknown independent kind(s) {bad}; choose from {', '.join(INDEPENDENT_KINDS)}")
    doses = tuple(float(d) for d in doses)
    if not doses or any(not (math.isfinite(d) and d > 0) for d in doses):
        raise ConfigError(f"doses must be positive numbers, got {doses}")
    side = int(size) if size else (QUICK_SIZE if quick else DEFAULT_SIZE)
    lo, hi = QUICK_PERIOD_RANGE if quick else PERIOD_RANGE
    nk, nd = len(kinds), len(doses)
    periods = np.geomspace(lo, hi, nk * nd) if nk * nd > 1 else np.array([math.sqrt(lo * hi)])
    specs = []
    for i, kind in enumerate(kinds):
        for j, dose in enumerate(doses):
            period = round(float(periods[nk * ((i + j) % nd) + i]), 2)
            specs.append(IndependentSpec(case_name(kind, dose, period), kind, dose, resolved_size(side, period),
                                         period, seed * 1000 + i * nd + j))
    return specs


def independent_cases(*, quick: bool = False, doses: Sequence[float] = DEFAULT_DOSES, seed: int = 0,
                      kinds: Sequence[str] | None = None, size: int | None = None) -> list:
    """The cases of :func:`independent_specs`, rendered."""
    return [case_from_spec(s) for s in independent_specs(quick=quick, doses=doses, seed=seed, kinds=kinds,
                                                         size=size)]
