"""Domain A: atom-counted patches cut from a micrograph resampled to the model's scale (:mod:`data_prep.patches`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_prep.lattice import LatticeInfo
from stem_denoise.common.errors import InputError
from stem_denoise.common.resample import resample_image


def _period_of(lattice_info: LatticeInfo | float) -> float:
    p = float(lattice_info.period_px if hasattr(lattice_info, "period_px") else lattice_info)
    if not math.isfinite(p) or p <= 0:
        raise InputError(f"lattice period must be a positive number of pixels, got {p}")
    return p


def to_model_scale(
    image: np.ndarray, period_px: float, model_period_px: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample an image so its lattice period becomes ``model_period_px``; return (float32 image, (sy, sx)).

    Uses the project's one resampler (:func:`stem_denoise.common.resample.resample_operator`: Keys cubic,
    antialiased when shrinking), the same that inference uses, so training patches carry the interpolated noise the
    model meets at inference. The output size is the input size times ``model_period_px / period_px``, rounded;
    ``(sy, sx)`` are the exact per-axis factors (output px per input px) that rounding leaves. Pixel edges map to
    pixel edges.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {arr.shape}")
    s = float(model_period_px) / float(period_px)
    h, w = arr.shape
    oh, ow = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (oh, ow) == (h, w):
        return arr.copy(), (1.0, 1.0)
    return resample_image(arr, (oh, ow)), (oh / h, ow / w)


def crop_patches(image: np.ndarray, n: int, patch_px: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``patch_px`` squares of an image at whole-pixel offsets.

    Returns (patches (n, patch_px, patch_px) float32, top-left corners (n, 2) int (row, col)).
    """
    h, w = image.shape
    if h < patch_px or w < patch_px:
        raise InputError(f"image of {h} x {w} px is smaller than one {patch_px} px patch")
    r = rng.integers(0, h - patch_px + 1, size=n)
    c = rng.integers(0, w - patch_px + 1, size=n)
    idx_r = r[:, None, None] + np.arange(patch_px)[None, :, None]
    idx_c = c[:, None, None] + np.arange(patch_px)[None, None, :]
    return np.asarray(image[idx_r, idx_c], dtype=np.float32), np.stack([r, c], axis=1)


@dataclass
class AtomPatches:
    """Patches of ``atoms x atoms`` periods from one image (see :func:`extract_atom_patches`).

    ``patches``: (n, patch_px, patch_px) float32 in the image's units; ``model_positions``: (n, 2) int top-left
    (row, col) in the resampled image; ``positions``: (n, 2) float top-left edge in source px; ``window_px``:
    (rows, cols) size of each patch's window in source px; ``scale``: (sy, sx) model px per source px;
    ``period_px``: the source period used.
    """

    patches: np.ndarray
    model_positions: np.ndarray
    positions: np.ndarray
    window_px: tuple[float, float]
    scale: tuple[float, float]
    period_px: float


def _too_small(h: int, w: int, period: float, atoms: int, name: str) -> InputError:
    return InputError(
        f"{name}: {h} x {w} px at a lattice period of {period:.2f} px holds {h / period:.1f} x {w / period:.1f} "
        f"periods; a patch needs {atoms} x {atoms}"
    )


def extract_atom_patches(
    image: np.ndarray,
    lattice_info: LatticeInfo | float,
    atoms: int = 5,
    patch_px: int = 64,
    n: int = 100,
    rng: np.random.Generator | int | None = None,
    *,
    name: str = "image",
) -> AtomPatches:
    """Cut ``n`` patches of ``atoms x atoms`` lattice periods, each resampled to ``patch_px`` square.

    ``image``: a 2-D micrograph (any units; normalise the whole micrograph first for training data);
    ``lattice_info``: its :class:`LatticeInfo` (or the period in px). The image is resampled so one period is
    ``patch_px / atoms`` px (see :func:`to_model_scale`) and cropped at random offsets; every patch thus holds
    the same number of atoms whatever the zoom. Raises :class:`InputError` when the image is smaller than a patch.
    """
    period = _period_of(lattice_info)
    rng = np.random.default_rng(rng)
    model, scale = to_model_scale(image, period, patch_px / atoms)
    h, w = np.asarray(image).shape
    if min(model.shape) < patch_px:
        raise _too_small(h, w, period, atoms, name)
    patches, pos = crop_patches(model, int(n), int(patch_px), rng)
    src = pos / np.array(scale)
    return AtomPatches(patches=patches, model_positions=pos, positions=src,
                       window_px=(patch_px / scale[0], patch_px / scale[1]), scale=scale, period_px=period)
