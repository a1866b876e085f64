"""Denoise whole micrographs with a trained generator, tile by tile, without seams.

    python scripts/denoise.py INPUT... [--checkpoint RUN_DIR/generator.pt] --out DIR
        [--period PX [--force-period]] [--tta] [--batch-size N] [--tile PX] [--overlap PX]
        [--device auto|cpu|cuda|cuda:K] [--precision auto|fp32|bf16] [--overwrite] [--float32] [--quiet]

Without --checkpoint the shipped default model stem_denoise/models/default.pt is used (trained on simulated
micrographs; see models/README.md), or the generator export the environment variable STEM_DENOISE_MODEL names.

INPUT is any mix of micrograph files and folders. Each micrograph's lattice period is measured (or taken from
--period, in the input's px, and checked against the measured one: more than 15 % apart is refused unless
--force-period; where no lattice can be measured the given value is used and a note says so), the image is
normalised as a whole, resampled to the model's atom scale, denoised in overlapping tiles, resampled back and
written to DIR/<name>.tif in the input's dtype (or float32) with its pixel size. Outputs that already exist
are skipped, so a killed run can simply be started again. --out may not be, hold or lie inside an input. A
file that fails is reported in one error line naming it and the batch goes on;
the exit status is 2 when any file failed.

Many files on many GPUs (each process takes every N-th file):

    torchrun --nproc_per_node=4 scripts/denoise.py DATA_DIR --checkpoint generator.pt --out OUT
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from stem_denoise.common.cli import ArgumentParser, positive_float, positive_int, run_main
from stem_denoise.common.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Denoise micrographs with a trained CycleGAN generator (stitched tiles, no seams).",
        epilog="Multi-GPU: torchrun --nproc_per_node=N scripts/denoise.py INPUT... --checkpoint G --out DIR",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="micrograph files and/or folders")
    p.add_argument("--checkpoint", default=None,
                   help="generator export (RUN_DIR/generator.pt; default: the shipped "
                        "stem_denoise/models/default.pt, or "
                        "$STEM_DENOISE_MODEL)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--period", type=positive_float, default=None,
                   help="lattice period of the inputs in their px (default: measured per micrograph); checked "
                        "against the measured lattice: more than 15%% off is refused")
    p.add_argument("--force-period", action="store_true",
                   help="use --period even where it disagrees with the measured lattice by more than 15%%")
    p.add_argument("--working-scale", choices=("cell", "sites"), default=None,
                   help="cell: the lattice period maps to the model's period; sites: a multi-site cell (perovskite, "
                        "dumbbells) is magnified so its nearest column spacing maps closer to it (keeps more weak "
                        "columns; measured in the README); default: the scale the model was trained at (cell for "
                        "the shipped model)")
    p.add_argument("--noise-level-factor", type=float, default=None,
                   help="for models with a noise-level input (the shipped one): multiply the noise level measured "
                        "on each micrograph by this; lower keeps more (weak columns, and noise), higher smooths "
                        "harder (default 0.85; measured in the README)")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations (8x slower)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="tiles per batch (default: 16 on CUDA, 2 on CPU)")
    p.add_argument("--tile", type=positive_int, default=None,
                   help="tile size in model px (default 512)")
    p.add_argument("--overlap", type=positive_int, default=None,
                   help="tile overlap in model px (default and minimum follow the generator's receptive field)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:K")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--float32", action="store_true", help="write float32 instead of the input's dtype")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="network arithmetic: auto (default; bf16 on CUDA with bf16 and on CPUs with AMX/AVX512-BF16, "
                        "else fp32), fp32, or bf16 (on a CPU without native bf16 it is emulated and slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _rank() -> tuple[int, int]:
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError("RANK and WORLD_SIZE must be integers") from None
    return rank, world


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it, else as it is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def default_checkpoint(say=print) -> Path:
    """The generator export to use when no --checkpoint is given; says which in one line (``say``).

    InputError (one line, what to do) when that file does not exist.
    """
    from cyclegan.checkpoint import DEFAULT_MODEL_ENV, default_model_path

    path = default_model_path()
    from_env = bool(os.environ.get(DEFAULT_MODEL_ENV, "").strip())
    shown = _shown(path)
    if not path.is_file():
        if from_env:
            raise InputError(f"no --checkpoint given and {DEFAULT_MODEL_ENV} names {shown}, which is not a file; "
                             f"point {DEFAULT_MODEL_ENV} at a generator export or pass --checkpoint "
                             f"RUN_DIR/generator.pt")
        raise InputError(f"no --checkpoint given and the shipped default model {shown} is missing from this copy "
                         f"of the project; pass --checkpoint RUN_DIR/generator.pt (a generator export from "
                         f"scripts/train_cyclegan.py) or restore stem_denoise/models/default.pt")
    if from_env:
        say(f"using the default model {shown} (from {DEFAULT_MODEL_ENV}; no --checkpoint given)")
    else:
        say(f"using the shipped default model {shown} (trained on simulated micrographs; "
            "see stem_denoise/models/README.md)")
    return path


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from cyclegan.infer import denoise_files

    if args.force_period and args.period is None:
        raise InputError("--force-period goes with --period PX")
    rank, world = _rank()
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = default_checkpoint(say=print if rank == 0 else (lambda _msg: None))
    summary = denoise_files(
        args.inputs, args.out, checkpoint, period_px=args.period, force_period=args.force_period,
        tile=args.tile, overlap=args.overlap,
        batch_size=args.batch_size, tta=args.tta, device=args.device, precision=args.precision,
        working_scale=args.working_scale, noise_level_factor=args.noise_level_factor, overwrite=args.overwrite,
        float32=args.float32, rank=rank, world_size=world,
        progress=not args.quiet and rank == 0,
    )
    who = f"rank {rank}/{world}: " if world > 1 else ""
    plan = summary["plan"]
    print(f"{who}{summary['denoised']} denoised, {summary['skipped']} skipped, {summary['failed']} failed "
          f"(device {summary['device']}, {summary['precision']}, tile {plan['tile']} px, overlap {plan['overlap']} "
          f"px)")
    return 2 if summary["failed"] else 0


if __name__ == "__main__":
    run_main(main)
