"""Writing micrographs as TIFF, atomically and with their pixel size; output and scratch memmaps."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from data_prep.io.checks import _STREAM_BYTES, _gib, _is_memmap, _row_block, release_memmap_pages
from data_prep.io.meta import _UNIT_M, MicrographMeta, _nice_length, canonical_length_unit, plausible_pixel_size
from stem_denoise.common.atomic import atomic_path, free_space, reserve_space
from stem_denoise.common.errors import InputError

_TIFF_SUFFIXES = (".tif", ".tiff")
# Beyond this a TIFF needs 64-bit offsets (BigTIFF); ImageJ's format cannot hold it.
_CLASSIC_TIFF_LIMIT = 2**32 - 2**25


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
