"""Denoise whole micrographs with a trained generator: normalise, resample to the model's atom scale, tile, blend.

The pipeline for one micrograph (every step streams row strips: a 16384^2 float32 TIFF was denoised with a peak
resident memory of 1.1 GiB, 0.6 GiB of it torch and the model at start-up; scripts/bench_infer.py --mode memory):

1. The lattice period ``period_px`` of the micrograph (source px between neighbouring columns) is measured
   (:func:`data_prep.lattice.measure_lattice` on a central crop) or given.
2. Intensities are normalised once for the whole micrograph, ``(x - lo) / (hi - lo)`` with robust percentiles
   (:func:`data_prep.normalize.robust_range`, subsampled), never per tile.
3. The image is resampled by ``scale = info["period_px"] / period_px`` so that the model sees atoms at the scale
   it was trained on (e.g. 12.8 px per period). Resampling is a separable linear operator (Keys cubic, a = -0.5,
   widened by 1/scale when shrinking so that it also low-passes; mirror boundaries; weights sum to 1 so
   constants stay constant) applied to row strips as they are needed: a strip of the resampled image is exactly
   the corresponding rows of the resampled whole image. Within 2 % of 1 the scale is taken as 1 and no
   resampling happens at all (a CNN does not care about a 2 % zoom; interpolation would blur).
4. Overlapping tiles of the resampled image go through the generator in batches (``torch.inference_mode``,
   channels_last; bfloat16 autocast where ``precision`` asks for it or "auto" picks it, see
   :mod:`stem_denoise.common.precision`: CUDA with bf16 and CPUs with AMX/AVX512-BF16), optionally averaged over the 8
   dihedral transforms (``tta``), and are blended with :func:`stem_denoise.common.tiling.iter_map_tiles`. The network's
   output is float32 whatever the precision.
5. Finished rows are resampled back to the source grid (same operator, inverse direction), denormalised and
   written (rounded and clipped for integer outputs).

Tile geometry (the receptive field, margins, overlap and tile size, in model pixels) is chosen in
:mod:`cyclegan.tiles`; the streamed resampling lives in :mod:`cyclegan.resampling`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from cyclegan.resampling import Resampler, _BackResampler
from cyclegan.synth import SITE_MIN_HEIGHT, WORKING_SCALES, clipped_site_factor  # the rule training uses too
from cyclegan.tiles import TilePlan, make_tile_fn, measure_receptive_field, plan_tiles
from stem_denoise.common.device import pick_device
from stem_denoise.common.errors import InputError
from stem_denoise.common.precision import describe_precision, resolve_precision
from stem_denoise.common.resample import resample_operator
from stem_denoise.common.tiling import TileGrid, iter_map_tiles, release_pages

__all__ = [
    "TilePlan",
    "Resampler",
    "resample_operator",
    "pick_device",
    "measure_receptive_field",
    "plan_tiles",
    "make_tile_fn",
    "denoise_array",
    "denoise_file",
    "output_path_for",
    "shard",
    "denoise_files",
    "check_period",
    "site_spacing_factor",
    "PERIOD_TOLERANCE",
    "SCALE_SNAP",
]

SCALE_SNAP = 0.02  # |scale - 1| below this: no resampling
PERIOD_TOLERANCE = 0.15  # a given period further than this from the measured one is refused
MIN_PERIOD_PX = 2.0  # below this no lattice is resolved at all
DEFAULT_BATCH = {"cuda": 16, "cpu": 1}  # on CPU a second tile only adds cache misses
LATTICE_CROP = 1024  # side of the central crop the lattice is measured on
# A noise-level model is told this share of the level measured on the micrograph unless asked otherwise: told the
# full level it trusts its prior more where the noise is strong and fills more vacancies and deletes more faint
# columns; at 0.85 the shipped model loses far fewer columns at a small cost in PSNR (README, "The shipped model's
# recipe, measured", where the factors 0.7, 0.85 and 1 were compared on the benchmark and the real frames).
DEFAULT_NOISE_LEVEL_FACTOR = 0.85


# ----------------------------------------------------------------------------------------------- whole pipeline


def _central_crop(image) -> np.ndarray:
    """The central ``LATTICE_CROP`` x ``LATTICE_CROP`` px of ``image`` (all of a smaller one) as float32: where the
    lattice is measured."""
    h, w = image.shape
    r0, c0 = max(0, (h - LATTICE_CROP) // 2), max(0, (w - LATTICE_CROP) // 2)
    return np.asarray(image[r0:r0 + LATTICE_CROP, c0:c0 + LATTICE_CROP], dtype=np.float32)


def _measure_lattice_period(image) -> float:
    """Primary lattice period (px) of the central crop of ``image``; InputError when no lattice is found."""
    from data_prep.lattice import measure_lattice

    return float(measure_lattice(_central_crop(image)).period_px)


def _measure_period(image) -> float:
    try:
        return _measure_lattice_period(image)
    except InputError as exc:
        raise InputError(f"cannot measure the lattice period ({exc}); give it with --period") from None


def check_period(image, period_px: float, *, force: bool = False, name: str = "image") -> tuple[float, str | None]:
    """Check a user-given lattice period (px of ``image``) against the lattice measured on the image.

    Returns ``(period_px, note)``. Where the lattice can be measured and the two disagree by more than
    :data:`PERIOD_TOLERANCE` (15 %), :class:`InputError` names both values, unless ``force`` (then the given value
    is used and ``note`` says so). Where the lattice cannot be measured the given value is used and ``note`` says
    that. A period that cannot fit two lattice periods into the image (or is under 2 px) is refused even with
    ``force``: no lattice can be seen at that scale.
    """
    given = float(period_px)
    h, w = (int(v) for v in image.shape)
    if not (math.isfinite(given) and given > 0):
        raise InputError(f"{name}: the lattice period must be a positive number of px, got {period_px}")
    if given < MIN_PERIOD_PX or given > min(h, w) / 2:
        raise InputError(f"{name}: the given lattice period {given:g} px (--period) does not fit this {w}x{h} px "
                         f"image (a period must be at least {MIN_PERIOD_PX:g} px and at most half the image's "
                         f"shorter side, {min(h, w) / 2:g} px); check its value and unit")
    try:
        measured = _measure_lattice_period(image)
    except InputError as exc:
        return given, (f"{name}: the lattice could not be measured ({' '.join(str(exc).split())}); "
                       f"using the given period {given:g} px")
    off = abs(given / measured - 1.0)
    if off > PERIOD_TOLERANCE:
        if force:
            return given, (f"{name}: the given period {given:g} px differs from the measured {measured:.2f} px by "
                           f"{100 * off:.0f} %; used as given (--force-period)")
        raise InputError(f"{name}: the given lattice period {given:g} px (--period) disagrees with the measured "
                         f"{measured:.2f} px by {100 * off:.0f} % (more than {100 * PERIOD_TOLERANCE:.0f} %); check "
                         f"the value and its unit (px of this image), or pass --force-period to use it anyway")
    return given, None


def site_spacing_factor(image, period_px: float | None = None) -> tuple[float, dict]:
    """How much finer than the lattice period the network should see the micrograph (the ``"sites"`` scale).

    ``period_px``: the lattice period the factor applies to (default: the one measured here).

    The unit-cell average of a central crop (:func:`stem_denoise.evaluation.realframes.cell_average`, noise
    averaged away, weak sites kept) gives the column sites of the cell; the shortest distance between sites at least
    :data:`SITE_MIN_HEIGHT` of the strongest is the nearest column spacing. Returns ``(factor, record)`` with
    ``factor = spacing / period`` clipped to ``[SITE_FACTOR_MIN, 1]``: 1 for a one-site cell (square, hexagonal),
    0.71 for a perovskite whose B sites show. Where the average cannot be taken the factor is 1 and the record says
    why. Measured effect (README, "Working scale"): weak sites kept, gains on perovskites and dumbbells, losses on
    some honeycombs and particles in vacuum; hence opt-in.
    """
    from data_prep.lattice import measure_lattice
    from stem_denoise.evaluation.realframes import cell_average, cell_sites, relative_heights, site_spacing

    crop = _central_crop(image)
    try:
        lattice = measure_lattice(crop)
        avg = cell_average(crop, lattice)
    except InputError as exc:
        return 1.0, {"factor": 1.0, "note": f"no cell average ({' '.join(str(exc).split())}); cell scale used"}
    period = float(period_px) if period_px else float(lattice.period_px)
    sites = cell_sites(avg.average)
    heights = relative_heights(avg.average, sites) if len(sites) else np.zeros(0)
    strong = sites[heights >= SITE_MIN_HEIGHT]
    spacing = site_spacing(strong, avg.geometry) if len(strong) > 1 else None
    factor = 1.0 if spacing is None else clipped_site_factor(spacing, period)
    return factor, {"factor": factor, "sites": int(len(strong)),
                    "spacing_px": None if spacing is None else round(float(spacing), 3),
                    "cell_period_px": round(float(lattice.period_px), 3)}


def level_at_model_scale(pixel_var: float, corr_row: float, corr_col: float, row_offset: float,
                         scale: float) -> float:
    """Std, at the model's scale, of noise of native pixel variance ``pixel_var`` with lag-1 correlations
    ``corr_row`` / ``corr_col`` (the noise layer's MA(1)) and per-row offsets of std ``row_offset`` (native units
    throughout), after the inference resampler changes the scale by ``scale`` (model px per native px). Measured on
    a seeded noise field pushed through the resampler (deterministic)."""
    from cyclegan.pairs import _ma1, resample

    n = int(min(1024, max(48, round(160 / scale))))
    gen = torch.Generator().manual_seed(0)
    e = torch.randn((n, n), generator=gen, dtype=torch.float32)
    e = _ma1(_ma1(e, float(corr_row), dim=-1), float(corr_col), dim=-2)
    e = e / e.std() * math.sqrt(max(float(pixel_var), 0.0))
    if row_offset > 0:
        e = e + float(row_offset) * torch.randn((n, 1), generator=gen)
    nm = max(8, int(round(n * scale)))
    em = resample(e, nm) if nm != n else e
    m = max(1, nm // 10)
    return float(em[m:-m, m:-m].std())


def model_noise_level(image, period_px: float, model_period: float, lo: float, hi: float) -> tuple[float, dict]:
    """Noise level of a micrograph as a ``noise_input`` generator takes it: the std of its noise at the model's
    scale (``model_period / period_px``), in the normalised units ``(x - lo) / (hi - lo)``, from the noise model
    measured on the micrograph (:func:`data_prep.noise_model.estimate_noise`: variance at the mean level, lag-1
    correlations, row offsets), pushed through the inference resampler (:func:`level_at_model_scale`). Where the
    noise model cannot be fitted, the pixel noise is taken from the median absolute difference of neighbouring
    pixels along the rows (white). Returns ``(level, record)``."""
    from data_prep.noise_model import estimate_noise

    crop = _central_crop(image).astype(np.float64)
    try:
        est = estimate_noise(crop, period_px)
        var = max(est.gain * max(float(crop.mean()) - est.offset, 0.0), 0.0) + est.read_noise ** 2
        cr, cc, ro, source = est.corr_row, est.corr_col, est.row_offset, "noise model"
    except InputError:
        d = np.diff(crop, axis=1).ravel() / math.sqrt(2.0)
        var = float((1.4826 * np.median(np.abs(d - np.median(d)))) ** 2)
        cr = cc = ro = 0.0
        source = "neighbour differences (no noise model could be fitted)"
    level = level_at_model_scale(var, cr, cc, ro, model_period / float(period_px)) / max(hi - lo, 1e-30)
    return float(level), {"noise_level": float(level), "source": source, "pixel_std": math.sqrt(var),
                          "corr_row": float(cr), "corr_col": float(cc), "row_offset": float(ro)}


def _robust_range(image) -> tuple[float, float]:
    from data_prep.normalize import robust_range

    lo, hi = robust_range(image)  # a deterministic sample of whole rows for large images
    release_pages(image, 0, image.shape[0])
    return float(lo), float(hi)


def _store_rows(out: np.ndarray, y0: int, rows: np.ndarray) -> None:
    if np.issubdtype(out.dtype, np.integer):
        lim = np.iinfo(out.dtype)
        rows = np.clip(np.rint(rows), lim.min, lim.max)
    out[y0:y0 + rows.shape[0]] = rows
    release_pages(out, y0, y0 + rows.shape[0])


def denoise_array(
    image,
    generator: nn.Module,
    info: dict,
    *,
    period_px: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tta: bool = False,
    device: str | torch.device | None = "auto",
    precision: str | None = "auto",
    whole: bool = False,
    lo_hi: tuple[float, float] | None = None,
    out: np.ndarray | None = None,
    progress: bool = False,
    plan: TilePlan | None = None,
    stats: dict | None = None,
    working_scale: str | None = None,
    noise_level: float | None = None,
    noise_level_factor: float | None = None,
) -> np.ndarray:
    """Denoise a 2-D micrograph (source units in, source units out) with a generator export's network.

    ``image`` is an (H, W) array or memmap in the micrograph's own units; ``info`` the export's info dict
    (``info["period_px"]``: lattice period the model was trained at, model px). ``period_px`` is the micrograph's
    period in its own px (measured when None). Returns ``out`` (default a new float32 (H, W) array; an integer
    ``out`` gets rounded, clipped values). ``whole=True`` runs the network once on the whole resampled image
    instead of tiles (reference for the tiled result; needs the whole image in memory). ``precision`` ("auto",
    "fp32", "bf16"; see :mod:`stem_denoise.common.precision`) is the network's arithmetic; the result is float32
    either way.
    ``stats`` (a dict) is filled with the scale, tile plan, intensity range and precision ("fp32"/"bf16") used.
    ``working_scale``: "cell" (the lattice period maps to the model's period) or "sites" (the period is first
    multiplied by :func:`site_spacing_factor`, so the nearest column spacing of a multi-site cell maps closer to
    the model's period); None (default): the scale the model was trained at (``info["working_scale"]``, "cell"
    for exports that do not say).
    ``noise_level`` (generators with a noise-level input only): the level to give it (std of the noise at the
    model's scale, normalised units); default measured on the micrograph (:func:`model_noise_level`).
    ``noise_level_factor`` multiplies the measured level (default :data:`DEFAULT_NOISE_LEVEL_FACTOR`; a given
    ``noise_level`` is used as it is): below 1 the network treats the micrograph as less noisy than it is and keeps
    more of it (weak columns, and noise), above 1 it smooths harder.
    """
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"expected a 2-D image, got shape {shape}")
    h, w = shape
    model_period = float(info.get("period_px", 0) or 0)
    if not model_period > 0:
        raise InputError("generator info has no valid period_px")
    if period_px is None:
        period_px = _measure_period(image)
    period_px = float(period_px)
    if not (np.isfinite(period_px) and period_px > 0):
        raise InputError(f"lattice period must be a positive number of px, got {period_px}")
    if working_scale is None:
        working_scale = str(info.get("working_scale", "cell"))
    if working_scale not in WORKING_SCALES:
        raise InputError(f"working scale must be one of {', '.join(WORKING_SCALES)}, got {working_scale!r}")
    site_record = None
    if working_scale == "sites":
        factor, site_record = site_spacing_factor(image, period_px)
        period_px *= factor
    scale = model_period / period_px
    if abs(scale - 1.0) <= SCALE_SNAP:
        scale = 1.0
    hm, wm = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if hm * wm > 2**34:
        raise InputError(f"resampling {h}x{w} px by {scale:.3g} gives {hm}x{wm} px: check the period")
    lo, hi = _robust_range(image) if lo_hi is None else (float(lo_hi[0]), float(lo_hi[1]))
    if not hi > lo:
        raise InputError(f"intensity range [{lo}, {hi}] is empty")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if batch_size is None:
        batch_size = DEFAULT_BATCH.get(dev.type, 2)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    generator = generator.to(dev).eval()
    if out is None:
        out = np.empty((h, w), dtype=np.float32)
    elif tuple(out.shape) != (h, w):
        raise InputError(f"out has shape {tuple(out.shape)}, expected {(h, w)}")

    down_r, down_c = resample_operator(h, hm), resample_operator(w, wm)
    up_r, up_c = resample_operator(hm, h), resample_operator(wm, w)
    model_view = Resampler(image, down_r, down_c, offset=lo, scale=hi - lo)
    level_record = None
    if getattr(getattr(generator, "cfg", None), "noise_input", False):
        factor = DEFAULT_NOISE_LEVEL_FACTOR if noise_level_factor is None else float(noise_level_factor)
        if not (math.isfinite(factor) and factor >= 0):
            raise InputError(f"noise level factor must be a finite number >= 0, got {noise_level_factor}")
        if noise_level is None:
            measured, level_record = model_noise_level(image, period_px, model_period, lo, hi)
            level_record = {**level_record, "factor": factor}
            noise_level = measured * factor
        else:
            level_record = {"noise_level": float(noise_level), "source": "given"}
        if not (math.isfinite(float(noise_level)) and float(noise_level) >= 0):
            raise InputError(f"noise level must be a finite number >= 0, got {noise_level}")
        noise_level = float(noise_level)
    else:
        noise_level = None
    fn = make_tile_fn(generator, dev, tta=tta, precision=precision, noise_level=noise_level)
    back = _BackResampler(up_r, up_c)
    if stats is not None:
        stats.update(working_scale=working_scale, sites=site_record, noise_level=level_record)
        stats.update(scale=scale, model_shape=(hm, wm), lo=lo, hi=hi, period_px=period_px, device=str(dev),
                     precision=fn.precision)

    if whole:
        y = fn(model_view[0:hm][None])[0]
        blocks: Iterator[tuple[int, np.ndarray]] = iter([(0, y)])
    else:
        if plan is None:
            plan = plan_tiles(generator, tile=tile, overlap=overlap, device=dev)
        if stats is not None:
            grid = TileGrid.plan((hm, wm), tile=plan.tile, overlap=plan.overlap, margin=plan.margin,
                                 align=plan.align, shrink=True)
            stats.update(plan=plan.as_dict(), n_tiles=grid.n_tiles, tile_shape=grid.tile_shape,
                         batch_size=batch_size)
        blocks = iter_map_tiles(model_view, fn, tile=plan.tile, overlap=plan.overlap, margin=plan.margin,
                                align=plan.align, shrink=True, batch_size=batch_size, progress=progress,
                                desc="tiles")
    span = np.float32(hi - lo)
    for m0, mblock in blocks:
        for y0, rows in back.feed(m0, mblock):
            _store_rows(out, y0, rows * span + np.float32(lo))
    if back.next_row != h:
        raise RuntimeError(f"internal error: {back.next_row} of {h} rows written")
    return out


# ----------------------------------------------------------------------------------------------- files


def output_path_for(in_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Where the denoised version of ``in_path`` goes: ``out_dir/<stem>.tif``."""
    return Path(out_dir) / (Path(in_path).stem + ".tif")


def shard(files: list, rank: int, world_size: int) -> list:
    """The files rank ``rank`` of ``world_size`` handles: every ``world_size``-th file starting at ``rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"bad rank {rank} of world size {world_size}")
    return list(files)[rank::world_size]


class BusyOutput(InputError):
    """Another live run is writing this output right now (its temporary file is locked)."""


def _remove_stale_temps(out_path: Path) -> None:
    """Remove temporary files a killed run left for ``out_path``; BusyOutput when a live run is writing it."""
    from stem_denoise.common.atomic import remove_stale_temps

    if remove_stale_temps(out_path):
        raise BusyOutput(f"{out_path} is being written by another run")


def denoise_file(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    generator: nn.Module,
    info: dict,
    *,
    period_px: float | None = None,
    force_period: bool = False,
    float32: bool = False,
    overwrite: bool = False,
    stream_bytes: int = 256 * 2**20,
    **kwargs,
) -> dict:
    """Denoise one micrograph file into a TIFF with the input's dtype (or float32) and pixel size.

    Inputs larger than ``stream_bytes`` that can be memory-mapped (uncompressed TIFF, NPY) are read and written
    as memmaps, strip by strip, so memory stays bounded whatever the size; others are read whole. The output
    appears atomically (temp file + rename) and a temp file left by a killed run is removed first (one that a
    live run is writing raises :class:`BusyOutput`). A given ``period_px`` is checked against the measured
    lattice before any work (:func:`check_period`; ``force_period`` accepts a disagreeing one). Other keyword
    arguments go to :func:`denoise_array`. Returns a dict describing what was done (``notes``: lines to show).
    """
    from data_prep import io as dio

    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.exists() and not overwrite:
        raise InputError(f"{out_path} exists; pass --overwrite to replace it")
    _remove_stale_temps(out_path)
    stats: dict = {}
    notes: list[str] = []
    image = None
    if in_path.is_file() and in_path.stat().st_size > stream_bytes:
        image = dio.open_micrograph_memmap(in_path)
    if image is not None:
        meta = dio.read_micrograph_meta(in_path)
        dio.validate_image(image, name=str(in_path))
    else:
        image, meta = dio.read_micrograph(in_path)
    if period_px is None:
        try:
            period_px = _measure_lattice_period(image)
        except InputError as exc:
            raise InputError(f"{in_path}: cannot measure the lattice period ({exc}); give it with --period") from None
    else:
        period_px, note = check_period(image, period_px, force=force_period, name=str(in_path))
        if note:
            notes.append(note)
    if dio.is_memmap(image):
        dtype = np.dtype(np.float32 if float32 else meta.source_dtype)
        with dio.create_output_memmap(out_path, image.shape, dtype, meta, overwrite=overwrite) as out:
            denoise_array(image, generator, info, period_px=period_px, out=out, stats=stats, **kwargs)
        stats["streamed"] = True
        del image
    else:
        result = denoise_array(image, generator, info, period_px=period_px, stats=stats, **kwargs)
        dio.write_micrograph(out_path, result, meta, dtype="float32" if float32 else "source", overwrite=overwrite)
        stats["streamed"] = False
    stats.update(input=str(in_path), output=str(out_path), shape=tuple(int(v) for v in meta.shape),
                 dtype="float32" if float32 else meta.source_dtype, notes=notes)
    return stats


def denoise_files(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    period_px: float | None = None,
    force_period: bool = False,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tta: bool = False,
    device: str | None = "auto",
    precision: str | None = "auto",
    working_scale: str | None = None,
    noise_level_factor: float | None = None,
    overwrite: bool = False,
    float32: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Denoise every micrograph in ``inputs`` (files or folders) into ``out_dir/<stem>.tif``.

    Before any work: ``out_dir`` may not be, hold or lie inside an input or the checkpoint (symlinks followed),
    and no two inputs may share an output. This rank takes files ``rank::world_size`` of the sorted list. A
    finished output is skipped (unless ``overwrite``), so a killed run resumes where it stopped; so is one that
    another run is writing or wrote meanwhile (two runs on the same batch share the work). A file that fails
    with :class:`InputError` (unreadable, lattice not measurable, ``period_px`` disagreeing with the measured
    one, a full disk, ...) is reported in one ``error:`` line naming it and the others go on. An output folder
    this call created is removed again when nothing was written into it. Returns counts and per-file records;
    raises InputError when nothing could be started at all (no inputs, bad checkpoint, bad options).
    """
    from tqdm.auto import tqdm

    from cyclegan.checkpoint import load_generator
    from data_prep.io import list_micrographs
    from stem_denoise.common.atomic import check_output_location, make_output_dir, remove_created_dirs

    say = log or tqdm.write
    files = list_micrographs([str(p) for p in inputs])
    out_dir = Path(out_dir)
    check_output_location(out_dir, [*inputs, *files, checkpoint])
    targets: dict[Path, Path] = {}
    for f in files:
        o = output_path_for(f, out_dir)
        if o in targets:
            raise InputError(f"{f} and {targets[o]} would both be written to {o}; denoise them into different folders")
        targets[o] = f
    mine = shard(files, rank, world_size)
    dev = pick_device(device)
    dtype = resolve_precision(precision, dev)  # a bad name or bf16 on a GPU without it fails before any work
    generator, info = load_generator(checkpoint, map_location="cpu")
    generator.to(dev)
    plan = plan_tiles(generator, tile=tile, overlap=overlap, device=dev)
    created: list[Path] = []
    make_output_dir(out_dir, created)
    records: list[dict] = []
    counts = {"denoised": 0, "skipped": 0, "failed": 0}
    bar = tqdm(mine, desc="micrographs", unit="image", disable=not progress)
    try:
        for f in bar:
            o = output_path_for(f, out_dir)
            if o.exists() and not overwrite:
                counts["skipped"] += 1
                records.append({"input": str(f), "output": str(o), "status": "skipped"})
                say(f"skip {f.name}: {o} exists")
                continue
            t0 = time.perf_counter()
            try:
                st = denoise_file(f, o, generator, info, period_px=period_px, force_period=force_period,
                                  float32=float32, overwrite=overwrite, plan=plan, batch_size=batch_size, tta=tta,
                                  device=dev, precision=precision, progress=progress,
                                  working_scale=working_scale, noise_level_factor=noise_level_factor)
            except BusyOutput:
                counts["skipped"] += 1
                records.append({"input": str(f), "output": str(o), "status": "skipped"})
                say(f"skip {f.name}: another run is writing {o}")
                continue
            except InputError as exc:
                if not overwrite and o.exists():  # another run finished it while this one worked
                    counts["skipped"] += 1
                    records.append({"input": str(f), "output": str(o), "status": "skipped"})
                    say(f"skip {f.name}: {o} was written meanwhile by another run")
                    continue
                text = " ".join(str(exc).split())
                if str(f) not in text:
                    text = f"{f}: {text}"
                counts["failed"] += 1
                records.append({"input": str(f), "output": str(o), "status": "failed", "error": text})
                tqdm.write(f"error: {text}", file=sys.stderr)
                continue
            st["seconds"] = time.perf_counter() - t0
            st["status"] = "denoised"
            counts["denoised"] += 1
            records.append(st)
            for note in st.get("notes", []):
                say(f"note: {note}")
            lv = st.get("noise_level") or {}
            level = (f", noise level {lv['noise_level']:.4f} x {lv.get('factor', 1.0):g}" if "noise_level" in lv
                     else "")
            say(f"denoised {f.name} -> {o} ({st['shape'][0]}x{st['shape'][1]} px, period {st['period_px']:.2f} px, "
                f"scale {st['scale']:.3f}{level}, {st.get('n_tiles', 1)} tiles, {st['seconds']:.1f} s)")
    finally:
        remove_created_dirs(created)  # only where still empty: a run that wrote nothing leaves no folder
    return {**counts, "files": records, "plan": plan.as_dict(), "device": str(dev),
            "precision": describe_precision(dtype), "rank": rank,
            "world_size": world_size, "n_inputs": len(files)}
