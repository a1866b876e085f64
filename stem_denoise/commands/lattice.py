"""Measure the lattice period and orientation of micrographs: one JSON line per image on stdout.

    python scripts/lattice.py IMAGE_OR_FOLDER...

Each line holds ``file``, ``period_px`` (length of the primary lattice vector), ``angle_deg`` (its direction,
counter-clockwise as displayed from the +x axis, folded into [0, 90) for square, [0, 60) for hexagonal and
[0, 180) for other lattices), ``period2_px``/``angle2_deg`` (the second basis vector), ``lattice`` and, when the
file carries a plausible pixel size (0.1 pm to 1 mm), ``period_pm``; every line is strict JSON. Each bad image
gives one ``error:`` line on stderr naming it, the others are still measured, and the exit status is 2 when any
image failed.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from data_prep.io import list_micrographs, read_micrograph
from data_prep.lattice import measure_lattice
from stem_denoise.common.cli import ArgumentParser, one_line, report_error, run_main
from stem_denoise.common.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="micrograph files or folders")
    ap.add_argument("--frame", type=int, default=None, help="frame of a stack (0-based)")
    ap.add_argument("--rgb", action="store_true", help="accept RGB images (their luminance is used)")
    ap.add_argument("--max-size", type=int, default=1024, help="centre crop used for the FFT (default 1024)")
    ap.add_argument("--time", action="store_true", help="add the measuring time (s, reading excluded) as measure_s")
    return ap


def describe(path: Path, *, frame=None, convert_rgb=False, max_size=1024, timing=False) -> dict:
    """Measure one micrograph file and return the JSON-able record printed for it."""
    try:
        image, meta = read_micrograph(path, frame=frame, convert_rgb=convert_rgb)
    except InputError as exc:
        if "greyscale" in str(exc) and not convert_rgb:
            raise InputError(f"{exc}, or pass --rgb to use its luminance") from None
        raise
    t0 = time.perf_counter()
    try:
        info = measure_lattice(image, max_size=max_size)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    elapsed = time.perf_counter() - t0
    rec = {
        "file": str(path),
        "period_px": round(info.period_px, 4),
        "angle_deg": round(info.angle_deg, 3),
        "period2_px": round(info.period2_px, 4),
        "angle2_deg": round(info.angle2_deg, 3),
        "lattice": info.lattice,
    }
    px_pm = meta.pixel_size_in("pm")  # None unless the file's pixel size is plausible (data_prep.io)
    if px_pm:
        period_pm = info.period_px * px_pm
        if math.isfinite(period_pm) and period_pm > 0:
            rec["period_pm"] = round(period_pm, 2)
    if timing:
        rec["measure_s"] = round(elapsed, 3)
    return rec


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_size < 32:
        raise InputError("--max-size must be at least 32")
    files = list_micrographs(args.images)
    failed = 0
    for path in files:
        try:
            rec = describe(path, frame=args.frame, convert_rgb=args.rgb, max_size=args.max_size,
                           timing=args.time)
        except InputError as exc:  # reported, naming the file; the others go on
            failed += 1
            text = one_line(exc)
            report_error(text if str(path) in text else f"{path}: {text}")
            continue
        print(json.dumps(rec, allow_nan=False), flush=True)
    return 2 if failed else 0


if __name__ == "__main__":
    run_main(main)
