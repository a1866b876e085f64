"""Benchmark the denoisers on simulated micrographs with known truth.

    python scripts/benchmark.py --out bench_out [--quick] [--checkpoint G.pt] [--data DIR] [--cases both] ...

Methods: the CycleGAN generator given by --checkpoint (stitched tiles), Deep Image Prior (default preset, automatic
stop), Gaussian (oracle sigma), median, non-local means and BM3D (Anscombe domain; BM3D only if the optional bm3d
package is installed) and the Bragg (periodic Fourier) filter. Writes results.csv, results.md, figures/<case>.png,
psnr_vs_dose.png and hallucinations_vs_dose.png into --out.

Peers (--peers, or by name in --methods; the extra "bench" installs CAREamics and bm3d: pip install ".[bench]"):
n2v2 and structn2v (CAREamics Noise2Void: N2V2, and N2V2 with the horizontal structN2V mask for row-correlated
noise; trained on each test image alone, training time counted in s/MP) and supervised (the project's generator
trained with L1 on the project simulator's noisy/clean pairs; the weights are cached in OUT/supervised/ or at
--supervised-model and reused).

Test sets (--cases): "simulated" (the project's own simulator, default), "independent" (a separately written
simulator with other probes, backgrounds, lattices and white noise: evaluation/independent.py; its plots are
psnr_vs_dose_independent.png and hallucinations_vs_dose_independent.png) or "both", reported apart.

Real frames (no truth; --real DIR, by default the shared real frames ../shared/real/ beside the repository when
present, except with --quick; --no-real leaves them out): every method but the oracle (replaced by fixed Gaussians
of sigma 1 and 2 px) is scored by the checks of scripts/realcheck.py, written to OUT/real/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stem_denoise.common.cli import ArgumentParser, run_main
from stem_denoise.common.errors import InputError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    from stem_denoise.evaluation.benchmark import ALL_METHODS, CASE_SETS, PEERS, QUICK_N2V_STEPS, QUICK_SUPERVISED_STEPS
    from stem_denoise.evaluation.independent import INDEPENDENT_KINDS

    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="small test set (square and hex, doses 5 and 20, 128 px, no large micrographs; DIP on the "
                        "first lattice's cases only, capped at 400 steps)")
    p.add_argument("--data", type=Path, default=None,
                   help="folder of save_simulation outputs (*.json) or images with *_truth.tif, instead of the "
                        "simulated test set")
    p.add_argument("--checkpoint", type=Path, default=None, help="CycleGAN generator export (skipped when absent)")
    p.add_argument("--noise-level-factor", type=float, action="append", default=[],
                   help="also run the CycleGAN with its measured noise level times this (models with a noise-level "
                        "input; repeatable; method cyclegan_levelF)")
    p.add_argument("--sites-scale", action="store_true",
                   help="also run the --checkpoint generator at the 'sites' working scale (cyclegan_sites: the "
                        "nearest column spacing of a multi-site cell maps closer to the model's period)")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH",
                   help="another generator export to run beside --checkpoint, e.g. classic=runs/c/generator.pt "
                        "(repeatable)")
    p.add_argument("--tta", action="store_true", help="CycleGAN: average the 8 dihedral transforms")
    p.add_argument("--no-dip", action="store_true", help="leave Deep Image Prior out")
    p.add_argument("--dip-preset", default=None, help="DIP preset (default: the DIP package's default)")
    p.add_argument("--dip-steps", type=int, default=None, help="cap on DIP optimisation steps")
    p.add_argument("--dip-max-size", type=int, default=1024,
                   help="skip DIP on micrographs with more than SIZE^2 pixels (default 1024)")
    p.add_argument("--dip-lattices", type=_names, default=None,
                   help="run DIP only on cases of these lattices (default: all; square with --quick)")
    p.add_argument("--methods", type=_names, default=None,
                   help=f"comma-separated subset of: {', '.join(ALL_METHODS)} (default: all but the peers "
                        f"{', '.join(PEERS)}, which --peers adds)")
    p.add_argument("--peers", action="store_true",
                   help="also run the peers: CAREamics N2V2 and structN2V (when installed) and the supervised "
                        "baseline")
    p.add_argument("--n2v-steps", type=int, default=None,
                   help=f"Noise2Void training steps per image (default 200; {QUICK_N2V_STEPS} with --quick)")
    p.add_argument("--n2v-max-size", type=int, default=1024,
                   help="skip Noise2Void on micrographs with more than SIZE^2 pixels (default 1024)")
    p.add_argument("--supervised-model", type=Path, default=None,
                   help="supervised baseline weights: used when the file exists, trained and written there otherwise "
                        "(default OUT/supervised/generator.pt, reused when trained with the same settings)")
    p.add_argument("--supervised-steps", type=int, default=None,
                   help=f"supervised baseline training steps (default 300; {QUICK_SUPERVISED_STEPS} with --quick)")
    p.add_argument("--doses", type=_floats, default=None, help="comma-separated doses (default 2,5,10,20)")
    p.add_argument("--lattices", type=_names, default=None, help="comma-separated lattices (default square,hex,"
                                                                 "perovskite)")
    p.add_argument("--cases", choices=CASE_SETS, default="simulated",
                   help="test set: the project's simulator (default), the independent validation set, or both")
    p.add_argument("--kinds", type=_names, default=None,
                   help=f"independent set: comma-separated subset of {','.join(INDEPENDENT_KINDS)} (default all)")
    p.add_argument("--size", type=int, default=None,
                   help="side of the regular test micrographs (default 384; independent set: 256, 128 with --quick, "
                        "raised to fit 8 x 8 cells, at most 512)")
    p.add_argument("--large", type=int, default=None, help="number of large micrographs (default 2; 0 with --quick)")
    p.add_argument("--large-size", type=int, default=2048, help="side of the large micrographs (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device for CycleGAN/DIP (default: automatic)")
    p.add_argument("--save-outputs", action="store_true", help="also write every output as a float32 TIFF")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--real", type=Path, default=None,
                   help="folder (or file) of real micrographs to score every method on without truth (default: "
                        "the shared real frames ../shared/real/ beside the repository when present, except with "
                        "--quick)")
    p.add_argument("--no-real", action="store_true", help="leave the real frames out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    from stem_denoise.evaluation.benchmark import BenchConfig, run_benchmark
    from stem_denoise.evaluation.realframes import DEFAULT_REAL_DIR
    from stem_denoise.evaluation.report import aggregate

    args = build_parser().parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a folder")
    from stem_denoise.evaluation.benchmark import parse_compare

    real = args.real
    if real is None and not args.quick and DEFAULT_REAL_DIR.is_dir():
        real = DEFAULT_REAL_DIR
    if args.no_real:
        real = None
    cfg = BenchConfig(real_dir=real,
        compare=parse_compare(args.compare), sites_scale=args.sites_scale,
        level_factors=tuple(args.noise_level_factor), out_dir=args.out, quick=args.quick,
        data_dir=args.data, doses=args.doses, lattices=args.lattices, size=args.size, n_large=args.large,
        large_size=args.large_size, seed=args.seed, checkpoint=args.checkpoint, tta=args.tta, dip=not args.no_dip,
        dip_preset=args.dip_preset, dip_max_steps=args.dip_steps, dip_max_size=args.dip_max_size,
        dip_lattices=args.dip_lattices, methods=args.methods, peers=args.peers, n2v_steps=args.n2v_steps,
        n2v_max_size=args.n2v_max_size, supervised_model=args.supervised_model,
        supervised_steps=args.supervised_steps, device=args.device, cases=args.cases, independent_kinds=args.kinds,
        save_outputs=args.save_outputs, overwrite=args.overwrite, progress=not args.no_progress,
    )
    result = run_benchmark(cfg)
    main_rows = [r for r in result.rows if r.get("set") != "independent"]
    ind_rows = [r for r in result.rows if r.get("set") == "independent"]
    for title, rows in (("", main_rows), ("independent validation set", ind_rows)):
        if not rows and (title or ind_rows):
            continue
        if title:
            print(title)
        print(f"{'method':40s} {'cases':>5s} {'PSNR dB':>8s} {'F1':>6s} {'lost':>5s} {'filled vac.':>12s} "
              f"{'s/MP':>8s}")
        for a in aggregate(rows).values():
            filled = "n/a" if a["halluc_n"] is None else f"{a['halluc_n']}/{a['n_vacancies']}"
            label = a["label"] + (" [oracle]" if a["oracle"] else "")
            print(f"{label:40s} {a['n_cases']:5d} {a['psnr']:8.2f} {a['f1']:6.3f} {a['lost']:5d} {filled:>12s} "
                  f"{a['s_per_mp']:8.3g}")
    for key in ("csv", "markdown", "psnr_plot", "hallucination_plot", "psnr_plot_independent",
                "hallucination_plot_independent"):
        if key in result.paths:
            print(f"wrote {result.paths[key]}")
    print(f"wrote {len(result.paths['figures'])} figure panels in {Path(cfg.out_dir) / 'figures'}")
    if "real_markdown" in result.paths:  # its rows were printed as they came (run_realcheck's log)
        print(f"wrote {result.paths['real_markdown']}")
    if result.errors:
        print(f"{len(result.errors)} method run(s) failed; see results.md", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
