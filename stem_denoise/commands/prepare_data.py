"""Build a CycleGAN patch dataset: micrographs -> trainA/testA, synthetic lattice (+ dents) -> trainB.

Every patch holds ATOMS x ATOMS lattice periods in PATCH_PX x PATCH_PX pixels, whatever the micrographs' zoom.
Whole micrographs are held back for testA. See data_prep/patches.py for the method and the output format.

    python scripts/prepare_data.py --micrographs DIR --synthetic FILE --out DATA [--atoms 5] [--patch-px 64]
        [--per-image K] [--test-frac 0.1] [--angle auto|DEG] [--dents K] [--seed N] [--overwrite]
    python scripts/prepare_data.py --micrographs DIR --clean-from cell-average --out DATA ...

``--clean-from cell-average`` needs no synthetic image: each training micrograph's domain B is its own unit-cell
average (data_prep/cell_lattice.py), which keeps every column site at its measured height and shape.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from stem_denoise.common.cli import ArgumentParser, run_main


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="prepare_data.py",
        description="Cut atom-counted training patches from micrographs (domain A) and from a synthetic "
                    "lattice image with the micrographs' orientation, intensity and dents (domain B).",
    )
    ap.add_argument("--micrographs", nargs="+", required=True, metavar="PATH",
                    help="micrograph files and/or folders (.tif .tiff .png .npy .dm3 .dm4 .emd)")
    ap.add_argument("--synthetic", metavar="FILE", default=None,
                    help="clean synthetic lattice image (needed with --clean-from synthetic, the default)")
    ap.add_argument("--clean-from", choices=("synthetic", "cell-average"), default="synthetic",
                    help="domain B from the --synthetic image (default) or from each training micrograph's own "
                         "unit-cell average (every site at its measured height and shape; no --synthetic)")
    ap.add_argument("--out", required=True, metavar="DATA", help="dataset folder to create")
    ap.add_argument("--atoms", type=int, default=5, help="lattice periods per patch side (default 5)")
    ap.add_argument("--patch-px", type=int, default=64, help="patch side in pixels (default 64)")
    ap.add_argument("--per-image", type=int, default=200, metavar="K",
                    help="patches per micrograph, and B patches per training micrograph (default 200)")
    ap.add_argument("--test-frac", type=float, default=0.1,
                    help="fraction of whole micrographs held back for testA (default 0.1)")
    ap.add_argument("--angle", default="auto", metavar="auto|DEG",
                    help="turn the synthetic image to each micrograph's measured orientation (auto, default) or by "
                         "DEG degrees counter-clockwise as displayed (the seed's '270 clockwise' is 90)")
    ap.add_argument("--dents", type=int, default=20, metavar="K",
                    help="dented targets per dent mask; 0 = no dents in domain B (default 20)")
    ap.add_argument("--dent-method", choices=("recipe", "min", "mean", "seed"), default="recipe",
                    help="dent mask smoothing: recipe (the reference recipe's window mean; 'seed' is its old name), "
                         "min (window minimum), mean (wider window mean); default recipe")
    ap.add_argument("--dent-polarity", choices=("dark", "bright"), default="dark",
                    help="dents are darker (thinner, default) or brighter than the lattice")
    ap.add_argument("--dent-scale", choices=("period", "pixels"), default="period",
                    help="mask windows in lattice periods (default) or the seed's literal pixel sizes")
    ap.add_argument("--dent-mode", choices=("scale", "add"), default="scale",
                    help="apply the mask by scaling the target's intensity (physical, default) or adding to it")
    ap.add_argument("--dent-threshold", type=float, default=128.0,
                    help="mask values under this (0-255 scale) are set to 0 (default 128)")
    ap.add_argument("--dent-window-px", type=float, default=None,
                    help="smoothing window in the model's pixels (default: from the period, or the seed's sizes)")
    ap.add_argument("--dent-blur-px", type=float, default=None,
                    help="final blur sigma in the model's pixels (default: one period, or 1 px with pixels scale)")
    ap.add_argument("--no-match-intensity", action="store_true",
                    help="keep the synthetic's own contrast instead of each micrograph's level and contrast")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    ap.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from data_prep.cell_lattice import CellAverageSource
    from data_prep.patches import PrepConfig, prepare_dataset
    from stem_denoise.common.errors import InputError

    if args.clean_from == "synthetic" and args.synthetic is None:
        raise InputError("--synthetic FILE is needed (or --clean-from cell-average to take domain B from the "
                         "micrographs' own unit-cell averages)")
    if args.clean_from == "cell-average" and args.synthetic is not None:
        raise InputError("--synthetic and --clean-from cell-average exclude each other: choose one clean source")

    cfg = PrepConfig(  # a bad value raises ConfigError, an InputError: one line, exit 2
        atoms=args.atoms, patch_px=args.patch_px, per_image=args.per_image, test_frac=args.test_frac,
        angle=args.angle, dents=args.dents, dent_method=args.dent_method, dent_polarity=args.dent_polarity,
        dent_scale=args.dent_scale, dent_mode=args.dent_mode, dent_threshold=args.dent_threshold,
        dent_window_px=args.dent_window_px, dent_blur_px=args.dent_blur_px, match_intensity=not args.no_match_intensity,
        seed=args.seed, overwrite=args.overwrite, preview=not args.no_preview, progress=not args.quiet,
    )
    clean = CellAverageSource(seed=args.seed) if args.clean_from == "cell-average" else args.synthetic
    summary = prepare_dataset(args.micrographs, clean, args.out, cfg)
    c = summary["counts"]
    print(
        f"wrote {summary['out_dir']}: trainA {c['trainA']}, trainB {c['trainB']}, testA {c['testA']} patches of "
        f"{summary['patch_px']} px ({summary['atoms_per_patch']} x {summary['atoms_per_patch']} atoms, "
        f"{summary['period_px']:.2f} px per period) from {summary['n_train']} training and {summary['n_test']} "
        f"test micrographs; {summary['n_dented']} dent masks applied"
    )
    for w in summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"elapsed {summary['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
