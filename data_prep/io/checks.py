"""Checks on a micrograph and the memory it needs: file, pixel type, size against memory, pixel values;
and the memory-mapped pages a streamed read or write leaves resident."""
from __future__ import annotations

import contextlib
import functools
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stem_denoise.common.errors import InputError

# Rows are converted and checked in blocks of about this many pixels, so that temporaries stay small.
_CHUNK_PIXELS = 1 << 22
# Images whose output exceeds this many bytes are written through a memmap in row strips.
_STREAM_BYTES = 64 << 20

_F32_MAX = float(np.finfo(np.float32).max)


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


def _row_block(width: int, channels: int = 1) -> int:
    return max(1, _CHUNK_PIXELS // max(1, width * channels))


def release_memmap_pages(array: np.ndarray) -> None:
    """Drop the resident pages of a whole memory-mapped array from this process (no-op for other arrays and for
    copy-on-write maps): :func:`stem_denoise.common.tiling.release_pages` over all its rows. The data stay in the
    file and the page cache and are read back on the next access; only the process's resident set shrinks."""
    from stem_denoise.common.tiling import release_pages

    if isinstance(array, np.ndarray) and array.ndim:
        release_pages(array, 0, array.shape[0])


def _is_memmap(a: Any) -> bool:
    return getattr(a, "_mmap", None) is not None


def is_memmap(a: Any) -> bool:
    """True for a memory-mapped array (as :func:`data_prep.io.open_micrograph_memmap` returns)."""
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
# files and samples


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


def _check_dtype(path: Any, dtype: np.dtype) -> np.dtype:
    if dtype.kind == "c":
        raise InputError(f"{path}: has complex pixels ({dtype.name}); expected real intensities")
    if dtype.names and not {"R", "G", "B"} <= set(dtype.names):
        raise InputError(f"{path}: has structured pixels ({dtype}); expected plain numbers")
    if not dtype.names and dtype.kind not in "biuf":
        raise InputError(f"{path}: has pixels of type {dtype} that are not numbers")
    return dtype


def _check_float32_range(block: np.ndarray, name: Any) -> None:
    """Refuse samples whose magnitude float32 cannot hold (they would turn into Inf)."""
    if block.dtype.kind != "f" or block.dtype.itemsize <= 4 or not block.size:
        return
    with np.errstate(invalid="ignore"):
        big = float(np.nanmax(np.abs(block))) if not np.isnan(block).all() else 0.0
    if big > _F32_MAX:
        raise InputError(f"{name}: holds values up to {big:.3g}, beyond the range of 32-bit floats "
                         f"(+-{_F32_MAX:.3g}) used for processing; rescale the image (e.g. to counts)")
