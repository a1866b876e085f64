"""Measure the lattice period and orientation of micrographs: one JSON line per image on stdout.

    python scripts/lattice.py IMAGE_OR_FOLDER...

Each line holds ``file``, ``period_px`` (length of the primary lattice vector), ``angle_deg`` (its direction,
counter-clockwise as displayed from the +x axis, folded into [0, 90) for square, [0, 60) for hexagonal and
[0, 180) for other lattices), ``period2_px``/``angle2_deg`` (the second basis vector), ``lattice`` and, when the
file carries a pixel size, ``period_pm``. A bad image gives one ``error:`` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from stem_denoise.common.cli import ArgumentParser, run_main
from stem_denoise.common.errors import InputError
from data_prep.io import list_micrographs, read_micrograph
from data_prep.lattice import measure_lattice


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
    image, meta = read_micrograph(path, frame=frame, convert_rgb=convert_rgb)
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
    px_pm = meta.pixel_size_in("pm")
    if px_pm:
        rec["period_pm"] = round(info.period_px * px_pm, 2)
    if timing:
        rec["measure_s"] = round(elapsed, 3)
    return rec


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_size < 32:
        raise InputError("--max-size must be at least 32")
    files = list_micrographs(args.images)
    failures: list[str] = []
    for path in files:
        try:
            rec = describe(path, frame=args.frame, convert_rgb=args.rgb, max_size=args.max_size,
                           timing=args.time)
        except InputError as exc:
            failures.append(str(exc))
            continue
        print(json.dumps(rec), flush=True)
    if failures:
        if len(failures) == 1:
            raise InputError(failures[0])
        raise InputError(f"{len(failures)} of {len(files)} images failed; first: {failures[0]}")
    return 0


if __name__ == "__main__":
    run_main(main)
