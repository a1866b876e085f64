"""Deep Image Prior on micrographs in physical units: the facade used by the CLI, the benchmark and the demo.

:func:`dip_denoise` takes a 2-D micrograph in its own units and dtype (16-bit counts, float, ...), normalises
it once per whole micrograph (robust percentiles, no clipping; for inpainting only the known pixels count),
runs the DIP optimisation of :mod:`dip_baseline.optimize`, maps the result back to the input's units and
returns it in the input's dtype (integers rounded and clipped to the type's range).

Any size works: the network's canvas is padded to its multiple internally and cropped back, so no border pixel
is lost. Micrographs larger than ``tile`` x ``tile`` px (denoising and inpainting) run tile by tile through
:func:`stem_denoise.common.tiling.map_tiles` (one tile at a time, overlapping tiles blended smoothly), each tile being
its own DIP fit on the same whole-image normalisation; for inpainting the missing pixels travel through the tiler
as NaN and become each tile's mask. Super-resolution always runs on the whole image.
"""
from __future__ import annotations

import time

import numpy as np

from data_prep.io import validate_image
from data_prep.normalize import denormalize, normalize, robust_range
from dip_baseline.net import SkipNetConfig
from dip_baseline.optimize import SR_SCALES, TASKS, dip_precision, fit_dip
from dip_baseline.presets import DEFAULT_PRESET, DipPreset, DipSettings, get_preset
from dip_baseline.stopping import STOP_RULES
from stem_denoise.common.device import pick_device
from stem_denoise.common.errors import InputError
from stem_denoise.common.precision import describe_precision

MIN_SIDE = 8
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32


def to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float image to ``dtype``: integers are rounded and clipped to the type's range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return image > 0.5
    if dtype.kind == "f":
        return image.astype(dtype, copy=False)
    return image.astype(np.float32, copy=False)


def _resolve_preset(preset: str | DipPreset) -> DipPreset:
    if isinstance(preset, DipPreset):
        return preset
    if not isinstance(preset, str):
        raise InputError(f"preset must be a name or a DipPreset, got {preset!r}")
    return get_preset(preset)


def _check_mask(mask, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape != shape:
        raise InputError(f"the mask has shape {mask.shape} but the image is {shape}; they must match")
    if not np.isfinite(mask.astype(np.float64, copy=False)).all():
        raise InputError("the mask holds NaN or infinite values")
    known = mask > 0
    if not known.any():
        raise InputError("the mask marks no known pixel (nonzero = known, 0 = missing)")
    return known


def dip_denoise(image: np.ndarray, *, preset: str | DipPreset = DEFAULT_PRESET, task: str = "denoise",
                mask: np.ndarray | None = None, scale: int | None = None, max_steps: int | None = None,
                stop: str = "auto", truth: np.ndarray | None = None, seed: int = 0, device=None,
                progress: bool = False, tile: int | None = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                settings: DipSettings | None = None, net: SkipNetConfig | None = None,
                keep_history: bool = False, precision: str | None = "auto") -> tuple[np.ndarray, dict]:
    """Restore a micrograph with Deep Image Prior; return ``(output, record)``.

    ``image``: 2-D array in its own units and dtype. ``task``: "denoise", "inpaint" (``mask`` of the image's
    shape, nonzero = known pixel, 0 = missing) or "sr" (``scale`` 2 or 4; the output is that many times larger).
    ``preset``: a name from :data:`dip_baseline.presets.PRESETS` or a :class:`DipPreset`; ``net`` and
    ``settings`` replace its parts. ``max_steps`` caps the optimisation (default: the preset's). ``stop``:
    "auto" (needs no truth: held-out pixels pick the step, see :mod:`dip_baseline.stopping`), "fixed" (run
    ``max_steps``) or "oracle" (best PSNR against ``truth``; benchmarks only). ``truth`` (the output's shape
    and units) adds PSNR figures to the record. ``tile``: images with a side above it are processed in
    overlapping tiles of that size (None: always whole). ``precision``: "auto", "fp32" or "bf16" (the network's
    arithmetic, see :mod:`dip_baseline.optimize`; the result is float32 before the cast to the input's dtype
    either way). The same ``seed`` on the same device and precision gives the same output. The record is
    JSON-able: settings, steps run, the step the result comes from, time, precision, and PSNR figures when a
    truth was given.
    """
    t0 = time.perf_counter()
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if stop not in STOP_RULES:
        raise InputError(f"stop must be one of {', '.join(STOP_RULES)}; got {stop!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    p = _resolve_preset(preset)
    net_cfg = net or p.net
    base = settings or p.settings
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise InputError(f"max_steps must be a positive integer, got {max_steps!r}")
        base = base.replace(max_steps=int(max_steps))
    cfg = base.replace(stop=stop)
    dev = pick_device(device)
    dip_precision(precision, dev, cfg)  # a bad name fails before any work

    if not hasattr(image, "ndim") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"expected a 2-D image, got an array of shape {tuple(image.shape)}")
    in_dtype = np.dtype(image.dtype)
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape

    if task == "sr":
        if isinstance(scale, bool) or scale not in SR_SCALES:
            raise InputError(f"the super-resolution scale must be 2 or 4, got {scale!r}")
        scale = int(scale)
    elif scale not in (None, 1):
        raise InputError(f"--scale only applies to the sr task (got scale={scale!r} for {task!r})")
    else:
        scale = 1
    known = None
    if task == "inpaint":
        if mask is None:
            raise InputError("inpainting needs a mask (nonzero = known pixel, 0 = missing)")
        known = _check_mask(mask, (h, w))
    elif mask is not None:
        raise InputError(f"a mask only applies to the inpaint task, not {task!r}")

    if known is None:
        validate_image(img, min_size=MIN_SIDE)
        lo, hi = robust_range(img)
    else:
        if h < MIN_SIDE or w < MIN_SIDE:
            raise InputError(f"image is too small: {h} x {w} pixels, need at least {MIN_SIDE} x {MIN_SIDE}")
        vals = img[known]
        if not np.isfinite(vals).all():
            raise InputError("the image holds NaN or infinite values at known pixels")
        lo, hi = robust_range(vals[None, :])
    x = normalize(img, lo, hi)
    if known is not None:
        x[~known] = 0.0

    truth_n = None
    if truth is not None:
        truth = np.asarray(truth, dtype=np.float32)
        want = (h * scale, w * scale)
        if truth.shape != want:
            raise InputError(f"the truth image has shape {truth.shape}; expected {want}")
        if not np.isfinite(truth).all():
            raise InputError("the truth image holds NaN or infinite values")
        truth_n = normalize(truth, lo, hi)

    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 2 * MIN_SIDE:
            raise InputError(f"tile must be an integer >= {2 * MIN_SIDE} px, got {tile!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < tile:
            raise InputError(f"overlap must be an integer in [0, tile), got {overlap!r}")
    tiled = tile is not None and task != "sr" and max(h, w) > tile
    if tiled and stop == "oracle":
        raise InputError("the oracle stop needs the whole image in one piece; raise --tile above the image size")

    record: dict = {
        "preset": p.name, "task": task, "scale": scale if task == "sr" else None, "stop": stop,
        "seed": int(seed), "device": str(dev), "input_shape": [h, w], "input_dtype": in_dtype.name,
        "normalisation": {"lo": lo, "hi": hi, "percentiles": [0.5, 99.5],
                          "pixels": "known pixels only" if known is not None else "whole image"},
    }
    if not tiled:
        run = fit_dip(x, net_cfg, cfg, task=task, mask=known, scale=scale if task == "sr" else None,
                      truth=truth_n, seed=int(seed), device=dev, progress=progress, keep_history=keep_history,
                      precision=precision)
        out_n = run.output
        record.update({k: v for k, v in run.record.items() if k not in ("task", "scale", "stop", "seed", "device")})
        record["tiles"] = 1
        if keep_history:
            record["history"] = {"loss": run.loss_history.tolist(),
                                 "psnr": None if run.psnr_history is None else run.psnr_history.tolist(),
                                 "variance": None if run.variance_history is None
                                 else run.variance_history.tolist()}
    else:
        out_n, tile_records = _run_tiled(x, known, net_cfg, cfg, task, int(seed), dev, progress,
                                         int(tile), int(overlap), precision)
        steps = [r["steps_run"] for r in tile_records]
        record.update({
            "tiles": len(tile_records), "tile": int(tile), "overlap": int(overlap),
            "steps_run": int(sum(steps)), "steps_per_tile": steps,
            "stop_step_per_tile": [r["stop_step"] for r in tile_records],
            "auto_stop_fired_per_tile": [r["auto_stop_fired"] for r in tile_records],
            "network": net_cfg.to_dict(), "settings": cfg.to_dict(),
            "parameters": next((r["parameters"] for r in tile_records if r["parameters"]), None),
            "precision": describe_precision(dip_precision(precision, dev, cfg)[0]),
        })
        if truth_n is not None:
            record["psnr_of_result"] = psnr_db(out_n, truth_n)
    out = denormalize(out_n, lo, hi)
    out = to_dtype(out, in_dtype)
    record["output_shape"] = list(out.shape)
    record["output_dtype"] = np.dtype(out.dtype).name
    record["total_time_s"] = round(time.perf_counter() - t0, 3)
    return out, record


def _run_tiled(x: np.ndarray, known: np.ndarray | None, net_cfg: SkipNetConfig, cfg: DipSettings, task: str,
               seed: int, dev, progress: bool, tile: int, overlap: int, precision: str | None = "auto"
               ) -> tuple[np.ndarray, list[dict]]:
    """DIP on overlapping tiles of a normalised image; missing pixels (inpainting) travel as NaN."""
    from stem_denoise.common.tiling import map_tiles

    src = x.copy()
    if known is not None:
        src[~known] = np.nan
        fill = float(np.median(x[known]))
    records: list[dict] = []

    def fn(batch: np.ndarray) -> np.ndarray:
        out = np.empty_like(batch)
        for b in range(batch.shape[0]):
            t = batch[b]
            k = len(records)
            if known is None:
                run = fit_dip(t, net_cfg, cfg, task="denoise", seed=seed + k, device=dev, precision=precision)
            else:
                m = np.isfinite(t)
                if not m.any():  # a tile with no known pixel: nothing to fit
                    out[b] = fill
                    records.append({"steps_run": 0, "stop_step": -1, "auto_stop_fired": None,
                                    "parameters": None})
                    continue
                run = fit_dip(np.where(m, t, 0.0), net_cfg, cfg, task="inpaint", mask=m, seed=seed + k,
                              device=dev, precision=precision)
            out[b] = run.output
            records.append(run.record)
        return out

    result = map_tiles(src, fn, tile=tile, overlap=overlap, batch_size=1, progress=progress, desc="DIP tiles")
    return result, records


def psnr_db(x: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of ``x`` against ``truth`` with the truth's data range (max - min; 1 for a constant truth): the
    benchmark's :func:`stem_denoise.evaluation.metrics.psnr` (capped at 100 dB)."""
    from stem_denoise.evaluation.metrics import psnr

    truth = np.asarray(truth, np.float64)
    return psnr(x, truth, data_range=float(truth.max() - truth.min()) or 1.0)
