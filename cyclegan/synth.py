"""Clean synthetic lattice scenes at the micrograph's own scale: the clean domain of the shipped default model.

A microscopist's micrographs may show any crystal at any zoom, so the default model is trained on clean scenes
drawn from a wide family rather than on one lattice: square, rectangular, hexagonal (triangular net),
perovskite-like (a weaker B site), 2-D honeycomb with two unequal sublattices (MoS2-like), dumbbells (pairs of
columns 0.3-0.45 period apart, as Si or GaAs [110]) and random motifs of 2-4 sites with random heights, so that
weak sublattices and close pairs are *signal* the network must keep, not noise; column shapes vary (Gaussian core
with or without Lorentzian-like tails, slightly elliptical); vacancies, heavier and lighter columns, static
displacements; dents (thinner regions that scale the columns and the diffuse background), slow additive
backgrounds, a faint amorphous texture, and vacuum regions (no column at all, only background) so that the network
learns to leave empty areas empty.

Every scene is rendered at a *native* lattice period ``period_px`` drawn log-uniformly from a range (default 6-40
px), the scale at which the detector adds its noise; :mod:`cyclegan.pairs` then adds the noise there and resamples
both the clean and the noisy crop to the model's scale with the same resampler inference uses. ``period_px`` is the
period the lattice measurement would report (the cell edge; for a honeycomb or dumbbell lattice the Bravais
period, so the columns themselves sit closer).

Intensities: the strongest column of a nominal cell peaks at 1 above the background floor (before dents), so
``counts = dose * scene`` gives a scene at a dose of ``dose`` counts per column peak. Rendering is plain numpy
(stamps accumulated with ``np.bincount``), deterministic for a seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

KINDS = ("square", "rect", "hex", "perovskite", "honeycomb", "dumbbell", "motif")
WORKING_SCALES = ("cell", "sites")  # which length maps to the model's period: the lattice cell's, or the columns'
SITE_FACTOR_MIN = 0.7  # the "sites" working scale magnifies a cell by at most 1 / this
SITE_MIN_HEIGHT = 0.15  # sites weaker than this (relative to the strongest) do not set the nearest column spacing
KIND_WEIGHTS = (0.14, 0.1, 0.16, 0.16, 0.16, 0.14, 0.14)


@dataclass(frozen=True)
class Scene:
    """A clean rendered scene: ``image`` (H, W) float32 in column-peak units, its native ``period_px``, ``kind``;
    ``site_factor``: the nearest column spacing over the period as the "sites" working scale measures it
    (:func:`site_factor`; 1 for a one-site cell)."""

    image: np.ndarray
    period_px: float
    kind: str
    site_factor: float = 1.0


def _rot(angle_deg: float) -> np.ndarray:
    t = math.radians(angle_deg)
    return np.array([-math.sin(t), math.cos(t)])  # (row, col) direction of angle t, rows pointing down


def _basis_and_motif(kind: str, p: float, rng: np.random.Generator):
    """Lattice vectors a1, a2 (row, col px) and motif [(f1, f2, height, sigma_factor)] for a scene kind."""
    ang = rng.uniform(0, 360)
    a1 = p * _rot(ang)
    if kind == "square":
        a2 = p * _rot(ang + 90)
        motif = [(0, 0, 1.0)]
    elif kind == "rect":
        a2 = p * rng.uniform(1.2, 1.7) * _rot(ang + 90)
        motif = [(0, 0, 1.0)]
    elif kind == "hex":
        a2 = p * _rot(ang + 60)
        motif = [(0, 0, 1.0)]
    elif kind == "perovskite":
        a2 = p * _rot(ang + 90)
        motif = [(0, 0, 1.0), (0.5, 0.5, rng.uniform(0.15, 0.6))]
        if rng.random() < 0.4:  # O / Ti-O columns on the cell edges, weaker still
            o = rng.uniform(0.08, 0.3)
            motif += [(0.5, 0, o), (0, 0.5, o)]
    elif kind == "honeycomb":
        a2 = p * _rot(ang + 60)
        motif = [(0, 0, 1.0), (1 / 3, 1 / 3, rng.uniform(0.2, 0.8))]
    elif kind == "dumbbell":
        a2 = p * rng.uniform(1.0, 1.5) * _rot(ang + 90)
        sep = rng.uniform(0.3, 0.45)
        d = rng.uniform(0, 180)
        # two columns of a pair, separated by sep * p along direction d (expressed in fractional coordinates)
        basis = np.stack([a1, a2], axis=1)
        off = np.linalg.solve(basis, sep * p * _rot(d)) / 2
        h2 = rng.uniform(0.6, 1.0)
        motif = [(-off[0], -off[1], 1.0), (off[0], off[1], h2)]
    else:  # random motif of 2-4 sites
        a2 = p * rng.uniform(1.0, 1.6) * _rot(ang + rng.choice([60.0, 90.0, rng.uniform(60, 120)]))
        n = int(rng.integers(2, 5))
        motif = [(0, 0, 1.0)]
        for _ in range(n - 1):
            for _try in range(20):
                f = rng.uniform(0, 1, 2)
                pts = [np.array(m[:2]) for m in motif]
                # keep sites at least 0.28 period apart (periodic distance in px)
                ok = True
                for q in pts:
                    dfrac = (f - q + 0.5) % 1.0 - 0.5
                    if np.linalg.norm(dfrac[0] * a1 + dfrac[1] * a2) < 0.28 * p:
                        ok = False
                        break
                if ok:
                    motif.append((float(f[0]), float(f[1]), float(rng.uniform(0.15, 1.0))))
                    break
    return a1, a2, motif


def _nearest_spacing(a1, a2, motif) -> float:
    pts = []
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            for f1, f2, _h in motif:
                pts.append((i + f1) * a1 + (j + f2) * a2)
    pts = np.array(pts)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    d[d < 1e-9] = np.inf
    return float(d.min())


def clipped_site_factor(spacing_px: float, period_px: float) -> float:
    """The "sites" working-scale factor from a nearest column spacing: ``spacing / period`` clipped to
    ``[SITE_FACTOR_MIN, 1]`` (one rule for training scenes and for micrographs at inference)."""
    return float(min(1.0, max(SITE_FACTOR_MIN, float(spacing_px) / float(period_px))))


def site_factor(a1, a2, motif, period_px: float) -> float:
    """The "sites" working-scale factor of a cell, the rule :func:`cyclegan.infer.site_spacing_factor` applies to a
    micrograph's cell average: the nearest spacing between motif sites at least :data:`SITE_MIN_HEIGHT` of the
    strongest, over the period (:func:`clipped_site_factor`)."""
    top = max(float(m[2]) for m in motif)
    strong = [m for m in motif if float(m[2]) >= SITE_MIN_HEIGHT * top]
    return clipped_site_factor(_nearest_spacing(a1, a2, strong), period_px)


def _sites(shape, a1, a2, motif, origin, pad):
    h, w = shape
    basis = np.stack([a1, a2], axis=1)
    inv = np.linalg.inv(basis)
    corners = np.array([[-pad, -pad], [-pad, w + pad], [h + pad, -pad], [h + pad, w + pad]], float) - origin
    mn = corners @ inv.T
    m0, n0 = np.floor(mn.min(0)).astype(int) - 1
    m1, n1 = np.ceil(mn.max(0)).astype(int) + 1
    mm, nn = np.meshgrid(np.arange(m0, m1 + 1), np.arange(n0, n1 + 1), indexing="ij")
    mm, nn = mm.ravel().astype(float), nn.ravel().astype(float)
    pos, hgt, sid = [], [], []
    for k, (f1, f2, ht) in enumerate(motif):
        q = origin + np.outer(mm + f1, a1) + np.outer(nn + f2, a2)
        keep = (q[:, 0] > -pad) & (q[:, 0] < h + pad) & (q[:, 1] > -pad) & (q[:, 1] < w + pad)
        pos.append(q[keep])
        hgt.append(np.full(int(keep.sum()), ht))
        sid.append(np.full(int(keep.sum()), k))
    return np.concatenate(pos), np.concatenate(hgt), np.concatenate(sid)


def _profile(dy, dx, sigma, tail, tail_frac, ellip, ell_angle):
    c, s = math.cos(ell_angle), math.sin(ell_angle)
    u = c * dy + s * dx
    v = (-s * dy + c * dx) * ellip
    r2 = u * u + v * v
    val = (1 - tail_frac) * np.exp(-r2 / (2 * sigma * sigma))
    if tail_frac > 0:
        val = val + tail_frac / (1.0 + r2 / (tail * tail)) ** 1.5
    return val


def _stamp(shape, pos, amp, sigma, tail, tail_frac, ellip, ell_angle) -> np.ndarray:
    """Sum of column stamps: (1 - tail_frac) * elliptical Gaussian + tail_frac * Lorentzian-like tail.

    Small probes are stamped exactly at each sub-pixel position; wide ones (radius > 10 px, where a bilinear
    splat is far below the probe's own width) are splatted onto the grid and convolved with the probe by FFT.
    """
    h, w = shape
    R = int(math.ceil(max(4.0 * sigma * max(1.0, 1.0 / ellip), tail * 3.0 if tail_frac > 0 else 0))) + 1
    if R > 10 and len(pos) > 0:
        from scipy.signal import fftconvolve

        grid = np.zeros((h + 2 * R, w + 2 * R))
        y, x = pos[:, 0] + R, pos[:, 1] + R
        y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
        fy, fx = y - y0, x - x0
        for oy, ox, wt in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx),
                           (1, 1, fy * fx)):
            yy, xx = y0 + oy, x0 + ox
            ok = (yy >= 0) & (yy < grid.shape[0]) & (xx >= 0) & (xx < grid.shape[1])
            np.add.at(grid, (yy[ok], xx[ok]), (amp * wt)[ok])
        o = np.arange(-R, R + 1, dtype=float)
        kern = _profile(o[:, None], o[None, :], sigma, tail, tail_frac, ellip, ell_angle)
        return fftconvolve(grid, kern, mode="same")[R:R + h, R:R + w]
    offs = np.arange(-R, R + 1)
    img = np.zeros(h * w)
    for k in range(0, len(pos), 4096):
        y, x, a = pos[k:k + 4096, 0], pos[k:k + 4096, 1], amp[k:k + 4096]
        rows = np.round(y).astype(np.int64)[:, None, None] + offs[None, :, None]
        cols = np.round(x).astype(np.int64)[:, None, None] + offs[None, None, :]
        val = _profile(rows - y[:, None, None], cols - x[:, None, None], sigma, tail, tail_frac, ellip, ell_angle)
        val = val * a[:, None, None]
        ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        img += np.bincount((rows * w + cols)[np.broadcast_to(ok, val.shape)],
                           weights=val[np.broadcast_to(ok, val.shape)], minlength=h * w)
    return img.reshape(h, w)


def _smooth_field(shape, rng, scale_px: float) -> np.ndarray:
    """A random smooth field in about [-1, 1] with correlation length ``scale_px`` (white noise blurred on a grid
    coarsened to about scale/2 px, then interpolated back: cheap for long correlation lengths)."""
    h, w = shape
    step = max(1, int(scale_px // 2))
    gh, gw = -(-h // step) + 4, -(-w // step) + 4
    f = ndimage.gaussian_filter(rng.normal(size=(gh, gw)), scale_px / step, mode="wrap")
    yy = (np.arange(h) + 0.5) / step + 1.5
    xx = (np.arange(w) + 0.5) / step + 1.5
    f = ndimage.map_coordinates(f, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="wrap")
    return f / (np.abs(f).max() + 1e-12)


SIMPLE_KINDS = ("square", "rect", "hex")
BROAD_SHARE = 0.6  # share of the "broad" family's multi-site scenes whose weak sites are broader
BROAD_WIDTH = (1.3, 2.2)  # their width over the strong sites' width
BROAD_BELOW = 0.7  # "weak": below this fraction of the strongest site
GLOW_SHARE = 0.5  # share of the "rich" family's scenes with a structured background of glows and dips
GLOW_COUNT = (1, 3)  # glows / dips per cell
GLOW_HEIGHT = (-0.25, 0.3)  # their peak height (negative: a dip), relative to the strongest column
GLOW_WIDTH = (1.5, 3.0)  # their width over the columns' probe width


def site_widths(motif, rng: np.random.Generator, family: str = "full") -> np.ndarray:
    """Width factor of each motif site's probe (1: the scene's own width). Only ``family="broad"`` draws anything:
    in :data:`BROAD_SHARE` of its multi-site scenes every site below :data:`BROAD_BELOW` of the strongest is
    :data:`BROAD_WIDTH` times broader (its own factor)."""
    widths = np.ones(len(motif))
    if family not in ("broad", "rich") or len(motif) < 2:
        return widths
    heights = np.array([float(m[2]) for m in motif])
    broad = rng.random() < BROAD_SHARE
    factors = rng.uniform(*BROAD_WIDTH, len(motif))
    return np.where(broad & (heights < BROAD_BELOW * heights.max()), factors, widths)


def _glows(shape, rng: np.random.Generator, a1, a2, origin, sigma: float) -> np.ndarray:
    """A periodic layer of :data:`GLOW_COUNT` diffuse glows or dips per cell (the "rich" family's structured
    background), round Gaussians of :data:`GLOW_WIDTH` times ``sigma`` and peaks in :data:`GLOW_HEIGHT`."""
    n = int(rng.integers(GLOW_COUNT[0], GLOW_COUNT[1] + 1))
    motif = [(float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), float(rng.uniform(*GLOW_HEIGHT))) for _ in range(n)]
    width = sigma * rng.uniform(*GLOW_WIDTH)
    pos, hgt, _ = _sites(shape, a1, a2, motif, origin, pad=4 * width)
    return _stamp(shape, pos, hgt, width, width, 0.0, 1.0, 0.0)


def render_scene(rng: np.random.Generator, period_px: float, size: int, kind: str | None = None, *,
                 family: str = "full", vacancy_max: float = 0.05) -> Scene:
    """Render one clean scene of ``size`` x ``size`` px at native period ``period_px`` (see the module docstring).

    ``vacancy_max``: each scene's share of vacant sites is drawn uniformly from [0, vacancy_max].

    ``family="simple"`` (an ablation: what a prior learned from one kind of round, equal column looks like) draws
    only one-site square, rectangular and hexagonal lattices with round Gaussian probes and equal columns.
    ``family="broad"``: the full family, where in 60 % of the scenes the weak motif sites (below 0.7 of the
    strongest) are broader than the strong ones (their width times 1.3-2.2: light columns that show as low, diffuse
    glows, as DyScO3's do); "full" draws exactly what it drew before this option existed. ``family="rich"``: the
    broad family, and in half of its scenes a structured background: 1-3 diffuse glows or dips per cell (1.5-3 times
    the probe width, peak -0.25..0.3 of the strongest column, at random places in the cell, periodic like the
    lattice, scaled by the thickness, absent in vacuum), so that faint broad features between the columns, dark
    holes below the diffuse background included, are signal to keep, not noise to flatten (the broad family draws
    the same scenes as before this option existed).
    """
    p = float(period_px)
    simple = family == "simple"
    if kind is None:
        if simple:
            kind = str(rng.choice(SIMPLE_KINDS))
        else:
            kind = str(rng.choice(KINDS, p=np.array(KIND_WEIGHTS) / sum(KIND_WEIGHTS)))
    shape = (int(size), int(size))
    a1, a2, motif = _basis_and_motif(kind, p, rng)
    near = _nearest_spacing(a1, a2, motif)
    factor = site_factor(a1, a2, motif, p)
    sigma = max(0.5, rng.uniform(0.07, 0.42) * near)
    ellip = 1.0 if (simple or rng.random() < 0.6) else rng.uniform(0.75, 1.0)
    tail_frac = 0.0 if (simple or rng.random() < 0.5) else rng.uniform(0.05, 0.25)
    tail = sigma * rng.uniform(1.5, 3.0)
    origin = rng.uniform(0, 1, 2) * np.array([p, p])
    widths = site_widths(motif, rng, family)
    pos, hgt, sid = _sites(shape, a1, a2, motif, origin, pad=(4 * sigma + 3 * tail) * float(widths.max()))
    if rng.random() < 0.5:
        pos = pos + rng.normal(0, rng.uniform(0.0, 0.03) * p, pos.shape)
    # per-column variation: vacancies, heavier/lighter columns, small random spread
    u = rng.random(len(pos))
    vac = u < rng.uniform(0.0, vacancy_max)
    if not simple:
        hgt = hgt * np.where((u > 0.9) & ~vac, rng.uniform(1.2, 1.6), 1.0)
        hgt = hgt * np.where((u > 0.85) & (u <= 0.9), rng.uniform(0.4, 0.8), 1.0)
    hgt = hgt * rng.normal(1.0, rng.uniform(0, 0.06), len(pos)).clip(0.7, 1.3)
    keep = ~vac
    pos, hgt, sid = pos[keep], hgt[keep], sid[keep]
    # thickness map: dents (thinner regions) and ramps, sampled at the columns and as a field
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    thick = np.ones(shape)
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        cy, cx = rng.uniform(-0.1, 1.1, 2) * size
        rad = rng.uniform(1.0, 5.0) * p
        depth = rng.uniform(0.1, 0.5)
        ar = rng.uniform(0.6, 1.0)
        r2 = ((yy - cy) / rad) ** 2 + ((xx - cx) / (rad * ar)) ** 2
        thick *= 1 - depth * np.exp(-0.5 * r2 * rng.uniform(1.0, 3.0))
    if rng.random() < 0.3:
        g = _rot(rng.uniform(0, 360))
        thick *= 1 + rng.uniform(-0.3, 0.3) * ((yy * g[0] + xx * g[1]) / size - 0.5)
    # vacuum region: no columns, only a low background
    vacuum = np.zeros(shape, bool)
    if rng.random() < 0.25:
        if rng.random() < 0.5:  # a half-plane with a rough edge
            g = _rot(rng.uniform(0, 360))
            d = (yy - size / 2) * g[0] + (xx - size / 2) * g[1] - rng.uniform(-0.3, 0.3) * size
            d = d + _smooth_field(shape, rng, max(2.0, p)) * p
            vacuum = d > 0
        else:  # a particle: lattice inside an irregular blob, vacuum around
            r = np.hypot(yy - size / 2, xx - size / 2)
            edge = rng.uniform(0.25, 0.45) * size + _smooth_field(shape, rng, max(2.0, p)) * p
            vacuum = r > edge
    if vacuum.any():
        iy = np.clip(np.round(pos[:, 0]).astype(int), 0, shape[0] - 1)
        ix = np.clip(np.round(pos[:, 1]).astype(int), 0, shape[1] - 1)
        inside = ~vacuum[iy, ix]
        pos, hgt, sid = pos[inside], hgt[inside], sid[inside]
    iy = np.clip(np.round(pos[:, 0]).astype(int), 0, shape[0] - 1)
    ix = np.clip(np.round(pos[:, 1]).astype(int), 0, shape[1] - 1)
    amp = hgt * thick[iy, ix]
    ell_angle = rng.uniform(0, math.pi)
    if np.all(widths == 1.0):
        img = _stamp(shape, pos, amp, sigma, tail, tail_frac, ellip, ell_angle)
    else:  # sites of their own widths, stamped group by group
        img = np.zeros(shape)
        for k, wf in enumerate(widths):
            sel = sid == k
            img += _stamp(shape, pos[sel], amp[sel], sigma * wf, tail * wf, tail_frac, ellip, ell_angle)
    # normalise so that the strongest motif site of a nominal cell peaks at 1
    peak = _stamp((int(6 * sigma + 6 * tail) + 9,) * 2, np.array([[0.5 * (int(6 * sigma + 6 * tail) + 8)] * 2]),
                  np.array([1.0]), sigma, tail, tail_frac, ellip, 0.0).max()
    img /= max(peak, 1e-9)
    # diffuse background proportional to thickness (absent in vacuum), slow additive background, amorphous texture
    bg = rng.uniform(0.0, 0.35)
    specimen = np.where(vacuum, 0.0, 1.0)
    if vacuum.any():
        specimen = ndimage.gaussian_filter(specimen, max(1.0, 0.3 * p))
    img += bg * thick * specimen
    img += rng.uniform(0.0, 0.1) * (1 + _smooth_field(shape, rng, size / 3)) * 0.5
    if rng.random() < 0.3:
        img += rng.uniform(0.0, 0.06) * _smooth_field(shape, rng, rng.uniform(1.0, 3.0)) * specimen
    if family == "rich" and rng.random() < GLOW_SHARE:
        img += _glows(shape, rng, a1, a2, origin, sigma) * thick * specimen
    img = np.maximum(img, 0.0)
    return Scene(np.ascontiguousarray(img, dtype=np.float32), p, kind, factor)


class SceneBank:
    """A fixed, seeded collection of clean scenes with native periods log-uniform in ``period_range``.

    Each scene is ``side_periods`` periods on a side (at least ``min_px`` and at most ``max_px`` px), so that crops
    of ``crop_periods`` periods fit at random offsets. Built once at the start of training (a pure function of
    the seed, so a resumed run rebuilds the same bank).
    """

    def __init__(self, n: int, *, seed: int, period_range: tuple[float, float] = (6.0, 40.0),
                 side_periods: float = 12.0, min_px: int = 48, max_px: int = 512, family: str = "full",
                 vacancy_max: float = 0.05) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7_354_211]))
        lo, hi = (float(v) for v in period_range)
        self.scenes: list[Scene] = []
        for _ in range(int(n)):
            p = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            size = int(min(max_px, max(min_px, round(side_periods * p))))
            self.scenes.append(render_scene(rng, p, size, family=family, vacancy_max=vacancy_max))

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> Scene:
        return self.scenes[i]
