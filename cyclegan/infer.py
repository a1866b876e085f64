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

Tile geometry (model pixels). The generator's receptive field is measured (gradient of one output pixel with
respect to the input of a positive-weight copy; it reproduces :func:`cyclegan.models.generator_receptive_field`):
for the default generator it is 131 px, a radius of 65 px (67 px / 33 px for the classic profile's). Inner tile
edges get zero blending weight over ``margin`` = that radius rounded up to the generator's stride (68 px), so
every output pixel comes from a tile
that saw its whole neighbourhood and the tiled result equals the whole-image result to float rounding (measured:
PSNR > 150 dB between them). Where tiles overlap they therefore agree; an 8 px sin^2 ramp between the two margins
only hides rounding differences (bf16): ``overlap = 2 * margin + 8`` = 144 px for the default generator.
Tiles are 512 px: the overlap then costs (512 / 368)^2 = 1.94x extra compute for the default generator (1.38x
for the classic one's 76 px overlap);
on the CPU one tile per batch is fastest (a second 512 px tile only adds cache misses; ~0.3 GiB of activations),
on CUDA 16. Images smaller than a tile get one smaller tile instead of padding. Numbers: scripts/bench_infer.py.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from scipy import sparse
from torch import nn

from stem_denoise.common.device import pick_device
from stem_denoise.common.errors import InputError
from stem_denoise.common.precision import autocast, describe_precision, resolve_precision
from stem_denoise.common.resample import _Operator, resample_operator
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
    "PERIOD_TOLERANCE",
    "SCALE_SNAP",
]

SCALE_SNAP = 0.02  # |scale - 1| below this: no resampling
PERIOD_TOLERANCE = 0.15  # a given period further than this from the measured one is refused
MIN_PERIOD_PX = 2.0  # below this no lattice is resolved at all
DEFAULT_TILE = 512  # model px
DEFAULT_BATCH = {"cuda": 16, "cpu": 1}  # on CPU a second tile only adds cache misses
RAMP_PX = 8  # blending ramp beyond the two margins: tiles agree exactly there, the ramp only hides bf16 rounding
LATTICE_CROP = 1024  # side of the central crop the lattice is measured on


# ----------------------------------------------------------------------------------------------- resampling


class Resampler:
    """A 2-D image resampled and affinely rescaled row strip by row strip, read lazily from ``source``.

    ``Resampler(source, rows_op, cols_op, offset, scale)[r0:r1]`` is
    ``rows_op @ ((source - offset) / scale) @ cols_op.T`` restricted to output rows ``r0:r1``; only the source
    rows those output rows need are read. It has ``.shape`` and 2-D slicing, so
    :func:`stem_denoise.common.tiling.iter_map_tiles` can tile it without the resampled image ever existing in memory.
    Source rows above the last strip read are handed back to the OS when ``source`` is a memmap.
    """

    def __init__(self, source, rows_op: _Operator, cols_op: _Operator, offset: float = 0.0, scale: float = 1.0):
        if tuple(source.shape) != (rows_op.n_in, cols_op.n_in):
            raise ValueError("operators do not fit the source shape")
        self.source = source
        self.rows_op = rows_op
        self.cols_op = cols_op
        self.offset = np.float32(offset)
        self.scale = np.float32(scale)
        self.shape = (rows_op.n_out, cols_op.n_out)
        self._released = 0

    def _source_rows(self, j0: int, j1: int) -> np.ndarray:
        block = np.asarray(self.source[j0:j1], dtype=np.float32)
        if self.offset != 0 or self.scale != 1:
            block = (block - self.offset) / self.scale
        return block

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key, slice(None))
        rows, cols = key
        r0, r1, _ = rows.indices(self.shape[0])
        if r1 <= r0:
            return np.zeros((0, self.shape[1]), np.float32)[:, cols]
        j0 = int(self.rows_op.lo[r0:r1].min())
        j1 = int(self.rows_op.hi[r0:r1].max())
        block = self.rows_op.apply_rows(self._source_rows(j0, j1), r0, r1, j0)
        block = self.cols_op.apply_cols(block)
        if j0 > self._released:
            release_pages(self.source, self._released, j0)
            self._released = j0
        return np.ascontiguousarray(block[:, cols], dtype=np.float32)


class _BackResampler:
    """Collects finished model-space rows and turns them into source rows as soon as their taps are present."""

    def __init__(self, rows_op: _Operator, cols_op: _Operator):
        self.rows_op = rows_op
        self.cols_op = cols_op
        self.buf = np.zeros((0, cols_op.n_in), np.float32)
        self.buf0 = 0  # model row held in buf[0]
        self.next_row = 0  # next source row to produce

    def feed(self, row0: int, block: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        if row0 != self.buf0 + self.buf.shape[0]:
            raise RuntimeError("model rows must arrive in order")
        self.buf = np.concatenate([self.buf, block]) if self.buf.size else block
        have = self.buf0 + self.buf.shape[0]
        n = self.rows_op.n_out
        y1 = self.next_row
        while y1 < n and self.rows_op.hi[y1] <= have:
            y1 += 1
        if y1 > self.next_row:
            y0 = self.next_row
            out = self.rows_op.apply_rows(self.buf, y0, y1, self.buf0)
            yield y0, self.cols_op.apply_cols(out)
            self.next_row = y1
            if y1 < n:
                drop = int(self.rows_op.lo[y1:].min()) - self.buf0
                if drop > 0:
                    self.buf = self.buf[drop:].copy()
                    self.buf0 += drop


# ----------------------------------------------------------------------------------------------- network side


def measure_receptive_field(generator: nn.Module, *, start: int = 96, limit: int = 1024) -> int:
    """Receptive-field radius of ``generator``'s architecture in input px: how far an input change can reach.

    Measured on a copy whose weights are all set to small positive values (so that no path cancels and an
    identity-initialised head does not hide the body): the gradient of the centre output pixel with respect to the
    input is non-zero exactly where the architecture connects. The probe grows until that region stops short of
    its border. Exact for networks of convolutions, resizes and pointwise activations (e.g. 33 px for the default
    generator, whose theoretical receptive field is 131 px).
    """
    probe = copy.deepcopy(generator).to(device="cpu", dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
            p.copy_((torch.rand(p.shape, generator=gen) + 0.5) / fan_in)
    size = start
    while True:
        x = torch.rand((1, 1, size + 1, size + 1), generator=gen).requires_grad_(True)
        y = probe(x)
        c = size // 2
        y[0, 0, c, c].backward()
        nz = torch.nonzero(x.grad[0, 0] != 0)
        if len(nz) == 0:
            return 0
        radius = int((nz - c).abs().max())
        if radius < c - 2 or size >= limit:
            return radius
        size *= 2


_RF_CACHE: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class TilePlan:
    """Tile geometry in model pixels: see the module docstring for how it follows from the receptive field."""

    tile: int
    overlap: int
    margin: int
    align: int
    rf_radius: int

    def as_dict(self) -> dict:
        return dict(tile=self.tile, overlap=self.overlap, margin=self.margin, align=self.align,
                    rf_radius=self.rf_radius)


def _round_up(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def plan_tiles(generator: nn.Module, *, tile: int | None = None, overlap: int | None = None,
               device: torch.device | None = None, rf_radius: int | None = None) -> TilePlan:
    """Choose tile, overlap and margin (model px) for ``generator``; user values are checked, not trusted.

    margin = receptive-field radius rounded up to the generator's stride; overlap = 2 * margin + an 8 px ramp;
    tile = 512 (and at least twice the overlap). A user overlap below
    ``2 * margin + 1`` would let tile edges into the result and is refused.
    """
    align = int(getattr(generator, "size_multiple", 1) or 1)
    if rf_radius is None:
        rf_radius = _RF_CACHE.get(generator)
        if rf_radius is None:
            rf_radius = _RF_CACHE[generator] = measure_receptive_field(generator)
    radius = int(rf_radius)
    margin = _round_up(radius, align)
    min_overlap = 2 * margin + align
    if overlap is None:
        overlap = 2 * margin + _round_up(RAMP_PX, align)
    else:
        if overlap < min_overlap:
            raise InputError(
                f"overlap {overlap} px is too small for this generator: its receptive field reaches {radius} px, "
                f"so the overlap must be at least {min_overlap} px (model pixels)")
        overlap = _round_up(overlap, align)
    if tile is None:
        tile = max(DEFAULT_TILE, _round_up(2 * overlap + align, 32))
    else:
        if tile <= overlap:
            raise InputError(f"tile ({tile} px) must be larger than the overlap ({overlap} px)")
        tile = _round_up(tile, align)
    return TilePlan(tile=int(tile), overlap=int(overlap), margin=int(margin), align=align, rf_radius=radius)


_DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def make_tile_fn(generator: nn.Module, device: torch.device, *, tta: bool = False, precision: str | None = "auto",
                 channels_last: bool | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap ``generator`` as a numpy batch function for :func:`stem_denoise.common.tiling.map_tiles`.

    The batch ``(B, h, w)`` float32 (normalised units) goes to ``device`` as ``(B, 1, h, w)`` in the channels_last
    layout; ``precision`` ("auto", "fp32" or "bf16", see :mod:`stem_denoise.common.precision`) decides whether it runs under
    bfloat16 autocast, on CUDA and on the CPU alike. The result is always float32. ``tta`` averages the outputs
    over the 8 dihedral transforms (rotations by 90 deg and flips), each undone before averaging. The function's
    ``precision`` attribute says what "auto" resolved to ("bf16" or "fp32").
    """
    dtype = resolve_precision(precision, device)
    generator.eval()
    if channels_last is None:
        channels_last = True  # faster on CUDA and with oneDNN on CPU
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    generator.to(device=device, memory_format=fmt)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=fmt)
        with autocast(device, dtype):
            return generator(x).float()

    def fn(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).unsqueeze(1)
            x = x.to(device, non_blocking=True)
            if not tta:
                y = run(x)
            else:
                y = torch.zeros_like(x)
                for k, flip in _DIHEDRAL:
                    t = torch.rot90(x, k, dims=(2, 3))
                    if flip:
                        t = torch.flip(t, dims=(3,))
                    o = run(t)
                    if flip:
                        o = torch.flip(o, dims=(3,))
                    y += torch.rot90(o, -k, dims=(2, 3))
                y /= len(_DIHEDRAL)
            return y[:, 0].cpu().numpy()

    fn.precision = describe_precision(dtype)
    return fn


# ----------------------------------------------------------------------------------------------- whole pipeline


def _measure_lattice_period(image) -> float:
    """Primary lattice period (px) of the central crop of ``image``; InputError when no lattice is found."""
    from data_prep.lattice import measure_lattice

    h, w = image.shape
    side = LATTICE_CROP
    r0, c0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    crop = np.asarray(image[r0:r0 + side, c0:c0 + side], dtype=np.float32)
    return float(measure_lattice(crop).period_px)


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
) -> np.ndarray:
    """Denoise a 2-D micrograph (source units in, source units out) with a generator export's network.

    ``image`` is an (H, W) array or memmap in the micrograph's own units; ``info`` the export's info dict
    (``info["period_px"]``: lattice period the model was trained at, model px). ``period_px`` is the micrograph's
    period in its own px (measured when None). Returns ``out`` (default a new float32 (H, W) array; an integer
    ``out`` gets rounded, clipped values). ``whole=True`` runs the network once on the whole resampled image
    instead of tiles (reference for the tiled result; needs the whole image in memory). ``precision`` ("auto",
    "fp32", "bf16"; see :mod:`stem_denoise.common.precision`) is the network's arithmetic; the result is float32 either way.
    ``stats`` (a dict) is filled with the scale, tile plan, intensity range and precision ("fp32"/"bf16") used.
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
    fn = make_tile_fn(generator, dev, tta=tta, precision=precision)
    back = _BackResampler(up_r, up_c)
    if stats is not None:
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
                                  device=dev, precision=precision, progress=progress)
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
            say(f"denoised {f.name} -> {o} ({st['shape'][0]}x{st['shape'][1]} px, period {st['period_px']:.2f} px, "
                f"scale {st['scale']:.3f}, {st.get('n_tiles', 1)} tiles, {st['seconds']:.1f} s)")
    finally:
        remove_created_dirs(created)  # only where still empty: a run that wrote nothing leaves no folder
    return {**counts, "files": records, "plan": plan.as_dict(), "device": str(dev),
            "precision": describe_precision(dtype), "rank": rank,
            "world_size": world_size, "n_inputs": len(files)}
