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

Modules: :mod:`data_prep.synthetic` (the synthetic lattice, its cell and mosaic), :mod:`data_prep.domain_a` and
:mod:`data_prep.domain_b` (cutting the patches of each domain, intensity matching, dented targets),
:mod:`data_prep.dataset_folder` (manifest, output folder checks and replacement), :mod:`data_prep.preview`; this
module holds the configuration and :func:`prepare_dataset`, and re-exports the public names of the others.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import tifffile
from pydantic import ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm

from data_prep import dents as _dents
from data_prep.dataset_folder import MANIFEST_KIND, MANIFEST_NAME, _check_out_dir, _finalise, _finite
from data_prep.domain_a import AtomPatches, _too_small, crop_patches, extract_atom_patches, to_model_scale
from data_prep.domain_b import _b_for_micrograph, lattice_patches, periodic_variance
from data_prep.io import list_micrographs, read_micrograph
from data_prep.lattice import measure_lattice
from data_prep.noise_model import NoiseEstimate, central_crop, estimate_noise
from data_prep.normalize import normalize, robust_range
from data_prep.preview import _preview, _preview_panel
from data_prep.synthetic import (
    PeriodicCell,
    SyntheticLattice,
    display_angle,
    rotation_matrix,
    rotation_to_match,
    synthetic_mosaic,
)
from stem_denoise.common.atomic import make_output_dir, remove_created_dirs
from stem_denoise.common.config import Config
from stem_denoise.common.errors import InputError

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
    dent_method: Literal[_dents.DENT_METHODS] = "recipe"
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

    @field_validator("dent_method", mode="before")
    @classmethod
    def _dent_method_old_name(cls, value: Any) -> Any:
        """The reference recipe's method used to be called "seed" (old manifests and scripts keep working)."""
        return _dents.DENT_METHOD_ALIASES.get(value, value) if isinstance(value, str) else value

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
# prepare_dataset
# ----------------------------------------------------------------------------------------------------------------
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
