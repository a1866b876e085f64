"""Train the shipped default model: the one command that produces ``stem_denoise/models/default.pt``.

    python scripts/train_default.py --out runs/default            # train (resumable), then export
    python scripts/train_default.py --out runs/default --resume   # continue an interrupted run exactly
    python scripts/train_default.py --out runs/default --install  # also copy the export to
    stem_denoise/models/default.pt

The ``default`` profile of :mod:`cyclegan.config` with the shipped recipe laid over it
(:data:`cyclegan.config.SHIPPED_RECIPE`): the stochastic objective on a seeded bank of clean synthetic scenes
(:mod:`cyclegan.synth`, the "rich" family: square, rectangular, hexagonal, perovskite, honeycomb, dumbbell and
random-motif lattices with weak sublattices, broad weak sites, glows and dips between the columns, periods 6-40 px,
dents, defects, vacuum), the STEM noise layer with wide random parameters (:mod:`cyclegan.pairs`: doses 1-1000
counts per column peak, a 0.3 share of noise-free pairs, read noise, row/column-correlated noise, row offsets) and
scale in the loop, 12 000 steps. It needs no data folder. The training curve is written to ``OUT/curve.png`` and
the run's summary to ``OUT/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Sequence

from cyclegan.checkpoint import default_model_path
from stem_denoise.common.cli import ArgumentParser, run_main

REPO = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Train the shipped default model (no data needed).")
    p.add_argument("--out", default="runs/default", help="run folder (default runs/default)")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt exactly")
    p.add_argument("--steps", type=int, help="total steps (default: the profile's)")
    p.add_argument("--config", help="JSON laid over the default profile and the shipped recipe (for ablations)")
    p.add_argument("--install", action="store_true", help="copy the final export to stem_denoise/models/default.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def plot_curve(log_path: Path, out_png: Path) -> None:
    """Training curve (clean-cycle L1 per logged step, and its running mean) from a run's log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps, clean = [], []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "clean" in rec.get("values", rec):
            vals = rec.get("values", rec)
            steps.append(int(rec.get("step", len(steps))))
            clean.append(float(vals["clean"]))
    if not steps:
        return
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, clean, lw=0.5, alpha=0.5, label="clean cycle L1 |G(F(b)) - b|")
    k = max(1, len(clean) // 40)
    smooth = np.convolve(clean, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"running mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 (normalised units)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def shipped_config(config_path=None, steps: int | None = None):
    """The shipped model's training config: the default profile, the synthetic clean source and
    :data:`cyclegan.config.SHIPPED_RECIPE`, then ``config_path`` (JSON, for ablations) and ``steps`` over it."""
    from cyclegan.config import SHIPPED_RECIPE, SYNTHETIC_SOURCE, config_from_dict, load_config

    cfg = config_from_dict({**SYNTHETIC_SOURCE, **SHIPPED_RECIPE}, base=load_config(None, "default"))
    cfg = load_config(config_path, steps=steps, base=cfg)
    return config_from_dict({"dashboard": {"enabled": False}}, base=cfg)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from cyclegan.train import precision_for, train
    from stem_denoise.common.precision import describe_precision

    cfg = shipped_config(args.config, args.steps)
    out = Path(args.out)
    t0 = time.time()
    summary = train(cfg, None, out, resume=args.resume, progress=not args.no_progress)
    wall = time.time() - t0
    record = {"step": summary["step"], "steps": summary["steps"], "start_step": summary["start_step"],
              "wall_s_this_invocation": round(wall, 1), "images_per_s": round(summary["images_per_s"], 2),
              "torch_threads": torch.get_num_threads(), "losses": summary["losses"], "device": summary["device"],
              "precision": describe_precision(precision_for(cfg, torch.device(summary["device"]))[0])}
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    plot_curve(out / "log.jsonl", out / "curve.png")
    print(f"trained to step {summary['step']} in {wall:.0f} s ({summary['images_per_s']:.1f} images/s); "
          f"generator: {summary['generator']}")
    if args.install and summary["step"] >= summary["steps"]:
        dest = default_model_path()
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "generator.pt", dest)
        print(f"installed {dest}")
    return 0


if __name__ == "__main__":
    run_main(main)
