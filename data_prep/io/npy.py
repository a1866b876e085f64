"""NPY probing and reading: memory-mapped, never unpickled."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data_prep.io.checks import _check_dtype, _check_memory, _gib, _is_memmap
from data_prep.io.probe import _Probe
from stem_denoise.common.errors import InputError


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
        raise InputError(
            f"{path}: is truncated: its header declares {_gib(declared)} of data, the file has {_gib(file_size)}")
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
