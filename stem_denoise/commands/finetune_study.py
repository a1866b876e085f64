"""Measure how many training steps fine-tuning the shipped model saves against training from scratch.

    python scripts/finetune_study.py --out runs/finetune [--lattice rect] [--period 14] [--dose 5]
                                     [--checkpoints 0,50,100,200,400] [--init stem_denoise/models/default.pt]

Simulates a small dataset of one lattice type (training micrographs -> patches, held-out validation micrographs
with truth), trains the shipped generator's architecture from the shipped weights and from scratch with the same
settings (quick profile, constant learning rate), scores both on the validation set after each checkpoint and
writes OUT/finetune.json and OUT/finetune.png (see stem_denoise/evaluation/finetune.py).
"""
from __future__ import annotations

from stem_denoise.common.cli import ArgumentParser, positive_int, run_main
from stem_denoise.common.errors import InputError
from stem_denoise.evaluation.finetune import FinetuneStudy, run_finetune_study


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--lattice", default="rect", help="lattice of the user's data (simulator name; default rect)")
    p.add_argument("--period", type=float, default=14.0, help="lattice period in px (default 14)")
    p.add_argument("--dose", type=float, default=5.0, help="counts at a column peak (default 5)")
    p.add_argument("--n-train", type=positive_int, default=4, help="training micrographs (default 4)")
    p.add_argument("--n-val", type=positive_int, default=3, help="validation micrographs (default 3)")
    p.add_argument("--size", type=positive_int, default=256, help="micrograph side in px (default 256)")
    p.add_argument("--checkpoints", default="0,50,100,200,400", help="steps at which both arms are scored")
    p.add_argument("--init", default=None, help="generator export to fine-tune (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        steps = tuple(int(v) for v in args.checkpoints.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--checkpoints must be comma-separated step counts, got {args.checkpoints!r}") from None
    study = FinetuneStudy(lattice=args.lattice, period_px=args.period, dose=args.dose, n_train=args.n_train,
                          n_val=args.n_val, size=args.size, checkpoints=steps, init=args.init, seed=args.seed)
    run_finetune_study(study, args.out)
    return 0


if __name__ == "__main__":
    run_main(main)
