"""Measure the DIP baseline: speed against the reference recipe, and the automatic stop against the oracle.

    python scripts/bench_dip.py [--size 96] [--dose 5] [--lattice square] [--ref-steps 3000]
        [--preset light] [--study-doses 2,5,10,20] [--study-lattices square,hex] [--study-steps 2000]
        [--threads N] [--device cpu] [--out DIR] [--figure docs/dip.png] [--skip-reference] [--skip-study]

1. Speed (same simulated micrograph, same run): the reference recipe (``ulyanov`` preset, ``--ref-steps``
   fixed steps, its best PSNR along the run found with the truth) against the project's default (``--preset``,
   automatic stop). Prints time, steps, PSNR, the speed-up and whether the default reaches within 0.5 dB of the
   reference's best PSNR at least 5x faster.
2. Stopping rule: on simulated micrographs at several doses and lattices, the default preset runs
   ``--study-steps`` steps while the automatic rule picks its result without stopping the run, so the PSNR of
   the automatic choice and the best PSNR of the whole run (oracle, uses the truth) come from the same run.
   Prints the gap per case and on average.
3. ``--figure``: a panel (noisy | DIP | truth) of the speed image, all on the truth's display range.

Costs are also given as multiply-accumulates per forward pass, which do not depend on the machine's load.
On a CPU keep ``--size`` small (96 or 128 px): the reference recipe takes a few seconds per step there.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stem_denoise.common.cli import ArgumentParser, run_main
from stem_denoise.common.errors import InputError


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from dip_baseline.presets import DEFAULT_PRESET, PRESETS

    p = ArgumentParser(description="Benchmark the DIP baseline (speed and automatic stopping).")
    p.add_argument("--size", type=int, default=96, help="side of the simulated micrograph in px (default 96)")
    p.add_argument("--dose", type=float, default=5.0, help="counts at a column peak for the speed test")
    p.add_argument("--lattice", default="square", help="lattice of the speed test image (default square)")
    p.add_argument("--period", type=float, default=12.8, help="lattice period in px (default 12.8)")
    p.add_argument("--ref-preset", choices=sorted(PRESETS), default="ulyanov")
    p.add_argument("--ref-steps", type=int, default=3000, help="fixed steps of the reference recipe")
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, help="the default to measure")
    p.add_argument("--max-steps", type=int, default=None, help="step cap of the default run (preset's)")
    p.add_argument("--study-doses", type=_float_list, default=[2.0, 5.0, 10.0, 20.0])
    p.add_argument("--study-lattices", default="square,hex")
    p.add_argument("--study-steps", type=int, default=1200)
    p.add_argument("--study-rule", choices=("holdout", "wmv"), default=None,
                   help="automatic rule to study (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the DIP runs")
    p.add_argument("--sim-seed", type=int, default=1, help="seed of the simulated micrographs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--out", default=None, help="folder for results.json (optional)")
    p.add_argument("--figure", default=None, help="write the noisy | DIP | truth panel to this PNG")
    p.add_argument("--skip-reference", action="store_true", help="skip the slow reference run")
    p.add_argument("--skip-study", action="store_true", help="skip the stopping-rule study")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _simulate(size: int, dose: float, lattice: str, period: float, seed: int):
    from data_prep.simulate import simulate

    return simulate(shape=(size, size), dose=dose, lattice=lattice, period_px=period, dents=1,
                    vacancy_frac=0.03, heavy_frac=0.05, seed=seed)


def panel(images: list, labels: list[str], lo: float, hi: float, zoom: int = 3):
    """Side-by-side 8-bit panel of equally shaped images on one display range [lo, hi], labelled on top."""
    import cv2
    import numpy as np

    tiles = []
    for img, label in zip(images, labels):
        g = np.clip((np.asarray(img, np.float64) - lo) / (hi - lo), 0, 1)
        g = (g * 255).round().astype(np.uint8)
        g = cv2.resize(g, (g.shape[1] * zoom, g.shape[0] * zoom), interpolation=cv2.INTER_NEAREST)
        head = np.full((28, g.shape[1]), 255, np.uint8)
        cv2.putText(head, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, 0, 1, cv2.LINE_AA)
        tiles.append(np.vstack([head, g]))
        tiles.append(np.full((tiles[-1].shape[0], 6), 255, np.uint8))
    return np.hstack(tiles[:-1])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch

    from data_prep.normalize import normalize, robust_range
    from dip_baseline.api import dip_denoise, psnr_db
    from dip_baseline.net import count_macs
    from dip_baseline.optimize import fit_dip
    from dip_baseline.presets import get_preset
    from stem_denoise.common.atomic import atomic_path, atomic_write_bytes
    from stem_denoise.common.device import pick_device

    if args.size < 16:
        raise InputError("--size must be at least 16 px")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    progress = not args.quiet
    results: dict = {"device": str(device), "threads": torch.get_num_threads(), "size": args.size}
    print(f"device {device}, {torch.get_num_threads()} torch thread(s), image {args.size}x{args.size} px")

    macs = {name: count_macs(get_preset(name).net, args.size, args.size) for name in
            dict.fromkeys([args.ref_preset, args.preset])}
    for name, m in macs.items():
        print(f"  {name:<10} {m / 1e9:6.3f} GMAC per forward pass at {args.size}^2")
    results["gmac_per_forward"] = {k: v / 1e9 for k, v in macs.items()}

    sim = _simulate(args.size, args.dose, args.lattice, args.period, args.sim_seed)
    noisy, truth = sim.noisy, sim.truth
    print(f"speed image: {args.lattice}, dose {args.dose:g}, noisy PSNR {psnr_db(noisy, truth):.2f} dB")

    if not args.skip_reference:
        ref_out, ref = dip_denoise(noisy, preset=args.ref_preset, stop="fixed", max_steps=args.ref_steps,
                                   truth=truth, seed=args.seed, device=device, progress=progress)
        results["reference"] = {"preset": args.ref_preset, "steps": ref["steps_run"], "time_s": ref["time_s"],
                                "psnr_last": ref["psnr_of_result"], "psnr_best": ref["oracle_best_psnr"],
                                "best_step": ref["oracle_best_step"]}
    out, rec = dip_denoise(noisy, preset=args.preset, stop="auto", max_steps=args.max_steps, truth=truth,
                           seed=args.seed, device=device, progress=progress)
    results["default"] = {"preset": args.preset, "steps": rec["steps_run"], "stop_step": rec["stop_step"],
                          "fired": rec["auto_stop_fired"], "time_s": rec["time_s"],
                          "psnr": rec["psnr_of_result"], "psnr_best_seen": rec["oracle_best_psnr"]}

    print("\nrecipe                          steps   time [s]  s/step   PSNR [dB]")
    if "reference" in results:
        r = results["reference"]
        print(f"reference {r['preset']:<10} fixed     {r['steps']:6d}  {r['time_s']:9.1f}  "
              f"{r['time_s'] / r['steps']:6.3f}   last {r['psnr_last']:.2f}, best {r['psnr_best']:.2f} "
              f"(oracle, step {r['best_step']})")
    d = results["default"]
    print(f"default   {d['preset']:<10} auto      {d['steps']:6d}  {d['time_s']:9.1f}  "
          f"{d['time_s'] / d['steps']:6.3f}   {d['psnr']:.2f} (result of step {d['stop_step']}, "
          f"stop fired: {d['fired']})")
    if "reference" in results:
        r = results["reference"]
        speedup = r["time_s"] / d["time_s"]
        gap = r["psnr_best"] - d["psnr"]
        ok = gap <= 0.5 and speedup >= 5
        results["speed_floor"] = {"speedup": speedup, "psnr_gap_db": gap, "met": ok}
        print(f"speed-up {speedup:.1f}x, PSNR {gap:+.2f} dB below the reference's best "
              f"-> floor (<= 0.5 dB, >= 5x): {'MET' if ok else 'NOT MET'}")

    if args.figure:
        lo, hi = np.percentile(truth, [0.5, 99.5])
        img = panel([noisy, out, truth], [f"noisy ({psnr_db(noisy, truth):.1f} dB)",
                                          f"DIP {args.preset} ({d['psnr']:.1f} dB)", "truth"], lo, hi)
        import cv2

        fig = Path(args.figure)
        fig.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(fig, overwrite=True) as tmp:
            ok, buf = cv2.imencode(".png", img)
            tmp.write_bytes(buf.tobytes())
        print(f"figure -> {fig}")

    if not args.skip_study:
        preset = get_preset(args.preset)
        settings = preset.settings.replace(stop="auto", max_steps=args.study_steps)
        if args.study_rule:
            settings = settings.replace(auto_rule=args.study_rule)
        rows = []
        rule = settings.auto_rule
        what = (f"held-out {settings.holdout.block[0]}x{settings.holdout.block[1]} blocks every "
                f"{settings.holdout.spacing} px, patience {settings.holdout.patience}, "
                f"{'second pass on all pixels' if settings.holdout.refit else 'one pass'}" if rule == "holdout"
                else f"window {settings.wmv.window}, patience {settings.wmv.patience}")
        print(f"\nstopping rule '{rule}' ({what}): {args.preset} preset, {args.study_steps} steps per case; "
              "the oracle is the best PSNR along the whole run on all pixels")
        print("lattice     dose  noisy   auto  oracle   gap  auto step  fired at  best step   (PSNR in dB)")
        for lattice in [s.strip() for s in args.study_lattices.split(",") if s.strip()]:
            for i, dose in enumerate(args.study_doses):
                s = _simulate(args.size, dose, lattice, args.period, args.sim_seed + 100 + i)
                lo, hi = robust_range(s.noisy)
                run = fit_dip(normalize(s.noisy, lo, hi), preset.net, settings, truth=normalize(s.truth, lo, hi),
                              seed=args.seed, device=device, observe_only=True, progress=progress,
                              desc=f"{lattice} dose {dose:g}")
                r = run.record
                row = {"lattice": lattice, "dose": dose, "noisy_psnr": psnr_db(s.noisy, s.truth),
                       "auto_psnr": r["psnr_of_result"], "oracle_psnr": r["oracle_best_psnr"],
                       "gap_db": r["oracle_best_psnr"] - r["psnr_of_result"], "auto_step": r["stop_step"],
                       "fired_at": r["auto_stop_fired_at"], "best_step": r["oracle_best_step"]}
                rows.append(row)
                print(f"{lattice:<10} {dose:5g}  {row['noisy_psnr']:5.2f}  {row['auto_psnr']:5.2f}  "
                      f"{row['oracle_psnr']:6.2f}  {row['gap_db']:4.2f}  {row['auto_step']:9d}  "
                      f"{str(row['fired_at']):>8}  {row['best_step']:9d}", flush=True)
        mean_gap = float(np.mean([r["gap_db"] for r in rows]))
        results["stop_study"] = {"cases": rows, "mean_gap_db": mean_gap, "met": mean_gap <= 1.0,
                                 "rule": rule, "settings": settings.to_dict()}
        print(f"mean gap to the oracle: {mean_gap:.2f} dB -> floor (<= 1 dB): "
              f"{'MET' if mean_gap <= 1.0 else 'NOT MET'}")

    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / "results.json", (json.dumps(results, indent=2) + "\n").encode())
        print(f"results -> {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
