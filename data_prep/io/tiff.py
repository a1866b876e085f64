"""TIFF probing and decoding (tifffile): ImageJ, OME, FEI and plain TIFFs, stacks, BigTIFF, compressed data."""
from __future__ import annotations

import contextlib
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data_prep.io.checks import _STREAM_BYTES, _check_dtype, _check_memory, _gib, _is_memmap
from data_prep.io.meta import _PRINT_RESOLUTION_M, _UNIT_M, _nice_length, canonical_length_unit
from data_prep.io.probe import _Probe
from stem_denoise.common.errors import InputError

# Largest decompression ratio each TIFF compression can reach (deflate: 1032:1; PackBits: 64:1;
# LZW with TIFF's 12-bit table: about 1300:1). A header that declares more is a lie.
_MAX_RATIO = {8: 1100.0, 32946: 1100.0, 32773: 70.0, 5: 3000.0}


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
