"""Train the CycleGAN denoiser on prepared patch folders.

    python scripts/train_cyclegan.py --data DATA --out RUN_DIR [--profile default|quick|classic|classic-quick] [--init
    stem_denoise/models/default.pt] [--config FILE.json]
                                     [--steps N] [--resume] [--no-dashboard] [--port 8097]

Multi-GPU / multi-node: launch the same command with torchrun, e.g. on each of 2 nodes with 8 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 --rdzv_id=RUN \\
        scripts/train_cyclegan.py --data DATA --out RUN_DIR
(DATA and RUN_DIR on a file system every node sees: rank 0 writes the checkpoints, every rank reads them on
--resume; the batch size is per process, so the global batch is batch_size x number of processes.)
``--resume`` takes the run's saved config (RUN_DIR/config.json); ``--config`` and ``--steps`` may then change
only runtime settings (steps, logging and checkpoint intervals, workers, device, dashboard).
RUN_DIR may not be, hold or lie inside DATA. DATA's period_px is checked against the lattice measured on its
patches (more than 15 % apart is refused unless --force-period). A run that fails before its first checkpoint
takes away the config.json and log.jsonl it wrote, so the same command can simply be run again.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from stem_denoise.common.cli import ArgumentParser, run_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Train the unpaired CycleGAN denoiser (G: noisy A -> clean B).")
    p.add_argument("--data", required=True, help="patch folder with trainA/, trainB/ and manifest.json")
    p.add_argument("--out", required=True, help="run folder (config.json, log.jsonl, last.pt, generator.pt)")
    p.add_argument("--profile", choices=("default", "quick", "classic", "classic-quick"), default=None,
                   help="base settings (default: 'default', the stochastic objective; 'classic' is the classic "
                        "CycleGAN objective of the reference recipe; ignored with --resume, which uses the run's "
                        "config)")
    p.add_argument("--init", help="start the generator from this export (e.g. stem_denoise/models/default.pt: "
                                  "fine-tuning); "
                                  "its architecture is taken over")
    p.add_argument("--config", help="JSON file with settings laid over the profile")
    p.add_argument("--steps", type=int, help="total number of training steps")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt exactly")
    p.add_argument("--no-dashboard", action="store_true", help="file log only, do not contact visdom")
    p.add_argument("--port", type=int, help="visdom port (default 8097)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force-period", action="store_true",
                   help="train at the data folder's period_px even where it disagrees by more than 15%% with the "
                        "lattice measured on its patches")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cyclegan.config import config_from_dict, load_config, read_config_file
    from cyclegan.train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from stem_denoise.common.atomic import check_output_location

    check_output_location(args.out, [args.data, None if args.resume else args.init])
    base = None
    saved = Path(args.out) / "config.json"
    if args.resume:
        if saved.exists():
            base = config_from_dict(read_config_file(saved))
        elif (Path(args.out) / "last.pt").exists():
            from cyclegan.checkpoint import TRAIN_KIND, safe_torch_load

            saved = Path(args.out) / "last.pt"
            base = config_from_dict(safe_torch_load(saved, kind=TRAIN_KIND).get("config", {}))
        if base is not None and args.profile:
            logging.getLogger(__name__).info("--resume: using the settings in %s; --profile %s ignored", saved,
                                             args.profile)
    cfg = load_config(args.config, args.profile or "default", steps=args.steps, base=base)
    overrides = {}
    if args.no_dashboard:
        overrides["enabled"] = False
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        cfg = config_from_dict({"dashboard": overrides}, base=cfg)
    if args.init and not args.resume:
        from cyclegan.checkpoint import load_generator

        net, _ = load_generator(args.init)
        cfg = config_from_dict({"generator": net.cfg.to_dict()}, base=cfg)
    summary = train(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress,
                    init=args.init if not args.resume else None, force_period=args.force_period)
    if summary["rank"] == 0:
        losses = ", ".join(f"{k}={v:.4g}" for k, v in summary["losses"].items())
        print(f"trained to step {summary['step']} in {summary['elapsed_s']:.1f} s "
              f"({summary['images_per_s']:.1f} images/s); {losses}")
        print(f"generator: {summary['generator']}")
    return 0


if __name__ == "__main__":
    run_main(main)
