"""The whole job on an embedded default, end to end, on simulated data.

simulate a small dataset -> prepare atom-counted patches -> "train on your own data": fine-tune the shipped model
``stem_denoise/models/default.pt`` briefly on them (quick profile settings; from scratch when no shipped model is
there) -> denoise a large simulated micrograph with stitched tiles, with the shipped model -> Deep Image Prior on a
crop of it
-> benchmark (shipped model and the fine-tuned one vs DIP vs classical filters) -> print where everything is and
the summary table.

Each step runs the project's own command-line script in a subprocess, and the command is printed first, so
every step can be rerun by hand on one's own data. ``--size small`` (the default) takes about 10 minutes on a
2-core CPU; ``--size tiny`` is a smoke run of a minute or two used by the tests.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from stem_denoise.common.cli import ArgumentParser, run_main
from stem_denoise.common.errors import InputError

ROOT = Path(__file__).resolve().parents[2]

# Settings of each demo size: (simulate, prepare, train, large micrograph, DIP, benchmark)
SIZES = {
    "small": dict(n=8, sim_size=512, periods="10,14", doses="5,10,20", per_image=160, steps=None,
                  large=2048, dip_crop=128, dip_steps=1000, bench=["--quick"]),
    "tiny": dict(n=3, sim_size=256, periods="12", doses="10", per_image=24, steps=30,
                 large=384, dip_crop=64, dip_steps=60,
                 bench=["--quick", "--doses", "10", "--lattices", "square", "--size", "128",
                        "--methods", "noisy,gaussian_oracle,bragg,cyclegan,dip"]),
}


def _step(title: str, script: str, args: list[str], log: list[tuple[str, float]]) -> None:
    """Run the job ``script`` (``scripts/<script>``, i.e. :mod:`stem_denoise.commands`) with ``args`` in a
    subprocess; stop the demo with its message if it fails."""
    module = f"stem_denoise.commands.{Path(script).stem}"
    cmd = [sys.executable, "-m", module, *args]
    shown = " ".join(shlex.quote(c) for c in ["python", "-m", module, *args])
    print(f"\n=== {title}\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    code = subprocess.call(cmd, env=env)
    dt = time.perf_counter() - t0
    log.append((title, dt))
    if code != 0:
        raise InputError(f"demo step '{title}' failed with exit code {code} (command above)")
    print(f"--- {title}: {dt:.1f} s", flush=True)


def _crop_pair(sim_dir: Path, stem: str, out_dir: Path, size: int) -> tuple[Path, Path]:
    """Write the central ``size`` x ``size`` crop of a simulated micrograph and of its truth (float32 TIFFs)."""
    from data_prep.io import read_micrograph, write_micrograph

    paths = []
    for suffix in ("", "_truth"):
        image, meta = read_micrograph(sim_dir / f"{stem}{suffix}.tif")
        h, w = image.shape
        y0, x0 = (h - size) // 2, (w - size) // 2
        path = out_dir / f"{stem}_crop{suffix}.tif"
        write_micrograph(path, image[y0:y0 + size, x0:x0 + size], meta, dtype="float32", overwrite=True)
        paths.append(path)
    return paths[0], paths[1]


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small", help="demo size (default small)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    s = SIZES[args.size]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sim, data, run = out / "simulated", out / "patches", out / "run"
    large, denoised, dip, bench = out / "large", out / "denoised", out / "dip", out / "benchmark"
    for d in (large, dip):
        d.mkdir(exist_ok=True)
    log: list[tuple[str, float]] = []
    t_start = time.perf_counter()

    _step("1. simulate noisy micrographs and a clean synthetic lattice", "simulate.py",
          ["--out", str(sim), "--n", str(s["n"]), "--size", str(s["sim_size"]), "--periods", s["periods"],
           "--doses", s["doses"], "--lattices", "square", "--dents", "none,elliptic,gaussian,ramp",
           "--seed", str(args.seed), "--overwrite"], log)
    _step("2. cut atom-counted patches (A: micrographs, B: dented synthetic lattice)", "prepare_data.py",
          ["--micrographs", str(sim), "--synthetic", str(sim / "synthetic_lattice.tif"), "--out", str(data),
           "--per-image", str(s["per_image"]), "--seed", str(args.seed), "--overwrite"], log)
    from cyclegan.checkpoint import default_model_path

    shipped = default_model_path()
    train_args = ["--data", str(data), "--out", str(run), "--profile", "quick", "--no-dashboard"]
    if shipped.is_file():
        train_args += ["--init", str(shipped)]
        title = f"3. train on your own data: fine-tune the shipped model {shipped.name} briefly (quick profile)"
    else:
        title = "3. train on your own data: a CycleGAN from scratch, briefly (quick profile; no shipped model)"
    if s["steps"]:
        train_args += ["--steps", str(s["steps"])]
    if run.exists():  # the demo's own earlier run: start afresh (a resumed run would keep its old step count)
        shutil.rmtree(run)
    _step(title, "train_cyclegan.py", train_args, log)
    model = shipped if shipped.is_file() else run / "generator.pt"
    _step("4a. simulate a large micrograph with a dent and known truth", "simulate.py",
          ["--out", str(large), "--n", "1", "--size", str(s["large"]), "--periods", "12", "--doses", "8",
           "--lattices", "square", "--dents", "elliptic", "--seed", str(args.seed + 100), "--overwrite"], log)
    big = sorted(p for p in large.glob("*.tif") if not p.stem.endswith(("_truth", "_thickness"))
                 and p.stem != "synthetic_lattice")[0]
    _step(f"4b. denoise the large micrograph with stitched tiles ({model.name})", "denoise.py",
          [str(big), "--checkpoint", str(model), "--out", str(denoised), "--overwrite"], log)
    crop, crop_truth = _crop_pair(large, big.stem, dip, s["dip_crop"])
    _step("5. Deep Image Prior on a crop (automatic stop)", "dip_denoise.py",
          [str(crop), "--truth", str(crop_truth), "--out", str(dip / "out"), "--steps", str(s["dip_steps"]),
           "--overwrite"], log)
    bench_args = ["--out", str(bench), "--checkpoint", str(model), "--overwrite", *s["bench"]]
    if model != run / "generator.pt":
        bench_args += ["--compare", f"finetuned={run / 'generator.pt'}"]
    _step("6. benchmark the shipped and the fine-tuned model vs DIP vs classical filters", "benchmark.py",
          bench_args, log)

    total = time.perf_counter() - t_start
    print("\n=== where everything is")
    for name, path in [("simulated micrographs", sim), ("training patches + preview.png", data),
                       ("training run (log.jsonl, generator.pt)", run), ("large micrograph", big),
                       ("its stitched denoised result", denoised), ("DIP result + record", dip / "out"),
                       ("benchmark (results.md, figures)", bench)]:
        print(f"  {name:40s} {path}")
    print("\n=== time per step")
    for title, dt in log:
        print(f"  {dt:7.1f} s  {title}")
    print(f"  {total:7.1f} s  total")
    results = bench / "results.md"
    if results.exists():
        print("\n=== benchmark summary (" + str(results) + ")\n")
        print(results.read_text())
    return 0


if __name__ == "__main__":
    run_main(main)
