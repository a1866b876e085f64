"""Ablation of the stochastic objective: each part switched off in turn, same small budget, same test sets.

    python scripts/ablation.py --out runs/ablation                 # 600 steps per variant (quick profile size)
    python scripts/ablation.py --out runs/ablation --steps 1500    # longer

Variants, all with the quick profile's generator (width 8, 3 blocks, 2 stride-2 stages), batch 8, 48 px crops,
trained on the same seeded synthetic scenes for the same number of steps:

* ``full``: the default objective (stochastic noise layer F with fresh noise, clean cycle, scale in the loop, the
  full scene family with weak sublattices and real column shapes);
* ``no_scale_loop``: noise added at the model's scale instead of the native scale (parts 3 off);
* ``simple_scenes``: one-site square/rectangular/hexagonal lattices of equal round columns only (part 4 off);
* ``classic``: the classic CycleGAN objective (deterministic learned F, noisy cycle at full weight, adversarial
  terms) on unpaired folders of the same synthetic noisy and clean crops (parts 1 and 2 off).

Then the benchmark (simulated and independent sets, quick) runs every variant side by side, and the real-frame
checks run on the shared real frames when present; ``OUT/ablation.md`` holds the tables.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from stem_denoise.common.cli import ArgumentParser, run_main

VARIANTS = {
    "full": {},
    "no_scale_loop": {"scale_in_loop": False},
    "simple_scenes": {"scene_family": "simple"},
    "classic": None,  # trained on folders, objective classic
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Ablation of the stochastic objective's parts.")
    p.add_argument("--out", required=True, help="folder for the runs and the tables")
    p.add_argument("--steps", type=int, default=600, help="training steps per variant (default 600)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--n-patches", type=int, default=600, help="patches per folder for the classic variant")
    p.add_argument("--no-real", action="store_true", help="skip the real-frame checks")
    return p


def base_config(steps: int):
    from cyclegan.config import SYNTHETIC_SOURCE, config_from_dict, profile_config

    return config_from_dict({**SYNTHETIC_SOURCE, "steps": int(steps), "dashboard": {"enabled": False},
                             "checkpoint_every": max(50, int(steps) // 4)}, base=profile_config("quick"))


def write_unpaired_folders(root: Path, cfg, n: int) -> None:
    """Unpaired trainA (noisy) / trainB (clean) folders of model-scale crops from the same scene bank."""
    import tifffile

    from cyclegan.pairs import SyntheticPairs, step_generator
    from cyclegan.synth import SceneBank

    bank = SceneBank(cfg.bank_size, seed=cfg.seed, period_range=cfg.period_range)
    src = SyntheticPairs(bank, model_period=cfg.period_px, crop_px=cfg.patch_px, ranges=cfg.noise)
    for sub, which, stream in (("trainA", 0, 1), ("trainB", 1, 2)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pair = src.batch(1, step_generator(cfg.seed, i, 0, stream=stream))
            tifffile.imwrite(root / sub / f"{i:05d}.tif", pair[which][0, 0].numpy())
    (root / "manifest.json").write_text(json.dumps({"patch_px": cfg.patch_px, "atoms_per_patch": cfg.atoms_per_patch,
                                                    "period_px": cfg.period_px}) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cyclegan.config import config_from_dict, profile_config
    from cyclegan.train import train
    from stem_denoise.evaluation.benchmark import BenchConfig, run_benchmark

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in wanted if v not in VARIANTS]
    if bad:
        from stem_denoise.common.errors import InputError

        raise InputError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    base = base_config(args.steps)
    times = {}
    for name in wanted:
        run = out / name
        t0 = time.time()
        if VARIANTS[name] is None:
            data = out / "classic_data"
            if not (data / "manifest.json").exists():
                write_unpaired_folders(data, base, args.n_patches)
            cfg = config_from_dict({"generator": base.generator.to_dict(), "steps": args.steps,
                                    "crop_px": base.crop_px, "dashboard": {"enabled": False},
                                    "checkpoint_every": base.checkpoint_every},
                                   base=profile_config("classic-quick"))
            train(cfg, data, run, resume=True, progress=False)
        else:
            train(config_from_dict(VARIANTS[name], base=base), None, run, resume=True, progress=False)
        times[name] = time.time() - t0
        print(f"{name}: trained in {times[name]:.0f} s")
    compare = tuple((n, out / n / "generator.pt") for n in wanted if n != "full")
    bench = out / "bench"
    cfg = BenchConfig(out_dir=bench, quick=True, checkpoint=out / "full" / "generator.pt", compare=compare,
                      methods=("noisy", "gaussian_oracle", "cyclegan"), dip=False, cases="both",
                      doses=(2.0, 5.0, 10.0, 20.0), overwrite=True, progress=False)
    res = run_benchmark(cfg, log=lambda *a, **k: None)
    from stem_denoise.commands.model_card import summarise_bench

    summary = summarise_bench(res.rows)
    from stem_denoise.evaluation.realframes import DEFAULT_REAL_DIR

    real_rows = []
    if not args.no_real and DEFAULT_REAL_DIR.is_dir():
        from data_prep.io import list_micrographs
        from stem_denoise.evaluation.realframes import real_methods, run_realcheck

        ckpts = [out / n / "generator.pt" for n in wanted]
        methods, skipped = real_methods([], checkpoints=[str(c) for c in ckpts], labels=wanted)
        real_rows = run_realcheck(list_micrographs([DEFAULT_REAL_DIR]), methods, out / "real", skipped=skipped,
                                  log=lambda *a, **k: None)["rows"]
    names = {"full": "cyclegan", **{n: f"cyclegan_{n}" for n in wanted if n != "full"}}
    lines = [f"Ablation, {args.steps} steps per variant (quick-profile generator), "
             f"`python scripts/ablation.py --out {args.out} --steps {args.steps}`", ""]
    for set_ in ("simulated", "independent"):
        lines += [f"### {set_} set: PSNR dB / F1 / filled vacancies / noise left, mean per dose", "",
                  "| variant | " + " | ".join(f"dose {float(d):g}" for d in sorted(summary.get(set_, {}), key=float))
                  + " |", "|---" * (1 + len(summary.get(set_, {}))) + "|"]
        for label, key in [("oracle Gaussian", "gaussian_oracle")] + [(n, names[n]) for n in wanted]:
            cells = []
            for d in sorted(summary.get(set_, {}), key=float):
                m = summary[set_][d].get(key, {})
                if key == "gaussian_oracle":
                    cells.append(f"{m.get('psnr', float('nan')):.2f}")
                else:
                    cells.append(f"{m.get('psnr', float('nan')):.2f} / {m.get('f1') or float('nan'):.3f} / "
                                 f"{m.get('hallucinations') or 0:.0f} / {m.get('noise_left') or float('nan'):.2f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if real_rows:
        lines += ["### real frames: cell r / worst site / columns raw->out / Bragg %", "",
                  "| frame | " + " | ".join(wanted) + " |", "|---" * (1 + len(wanted)) + "|"]
        frames = sorted({r["frame"] for r in real_rows})
        for f in frames:
            cells = []
            for n in wanted:
                r = next((x for x in real_rows if x["frame"] == f and x["label"] == n), None)
                cells.append("n/a" if r is None else
                             f"{r['cell_r']:.4f} / {r['site_height_max_rel_err']:.3f} / {r['n_columns_raw']}->"
                             f"{r['n_columns_out']} / {100 * r['bragg_power_frac']:.2f}")
            lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines += ["", "Training wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())]
    (out / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print((out / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    run_main(main)
