"""``preview.png`` of a prepared dataset: an 8-bit picture for people (A patches, B patches, the most dented
micrograph with its mask and a dented target)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from data_prep import dents as _dents
from data_prep.synthetic import SyntheticLattice
from stem_denoise.common.errors import InputError


def _stretch8(img: np.ndarray, size: tuple[int, int] | None = None, limits=None) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    if size is not None and a.shape != size:
        interp = cv2.INTER_AREA if a.shape[0] > size[0] else cv2.INTER_NEAREST
        a = cv2.resize(a, (size[1], size[0]), interpolation=interp)
    lo, hi = np.percentile(a, [0.5, 99.5]) if limits is None else limits
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)


def _preview(path: Path, a_patches: list[np.ndarray], b_patches: list[np.ndarray], panel: dict | None) -> None:
    """8-bit picture: a row of A patches, a row of B patches, then micrograph / dent mask / dented target."""
    cols = 6
    tile = 96
    gap = 4
    label_h = 16
    width = cols * tile + (cols + 1) * gap
    rows_img = []

    def labelled_row(title: str, images: list[np.ndarray], size: int, n: int) -> np.ndarray:
        row = np.full((label_h + size + gap, width), 255, np.uint8)
        cv2.putText(row, title, (gap, label_h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1, cv2.LINE_AA)
        step = (width - gap) // n
        if images:
            lo, hi = np.percentile(np.stack(images[:n]), [0.5, 99.5])
        for k, img in enumerate(images[:n]):
            x = gap + k * step
            row[label_h:label_h + size, x:x + size] = _stretch8(img, (size, size), (lo, hi))
        return row

    rows_img.append(labelled_row("domain A: micrograph patches", a_patches, tile, cols))
    rows_img.append(labelled_row("domain B: synthetic lattice patches at the micrographs' orientation, "
                                 "intensity and dents", b_patches, tile, cols))
    if panel is not None:
        big = (width - 5 * gap) // 4
        row = labelled_row(f"{panel['name']}: micrograph / dent mask / dented target (whole field) / target zoom",
                           [], big, 4)
        for k, img in enumerate(panel["images"]):
            x = gap + k * (big + gap)
            row[label_h:label_h + big, x:x + big] = _fit8(img, big)
        rows_img.append(row)
    out = np.vstack(rows_img)
    ok, buf = cv2.imencode(".png", out)
    if not ok:
        raise InputError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _fit8(img: np.ndarray, size: int) -> np.ndarray:
    """8-bit ``size`` square holding the image at its aspect ratio (area-averaged), white margins."""
    h, w = img.shape
    f = size / max(h, w)
    oh, ow = max(1, int(round(h * f))), max(1, int(round(w * f)))
    out = np.full((size, size), 255, np.uint8)
    y0, x0 = (size - oh) // 2, (size - ow) // 2
    out[y0:y0 + oh, x0:x0 + ow] = _stretch8(img, (oh, ow))
    return out


def _preview_panel(src: dict, display: int = 320, zoom: int = 160) -> dict:
    """Micrograph, mask and one dented target over the whole field (display resolution), plus a zoom of the
    target at the model's resolution around the dent."""
    model, mask, amplitude = src["model"], src["mask"], src["amplitude"]
    syn: SyntheticLattice = src["syn"]
    h, w = model.shape
    f = min(1.0, display / max(h, w))
    dh, dw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    m = np.zeros((h, w)) if mask is None else mask

    def target(shape, scale, origin, mcrop):
        lat = syn.render(shape, period_px=src["period"] * scale, rotation_deg=src["rotation"], origin=origin)
        t = src["inten"].apply(lat.astype(np.float64))
        if amplitude is None:
            return t
        return _dents.dented_targets(t, mcrop, amplitude, mode=src["mode"], offset=src["level"],
                                     zero_level=src["zero_level"])

    small_mask = cv2.resize(m.astype(np.float32), (dw, dh), interpolation=cv2.INTER_AREA)
    whole = target((dh, dw), dh / h, np.asarray(src["origin"]) * dh / h, small_mask)
    cy, cx = (h / 2.0, w / 2.0) if float(m.sum()) <= 0 else ndimage.center_of_mass(m)
    zh, zw = min(h, zoom), min(w, zoom)
    y0 = int(np.clip(round(cy - zh / 2), 0, h - zh))
    x0 = int(np.clip(round(cx - zw / 2), 0, w - zw))
    zoomed = target((zh, zw), 1.0, np.asarray(src["origin"]) + [y0, x0], m[y0:y0 + zh, x0:x0 + zw])
    return {"name": src["name"], "images": [model, m, whole, zoomed]}
