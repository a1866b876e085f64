"""PNG probing (chunk walk, no decompression) and decoding (OpenCV); pixel size from the pHYs chunk."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from data_prep.io.checks import _check_memory, _gib
from data_prep.io.meta import _PRINT_RESOLUTION_M, _UNIT_M, _nice_length
from data_prep.io.probe import _Probe
from stem_denoise.common.errors import InputError


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
