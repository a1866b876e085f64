"""Restore micrographs with Deep Image Prior: denoising, inpainting or super-resolution, one image at a time.

    python scripts/dip_denoise.py INPUT... --out DIR [--task denoise|inpaint|sr] [--mask FILE]
        [--mask-marks known|missing] [--scale 2|4] [--preset light|microscopy|ulyanov] [--steps N]
        [--stop auto|fixed|oracle] [--truth FILE] [--seed N] [--device auto|cpu|cuda|cuda:K]
        [--precision auto|fp32|bf16] [--tile PX] [--overlap PX] [--frame K] [--float32] [--overwrite] [--quiet]

INPUT is any mix of micrograph files and folders. Each result is written to DIR/<name>_dip.tif in the input's
dtype (16-bit stays 16-bit; --float32 keeps full precision) with its pixel size (divided by the scale for
super-resolution), and DIR/<name>_dip.json records the settings, the steps run, the step the result comes
from, the time and, given --truth, PSNR figures. The progress bar shows the step, the loss and (with --truth)
the PSNR. The automatic stop needs no truth; --stop oracle keeps the best PSNR against --truth and is for
benchmarks only. Micrographs larger than --tile px run tile by tile.

--out may not be, hold or lie inside an input, the mask or the truth. Every check that can fail runs before the
first fit; a file that still fails (a full disk, say) is reported in one error line naming it and the others go
on; the exit status is 2 when any file failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from stem_denoise.common.cli import ArgumentParser, nonneg_int, one_line, positive_int, report_error, run_main
from stem_denoise.common.errors import InputError
from stem_denoise.common.jsonable import json_default


def _scale(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = None
    if v not in (2, 4):
        raise argparse.ArgumentTypeError(f"the super-resolution scale must be 2 or 4, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from dip_baseline.api import DEFAULT_OVERLAP, DEFAULT_TILE
    from dip_baseline.presets import DEFAULT_PRESET, PRESETS

    p = ArgumentParser(description="Deep Image Prior restoration of micrographs (one fit per image).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="micrograph files and/or folders")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--task", choices=("denoise", "inpaint", "sr"), default="denoise",
                   help="denoise (default), inpaint (needs --mask) or sr (super-resolution, needs --scale)")
    p.add_argument("--mask", default=None, help="inpainting mask image, same size as each input")
    p.add_argument("--mask-marks", choices=("known", "missing"), default="known",
                   help="what the mask's nonzero pixels mark: known pixels (default) or the missing ones")
    p.add_argument("--scale", type=_scale, default=None, help="super-resolution factor: 2 or 4")
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help="network and optimisation recipe (default %(default)s)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="maximum number of steps (default: the preset's, 3000)")
    p.add_argument("--stop", choices=("auto", "fixed", "oracle"), default="auto",
                   help="auto: stop found on held-out pixels, needs no truth (default); fixed: run --steps; "
                        "oracle: best PSNR against --truth (benchmarks only)")
    p.add_argument("--truth", default=None, help="noise-free truth image (one input only): adds PSNR figures")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:K")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="network arithmetic: auto (default; bf16 on CUDA with bf16, fp16 on older GPUs, bf16 on CPUs "
                        "with AMX/AVX512-BF16, else fp32), fp32, or bf16 (emulated and slower on other CPUs)")
    p.add_argument("--tile", type=positive_int, default=DEFAULT_TILE,
                   help="images with a side above this run in tiles of this size (default %(default)s px)")
    p.add_argument("--overlap", type=nonneg_int, default=DEFAULT_OVERLAP,
                   help="tile overlap in px (default %(default)s)")
    p.add_argument("--frame", type=nonneg_int, default=None, help="frame of a stack to use (0-based)")
    p.add_argument("--float32", action="store_true", help="write float32 instead of the input's dtype")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _load_mask(path: str, marks: str):
    import numpy as np

    from data_prep.io import read_micrograph

    mask, _ = read_micrograph(path, validate=False)
    if not np.isfinite(mask).all():
        raise InputError(f"{path}: the mask holds NaN or infinite values")
    known = mask > 0 if marks == "known" else mask <= 0
    if not known.any():
        raise InputError(f"{path}: the mask leaves no known pixel")
    return known


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from data_prep.io import list_micrographs, read_micrograph, read_micrograph_meta
    from dip_baseline.optimize import dip_precision
    from stem_denoise.common.atomic import check_output_location, make_output_dir, remove_created_dirs
    from stem_denoise.common.device import pick_device

    if args.task == "inpaint" and args.mask is None:
        raise InputError("--task inpaint needs --mask FILE")
    if args.task != "inpaint" and args.mask is not None:
        raise InputError(f"--mask only applies to --task inpaint (task is {args.task})")
    if args.task == "sr" and args.scale is None:
        raise InputError("--task sr needs --scale 2 or 4")
    if args.task != "sr" and args.scale is not None:
        raise InputError(f"--scale only applies to --task sr (task is {args.task})")
    if args.stop == "oracle" and args.truth is None:
        raise InputError("--stop oracle needs --truth FILE")
    device = pick_device(args.device)
    dip_precision(args.precision, device)  # bf16 on a GPU without it: one line before any work

    files = list_micrographs(args.inputs)
    if args.truth is not None and len(files) != 1:
        raise InputError(f"--truth goes with exactly one input; {len(files)} were given")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    check_output_location(out_dir, [*args.inputs, *files, args.mask, args.truth])
    targets = []
    stems: set[str] = set()
    for f in files:
        stem = f.stem
        if stem in stems:
            raise InputError(f"two inputs are called {stem}; their outputs would collide")
        stems.add(stem)
        tif, rec = out_dir / f"{stem}_dip.tif", out_dir / f"{stem}_dip.json"
        if not args.overwrite:
            for t in (tif, rec):
                if t.exists():
                    raise InputError(f"{t} exists; pass --overwrite to replace it")
        targets.append((f, tif, rec))
    known = _load_mask(args.mask, args.mask_marks) if args.mask is not None else None
    truth = read_micrograph(args.truth)[0] if args.truth is not None else None
    scale = args.scale or 1
    failed = done = 0
    ready = []
    for f, tif, rec in targets:  # check every input's header before any work or any output
        try:
            shape = tuple(read_micrograph_meta(f, frame=args.frame).shape)
            if known is not None and known.shape != shape:
                raise InputError(f"{args.mask}: the mask is {known.shape[1]}x{known.shape[0]} px but {f} is "
                                 f"{shape[1]}x{shape[0]} px")
            if truth is not None and truth.shape != (shape[0] * scale, shape[1] * scale):
                raise InputError(f"{args.truth}: the truth is {truth.shape[1]}x{truth.shape[0]} px; expected "
                                 f"{shape[1] * scale}x{shape[0] * scale} px for {f}")
        except InputError as exc:  # this file is reported and skipped; the others go on
            failed += 1
            text = one_line(exc)
            report_error(text if str(f) in text else f"{f}: {text}")
            continue
        ready.append((f, tif, rec))
    if not ready:
        return 2
    targets = ready

    created: list[Path] = []
    make_output_dir(out_dir, created)
    try:
        for f, tif, rec_path in targets:
            try:
                _restore_one(args, f, tif, rec_path, known, truth, scale, device)
                done += 1
            except InputError as exc:  # this file is reported and skipped; the others go on
                failed += 1
                text = one_line(exc)
                report_error(text if str(f) in text else f"{f}: {text}")
    finally:
        remove_created_dirs(created)  # only where still empty: a run that wrote nothing leaves no folder
    if failed and len(targets) > 1:
        print(f"{done} restored, {failed} failed")
    return 2 if failed else 0


def _restore_one(args, f: Path, tif: Path, rec_path: Path, known, truth, scale: int, device) -> None:
    """Fit, write and record one micrograph; InputError for anything about this file the user can fix."""
    from data_prep.io import read_micrograph, write_micrograph
    from dip_baseline.api import dip_denoise
    from stem_denoise.common.atomic import atomic_write_bytes

    image, meta = read_micrograph(f, frame=args.frame)
    out, record = dip_denoise(
        image, preset=args.preset, task=args.task, mask=known, scale=args.scale, max_steps=args.steps,
        stop=args.stop, truth=truth, seed=args.seed, device=device, progress=not args.quiet,
        tile=args.tile, overlap=args.overlap, precision=args.precision)
    out_meta = meta
    if scale != 1:
        out_meta = dataclasses.replace(
            meta, shape=tuple(out.shape),
            pixel_size=None if meta.pixel_size is None else meta.pixel_size / scale)
    write_micrograph(tif, out, out_meta, dtype="float32" if args.float32 else "source",
                     overwrite=args.overwrite)
    record.update({"input": str(f), "output": str(tif), "source_dtype": meta.source_dtype,
                   "written_dtype": "float32" if args.float32 else meta.source_dtype,
                   "pixel_size": out_meta.pixel_size, "unit": out_meta.unit})
    if args.truth is not None:
        record["truth"] = str(args.truth)
    text = json.dumps(_finite(record), indent=2, default=json_default, allow_nan=False)
    try:
        atomic_write_bytes(rec_path, (text + "\n").encode(), overwrite=True)
    except BaseException:
        tif.unlink(missing_ok=True)  # an image without its record would be taken for a finished one
        raise
    where = (f"result of step {record['stop_step']}, {record['steps_run']} steps run"
             if record.get("tiles") == 1 else f"{record['tiles']} tiles, {record['steps_run']} steps in all")
    line = f"{f.name} -> {tif} ({where}, {record['total_time_s']:.1f} s"
    if record.get("psnr_of_result") is not None:
        line += f", PSNR {record['psnr_of_result']:.2f} dB"
    print(line + ")")


def _finite(obj):
    """The record with non-finite floats (an infinite PSNR of an exact result) written as null: strict JSON."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    run_main(main)
