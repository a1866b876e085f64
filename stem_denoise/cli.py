"""``stem-denoise JOB [options]``: one console command for every job of the toolkit.

Each job is a module of :mod:`stem_denoise.commands` with ``main(argv)``; ``stem-denoise JOB --help`` shows its
options. ``python scripts/<module>.py`` runs the same code.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

# job name -> (module in stem_denoise.commands, one-line summary)
JOBS: dict[str, tuple[str, str]] = {
    "denoise": ("denoise", "denoise micrographs with a trained (default: the shipped) generator"),
    "train": ("train_cyclegan", "train (or fine-tune, --init) a CycleGAN on prepared patches"),
    "train-default": ("train_default", "train the shipped default model on synthetic pairs"),
    "prepare": ("prepare_data", "cut noisy micrographs into atom-counted training patches"),
    "simulate": ("simulate", "write simulated micrographs with their ground truth"),
    "lattice": ("lattice", "measure lattice period and angles of micrographs"),
    "dip": ("dip_denoise", "Deep Image Prior denoising, one fit per image"),
    "benchmark": ("benchmark", "benchmark denoisers against known truth"),
    "realcheck": ("realcheck", "no-truth checks of denoisers on real frames"),
    "dashboard": ("dashboard", "start the training dashboard (visdom)"),
    "demo": ("demo", "the whole pipeline end to end on simulated data"),
    "model-card": ("model_card", "measure a generator export and write its model card"),
    "ablation": ("ablation", "train and benchmark the objective's ablation variants"),
    "finetune-study": ("finetune_study", "steps saved by fine-tuning the shipped model vs training from scratch"),
    "bench-infer": ("bench_infer", "inference speed and memory benchmark"),
    "bench-train": ("bench_train", "training throughput benchmark"),
    "bench-dip": ("bench_dip", "DIP speed benchmark"),
}


def _usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: stem-denoise JOB [options]   (stem-denoise JOB --help for a job's options)", "", "jobs:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in JOBS.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the job it names; return the job's exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        sys.stderr.write(f"error: unknown job {job!r}; one of: {', '.join(JOBS)}\n")
        return 2
    module = importlib.import_module(f"stem_denoise.commands.{JOBS[job][0]}")
    from stem_denoise.common.cli import run_main

    sys.argv = [f"stem-denoise {job}", *rest]
    run_main(module.main, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
