"""Format probing: each probe learns shape, dtype, frames, samples and pixel size without decoding.

:func:`_sniff` recognises a file's format by its first bytes (the name only breaks ties); the readers of
each format (:mod:`.tiff`, :mod:`.png`, :mod:`.npy`, :mod:`.instrument`) return a :class:`_Probe`."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from stem_denoise.common.errors import InputError


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
