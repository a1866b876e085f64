"""Check denoisers on real micrographs without ground truth: what must not change.

    python scripts/realcheck.py --out OUT [--real DIR] [--checkpoint G.pt [--label NAME]]... [--methods a,b]
                                [--peers [--n2v-steps N] [--supervised-model S.pt]]

For every micrograph in DIR (default: the shared real-frame folder ``../shared/real/`` beside the repository, when
it exists) the classical filters (noisy input as reference, fixed Gaussians of sigma 1 and 2 px, median, NLM, BM3D
when installed, Bragg filter), the learned peers with --peers (CAREamics N2V2 and N2V2 + structN2V trained on each
frame alone, when installed; the supervised-on-simulation baseline given with --supervised-model) and every CycleGAN
generator given with --checkpoint are run, and each output is
compared with the raw frame: unit-cell averages on the same cells (Pearson r, column-site heights), column counts,
lattice power left in the residual and the residual's correlations (evaluation/realframes.py). Writes
real_results.csv, real_results.md and one figure real_<frame>.png per frame into OUT.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stem_denoise.common.cli import ArgumentParser, run_main
from stem_denoise.common.errors import InputError


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    from stem_denoise.evaluation.realframes import METHOD_NAMES, PEER_NAMES

    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--real", type=Path, default=None,
                   help="folder (or file) of real micrographs (default: ../shared/real/ beside the repository)")
    p.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="CycleGAN generator export to check (repeatable)")
    p.add_argument("--label", action="append", default=[],
                   help="table label of the checkpoint given at the same position (repeatable, optional)")
    p.add_argument("--methods", type=_names, default=None,
                   help=f"comma-separated methods: {', '.join(METHOD_NAMES + PEER_NAMES)} (default: the classical "
                        "ones, plus the peers with --peers)")
    p.add_argument("--peers", action="store_true",
                   help="also run CAREamics N2V2 and N2V2 + structN2V (per frame; skipped with the reason when "
                        "CAREamics is missing) and, with --supervised-model, the supervised baseline")
    p.add_argument("--n2v-steps", type=int, default=None, help="N2V training steps per frame (default 200)")
    p.add_argument("--supervised-model", type=Path, default=None,
                   help="the supervised-on-simulation baseline's export (benchmark.py --peers writes one)")
    p.add_argument("--device", default=None, help="torch device for the CycleGAN (default: automatic)")
    p.add_argument("--period-factor", type=float, default=1.0,
                   help="give the CycleGAN the measured lattice period times this (e.g. 0.5: a finer working "
                        "scale, as denoise.py --period would; default 1)")
    p.add_argument("--noise-level-factor", type=float, default=None,
                   help="the CycleGAN's measured noise level times this (see denoise.py --noise-level-factor)")
    p.add_argument("--working-scale", choices=("cell", "sites"), default=None,
                   help="the CycleGAN's working scale (see denoise.py --working-scale; default: the model's own)")
    p.add_argument("--noise-free", action="store_true",
                   help="run the methods on each frame's unit-cell average tiled over its lattice instead of the "
                        "frame: what a method's prior does to the columns without any noise")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    return p


def main(argv=None) -> int:
    from data_prep.io import list_micrographs
    from stem_denoise.evaluation.realframes import (
        DEFAULT_REAL_DIR,
        METHOD_NAMES,
        PEER_NAMES,
        output_paths,
        real_methods,
        run_realcheck,
    )

    args = build_parser().parse_args(argv)
    real = args.real
    if real is None:
        if not DEFAULT_REAL_DIR.is_dir():
            raise InputError(f"no --real folder given and the shared folder {DEFAULT_REAL_DIR} does not exist")
        real = DEFAULT_REAL_DIR
    if not real.exists():
        raise InputError(f"--real {real}: no such file or folder")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a folder")
    frames = list_micrographs([real])
    if not args.overwrite:
        for path in output_paths(args.out, frames):
            if path.exists():
                raise InputError(f"{path} exists; pass --overwrite to replace the results in {args.out}")
    if args.n2v_steps is not None and args.n2v_steps < 1:
        raise InputError(f"--n2v-steps must be >= 1, got {args.n2v_steps}")
    names = args.methods
    if args.peers:
        peers = [n for n in PEER_NAMES if n != "supervised" or args.supervised_model is not None]
        names = tuple(names or METHOD_NAMES) + tuple(n for n in peers if n not in (names or ()))
    methods, skipped = real_methods(names, checkpoints=args.checkpoint, labels=args.label,
                                    device=args.device, working_scale=args.working_scale, n2v_steps=args.n2v_steps,
                                    noise_level_factor=args.noise_level_factor,
                                    supervised_model=args.supervised_model)
    if not methods:
        raise InputError("no method to run")
    for s in skipped:
        print(f"skipped {s}")
    print(f"{len(frames)} frame(s) x {len(methods)} method(s): {', '.join(m.name for m in methods)}")
    if not (0.05 <= args.period_factor <= 20):
        raise InputError(f"--period-factor must be between 0.05 and 20, got {args.period_factor}")
    result = run_realcheck(frames, methods, args.out, skipped=skipped, period_factor=args.period_factor,
                           noise_free=args.noise_free)
    for key in ("csv", "markdown"):
        print(f"wrote {result['paths'][key]}")
    print(f"wrote {len(result['paths']['figures'])} figure panel(s) in {args.out}")
    if result["errors"]:
        print(f"{len(result['errors'])} run(s) failed; see real_results.md", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
