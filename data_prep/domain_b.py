"""Domain B: patches of the synthetic lattice at a micrograph's orientation, intensity and dents
(:mod:`data_prep.patches`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np
from scipy import ndimage

from data_prep import dents as _dents
from data_prep.domain_a import crop_patches
from data_prep.lattice import LatticeInfo, lattice_vectors
from data_prep.synthetic import SyntheticLattice, _antialias_sigma, _plane_to_source, rotation_to_match
from stem_denoise.common.errors import InputError

if TYPE_CHECKING:
    from data_prep.patches import PrepConfig

# ----------------------------------------------------------------------------------------------------------------
# intensity matching
# ----------------------------------------------------------------------------------------------------------------
def periodic_variance(image: np.ndarray, vectors: Sequence[np.ndarray], period_px: float, *,
                      max_size: int = 512, min_row_shift: float = 2.0) -> float:
    """Variance of the lattice (periodic) signal of a noisy image, in its units squared.

    The image's slow part (Gaussian, sigma = ``period_px``) is removed and its autocovariance evaluated
    (bilinearly) at each lattice translation in ``vectors`` ((row, col) px) that spans at least
    ``min_row_shift`` rows; the largest value is returned. Noise correlated over less than a period does not
    contribute; a vector that is not a true translation (e.g. between two sublattices) gives a smaller value and
    loses. At most the central ``max_size`` square is used.
    """
    arr = np.asarray(image, dtype=np.float64)
    h, w = arr.shape
    ch, cw = min(h, max_size), min(w, max_size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = arr[y0:y0 + ch, x0:x0 + cw]
    hp = crop - _dents.gaussian_blur(crop, float(period_px))
    hp -= hp.mean()
    fh, fw = 2 * ch, 2 * cw
    F = np.fft.rfft2(hp, s=(fh, fw))
    acf = np.fft.irfft2(F.real ** 2 + F.imag ** 2, s=(fh, fw))
    ones = np.fft.rfft2(np.ones_like(hp), s=(fh, fw))
    counts = np.fft.irfft2(ones.real ** 2 + ones.imag ** 2, s=(fh, fw))
    acf = acf / np.maximum(counts, 1.0)
    usable = [np.asarray(v, dtype=np.float64) for v in vectors]
    tall = [v for v in usable if abs(v[0]) >= min_row_shift]
    vals = []
    for v in tall or usable:
        if abs(v[0]) > ch / 2 or abs(v[1]) > cw / 2:
            continue
        r, c = v[0] % fh, v[1] % fw
        vals.append(float(ndimage.map_coordinates(acf, [[r], [c]], order=1, mode="grid-wrap")[0]))
    if not vals:
        raise InputError("image too small to measure its lattice contrast")
    return max(vals)


@dataclass
class _Intensity:
    level: float
    gain: float
    syn_mean: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        return self.level + self.gain * (values - self.syn_mean)


def _lattice_translations(info: LatticeInfo, scale: tuple[float, float]) -> list[np.ndarray]:
    b1, b2 = (np.asarray(v, dtype=np.float64) * np.array(scale) for v in lattice_vectors(info))
    return [b1, b2, b1 + b2, b1 - b2]


# ----------------------------------------------------------------------------------------------------------------
# domain B
# ----------------------------------------------------------------------------------------------------------------
def lattice_patches(
    synthetic: SyntheticLattice,
    n: int,
    *,
    atoms: int = 5,
    patch_px: int = 64,
    rotation_deg: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` domain-B patches: the seamless synthetic mosaic turned by ``rotation_deg``, at ``patch_px / atoms``
    px per period, cut at random offsets. Returns (patches (n, p, p) float32 in the synthetic's normalised units,
    plane origins (n, 2) px)."""
    rng = np.random.default_rng(rng)
    origins = rng.uniform(0.0, 1.0e4, size=(int(n), 2))
    return _render_b(synthetic, origins, patch_px, patch_px / atoms, rotation_deg), origins


def _render_b(synthetic: SyntheticLattice, origins: np.ndarray, patch_px: int, period_px: float,
              rotation_deg: float) -> np.ndarray:
    scale = period_px / synthetic.period_px
    cell = synthetic.cell(_antialias_sigma(scale))
    g = np.arange(patch_px, dtype=np.float64)
    rr = origins[:, 0, None, None] + g[None, :, None]
    cc = origins[:, 1, None, None] + g[None, None, :]
    rr, cc = np.broadcast_arrays(rr, cc)
    src_r, src_c = _plane_to_source(rr, cc, scale, rotation_deg)
    return cell.sample(src_r, src_c).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# B patches of one training micrograph
# ----------------------------------------------------------------------------------------------------------------
def _b_for_micrograph(
    syn: SyntheticLattice,
    model: np.ndarray,
    info: LatticeInfo,
    scale: tuple[float, float],
    lo: float,
    hi: float,
    cfg: PrepConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[dict], dict, dict]:
    """B patches for one training micrograph (already in the model's pixel space): orientation, intensity, dents."""
    P = int(cfg.patch_px)
    period = cfg.model_period_px
    n = int(cfg.per_image)
    warnings: list[str] = []
    rotation = rotation_to_match(syn, info) if cfg.angle == "auto" else float(cfg.angle)
    ratio_a = info.period2_px / info.period_px
    s1, s2 = (np.hypot(*v) for v in lattice_vectors(syn.info))
    ratio_s = max(s1, s2) / min(s1, s2)
    if abs(ratio_a - ratio_s) > 0.05 * ratio_s or (info.lattice == "hex") != (syn.info.lattice == "hex"):
        warnings.append(
            f"lattice differs from the synthetic's ({info.lattice}, periods {info.period_px:.2f}/"
            f"{info.period2_px:.2f} px vs {syn.info.lattice}, ratio {ratio_s:.3f})"
        )

    # dents: mask in the model's pixel space, amplitude fitted on the low-pass
    zero_level = (0.0 - lo) / (hi - lo)
    mask = None
    fit = None
    if cfg.dents > 0:
        # The mask varies on the scale of periods: measure it at half the model's resolution (6.4 px per period by
        # default, 4x fewer pixels) unless the seed's literal pixel windows are asked for, and bring it back.
        half = cfg.dent_scale == "period" and period >= 8.0 and min(model.shape) >= 4 * P
        small = cv2.resize(model, (model.shape[1] // 2, model.shape[0] // 2), interpolation=cv2.INTER_AREA) \
            if half else model
        f = small.shape[0] / model.shape[0]
        mask_s = _dents.dent_mask(
            small, period * f, method=cfg.dent_method, polarity=cfg.dent_polarity, scale=cfg.dent_scale,
            threshold=cfg.dent_threshold,
            window_px=None if cfg.dent_window_px is None else max(1.0, cfg.dent_window_px * f),
            blur_px=None if cfg.dent_blur_px is None else cfg.dent_blur_px * f,
        )
        fit = _dents.fit_dent_amplitude(small, mask_s, period * f, polarity=cfg.dent_polarity,
                                        threshold=cfg.dent_threshold)
        mask = cv2.resize(mask_s, (model.shape[1], model.shape[0]), interpolation=cv2.INTER_LINEAR) if half \
            else mask_s
        level = fit.offset
    else:
        level = float(np.mean(model))
    mode = cfg.dent_mode
    if fit is not None and mode == "scale" and level - zero_level <= 1e-6:
        warnings.append("flat level not above the zero level; dents added instead of scaled")
        mode = "add"

    # intensity: the micrograph's level and lattice contrast
    syn_cell = syn.cell(_antialias_sigma(period / syn.period_px))
    if cfg.match_intensity:
        var_a = periodic_variance(model, _lattice_translations(info, scale), period)
        if var_a <= 0:
            warnings.append("lattice contrast not measurable; B patches keep the synthetic's contrast")
            gain = 1.0
        else:
            gain = math.sqrt(var_a / max(syn_cell.variance, 1e-12))
        inten = _Intensity(level=level, gain=gain, syn_mean=syn_cell.mean)
    else:
        inten = _Intensity(level=syn_cell.mean, gain=1.0, syn_mean=syn_cell.mean)
        var_a = None
    # the dent in the B patches' units: the same relative depth when they keep the synthetic's own scale
    dent_amp, dent_level, dent_zero = (fit.amplitude if fit is not None else 0.0), level, zero_level
    if fit is not None and not cfg.match_intensity:
        syn_zero = (0.0 - syn.norm[0]) / (syn.norm[1] - syn.norm[0])
        dent_amp = fit.amplitude / max(level - zero_level, 1e-6) * (syn_cell.mean - syn_zero)
        dent_level, dent_zero = syn_cell.mean, syn_zero

    # K virtual dented targets (lattice offsets), B patches cropped from them at random positions
    k_targets = int(cfg.dents) if fit is not None else 1
    target_origins = rng.uniform(0.0, 1.0e4, size=(k_targets, 2))
    which = rng.integers(0, k_targets, size=n)
    _, pos = crop_patches(model, n, P, rng)
    origins = target_origins[which] + pos
    lat = _render_b(syn, origins, P, period, rotation)
    b = inten.apply(lat.astype(np.float64))
    if fit is not None:
        idx_r = pos[:, 0, None, None] + np.arange(P)[None, :, None]
        idx_c = pos[:, 1, None, None] + np.arange(P)[None, None, :]
        m = mask[idx_r, idx_c]
        b = _dents.dented_targets(b, m, dent_amp, mode=mode, offset=dent_level, zero_level=dent_zero)
    b = b.astype(np.float32)
    recs = []
    for k in range(n):
        rec: dict[str, Any] = {
            "origin": [float(origins[k, 0]), float(origins[k, 1])],
            "rotation_deg": rotation,
            "scale": period / syn.period_px,
            "angle_deg": (syn.angle_deg + rotation) % 180.0,
        }
        if fit is not None:
            rec["dent"] = {"target": int(which[k]), "position": [float(pos[k, 0] / scale[0]),
                                                                 float(pos[k, 1] / scale[1])],
                           "model_position": [int(pos[k, 0]), int(pos[k, 1])],
                           "mean_mask": float(m[k].mean())}
        recs.append(rec)

    preview = {"model": model, "mask": mask, "amplitude": dent_amp if fit is not None else None, "syn": syn,
               "rotation": rotation, "inten": inten, "mode": mode, "level": dent_level, "zero_level": dent_zero,
               "origin": target_origins[0], "period": period}
    extra = {
        "rotation_deg": rotation,
        "intensity": {"level": inten.level, "gain": inten.gain, "synthetic_mean": inten.syn_mean,
                      "lattice_variance": var_a, "matched": bool(cfg.match_intensity)},
        "zero_level": zero_level,
        "dent": ({**fit.as_dict(), "applied": True, "mode": mode, "targets": k_targets, "amplitude_B": dent_amp}
                 if fit is not None else {"applied": False}),
        "n_patches_B": n,
        "warnings": warnings,
    }
    return b, recs, extra, preview
