"""Instrument formats, DM3 / DM4 (Gatan) and EMD (Velox), read through the optional RosettaSciIO extra."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data_prep.io.checks import _check_dtype
from data_prep.io.meta import canonical_length_unit
from data_prep.io.probe import _Probe
from stem_denoise.common.errors import InputError

_RSCIIO_SUFFIXES = (".dm3", ".dm4", ".emd")
DM_EXTRA_HINT = 'pip install "stem-denoise[dm]" (or: pip install rosettasciio h5py)'


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
