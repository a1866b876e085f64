"""Reading micrographs of any supported format: the pixels as float32, the metadata, or a read-only memmap."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_prep.io.checks import (
    _check_file,
    _check_float32_range,
    _is_memmap,
    _row_block,
    release_memmap_pages,
    validate_image,
)
from data_prep.io.instrument import _probe_rsciio
from data_prep.io.meta import MicrographMeta, _shown_length, plausible_pixel_size
from data_prep.io.npy import _probe_npy
from data_prep.io.png import _probe_png
from data_prep.io.probe import _Probe, _sniff
from data_prep.io.tiff import _probe_tiff
from stem_denoise.common.errors import InputError, MetadataWarning

# Rec. 709 luma weights used by convert_rgb (the same as scikit-image's rgb2gray, to 4 digits).
_LUMA = (0.2126, 0.7152, 0.0722)


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
