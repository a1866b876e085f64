"""Reading and writing micrographs: TIFF, PNG, NPY, and DM3/DM4/EMD through RosettaSciIO.

Every reader returns the pixels as a 2-D float32 array in the file's own units (detector counts, or
whatever the file holds; nothing is rescaled) together with a :class:`MicrographMeta` that records the
source dtype, the pixel size and its unit. :func:`write_micrograph` writes a TIFF back in the source
dtype (rounded and clipped for integer types) or in float32, with the pixel size in the resolution tags
and in the ImageJ metadata so that Fiji shows it, atomically and never over an existing file unless asked.

Every problem a user can fix (a missing, empty, truncated or foreign file, an RGB image or a stack
without a choice, NaN or constant pixels, a header that declares more pixels than the file holds) raises
:class:`stem_denoise.common.errors.InputError` with one line that names the file.

Large micrographs (a 16384 x 16384 float32 image is 1 GiB) are handled without holding them twice:

* :func:`open_micrograph_memmap` maps an uncompressed TIFF or an NPY file read-only (``None`` when the
  file cannot be mapped: compressed, tiled, PNG, DM); read tiles from it and convert each to float32.
* :func:`create_output_memmap` is a context manager that creates an output TIFF as a writable memmap in a
  temporary file next to the target and renames it onto the target when the block ends without error.
* :func:`temporary_memmap` gives an anonymous scratch array on disk (e.g. a float32 accumulator) that is
  gone when the block ends, even if the process is killed.
* :func:`write_micrograph` converts and writes in row strips, so writing a 1 GiB float32 memmap as
  uint16 allocates only a strip at a time.
* :func:`release_memmap_pages` drops the pages of a memmap from the process's resident set (they stay in
  the page cache). Pages of a file mapping count in the resident set size (``ru_maxrss``) while mapped;
  call it every few hundred MiB of rows when streaming through a huge file to keep the peak bounded.

A typical streaming use (the tile and the accumulation are the caller's business)::

    src = open_micrograph_memmap(path)            # None -> fall back to read_micrograph(path)
    meta = read_micrograph_meta(path)
    with create_output_memmap(out_path, src.shape, "float32", meta) as out:
        for r in range(0, src.shape[0], 1024):
            out[r:r + 1024] = process(np.asarray(src[r:r + 1024], dtype=np.float32))
            release_memmap_pages(src); release_memmap_pages(out)

Readers for DM3/DM4/EMD need the optional extra ``pip install "stem-denoise[dm]"`` (RosettaSciIO, GPL-3,
never a requirement; and h5py, which Velox EMD files need); a missing piece is named in the error. Files are
recognised by their first bytes, not only their name.

Pixel sizes are believed only when finite, positive and between 0.1 pm and 1 mm (:func:`plausible_pixel_size`);
others are dropped with a one-line :class:`~stem_denoise.common.errors.MetadataWarning` and never written back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import mmap
import os
import struct
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from stem_denoise.common.atomic import atomic_path, free_space, reserve_space
from stem_denoise.common.errors import InputError, MetadataWarning

__all__ = [
    "MICROGRAPH_SUFFIXES",
    "MicrographMeta",
    "read_micrograph",
    "read_micrograph_meta",
    "write_micrograph",
    "list_micrographs",
    "validate_image",
    "open_micrograph_memmap",
    "create_output_memmap",
    "temporary_memmap",
    "release_memmap_pages",
    "is_memmap",
    "canonical_length_unit",
    "plausible_pixel_size",
    "PIXEL_SIZE_RANGE_M",
]

MICROGRAPH_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".dm3", ".dm4", ".emd")
_TIFF_SUFFIXES = (".tif", ".tiff")
_RSCIIO_SUFFIXES = (".dm3", ".dm4", ".emd")
DM_EXTRA_HINT = 'pip install "stem-denoise[dm]" (or: pip install rosettasciio h5py)'

# Rows are converted and checked in blocks of about this many pixels, so that temporaries stay small.
_CHUNK_PIXELS = 1 << 22
# Images whose output exceeds this many bytes are written through a memmap in row strips.
_STREAM_BYTES = 64 << 20
# Beyond this a TIFF needs 64-bit offsets (BigTIFF); ImageJ's format cannot hold it.
_CLASSIC_TIFF_LIMIT = 2**32 - 2**25
# Resolution tags in inch or centimetre that give a pixel larger than this (in metres) are a print
# resolution (72 dpi), not a scan's pixel size.
_PRINT_RESOLUTION_M = 1e-5
# Pixel sizes outside this range (metres) are not a micrograph's: 0.1 pm to 1 mm. They are ignored on reading
# (with a MetadataWarning) and never written.
PIXEL_SIZE_RANGE_M = (1e-13, 1e-3)
# Rec. 709 luma weights used by convert_rgb (the same as scikit-image's rgb2gray, to 4 digits).
_LUMA = (0.2126, 0.7152, 0.0722)
# Largest decompression ratio each TIFF compression can reach (deflate: 1032:1; PackBits: 64:1;
# LZW with TIFF's 12-bit table: about 1300:1). A header that declares more is a lie.
_MAX_RATIO = {8: 1100.0, 32946: 1100.0, 32773: 70.0, 5: 3000.0}

_UNIT_M = {"pm": 1e-12, "nm": 1e-9, "um": 1e-6, "mm": 1e-3, "cm": 1e-2, "m": 1.0}
_UNIT_ALIASES: dict[str, tuple[str, float]] = {}
for _canon, _names in {
    "pm": ("pm", "picometer", "picometers", "picometre", "picometres"),
    "nm": ("nm", "nanometer", "nanometers", "nanometre", "nanometres"),
    "um": ("um", "\u00b5m", "\u03bcm", "\\u00b5m", "micron", "microns", "micrometer", "micrometers",
           "micrometre", "micrometres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "m": ("m", "meter", "meters", "metre", "metres"),
}.items():
    for _n in _names:
        _UNIT_ALIASES[_n] = (_canon, 1.0)
for _n in ("a", "\u00e5", "angstrom", "angstroms", "ang"):
    _UNIT_ALIASES[_n] = ("nm", 0.1)
for _n in ("inch", "inches", "in"):
    _UNIT_ALIASES[_n] = ("mm", 25.4)


def canonical_length_unit(unit: str | None) -> tuple[str, float] | None:
    """Return ``(canonical, factor)`` for a length unit name, or None if it is not a length.

    Canonical units are "pm", "nm", "um", "mm", "cm" and "m"; a value in ``unit`` times ``factor`` is the
    value in ``canonical`` (Angstrom becomes nm with factor 0.1; "micron", "µm" and "\\u00B5m" become "um").
    """
    if unit is None:
        return None
    key = str(unit).strip().replace("\u212b", "\u00e5").lower()
    return _UNIT_ALIASES.get(key)


def _nice_length(value_m: float) -> tuple[float, str]:
    """Express a length in metres in nm (below 1 um), um (below 1 mm) or mm."""
    if value_m < 1e-6:
        return value_m / 1e-9, "nm"
    if value_m < 1e-3:
        return value_m / 1e-6, "um"
    return value_m / 1e-3, "mm"


def plausible_pixel_size(value: Any, unit: str | None) -> bool:
    """True when ``value`` ``unit`` is a finite, positive length within :data:`PIXEL_SIZE_RANGE_M` (0.1 pm to
    1 mm): the pixel size of a micrograph rather than a corrupt or foreign value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    cu = canonical_length_unit(unit)
    if cu is None or not math.isfinite(v) or v <= 0:
        return False
    metres = v * cu[1] * _UNIT_M[cu[0]]
    return PIXEL_SIZE_RANGE_M[0] <= metres <= PIXEL_SIZE_RANGE_M[1]


def _shown_length(value: Any, unit: str | None) -> str:
    try:
        return f"{float(value):.4g} {unit or ''}".strip()
    except (TypeError, ValueError):
        return f"{value!r} {unit or ''}".strip()


@dataclass
class MicrographMeta:
    """What a reader learnt about a micrograph besides its pixels.

    ``source_dtype`` is the numpy dtype name of the stored samples ("uint16", "float32", ...);
    ``pixel_size`` is the width of one pixel in ``unit`` (canonical: "pm", "nm", "um", "mm"), or None when
    the file carries no physical calibration; ``path`` is the file read; ``shape`` is (rows, columns) of
    the returned image; ``extra`` holds JSON-able details (format, frame, axes, where the pixel size came
    from, a y pixel size that differs from x, ...).
    """

    source_dtype: str
    pixel_size: float | None
    unit: str | None
    path: str
    shape: tuple[int, int]
    extra: dict = field(default_factory=dict)

    def pixel_size_in(self, unit: str) -> float | None:
        """Pixel size converted to ``unit`` (any name :func:`canonical_length_unit` knows), or None."""
        if self.pixel_size is None or self.unit is None:
            return None
        src = canonical_length_unit(self.unit)
        dst = canonical_length_unit(unit)
        if src is None:
            return None
        if dst is None:
            raise InputError(f"unknown length unit {unit!r}")
        metres = self.pixel_size * src[1] * _UNIT_M[src[0]]
        return metres / (dst[1] * _UNIT_M[dst[0]])

    def to_dict(self) -> dict:
        """A JSON-able dict of all fields."""
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MicrographMeta":
        """Inverse of :meth:`to_dict`."""
        return cls(
            source_dtype=str(d["source_dtype"]),
            pixel_size=None if d.get("pixel_size") is None else float(d["pixel_size"]),
            unit=d.get("unit"),
            path=str(d.get("path", "")),
            shape=tuple(int(v) for v in d["shape"]),
            extra=dict(d.get("extra") or {}),
        )


# --------------------------------------------------------------------------------------------------
# helpers


def _gib(nbytes: float) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.1f} MiB"
    if nbytes >= 2**10:
        return f"{nbytes / 2**10:.1f} KiB"
    return f"{int(nbytes)} bytes"


@functools.lru_cache(maxsize=1)
def _memory_limit_bytes() -> int | None:
    """Physical memory, or the cgroup limit when that is smaller."""
    total = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for cg in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(cg).read_text().strip()
            if text.isdigit():
                lim = int(text)
                if lim < 2**60:
                    total = lim if total is None else min(total, lim)
    return total


def _check_memory(path: str, shape: Sequence[int], itemsize: int) -> None:
    """Refuse to decode an image whose raw samples plus a float32 copy exceed the machine's memory."""
    n = math.prod(int(s) for s in shape)
    need = n * (itemsize + 4)
    if need <= _STREAM_BYTES:
        return
    limit = _memory_limit_bytes()
    if limit is not None and need > limit:
        dims = " x ".join(str(int(s)) for s in shape)
        raise InputError(
            f"{path}: declares {dims} samples, which need {_gib(need)} to read, more than this machine's "
            f"{_gib(limit)} of memory"
        )


class _LogCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - trivial
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[_LogCatcher]:
    """Keep tifffile's warnings about malformed files off stderr (our errors say what went wrong)."""
    logger = logging.getLogger("tifffile")
    catcher = _LogCatcher()
    old_propagate = logger.propagate
    logger.addHandler(catcher)
    logger.propagate = False
    try:
        yield catcher
    finally:
        logger.removeHandler(catcher)
        logger.propagate = old_propagate


def _row_block(width: int, channels: int = 1) -> int:
    return max(1, _CHUNK_PIXELS // max(1, width * channels))


def release_memmap_pages(array: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped array from this process (no-op for other arrays).

    Writable maps are flushed first. The data stay in the file and the page cache and are read back on
    the next access; only the process's resident set shrinks. Copy-on-write maps (mode "c") are left
    alone, since dropping their pages would drop the private changes.
    """
    mm = getattr(array, "_mmap", None)
    mode = getattr(array, "mode", None)
    if mm is None or mode not in ("r", "r+", "w+"):
        return
    with contextlib.suppress(ValueError, OSError, AttributeError):
        if mode != "r":
            mm.flush()
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)


def _is_memmap(a: Any) -> bool:
    return getattr(a, "_mmap", None) is not None


def is_memmap(a: Any) -> bool:
    """True for a memory-mapped array (as :func:`open_micrograph_memmap` returns)."""
    return _is_memmap(a)


# --------------------------------------------------------------------------------------------------
# validation


def validate_image(image: np.ndarray, *, min_size: int | Sequence[int] | None = None, name: str | None = None) -> None:
    """Raise :class:`InputError` unless ``image`` is a usable 2-D micrograph.

    Checks, in order: 2-D; at least ``min_size`` pixels in each direction (an int for both, or (rows,
    cols); by default 2 x 2, since a single row, column or pixel holds no image); no NaN or Inf pixel;
    not constant. ``name`` (e.g. the file) starts the message. Works in row blocks, so it is cheap on
    memory for a memmap of any size.
    """
    prefix = f"{name}: " if name else "image: "
    a = image
    if not hasattr(a, "ndim") or not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.ndim != 2:
        raise InputError(f"{prefix}expected a 2-D image, got an array of shape {tuple(a.shape)}")
    h, w = int(a.shape[0]), int(a.shape[1])
    if min_size is None:
        mh, mw = 2, 2
    elif isinstance(min_size, (int, np.integer)):
        mh = mw = int(min_size)
    else:
        mh, mw = (int(v) for v in min_size)
    if h == 0 or w == 0:
        raise InputError(f"{prefix}has zero width or height ({h} x {w} pixels)")
    if h < mh or w < mw:
        raise InputError(f"{prefix}is too small: {h} x {w} pixels, need at least {mh} x {mw}")
    if a.dtype.kind == "c":
        raise InputError(f"{prefix}has complex pixels ({a.dtype}); expected real intensities")
    if a.dtype.kind not in "biuf":
        raise InputError(f"{prefix}has non-numeric pixels ({a.dtype})")
    vmin = math.inf
    vmax = -math.inf
    n_bad = 0
    first_bad = None
    step = _row_block(w)
    mapped = _is_memmap(a)
    for r in range(0, h, step):
        block = np.asarray(a[r:r + step])
        if mapped:
            release_memmap_pages(a)
        if not block.size:
            continue
        bmin, bmax = float(block.min()), float(block.max())  # NaN propagates through min/max
        if block.dtype.kind == "f" and not (math.isfinite(bmin) and math.isfinite(bmax)):
            bad = np.argwhere(~np.isfinite(block))
            if first_bad is None:
                first_bad = (int(bad[0][0]) + r, int(bad[0][1]))
            n_bad += int(bad.shape[0])
            continue
        vmin = min(vmin, bmin)
        vmax = max(vmax, bmax)
    if n_bad:
        raise InputError(
            f"{prefix}has {n_bad} NaN/Inf pixel(s) (first at row {first_bad[0]}, column {first_bad[1]})"
        )
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and max(abs(vmin), abs(vmax)) > _F32_MAX:
        raise InputError(f"{prefix}holds values up to {max(abs(vmin), abs(vmax)):.3g}, beyond the range of 32-bit "
                         f"floats (+-{_F32_MAX:.3g}) used for processing; rescale the image (e.g. to counts)")
    if vmin == vmax:
        raise InputError(f"{prefix}is constant (every pixel is {vmin:g}); there is nothing to denoise")


# --------------------------------------------------------------------------------------------------
# format probing: each probe learns shape, dtype, frames, samples and pixel size without decoding


@dataclass
class _Probe:
    path: str
    fmt: str
    dtype: np.dtype
    frames: int
    height: int
    width: int
    samples: int
    pixel_size: float | None = None
    unit: str | None = None
    extra: dict = field(default_factory=dict)
    load: Callable[[int], np.ndarray] | None = None  # frame -> (H, W) or (H, W, S) raw samples
    memmap: Callable[[int], np.ndarray | None] | None = None  # frame -> 2-D read-only memmap or None


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _check_file(path: Path) -> int:
    """Existence, type, readability and non-emptiness; returns the file size."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot be read (permission denied)")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: is empty (0 bytes)")
    return size


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[:8] == _PNG_MAGIC:
        return "png"
    if head[:6] == _NPY_MAGIC:
        return "npy"
    if head[:8] == _HDF5_MAGIC:
        return "emd"
    if len(head) >= 4 and struct.unpack(">I", head[:4])[0] in (3, 4) and path.suffix.lower() in (".dm3", ".dm4"):
        return "dm"
    suffix = path.suffix.lower()
    if suffix in (".dm3", ".dm4"):
        return "dm"
    if suffix == ".emd":
        return "emd"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        raise InputError(f"{path}: is a text file, not a TIFF, PNG, NPY, DM3/DM4 or EMD image")
    raise InputError(f"{path}: is not a TIFF, PNG, NPY, DM3/DM4 or EMD image (it starts with {head[:8]!r})")


def _probe(path: str | os.PathLike, eager: bool = False) -> _Probe:
    """Learn what the file holds; with ``eager``, small TIFFs are decoded while the file is open."""
    p = Path(path)
    size = _check_file(p)
    kind = _sniff(p)
    if kind == "tiff":
        return _probe_tiff(p, size, eager)
    if kind == "png":
        return _probe_png(p, size)
    if kind == "npy":
        return _probe_npy(p, size)
    return _probe_rsciio(p, kind)


def _check_dtype(path: Any, dtype: np.dtype) -> np.dtype:
    if dtype.kind == "c":
        raise InputError(f"{path}: has complex pixels ({dtype.name}); expected real intensities")
    if dtype.names and not {"R", "G", "B"} <= set(dtype.names):
        raise InputError(f"{path}: has structured pixels ({dtype}); expected plain numbers")
    if not dtype.names and dtype.kind not in "biuf":
        raise InputError(f"{path}: has pixels of type {dtype} that are not numbers")
    return dtype


# ---- TIFF


def _rational(tag: Any) -> float | None:
    if tag is None:
        return None
    v = tag.value if hasattr(tag, "value") else tag
    try:
        if isinstance(v, (tuple, list)) and len(v) == 2:
            num, den = float(v[0]), float(v[1])
            return num / den if den else None
        return float(v)
    except (TypeError, ValueError):
        return None


def _tiff_pixel_size(tif: Any, page: Any) -> tuple[float | None, str | None, dict]:
    """Pixel size from ImageJ metadata, our JSON description, OME-XML, FEI tags or resolution tags."""
    extra: dict = {}
    tags = page.tags
    xres = _rational(tags.get("XResolution"))
    yres = _rational(tags.get("YResolution"))

    def done(px: float, unit: str, source: str, ypx: float | None = None) -> tuple[float, str, dict]:
        extra["pixel_size_source"] = source
        if ypx is not None and px > 0 and abs(ypx - px) > 1e-6 * px:
            extra["pixel_size_y"] = ypx
        return px, unit, extra

    if tif.is_imagej:
        md = tif.imagej_metadata or {}
        cu = canonical_length_unit(md.get("unit"))
        if cu is not None and xres and xres > 0:
            px = cu[1] / xres
            ypx = cu[1] / yres if yres and yres > 0 else None
            if str(md.get("unit")).strip().lower() in ("inch", "inches", "in", "cm") and (
                px * _UNIT_M[cu[0]] > _PRINT_RESOLUTION_M
            ):
                # ImageJ keeps the dpi of a scanned or exported picture as an "inch" calibration
                extra["print_resolution"] = f"{xres:g} pixels per {md.get('unit')}"
                return None, None, extra
            return done(px, cu[0], "imagej", ypx)
    if getattr(tif, "is_shaped", False):
        with contextlib.suppress(Exception):
            md = (tif.shaped_metadata or ({},))[0]
            cu = canonical_length_unit(md.get("unit"))
            px = md.get("pixel_size")
            if cu is not None and px is not None and float(px) > 0:
                ypx = md.get("pixel_size_y")
                return done(float(px) * cu[1], cu[0], "description",
                            None if ypx is None else float(ypx) * cu[1])
    if tif.is_ome:
        with contextlib.suppress(Exception):
            root = ET.fromstring(tif.ome_metadata)
            for el in root.iter():
                if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
                    cu = canonical_length_unit(el.get("PhysicalSizeXUnit", "\u00b5m"))
                    px = float(el.get("PhysicalSizeX"))
                    if cu is not None and px > 0:
                        ypx = el.get("PhysicalSizeY")
                        return done(px * cu[1], cu[0], "ome", None if ypx is None else float(ypx) * cu[1])
                    break
    if getattr(tif, "is_fei", False):
        with contextlib.suppress(Exception):
            md = tif.fei_metadata or {}
            for section in ("Scan", "EScan", "Image"):
                sec = md.get(section) or {}
                if sec.get("PixelWidth"):
                    px_m = float(sec["PixelWidth"])
                    if px_m > 0:
                        val, unit = _nice_length(px_m)
                        ph = sec.get("PixelHeight")
                        ypx = None if not ph else float(ph) / _UNIT_M[unit]
                        return done(val, unit, "fei", ypx)
    resunit = tags.get("ResolutionUnit")
    resunit = int(resunit.value) if resunit is not None else 2
    if xres and xres > 0 and resunit in (2, 3):
        per_m = 0.0254 if resunit == 2 else 0.01
        px_m = per_m / xres
        if px_m > _PRINT_RESOLUTION_M:
            extra["print_resolution"] = f"{xres:g} pixels per {'inch' if resunit == 2 else 'cm'}"
            return None, None, extra
        val, unit = _nice_length(px_m)
        ypx = None
        if yres and yres > 0:
            ypx = per_m / yres / _UNIT_M[unit]
        return done(val, unit, "resolution-tags", ypx)
    return None, None, extra


def _tiff_layout(path: Path, series: Any) -> tuple[int, int, int, int, list[int], int, int | None]:
    """(frames, height, width, samples, frame_axes, y_axis, sample_axis) of a tifffile series."""
    shape = [int(s) for s in series.shape]
    axes = str(series.axes)
    if len(shape) < 2:
        raise InputError(f"{path}: holds a {len(shape)}-D array of shape {tuple(shape)}, not an image")
    si = axes.index("S") if "S" in axes else None
    if "Y" in axes and "X" in axes:
        yi, xi = axes.index("Y"), axes.index("X")
    else:
        rest = [i for i in range(len(shape)) if i != si]
        yi, xi = rest[-2], rest[-1]
    frame_axes = [i for i in range(len(shape)) if i not in (yi, xi, si)]
    frames = math.prod(shape[i] for i in frame_axes) if frame_axes else 1
    samples = shape[si] if si is not None else 1
    return frames, shape[yi], shape[xi], samples, frame_axes, yi, si


def _to_frames(arr: np.ndarray, frame_axes: list[int], yi: int, si: int | None) -> np.ndarray:
    """Reorder a series array to (frames, H, W[, S])."""
    order = list(frame_axes) + [yi] + [i for i in range(arr.ndim) if i not in frame_axes and i != yi and i != si]
    if si is not None:
        order.append(si)
    a = np.transpose(arr, order)
    nf = math.prod(a.shape[: len(frame_axes)]) if frame_axes else 1
    return a.reshape((nf,) + a.shape[len(frame_axes):])


def _check_tiff_data(path: Path, series: Any, file_size: int) -> None:
    """Compare the data the header declares with what the file holds, before anything is decoded."""
    declared = int(series.size) * int(np.dtype(series.dtype).itemsize)
    offset = getattr(series, "dataoffset", None)
    if offset is not None:
        if offset + declared > file_size:
            raise InputError(
                f"{path}: is truncated or corrupt: its header declares {tuple(series.shape)} "
                f"{np.dtype(series.dtype).name} samples ({_gib(declared)}) but the file holds "
                f"{_gib(max(0, file_size - offset))} of image data"
            )
        return
    for page in series.pages:
        if page is None:
            continue
        offsets = tuple(int(v) for v in (getattr(page, "dataoffsets", None) or ()))
        counts = tuple(int(v) for v in (getattr(page, "databytecounts", None) or ()))
        if not offsets or not counts:
            continue
        end = max(o + c for o, c in zip(offsets, counts))
        held = sum(counts)
        key = getattr(page, "keyframe", page)
        bps = int(getattr(key, "bitspersample", 8) or 8)
        page_bytes = math.prod(int(s) for s in key.shape) * bps / 8.0
        compression = int(getattr(key, "compression", 1) or 1)
        if end > file_size:
            raise InputError(
                f"{path}: is truncated: image data run to byte {end} but the file has {file_size} bytes"
            )
        if compression == 1 and held < math.floor(page_bytes):
            raise InputError(
                f"{path}: is truncated or corrupt: its header declares {tuple(key.shape)} pixels "
                f"({_gib(page_bytes)}) but holds only {_gib(held)} of image data"
            )
        ratio = _MAX_RATIO.get(compression)
        if ratio is not None and page_bytes > ratio * max(held, 1) + 4096:
            raise InputError(
                f"{path}: is corrupt: its header declares {tuple(key.shape)} pixels ({_gib(page_bytes)}) "
                f"but holds only {_gib(held)} of compressed data, more than the compression can pack"
            )


def _decode_error(path: Any, exc: BaseException) -> InputError:
    text = " ".join(str(exc).split())
    if "imagecodecs" in text:
        return InputError(
            f"{path}: its compression needs the imagecodecs package ({text}): pip install imagecodecs, "
            f"or save it uncompressed"
        )
    return InputError(f"{path}: could not decode the image data ({type(exc).__name__}: {text})")


def _probe_tiff(path: Path, file_size: int, eager: bool = False) -> _Probe:
    import tifffile

    preloaded: list[np.ndarray] = []
    with _quiet_tifffile() as log:
        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise InputError(f"{path}: holds no image")
                series = tif.series[0]
                if len(tif.series) > 1:
                    sizes = ", ".join("x".join(str(int(v)) for v in sr.shape) for sr in tif.series[:4])
                    more = ", ..." if len(tif.series) > 4 else ""
                    raise InputError(
                        f"{path}: holds {len(tif.series)} separate images ({sizes}{more}); only the first would "
                        f"be read and the others dropped: save each image as its own file")
                if getattr(series, "levels", None) and len(series.levels) > 1:
                    series = series.levels[0]
                dtype = series.dtype
                if dtype is None:
                    raise InputError(f"{path}: has a sample format that cannot be read")
                dtype = _check_dtype(path, np.dtype(dtype))
                frames, h, w, samples, frame_axes, yi, si = _tiff_layout(path, series)
                if h == 0 or w == 0:
                    raise InputError(f"{path}: has zero width or height ({h} x {w} pixels)")
                _check_tiff_data(path, series, file_size)
                page = series.pages[0] if series.pages and series.pages[0] is not None else tif.pages[0]
                key = getattr(page, "keyframe", page)
                px, unit, extra = _tiff_pixel_size(tif, key)
                mappable = getattr(series, "dataoffset", None) is not None
                per_page = (
                    not mappable
                    and len(series.pages) == frames
                    and (si is None or si > yi)
                )
                extra.update(
                    format="tiff",
                    axes=str(series.axes),
                    series_shape=[int(s) for s in series.shape],
                    n_series=len(tif.series),
                    bigtiff=bool(tif.is_bigtiff),
                    compression=str(getattr(getattr(key, "compression", None), "name", key.compression)),
                )
                if tif.is_imagej:
                    extra["imagej"] = True
                if eager and int(series.size) * dtype.itemsize <= _STREAM_BYTES:
                    try:
                        preloaded.append(_to_frames(series.asarray(), frame_axes, yi, si))
                    except Exception as exc:
                        raise _decode_error(path, exc) from None
        except InputError:
            raise
        except Exception as exc:  # tifffile raises many kinds for malformed files
            text = " ".join(str(exc).split())
            if log.messages:
                text += f" ({log.messages[0]})"
            raise InputError(f"{path}: is not a readable TIFF file: {text}") from None

    def load(frame: int) -> np.ndarray:
        if preloaded:
            return preloaded[0][frame]
        _check_memory(str(path), (h, w, samples) if per_page or frames == 1 else (frames, h, w, samples),
                      dtype.itemsize)
        with _quiet_tifffile():
            try:
                if mappable:
                    mm = tifffile.memmap(path, mode="r")
                    return _to_frames(mm, frame_axes, yi, si)[frame]
                with tifffile.TiffFile(path) as tif2:
                    if per_page and frames > 1:
                        arr = tif2.asarray(key=frame, series=0)
                        return arr
                    s = tif2.series[0]
                    arr = s.asarray()
                return _to_frames(arr, frame_axes, yi, si)[frame]
            except InputError:
                raise
            except Exception as exc:
                raise _decode_error(path, exc) from None

    def memmap(frame: int) -> np.ndarray | None:
        if not mappable or samples != 1:
            return None
        with _quiet_tifffile():
            try:
                mm = tifffile.memmap(path, mode="r")
            except Exception:
                return None
        out = _to_frames(mm, frame_axes, yi, si)[frame]
        return out if _is_memmap(out) else None

    return _Probe(str(path), "tiff", dtype, frames, h, w, samples, px, unit, extra, load, memmap)


# ---- PNG


def _png_chunks(path: Path, file_size: int) -> tuple[dict, list[tuple[bytes, int, int]]]:
    """Walk the chunk list (without decompressing) and return IHDR fields and (type, offset, length)."""
    chunks: list[tuple[bytes, int, int]] = []
    with open(path, "rb") as fh:
        fh.seek(8)
        pos = 8
        ihdr = None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise InputError(f"{path}: is a truncated PNG (no IEND chunk)")
            length, ctype = struct.unpack(">I4s", head)
            if pos + 12 + length > file_size:
                raise InputError(f"{path}: is a truncated PNG ({ctype.decode('latin-1')} chunk runs past the end)")
            if ctype == b"IHDR":
                data = fh.read(length)
                if length < 13:
                    raise InputError(f"{path}: is a corrupt PNG (short IHDR)")
                w, h, depth, color = struct.unpack(">IIBB", data[:10])
                ihdr = {"width": w, "height": h, "depth": depth, "color": color}
                fh.seek(4, 1)
            elif ctype == b"pHYs":
                data = fh.read(length)
                fh.seek(4, 1)
                if length >= 9:
                    ihdr = ihdr or {}
                    ihdr["phys"] = struct.unpack(">IIB", data[:9])
            else:
                fh.seek(length + 4, 1)
            chunks.append((ctype, pos, length))
            pos += 12 + length
            if ctype == b"IEND":
                break
    if not ihdr or "width" not in ihdr:
        raise InputError(f"{path}: is a corrupt PNG (no IHDR chunk)")
    return ihdr, chunks


def _probe_png(path: Path, file_size: int) -> _Probe:
    ihdr, chunks = _png_chunks(path, file_size)
    w, h, depth, color = ihdr["width"], ihdr["height"], ihdr["depth"], ihdr["color"]
    if h == 0 or w == 0:
        raise InputError(f"{path}: has zero width or height ({h} x {w} pixels)")
    samples = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color)
    if samples is None:
        raise InputError(f"{path}: is a corrupt PNG (colour type {color})")
    dtype = np.dtype(np.uint16 if depth == 16 else np.uint8)
    raw_bytes = h * (1 + math.ceil(w * (1 if color == 3 else samples) * depth / 8))
    idat = sum(length for ctype, _, length in chunks if ctype == b"IDAT")
    if raw_bytes > 1100 * max(idat, 1) + 4096:
        raise InputError(
            f"{path}: is corrupt: its header declares {w} x {h} pixels but holds only {_gib(idat)} of "
            f"compressed data, more than PNG's compression can pack"
        )
    px = unit = None
    extra: dict = {"format": "png", "bit_depth": depth, "color_type": color}
    phys = ihdr.get("phys")
    if phys and phys[2] == 1 and phys[0] > 0:
        px_m = 1.0 / phys[0]
        if px_m > _PRINT_RESOLUTION_M:
            extra["print_resolution"] = f"{phys[0]} pixels per metre"
        else:
            px, unit = _nice_length(px_m)
            extra["pixel_size_source"] = "png-phys"
            if phys[1] > 0 and phys[1] != phys[0]:
                extra["pixel_size_y"] = 1.0 / phys[1] / _UNIT_M[unit]

    def load(frame: int) -> np.ndarray:
        import cv2

        _check_memory(str(path), (h, w, samples), dtype.itemsize)
        buf = np.fromfile(path, dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(f"{path}: the PNG could not be decoded (truncated or corrupt data)")
        if img.ndim == 3 and img.shape[2] >= 3:
            img = img[..., [2, 1, 0] + ([3] if img.shape[2] == 4 else [])]  # BGR(A) -> RGB(A)
        return img

    return _Probe(str(path), "png", dtype, 1, h, w, samples, px, unit, extra, load, lambda f: None)


# ---- NPY


def _probe_npy(path: Path, file_size: int) -> _Probe:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        text = " ".join(str(exc).split())
        if "object" in text.lower() or "pickle" in text.lower():
            raise InputError(f"{path}: holds Python objects, not pixel values; it cannot be read safely") from None
        if "mmap length" in text or "greater than file size" in text or "cannot reshape" in text:
            raise InputError(f"{path}: is truncated: its header declares more data than the file holds") from None
        raise InputError(f"{path}: is not a readable NPY file: {text}") from None
    except (OSError, EOFError, SyntaxError, TypeError) as exc:
        raise InputError(f"{path}: is not a readable NPY file: {' '.join(str(exc).split())}") from None
    shape = tuple(int(s) for s in arr.shape)
    dtype = _check_dtype(path, arr.dtype)
    if len(shape) < 2 or len(shape) > 4:
        raise InputError(f"{path}: holds a {len(shape)}-D array of shape {shape}, not an image")
    rgb = len(shape) >= 3 and shape[-1] in (2, 3, 4) and (len(shape) == 4 or shape[0] > shape[-1])
    if len(shape) == 4 and not rgb:
        raise InputError(f"{path}: holds a 4-D array of shape {shape}; expected (frames, rows, cols, 3 or 4)")
    if rgb:
        samples = shape[-1]
        frames = shape[0] if len(shape) == 4 else 1
        h, w = shape[-3], shape[-2]
    else:
        samples = 1
        frames = shape[0] if len(shape) == 3 else 1
        h, w = shape[-2], shape[-1]
    if h == 0 or w == 0 or frames == 0:
        raise InputError(f"{path}: has zero width or height (array shape {shape})")
    declared = math.prod(shape) * dtype.itemsize
    if declared > file_size:
        raise InputError(f"{path}: is truncated: its header declares {_gib(declared)} of data, the file has {_gib(file_size)}")
    nd = len(shape)
    del arr

    def pick(frame: int) -> np.ndarray:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        if (rgb and nd == 4) or (not rgb and nd == 3):
            a = a[frame]
        return a

    def load(frame: int) -> np.ndarray:
        _check_memory(str(path), (h, w, samples), dtype.itemsize)
        return pick(frame)

    def memmap(frame: int) -> np.ndarray | None:
        if samples != 1 or dtype.names:
            return None
        a = pick(frame)
        return a if _is_memmap(a) else None

    extra = {"format": "npy", "array_shape": list(shape)}
    return _Probe(str(path), "npy", dtype, frames, h, w, samples, None, None, extra, load, memmap)


# ---- DM3 / DM4 / EMD through RosettaSciIO


def _missing_reader(path: Path, suffix: str, exc: ImportError) -> InputError:
    """The error for a reader that cannot be imported, naming the missing package as what it is."""
    missing = (getattr(exc, "name", None) or "").split(".")[0]
    if missing in ("", "rsciio"):
        return InputError(
            f"{path}: reading {suffix} files needs the optional RosettaSciIO reader (GPL-3), which is not "
            f"installed: {DM_EXTRA_HINT}")
    what = {"h5py": "h5py (the HDF5 library EMD files are written in)"}.get(missing, f"the package {missing}")
    return InputError(
        f"{path}: reading {suffix} files needs {what}, which is not installed (RosettaSciIO is): "
        f'pip install "stem-denoise[dm]" (or: pip install {missing})')


def _probe_rsciio(path: Path, kind: str) -> _Probe:
    suffix = path.suffix.lower() or f".{kind}"
    try:
        if kind == "dm":
            from rsciio.digitalmicrograph import file_reader
        else:
            from rsciio.emd import file_reader
    except ImportError as exc:
        raise _missing_reader(path, suffix, exc) from None
    try:
        signals = file_reader(str(path))
    except ImportError as exc:  # a reader's own dependency, imported when it is first needed
        raise _missing_reader(path, suffix, exc) from None
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise InputError(f"{path}: RosettaSciIO could not read it ({type(exc).__name__}: {text})") from None
    if isinstance(signals, dict):
        signals = [signals]
    images = []
    titles = []
    for sig in signals or []:
        data = sig.get("data")
        if data is None:
            continue
        data = np.asarray(data)
        axes = list(sig.get("axes") or [])
        title = str(((sig.get("metadata") or {}).get("General") or {}).get("title", ""))
        titles.append(title)
        if axes and all("navigate" in ax for ax in axes):
            n_sig = sum(1 for ax in axes if not ax["navigate"])
        else:
            n_sig = min(2, data.ndim)
        if n_sig == 2 and data.ndim >= 2:
            images.append((sig, data, axes, title))
    if not images:
        raise InputError(f"{path}: holds no 2-D image (signals: {', '.join(t or '?' for t in titles) or 'none'})")
    chosen = images[0]
    for key in ("HAADF", "ADF"):
        hits = [im for im in images if key in im[3].upper()]
        if hits:
            chosen = hits[0]
            break
    sig, data, axes, title = chosen
    dtype = _check_dtype(path, data.dtype)
    h, w = int(data.shape[-2]), int(data.shape[-1])
    frames = math.prod(int(s) for s in data.shape[:-2]) if data.ndim > 2 else 1
    if h == 0 or w == 0:
        raise InputError(f"{path}: has zero width or height ({h} x {w} pixels)")
    extra: dict = {"format": kind, "signal_title": title, "images_in_file": [im[3] for im in images]}
    px = unit = None
    xaxis = None
    if axes:
        indexed = [ax for ax in axes if "index_in_array" in ax]
        if len(indexed) == len(axes):
            xaxis = max(axes, key=lambda ax: ax["index_in_array"])
        else:
            xaxis = axes[-1]
    if xaxis is not None:
        units = xaxis.get("units")
        scale = xaxis.get("scale")
        cu = canonical_length_unit(units if isinstance(units, str) else None)
        if cu is not None and scale is not None and float(scale) > 0:
            px, unit = float(scale) * cu[1], cu[0]
            extra["pixel_size_source"] = "rsciio"
        elif units:
            extra["axis_units"] = str(units)
    stack = data.reshape((frames, h, w)) if data.ndim != 2 else data[None]

    def load(frame: int) -> np.ndarray:
        a = stack[frame]
        if a.dtype.names:
            a = np.stack([a["R"], a["G"], a["B"]], axis=-1)
        return a

    samples = 3 if dtype.names else 1
    src_dtype = np.dtype(dtype["R"]) if dtype.names else dtype
    return _Probe(str(path), kind, src_dtype, frames, h, w, samples, px, unit, extra, load, lambda f: None)


# --------------------------------------------------------------------------------------------------
# reading


def _select_frame(probe: _Probe, frame: int | None) -> int:
    n = probe.frames
    if frame is None:
        if n > 1:
            raise InputError(
                f"{probe.path}: holds a stack of {n} frames; choose one with frame=k (0..{n - 1})"
            )
        return 0
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise InputError(f"{probe.path}: frame must be an integer, got {frame!r}")
    if not 0 <= int(frame) < n:
        raise InputError(
            f"{probe.path}: frame {frame} is out of range: the file holds {n} frame(s) (0..{n - 1})"
        )
    return int(frame)


def _check_rgb(probe: _Probe, convert_rgb: bool) -> None:
    if probe.samples > 1 and not convert_rgb:
        kind = {2: "a grey+alpha", 3: "an RGB", 4: "an RGBA"}.get(probe.samples, f"a {probe.samples}-channel")
        raise InputError(
            f"{probe.path}: is {kind} image; micrographs are single-channel: save it as a greyscale image"
        )


def _meta_from(probe: _Probe, frame: int, convert_rgb: bool) -> MicrographMeta:
    extra = dict(probe.extra)
    extra["frames"] = probe.frames
    if probe.frames > 1:
        extra["frame"] = frame
    if probe.samples > 1:
        extra["converted_from_rgb"] = bool(convert_rgb)
        extra["samples"] = probe.samples
    src = np.dtype(probe.dtype)
    px, unit = probe.pixel_size, probe.unit
    source = extra.get("pixel_size_source", "the file")
    span = "0.1 pm and 1 mm"
    if px is not None and not plausible_pixel_size(px, unit):
        msg = (f"{probe.path}: pixel size {_shown_length(px, unit)} (from {source}) is not a positive length "
               f"between {span}; it is ignored and the output carries no pixel size")
        warnings.warn(msg, MetadataWarning, stacklevel=3)
        extra.setdefault("warnings", []).append(msg)
        extra["pixel_size_ignored"] = _shown_length(px, unit)
        extra.pop("pixel_size_y", None)
        px = unit = None
    if px is not None and "pixel_size_y" in extra and not plausible_pixel_size(extra["pixel_size_y"], unit):
        msg = (f"{probe.path}: pixel height {_shown_length(extra['pixel_size_y'], unit)} (from {source}) is not a "
               f"positive length between {span}; square pixels of {_shown_length(px, unit)} are assumed")
        warnings.warn(msg, MetadataWarning, stacklevel=3)
        extra.setdefault("warnings", []).append(msg)
        extra["pixel_size_y_ignored"] = _shown_length(extra.pop("pixel_size_y"), unit)
    return MicrographMeta(
        source_dtype=src.name,
        pixel_size=px,
        unit=unit,
        path=probe.path,
        shape=(probe.height, probe.width),
        extra=extra,
    )


_F32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(block: np.ndarray, name: Any) -> None:
    """Refuse samples whose magnitude float32 cannot hold (they would turn into Inf)."""
    if block.dtype.kind != "f" or block.dtype.itemsize <= 4 or not block.size:
        return
    with np.errstate(invalid="ignore"):
        big = float(np.nanmax(np.abs(block))) if not np.isnan(block).all() else 0.0
    if big > _F32_MAX:
        raise InputError(f"{name}: holds values up to {big:.3g}, beyond the range of 32-bit floats "
                         f"(+-{_F32_MAX:.3g}) used for processing; rescale the image (e.g. to counts)")


def _as_float32(raw: np.ndarray, name: Any = "image") -> np.ndarray:
    """Convert (H, W) or (H, W, S) samples to a new C-contiguous (H, W) float32 array, in row blocks.

    Multi-channel samples become Rec. 709 luminance of the first three channels (alpha ignored; a
    grey+alpha image keeps its grey channel). float64 values beyond float32's range raise
    :class:`InputError` (``name`` starts the message) instead of turning into Inf.
    """
    h, w = int(raw.shape[0]), int(raw.shape[1])
    ch = int(raw.shape[2]) if raw.ndim == 3 else 1
    out = np.empty((h, w), dtype=np.float32)
    step = _row_block(w, ch)
    mapped = _is_memmap(raw)
    for r in range(0, h, step):
        block = raw[r:r + step]
        _check_float32_range(np.asarray(block), name)
        if raw.ndim == 2:
            out[r:r + step] = block
        elif ch < 3:
            out[r:r + step] = block[..., 0]
        else:
            b = np.asarray(block[..., :3], dtype=np.float64)
            out[r:r + step] = b[..., 0] * _LUMA[0] + b[..., 1] * _LUMA[1] + b[..., 2] * _LUMA[2]
        if mapped:
            release_memmap_pages(raw)
    return out


def read_micrograph(
    path: str | os.PathLike,
    *,
    frame: int | None = None,
    convert_rgb: bool = False,
    validate: bool = True,
    min_size: int | Sequence[int] | None = None,
) -> tuple[np.ndarray, MicrographMeta]:
    """Read one micrograph as a 2-D float32 array in the file's own units, with its metadata.

    Reads TIFF (8/16/32-bit integer and float, BigTIFF, ImageJ, OME, FEI; pixel size from their metadata
    or the resolution tags), PNG (8/16-bit; pixel size from pHYs), NPY (no pickles; memory-mapped while
    converting) and, with the optional RosettaSciIO extra, DM3/DM4/EMD. A stack needs ``frame`` (0-based);
    an RGB/RGBA image needs ``convert_rgb=True`` and then gives its Rec. 709 luminance. With ``validate``
    (the default) the image must pass :func:`validate_image` (no NaN/Inf, not constant, at least
    ``min_size`` pixels); pass ``validate=False`` for masks and maps that may be constant.
    Raises :class:`InputError` with one line naming the file for every bad input.
    """
    probe = _probe(path, eager=True)
    k = _select_frame(probe, frame)
    _check_rgb(probe, convert_rgb)
    raw = probe.load(k)
    if raw.ndim not in (2, 3) or raw.shape[0] != probe.height or raw.shape[1] != probe.width:
        raise InputError(f"{probe.path}: decoded to an unexpected shape {tuple(raw.shape)}")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    if raw.dtype == np.bool_:
        raw = raw.view(np.uint8)
    image = _as_float32(raw, probe.path)
    del raw
    meta = _meta_from(probe, k, convert_rgb)
    if validate:
        validate_image(image, min_size=min_size, name=probe.path)
    return image, meta


def read_micrograph_meta(
    path: str | os.PathLike, *, frame: int | None = None, convert_rgb: bool = False
) -> MicrographMeta:
    """The :class:`MicrographMeta` that :func:`read_micrograph` would return, without decoding pixels.

    Cheap for TIFF, PNG and NPY (headers only); DM/EMD files are read in full by RosettaSciIO. The same
    frame and RGB rules apply, so a stack without ``frame`` raises :class:`InputError`.
    """
    probe = _probe(path)
    k = _select_frame(probe, frame)
    _check_rgb(probe, convert_rgb)
    return _meta_from(probe, k, convert_rgb)


def open_micrograph_memmap(path: str | os.PathLike, *, frame: int | None = None) -> np.memmap | None:
    """Map a micrograph read-only, without reading it, or return None when it cannot be mapped.

    Works for uncompressed, untiled single-channel TIFFs (strips stored contiguously, as tifffile,
    ImageJ and most instruments write them) and for NPY files; returns None for compressed or tiled
    TIFFs, PNG, DM and EMD, and for RGB images (use :func:`read_micrograph` then). The array has the
    file's dtype and shape (rows, cols), possibly big-endian: convert each tile with
    ``np.asarray(tile, dtype=np.float32)``. Writing to it raises. Pixels are not validated (use
    :func:`validate_image`, which streams); header problems (missing, truncated, stack without
    ``frame``) raise :class:`InputError` as for :func:`read_micrograph`. Mapped pages count towards the
    process's resident memory while touched: call :func:`release_memmap_pages` as you go.
    """
    probe = _probe(path)
    k = _select_frame(probe, frame)
    if probe.memmap is None:
        return None
    return probe.memmap(k)


# --------------------------------------------------------------------------------------------------
# writing

_WRITE_DTYPES = {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64"}
_IMAGEJ_DTYPES = {"uint8", "uint16", "float32"}


def _out_dtype(image: np.ndarray, meta: MicrographMeta | None, dtype: str | np.dtype) -> np.dtype:
    if isinstance(dtype, str) and dtype == "source":
        name = meta.source_dtype if meta is not None else np.dtype(image.dtype).name
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise InputError(f"unknown output dtype {dtype!r}; use 'source', 'float32' or a numpy dtype name") from None
    name = {"bool": "uint8", "float16": "float32"}.get(name, name)
    if name not in _WRITE_DTYPES:
        raise InputError(f"cannot write pixels of type {name!r} to TIFF; use one of {sorted(_WRITE_DTYPES)}")
    return np.dtype(name)


def _check_target(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() not in _TIFF_SUFFIXES:
        raise InputError(f"{p}: micrographs are written as TIFF; give a .tif or .tiff name")
    if p.is_dir():
        raise InputError(f"{p}: is a folder")
    return p


def _tiff_kwargs(shape: tuple[int, int], dtype: np.dtype, meta: MicrographMeta | None) -> dict:
    """tifffile.imwrite keywords: ImageJ format (Fiji reads the unit) where it can hold the data."""
    nbytes = shape[0] * shape[1] * dtype.itemsize
    px = unit = None
    # only a plausible pixel size is written (0.1 pm to 1 mm, finite, positive): never a corrupt one
    if meta is not None and meta.pixel_size is not None and plausible_pixel_size(meta.pixel_size, meta.unit):
        cu = canonical_length_unit(meta.unit)
        px, unit = float(meta.pixel_size) * cu[1], cu[0]
    pxy = None
    if px is not None and meta is not None and meta.extra.get("pixel_size_y") is not None:
        if plausible_pixel_size(meta.extra["pixel_size_y"], meta.unit):
            pxy = float(meta.extra["pixel_size_y"]) * canonical_length_unit(meta.unit)[1]
    if px is not None and not (2.0**-24 < 1.0 / px < 2.0**31):
        # TIFF resolutions are 32-bit rationals: restate an odd unit (1e-11 m) as a fitting one (0.01 nm)
        scale = _UNIT_M[unit]
        px, unit = _nice_length(px * scale)
        pxy = None if pxy is None else pxy * scale / _UNIT_M[unit]
        if not (2.0**-24 < 1.0 / px < 2.0**31):
            px = unit = pxy = None
    if pxy is not None and not (2.0**-24 < 1.0 / pxy < 2.0**31):
        pxy = None  # a pixel height the resolution tag cannot hold next to this width: square pixels
    kw: dict = {"photometric": "minisblack"}
    if dtype.name in _IMAGEJ_DTYPES and nbytes < _CLASSIC_TIFF_LIMIT:
        kw["imagej"] = True
        md: dict = {"axes": "YX"}
        if px is not None:
            md["unit"] = "micron" if unit == "um" else unit
            kw["resolution"] = (1.0 / px, 1.0 / (pxy or px))
        kw["metadata"] = md
        return kw
    kw["bigtiff"] = nbytes >= _CLASSIC_TIFF_LIMIT
    md = {}
    if px is not None:
        md = {"unit": unit, "pixel_size": px}
        if pxy is not None:
            md["pixel_size_y"] = pxy
        per_cm_x = 0.01 / (px * _UNIT_M[unit])
        per_cm_y = 0.01 / ((pxy or px) * _UNIT_M[unit])
        if max(per_cm_x, per_cm_y) < 2**31:
            kw["resolution"] = (per_cm_x, per_cm_y)
            kw["resolutionunit"] = "CENTIMETER"
    kw["metadata"] = md
    return kw


def _convert_block(block: np.ndarray, dtype: np.dtype, path: Any) -> np.ndarray:
    if dtype.kind in "iu":
        if block.dtype.kind == "f":
            if not np.isfinite(block).all():
                raise InputError(f"{path}: image has NaN/Inf pixels; cannot write them as {dtype.name}")
            info = np.iinfo(dtype)
            b = np.rint(block)
            np.clip(b, info.min, info.max, out=b)
            return b.astype(dtype)
        if block.dtype.kind in "iub":
            info = np.iinfo(dtype)
            if block.dtype.kind == "b":
                return block.astype(dtype)
            binfo = np.iinfo(block.dtype)
            if binfo.min < info.min or binfo.max > info.max:
                return np.clip(block, max(info.min, binfo.min), min(info.max, binfo.max)).astype(dtype)
            return block.astype(dtype)
    return block.astype(dtype)


def _write_error(path: Path, exc: OSError, nbytes: int) -> InputError:
    """One line for a failed write; a full disk is called that (tifffile reports a short write without errno)."""
    import errno

    free = free_space(path.parent if str(path.parent) else Path("."))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or (exc.errno is None and free is not None and free < nbytes):
        have = f", {_gib(free)} free" if free is not None else ""
        return InputError(f"{path}: not enough disk space: it needs {_gib(nbytes)}{have}")
    return InputError(f"{path}: could not be written ({exc.strerror or exc})")


def write_micrograph(
    path: str | os.PathLike,
    image: np.ndarray,
    meta: MicrographMeta | None = None,
    *,
    dtype: str | np.dtype = "source",
    overwrite: bool = False,
) -> Path:
    """Write a 2-D image as a TIFF, atomically, keeping the pixel size; return the path written.

    ``dtype="source"`` writes ``meta.source_dtype`` (the image's own dtype without ``meta``): float values
    are rounded to the nearest integer and clipped to the integer type's range (NaN/Inf raise);
    ``dtype="float32"`` (or any numpy integer/float dtype name) writes that type. uint8, uint16 and
    float32 are written in ImageJ's format with the unit in the description and the pixel size in the
    resolution tags, so Fiji shows the calibration; other types get centimetre resolution tags and a
    JSON description with the exact pixel size. Files of 4 GiB and more become BigTIFF. The image is
    converted and written in row strips, so a memmap of any size is written with little memory.
    The file appears complete or not at all; an existing file raises :class:`InputError` unless
    ``overwrite=True``, and so does an output folder that is missing or not writable, or a disk without
    room for the file (the space of a large, memory-mapped output is reserved before any pixel is written).
    """
    import tifffile

    p = _check_target(path)
    a = image if hasattr(image, "ndim") and hasattr(image, "dtype") else np.asarray(image)
    if a.ndim != 2:
        raise InputError(f"{p}: can only write a 2-D image, got shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{p}: cannot write an image with zero width or height {tuple(a.shape)}")
    if a.dtype.kind not in "biuf":
        raise InputError(f"{p}: cannot write pixels of type {a.dtype} (expected real numbers)")
    out_dtype = _out_dtype(a, meta, dtype)
    shape = (int(a.shape[0]), int(a.shape[1]))
    kw = _tiff_kwargs(shape, out_dtype, meta)
    nbytes = shape[0] * shape[1] * out_dtype.itemsize
    try:
        with atomic_path(p, overwrite=overwrite) as tmp:
            if nbytes <= _STREAM_BYTES:
                data = _convert_block(np.asarray(a), out_dtype, p)
                tifffile.imwrite(tmp, data, **kw)
            else:
                mm = tifffile.memmap(tmp, shape=shape, dtype=out_dtype, **kw)
                # a memory-mapped write that runs out of disk space dies of SIGBUS: claim the space first
                reserve_space(tmp, os.path.getsize(tmp), name=p)
                step = _row_block(shape[1])
                for r in range(0, shape[0], step):
                    mm[r:r + step] = _convert_block(np.asarray(a[r:r + step]), out_dtype, p)
                    release_memmap_pages(mm)
                    if _is_memmap(a):
                        release_memmap_pages(a)
                mm.flush()
                release_memmap_pages(mm)
                del mm
    except InputError:
        raise
    except OSError as exc:
        raise _write_error(p, exc, nbytes) from None
    return p


@contextlib.contextmanager
def create_output_memmap(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype: str | np.dtype = "float32",
    meta: MicrographMeta | None = None,
    *,
    overwrite: bool = False,
) -> Iterator[np.memmap]:
    """Context manager: a writable (rows, cols) memmap that becomes the TIFF at ``path`` on success.

    The TIFF (same layout and pixel-size metadata as :func:`write_micrograph`, uncompressed, data
    zero-filled) is created under a hidden temporary name in the target's folder and mapped; on leaving
    the block without an exception it is flushed, synced and renamed onto ``path``; on an exception it is
    deleted and ``path`` is untouched. ``overwrite=False`` refuses an existing ``path`` up front. The
    file never exists in RAM as a whole: call :func:`release_memmap_pages` on the array every few
    hundred MiB written to keep the resident set small. Do not use the array after the block.
    Values are stored as given (no rounding): for an integer ``dtype``, write rounded values yourself,
    or accumulate in float32 and let :func:`write_micrograph` convert.
    """
    import tifffile

    p = _check_target(path)
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"{p}: shape must be (rows, cols), got {shape!r}") from None
    if h <= 0 or w <= 0:
        raise InputError(f"{p}: shape must be positive, got {(h, w)}")
    out_dtype = _out_dtype(np.empty(0, np.float32), None, dtype)
    kw = _tiff_kwargs((h, w), out_dtype, meta)
    try:
        with atomic_path(p, overwrite=overwrite) as tmp:
            mm = tifffile.memmap(tmp, shape=(h, w), dtype=out_dtype, **kw)
            try:
                # writing a memory map on a full disk is a SIGBUS: claim the whole file's space up front
                reserve_space(tmp, os.path.getsize(tmp), name=p)
                yield mm
                mm.flush()
            finally:
                release_memmap_pages(mm)
                del mm
    except OSError as exc:
        raise _write_error(p, exc, h * w * out_dtype.itemsize) from None


@contextlib.contextmanager
def temporary_memmap(
    shape: Sequence[int], dtype: str | np.dtype = "float32", dir: str | os.PathLike | None = None
) -> Iterator[np.memmap]:
    """Context manager: a zero-filled scratch memmap backed by a file that is already deleted.

    The file lives in ``dir`` (default: the system temp folder; pass the output folder for arrays of
    many GiB, since the temp folder may be small or in RAM) and is unlinked as soon as it is mapped, so
    nothing is left behind even if the process is killed. The space is freed when the array is dropped.
    """
    shape = tuple(int(v) for v in shape)
    if not shape or any(v <= 0 for v in shape):
        raise InputError(f"scratch array shape must be positive, got {shape}")
    folder = Path(dir) if dir is not None else Path(tempfile.gettempdir())
    if not folder.is_dir():
        raise InputError(f"scratch folder {folder} does not exist")
    try:
        fd, name = tempfile.mkstemp(prefix=".scratch-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot create a scratch file in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        mm = np.memmap(name, dtype=np.dtype(dtype), mode="w+", shape=shape)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    unlinked = False
    with contextlib.suppress(OSError):
        os.unlink(name)
        unlinked = True
    try:
        yield mm
    finally:
        del mm
        if not unlinked:
            with contextlib.suppress(OSError):
                os.unlink(name)


# --------------------------------------------------------------------------------------------------
# listing


def list_micrographs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted, duplicate-free list of micrograph files.

    A folder contributes its files (not its subfolders) whose suffix is one of
    :data:`MICROGRAPH_SUFFIXES` (any case), hidden files skipped, sorted by name. A file given by name
    must exist and have one of those suffixes. A missing input, a folder with no micrographs, or an
    empty ``inputs`` raises :class:`InputError`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no input micrographs given")
    found: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(
                (c for c in p.iterdir()
                 if c.is_file() and not c.name.startswith(".") and c.suffix.lower() in MICROGRAPH_SUFFIXES),
                key=lambda c: c.name,
            )
            if not files:
                raise InputError(
                    f"{p}: folder holds no micrographs ({' '.join(MICROGRAPH_SUFFIXES)})"
                )
        elif p.exists():
            if p.suffix.lower() not in MICROGRAPH_SUFFIXES:
                raise InputError(
                    f"{p}: not a micrograph file type (expected one of {' '.join(MICROGRAPH_SUFFIXES)})"
                )
            files = [p]
        else:
            raise InputError(f"{p}: no such file or folder")
        for f in files:
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found
