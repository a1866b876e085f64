"""Domain B measured from the micrographs themselves: the unit-cell average as the clean lattice.

A synthetic lattice image drawn by hand (or by a simple simulator) carries the columns someone thought of, in the
shape they drew: weak sublattices may be missing or too faint, dumbbells may be drawn as one blob, and a large cell
(an orthorhombic perovskite, say) may be reduced to one round dot per cell. Domain B drawn from such an image
teaches the generator to remove what is not in it. The micrograph's own **unit-cell average** keeps every site:
averaged over its N cells the noise falls by sqrt(N), while every column of the motif -- the weak B and O sites,
both columns of a dumbbell -- stays at its measured relative height, with its real shape and spacing.

:meth:`CellAverageSource.build` turns one (normalised) micrograph into a :class:`CellAverageLattice`, a
:class:`data_prep.synthetic.SyntheticLattice` whose cell is that average, so :func:`data_prep.patches.prepare_dataset`
renders it exactly as it renders a user-supplied synthetic lattice image (seamless, at the micrograph's orientation
and the model's scale, given the micrograph's level, contrast and dents). Pass a :class:`CellAverageSource` to
``prepare_dataset`` in place of the synthetic image (``scripts/prepare_data.py --clean-from cell-average``): every
training micrograph then gets its B patches from its *own* cell average.

Steps (units: pixels of the micrograph, ``(row, col)``, intensities in its normalised units):

1. **Lattice**: :func:`data_prep.lattice.measure_lattice` (or the one given).
2. **Slow background removed**: the image minus its Gaussian low-pass (sigma = ``background_cells`` x the longer
   cell edge, far below the first Bragg frequency) plus that low-pass's mean, so the lattice keeps the
   micrograph's mean level. A constant detector offset needs no removal here: the B patches are given the
   micrograph's own level and lattice contrast (``match_intensity``) and the training noise layer adds counts above
   the micrograph's estimated offset (:mod:`data_prep.noise_model`), so the offset cancels either way.
3. **Cells, registered locally**: :func:`stem_denoise.evaluation.realframes.cell_geometry` with ``local=True``:
   each cell is shifted by the lattice displacement that geometric phase analysis measures at its centre, so scan
   drift and line wobble do not smear the average (where fewer than two strong Bragg peaks exist the global
   lattice is used and the record says so).
4. **The true cell**: a measured lattice can be a sublattice of the real one (a perovskite whose cell peaks are
   weak is reported as the finer lattice of its A and B columns, which would average A and B together). For each
   of the three index-2 superlattices (parity of ``i``, of ``j`` or of ``i + j`` of cell ``(i, j)``) the cells of
   the two cosets are averaged separately; if the two averages differ by more than the noise allows (the same
   comparison between random halves of the cells is the noise reference) and by more than
   ``superlattice_min`` of the average's range, the superlattice is the cell. Repeated (up to
   ``max_doublings`` times), so a 2 x 2 superstructure is found too.
5. **Consistency (drift that local registration could not fix, or two structures in one frame)**: the cells of
   each quadrant of the frame are averaged and compared with the whole frame's average after a fitted gain and
   offset (thickness may change the contrast). The largest difference, as a fraction of the whole average's
   range, less the same for as many random cells of the frame (the noise reference), is the quadrant's
   *disagreement*; above ``max_disagreement`` (default 0.08) the micrograph is refused with one line naming the
   quadrant: its unit cells do not share one motif, and averaging them would draw a motif that exists nowhere in
   it. Measured: 0.00-0.05 on the four real frames of the project and on simulated frames with a +-4 px line
   wobble (registered away); 0.12-0.14 on a frame whose two halves hold different motifs (B site 0.35 vs 0.9).
6. **Average**: on a grid of about ``samples_per_px`` samples per micrograph pixel along each cell edge (16-512
   per edge), by bilinear sampling of every cell. Its column sites
   (:func:`stem_denoise.evaluation.realframes.cell_sites`) and their heights above the average's floor relative to
   the strongest, and the residual noise of the average (from random halves, as a fraction of its range), are
   recorded. Heights read at the maxima of a noisy average lean a little high for weak sites (the maximum picks
   up noise): at 2 counts per A column the B site of a simulated perovskite read 0.37-0.41 against 0.35.

The result renders like any synthetic lattice: its ``primary`` vector is the micrograph's measured one, so the
rotation that ``angle="auto"`` computes is zero and the scale is the micrograph's own.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from data_prep.lattice import LatticeInfo, lattice_vectors, measure_lattice
from data_prep.synthetic import PeriodicCell, SyntheticLattice
from stem_denoise.common.arrays import as_real_image
from stem_denoise.common.errors import InputError

__all__ = ["CELL_AVERAGE", "CellAverageSource", "CellAverageLattice", "is_cell_average"]

CELL_AVERAGE = "cell-average"
_PARITIES = ((1, 0), (0, 1), (1, 1))
_DEBUG = False
_QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _cell_tools():
    # the evaluation package imports torch-free numpy code only, but keep data_prep importable without it
    from stem_denoise.evaluation import realframes
    return realframes


@dataclass
class CellAverageLattice(SyntheticLattice):
    """A :class:`~data_prep.synthetic.SyntheticLattice` whose unit cell is a micrograph's own cell average.

    ``image``: the micrograph (normalised units) with its slow background removed; ``geometry``: the locally
    registered cells (:class:`stem_denoise.evaluation.realframes.CellGeometry`) over which every :meth:`cell` is
    averaged; ``basis`` their two translations (the true cell after the superlattice check); ``primary`` the
    micrograph's measured primary vector (so rendering at the micrograph's period reproduces its scale);
    ``record``: what was measured (JSON-able; see :meth:`CellAverageSource.build`).
    """

    geometry: Any = None
    record: dict = field(default_factory=dict)

    def cell(self, sigma: float = 0.0) -> PeriodicCell:
        """The cell averaged over every registered cell of the micrograph after a Gaussian blur of ``sigma`` px."""
        key = round(float(sigma), 2)
        if key in self._cells:
            return self._cells[key]
        img = ndimage.gaussian_filter(self.image, key, mode="reflect") if key > 0 else self.image
        avg = _cell_tools().cell_average(img, self.geometry).average
        g = self.geometry
        pc = PeriodicCell(cell=avg, basis=np.stack([g.a1, g.a2]), origin=g.origin)
        self._cells[key] = pc
        return pc

    @property
    def sites(self) -> list[dict]:
        """Column sites of the average: fractional position along the two translations, position (px) within the
        cell, relative height (strongest = 1, above the average's floor)."""
        return list(self.record.get("sites", []))


def is_cell_average(obj: Any) -> bool:
    """Whether a ``prepare_dataset`` clean-lattice argument asks for the micrographs' own cell averages."""
    return isinstance(obj, CellAverageSource)


@dataclass
class CellAverageSource:
    """Settings for building domain B from each micrograph's unit-cell average (see the module docstring).

    ``local``: register each cell by geometric phase analysis; ``samples_per_px``: cell samples per micrograph
    pixel along each edge (16-512 per edge); ``background_cells``: sigma of the removed slow background in longer
    cell edges; ``max_disagreement``: refuse a micrograph whose quadrants' averages differ from the whole's by more
    than this fraction of its range (beyond noise); ``superlattice_min``: a coset difference (beyond
    noise) of at least this fraction of the average's range makes the superlattice the cell; ``max_doublings``: how
    many times the cell may double; ``seed``: the random halves used as noise references.
    """

    local: bool = True
    samples_per_px: float = 2.0
    background_cells: float = 2.0
    max_disagreement: float = 0.08
    superlattice_min: float = 0.04
    max_doublings: int = 2
    seed: int = 0

    source: str = CELL_AVERAGE

    def build(self, image, info: LatticeInfo | None = None, *, name: str = "micrograph",
              norm: tuple[float, float] = (0.0, 1.0)) -> CellAverageLattice:
        """The clean lattice of one micrograph: its locally registered, background-free unit-cell average.

        ``image``: 2-D micrograph, normalised as the patches are (any units work); ``info``: its measured lattice
        (measured here when None); ``name``: used in messages and as the lattice's ``source``; ``norm``: the
        ``(lo, hi)`` raw values of the micrograph's normalisation (so a zero-count level maps as for the
        micrograph). Raises :class:`InputError` (one line) when there is no lattice, too few cells, or the cells
        disagree (module docstring, step 5).
        """
        rf = _cell_tools()
        img = as_real_image(image, name).astype(np.float64)
        if info is None:
            try:
                info = measure_lattice(img)
            except InputError as exc:
                raise InputError(f"{name}: no lattice found for a cell average ({str(exc).splitlines()[0]})") \
                    from None
        a1, a2 = (np.asarray(v, dtype=np.float64) for v in lattice_vectors(info))
        longer = max(float(np.hypot(*a1)), float(np.hypot(*a2)))
        low = ndimage.gaussian_filter(img, self.background_cells * longer, mode="reflect")
        flat = img - low + float(low.mean())
        try:
            geom = rf.cell_geometry(flat, info, samples_per_period=12, local=self.local)
        except InputError as exc:
            raise InputError(f"{name}: {str(exc).splitlines()[0]}") from None
        rng = np.random.default_rng(self.seed)
        doublings: list[dict] = []
        for _ in range(int(self.max_doublings)):
            found = _superlattice(flat, geom, rng, self.superlattice_min)
            if found is None:
                break
            geom, note = found
            doublings.append(note)
        if geom.n_cells < 4:
            raise InputError(f"{name}: only {geom.n_cells} whole unit cell(s) of "
                             f"{np.hypot(*geom.a1):.1f} x {np.hypot(*geom.a2):.1f} px fit in the frame; a cell "
                             f"average needs at least 4 (a larger frame, or a synthetic lattice image)")
        quads = _disagreement(flat, geom, rng)
        worst = max(quads, key=lambda q: q["disagreement"]) if quads else None
        if worst is not None and worst["disagreement"] > self.max_disagreement:
            raise InputError(
                f"{name}: its unit cells do not share one motif: the {worst['quadrant']} quadrant's cell average "
                f"differs from the whole frame's by {100 * worst['disagreement']:.0f} % of its range "
                f"(beyond noise; limit {100 * self.max_disagreement:.0f} %), after local drift registration; "
                f"crop the frame to one region (or fix the scan distortion), or use a synthetic lattice image")
        coarse = rf.cell_average(flat, geom).average
        noise = _split_noise(flat, geom, rng)
        l1, l2 = float(np.hypot(*geom.a1)), float(np.hypot(*geom.a2))
        n1, n2 = (int(np.clip(math.ceil(self.samples_per_px * length), 16, 512)) for length in (l1, l2))
        geom = dataclasses.replace(geom, n1=n1, n2=n2)
        avg = rf.cell_average(flat, geom).average
        span = float(coarse.max() - coarse.min())
        sites_idx = rf.cell_sites(avg)
        floor = float(avg.min())
        ref = float(avg[tuple(sites_idx[0])] - floor) if len(sites_idx) else 0.0
        sites = []
        for k1, k2 in sites_idx:
            u, v = k1 / geom.n1, k2 / geom.n2
            pos = u * geom.a1 + v * geom.a2
            sites.append({"frac": [round(float(u), 4), round(float(v), 4)],
                          "px": [round(float(pos[0]), 3), round(float(pos[1]), 3)],
                          "height": round(float((avg[k1, k2] - floor) / ref), 4) if ref > 0 else 0.0})
        primary = a1.copy()
        record = {
            "kind": CELL_AVERAGE,
            "source": name,
            "cells": geom.n_cells,
            "translations_px": [[round(float(x), 4) for x in geom.a1], [round(float(x), 4) for x in geom.a2]],
            "samples": [int(geom.n1), int(geom.n2)],
            "local_registration": bool(geom.local),
            "registration_note": geom.note,
            "max_shift_px": round(float(np.hypot(*geom.shifts.T).max()), 3) if len(geom.shifts) else 0.0,
            "doublings": doublings,
            "quadrants": quads,
            "max_disagreement": round(float(worst["disagreement"]), 4) if worst is not None else None,
            "noise_rel": round(float(noise / span), 5) if span > 0 else None,
            "background_sigma_px": round(float(self.background_cells * longer), 3),
            "sites": sites,
        }
        lat = CellAverageLattice(
            image=flat.astype(np.float32), info=info, basis=np.stack([geom.a1, geom.a2]), primary=primary,
            norm=(float(norm[0]), float(norm[1])), cost=(0.0, 0.0), source=f"cell average of {name}",
            geometry=geom, record=record,
        )
        lat._cells[0.0] = PeriodicCell(cell=avg, basis=np.stack([geom.a1, geom.a2]), origin=geom.origin)
        return lat


# ------------------------------------------------------------------------------------------------ helpers

def _subset(geom, keep: np.ndarray):
    return dataclasses.replace(geom, cells=geom.cells[keep], shifts=geom.shifts[keep])


def _avg(img: np.ndarray, geom, keep: np.ndarray) -> np.ndarray:
    return _cell_tools().cell_average(img, _subset(geom, keep)).average


def _random_halves(n: int, rng: np.random.Generator) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    keep[rng.permutation(n)[: n // 2]] = True
    return keep


def _split_noise(img: np.ndarray, geom, rng: np.random.Generator, repeats: int = 3) -> float:
    """RMS noise left in the full average: random halves differ by twice it (rms)."""
    if geom.n_cells < 4:
        return float("nan")
    vals = []
    for _ in range(repeats):
        keep = _random_halves(geom.n_cells, rng)
        d = _avg(img, geom, keep) - _avg(img, geom, ~keep)
        vals.append(float(np.mean(d * d)))
    return math.sqrt(float(np.mean(vals))) / 2.0


def _superlattice(img: np.ndarray, geom, rng: np.random.Generator, min_frac: float):
    """The index-2 superlattice that the cells' cosets reveal (module docstring, step 4), as ``(geometry, note)``,
    or None when the two cosets of every parity agree within noise."""
    n = geom.n_cells
    if n < 16:
        return None
    full = _cell_tools().cell_average(img, geom).average
    span = float(full.max() - full.min())
    if not span > 0:
        return None
    best = None
    for p in _PARITIES:
        line = geom.cells @ np.array(p)
        par = line % 2 == 1
        if par.sum() < 4 or (~par).sum() < 4:
            continue
        d = _avg(img, geom, ~par) - _avg(img, geom, par)
        ms = float(np.mean(d * d))
        # noise reference: random halves of the same lines of cells (p . (i, j) = const), so that noise shared
        # along a line (scan-row offsets and streaks) counts in the reference exactly as in the coset split
        lines = np.unique(line)
        ref = []
        for _ in range(3):
            keep = np.isin(line, rng.permutation(lines)[: len(lines) // 2])
            if keep.sum() < 4 or (~keep).sum() < 4:
                continue
            r = _avg(img, geom, keep) - _avg(img, geom, ~keep)
            ref.append(float(np.mean(r * r)))
        if not ref:
            continue
        ratio = ms / max(float(np.mean(ref)), 1e-300)
        peak = float(np.abs(d).max()) / span
        if _DEBUG:
            print("parity", p, "ratio", round(ratio, 2), "peak", round(peak, 4))
        if ratio > 3.0 and peak > min_frac and (best is None or ratio > best[2]):
            best = (peak, p, ratio)
    if best is None:
        return None
    excess, p, ratio = best
    return _double(geom, p), {"parity": list(p), "difference": round(excess, 4), "over_noise": round(ratio, 2)}


def _double(geom, p: tuple[int, int]):
    """The geometry of the index-2 superlattice whose cells ``(i, j)`` have ``p . (i, j)`` even."""
    if p == (1, 0):
        M = np.array([[2, 0], [0, 1]])
    elif p == (0, 1):
        M = np.array([[1, 0], [0, 2]])
    else:
        M = np.array([[1, 1], [1, -1]])
    B = np.stack([geom.a1, geom.a2])
    C = M @ B
    even = (geom.cells @ np.array(p)) % 2 == 0
    cells = geom.cells[even]
    shifts = geom.shifts[even]
    kl = cells @ np.linalg.inv(M)
    kl_int = np.rint(kl).astype(np.int64)
    anchors = geom.origin + cells @ B + shifts
    h, w = geom.shape
    corners = np.array([[0.0, 0.0], C[0], C[1], C[0] + C[1]])
    pos = anchors[:, None, :] + corners[None]
    ok = np.all((pos[..., 0] >= 0) & (pos[..., 0] <= h - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= w - 1), axis=1)
    l1, l2 = float(np.hypot(*C[0])), float(np.hypot(*C[1]))
    short = min(l1, l2)
    n1 = max(12, int(round(12 * l1 / short)))
    n2 = max(12, int(round(12 * l2 / short)))
    return dataclasses.replace(geom, a1=C[0], a2=C[1], cells=kl_int[ok], shifts=shifts[ok], n1=n1, n2=n2)


def _affine_residual(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``x`` minus its best gain-and-offset fit to ``ref``."""
    A = np.stack([ref.ravel(), np.ones(ref.size)], axis=1)
    coef, *_ = np.linalg.lstsq(A, x.ravel(), rcond=None)
    return (x.ravel() - A @ coef).reshape(x.shape)


def _disagreement(img: np.ndarray, geom, rng: np.random.Generator, min_cells: int = 6) -> list[dict]:
    """Per quadrant of the frame: how far its cells' average departs from the whole frame's beyond noise
    (module docstring, step 5): the largest difference after a gain-and-offset fit, as a fraction of the whole
    average's range, less the same for random cells of the frame (the noise reference)."""
    n = geom.n_cells
    full = _cell_tools().cell_average(img, geom).average
    span = float(full.max() - full.min())
    if not span > 0:
        return []
    B = np.stack([geom.a1, geom.a2])
    centres = geom.origin + geom.cells @ B + geom.shifts + 0.5 * (geom.a1 + geom.a2)
    h, w = geom.shape
    lower = centres[:, 0] >= (h - 1) / 2.0
    right = centres[:, 1] >= (w - 1) / 2.0
    out = []
    for q, keep in zip(_QUADRANTS, (~lower & ~right, ~lower & right, lower & ~right, lower & right)):
        m = int(keep.sum())
        if m < min_cells or n - m < min_cells:
            continue
        peak = float(np.abs(_affine_residual(_avg(img, geom, keep), full)).max()) / span
        ref = []
        for _ in range(2):
            pick = np.zeros(n, dtype=bool)
            pick[rng.permutation(n)[:m]] = True
            ref.append(float(np.abs(_affine_residual(_avg(img, geom, pick), full)).max()) / span)
        out.append({"quadrant": q, "cells": m, "disagreement": round(max(0.0, peak - float(np.mean(ref))), 4),
                    "raw": round(peak, 4)})
    return out
