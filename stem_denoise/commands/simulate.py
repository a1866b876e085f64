"""Make a dataset of simulated ADF-STEM micrographs with ground truth, plus a clean synthetic lattice image.

Every micrograph gets its own lattice type, period (zoom), dose and dent shape, each list cycled through in
shuffled rounds so that every value is used equally often, and a random orientation. For each one the folder receives
``sim_NNNN.tif`` (noisy), ``sim_NNNN_truth.tif``, ``sim_NNNN_thickness.tif`` and ``sim_NNNN.json`` (parameters,
column positions, defects); ``synthetic_lattice.tif`` is the clean lattice image of the first lattice type
(``synthetic_lattice_<type>.tif`` for each type) and ``dataset.json`` lists everything.

    python scripts/simulate.py --n 20 --size 2048 --doses 5,20,100 --periods 8,12.8,20 --out sims
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from data_prep.io import MicrographMeta, write_micrograph
from data_prep.simulate import DENT_SHAPES, LATTICES, SimParams, save_simulation, simulate, synthetic_lattice
from stem_denoise.common.atomic import atomic_write_bytes, output_folder
from stem_denoise.common.cli import ArgumentParser, run_main
from stem_denoise.common.errors import ConfigError, InputError

DENT_CHOICES = ("none",) + DENT_SHAPES


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--{name}: expected comma-separated numbers, got {text!r}") from None
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"--{name}: expected positive numbers, got {text!r}")
    return values


def _names(text: str, name: str, allowed: tuple[str, ...]) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise InputError(f"--{name}: expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return values


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        dims = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise InputError(f"--size: expected N or HxW, got {text!r}") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 32 or max(dims) > 16384:
        raise InputError(f"--size: expected N or HxW between 32 and 16384, got {text!r}")
    return dims[0], dims[1]


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created if missing)")
    ap.add_argument("--n", type=int, default=12, help="number of micrographs (default 12)")
    ap.add_argument("--size", default="1024", help="micrograph size: N or HxW pixels (default 1024)")
    ap.add_argument("--doses", default="5,20,100", help="counts at a column peak, comma-separated")
    ap.add_argument("--periods", default="8,12.8,20", help="lattice periods in px (zooms), comma-separated")
    ap.add_argument("--lattices", default="square", help=f"lattice types from {','.join(LATTICES)}")
    ap.add_argument("--dents", default="none,gaussian,elliptic,irregular,ramp",
                    help=f"dent shapes to cycle through, from {','.join(DENT_CHOICES)}")
    ap.add_argument("--vacancy-frac", type=float, default=0.01, help="fraction of vacant sites (default 0.01)")
    ap.add_argument("--heavy-frac", type=float, default=0.02, help="fraction of heavier columns (default 0.02)")
    ap.add_argument("--light-frac", type=float, default=0.0, help="fraction of lighter columns (default 0)")
    ap.add_argument("--pixel-size-pm", type=float, default=10.0, help="pixel size written to the TIFFs (pm)")
    ap.add_argument("--synthetic-period", type=float, default=24.0, help="period of the synthetic lattice (px)")
    ap.add_argument("--synthetic-cells", type=int, default=10, help="unit cells across the synthetic lattice")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    ap.add_argument("--overwrite", action="store_true", help="replace files of an earlier run")
    return ap


def plan_dataset(n: int, lattices, periods, doses, dents, seed: int) -> list[dict]:
    """The per-micrograph choices: every list is cycled through in shuffled rounds, independently of the others,
    so each value is used equally often (to within one) whatever ``n``; angles and seeds are random."""
    rng = np.random.default_rng(seed)

    def balanced(values):
        seq = []
        while len(seq) < n:
            seq += [values[i] for i in rng.permutation(len(values))]
        return seq[:n]

    lat, per, dos, den = balanced(list(lattices)), balanced(list(periods)), balanced(list(doses)), balanced(list(dents))
    plan = []
    for i in range(n):
        plan.append(
            {
                "stem": f"sim_{i:04d}",
                "lattice": lat[i],
                "period_px": float(per[i]),
                "dose": float(dos[i]),
                "dent": den[i],
                "angle_deg": float(rng.uniform(0.0, 180.0)),
                "n_dents": int(rng.integers(1, 3)) if den[i] != "none" else 0,
                "seed": int(rng.integers(0, 2**31 - 1)),
            }
        )
    return plan


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1:
        raise InputError("--n must be at least 1")
    shape = _size(args.size)
    doses = _floats(args.doses, "doses")
    periods = _floats(args.periods, "periods")
    lattices = _names(args.lattices, "lattices", LATTICES)
    dents = _names(args.dents, "dents", DENT_CHOICES)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is not a folder")
    plan = plan_dataset(args.n, lattices, periods, doses, dents, args.seed)

    targets = [out / "dataset.json", out / "synthetic_lattice.tif"]
    targets += [out / f"synthetic_lattice_{lat}.tif" for lat in lattices]
    for item in plan:
        s = item["stem"]
        targets += [out / f"{s}.tif", out / f"{s}_truth.tif", out / f"{s}_thickness.tif", out / f"{s}.json"]
    if not args.overwrite:
        existing = [t for t in targets if t.exists()]
        if existing:
            raise InputError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --overwrite to replace")

    # validate every parameter set before writing anything
    params = []
    for item in plan:
        try:
            p = SimParams(
                lattice=item["lattice"],
                shape=shape,
                period_px=item["period_px"],
                angle_deg=item["angle_deg"],
                dose=item["dose"],
                vacancy_frac=args.vacancy_frac,
                heavy_frac=args.heavy_frac,
                light_frac=args.light_frac,
                dents=item["n_dents"],
                dent_shapes=(item["dent"],) if item["dent"] != "none" else ("gaussian",),
                pixel_size_pm=args.pixel_size_pm,
                seed=item["seed"],
            )
            p.validate()
        except ConfigError as exc:
            raise InputError(str(exc)) from None
        params.append(p)
    try:
        synth = {
            lat: synthetic_lattice(lat, period_px=args.synthetic_period, n_cells=args.synthetic_cells)
            for lat in lattices
        }
    except ConfigError as exc:
        raise InputError(f"synthetic lattice: {exc}") from None

    with output_folder(out):  # a run that fails before writing anything leaves no folder it created
        t_all = time.perf_counter()
        entries = []
        for item, p in zip(plan, params):
            t0 = time.perf_counter()
            res = simulate(p)
            t_sim = time.perf_counter() - t0
            paths = save_simulation(res, out, item["stem"], overwrite=args.overwrite)
            t_tot = time.perf_counter() - t0
            print(
                f"{item['stem']}: {shape[0]}x{shape[1]} {item['lattice']} period {item['period_px']:g} px, "
                f"angle {res.angle_deg:.1f} deg, dose {item['dose']:g}, dents {item['dent']}, "
                f"{len(res.columns)} columns: simulated in {t_sim:.2f} s, written in {t_tot - t_sim:.2f} s",
                flush=True,
            )
            entries.append(
                {
                    **item,
                    "angle_deg": res.angle_deg,
                    "period2_px": res.period2_px,
                    "reported_lattice": res.lattice,
                    "files": {k: v.name for k, v in paths.items()},
                    "n_columns": int(len(res.columns)),
                    "n_vacancies": int(len(res.vacancies)),
                }
            )
        synth_files = {}
        for i, (lat, img) in enumerate(synth.items()):
            meta = MicrographMeta("float32", None, None, "", (int(img.shape[0]), int(img.shape[1])), {})
            names = [f"synthetic_lattice_{lat}.tif"] + (["synthetic_lattice.tif"] if i == 0 else [])
            for name in names:
                write_micrograph(out / name, img, meta, dtype="float32", overwrite=args.overwrite)
            synth_files[lat] = names[0]
        doc = {
            "kind": "stem-denoise-simulated-dataset",
            "size": list(shape),
            "seed": args.seed,
            "pixel_size_pm": args.pixel_size_pm,
            "synthetic_lattice": {
                "file": "synthetic_lattice.tif",
                "lattice": lattices[0],
                "period_px": args.synthetic_period,
                "n_cells": args.synthetic_cells,
                "per_lattice": synth_files,
            },
            "micrographs": entries,
        }
        atomic_write_bytes(out / "dataset.json", json.dumps(doc, indent=1).encode("utf-8"),
                           overwrite=args.overwrite)
    total = time.perf_counter() - t_all
    print(f"wrote {len(entries)} micrographs and the synthetic lattice to {out} in {total:.1f} s "
          f"({total / len(entries):.2f} s per {shape[0]}x{shape[1]} micrograph)")
    return 0


if __name__ == "__main__":
    run_main(main)
