"""Measure a generator export and write its model card: every number of ``stem_denoise/models/README.md`` comes from
here.

    python scripts/model_card.py --model stem_denoise/models/default.pt --run runs/default --out stem_denoise/models/
    python scripts/model_card.py --model stem_denoise/models/default.pt --run runs/default --out stem_denoise/models/
    --compare classic=runs/classic/generator.pt

Runs, in one go: the benchmark on the project's simulated test set (the benchmark's default lattices: square,
hexagonal, perovskite, honeycomb and nanoparticle, at doses 2, 5, 10 and 20, 384 px) and on the independent
validation set (:mod:`stem_denoise.evaluation.independent`: another simulator), with the noisy input, the oracle
Gaussian, NLM and the model (and any ``--compare`` models); the no-truth checks on the real frames
(:mod:`stem_denoise.evaluation.realframes`, the shared folder ``../shared/real/`` when it exists, or ``--real DIR``)
with fixed Gaussians and the model; and, from the training run folder, the training curve and wall time. Writes
``OUT/card.json`` (all numbers), ``OUT/README.md`` (the card, from the template in this file), ``OUT/bench/`` and
``OUT/real/`` (tables and figures).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from cyclegan.checkpoint import default_model_path
from stem_denoise.common.cli import ArgumentParser, run_main
from stem_denoise.common.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Measure a generator export and write its model card.")
    p.add_argument("--model", default=str(default_model_path()), help="generator export")
    p.add_argument("--run", help="its training run folder (config.json, log.jsonl, summary.json)")
    p.add_argument("--out", required=True, help="folder for card.json, README.md, bench/, real/")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH",
                   help="another generator export to measure beside it (repeatable)")
    p.add_argument("--real", help="folder of real frames (default: ../shared/real/ beside the repository)")
    p.add_argument("--quick", action="store_true", help="small sets (for tests)")
    p.add_argument("--work", help="folder for the benchmark and real-frame outputs (default: OUT)")
    return p


COUNT_KEYS = ("lost", "fp", "in_vacuum", "hallucinations", "vacancy_counts")  # summed over cases; the rest averaged


def summarise_bench(rows: list[dict]) -> dict:
    """Mean metrics per (set, dose, method) and the model's margins over the oracle Gaussian."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r.get("set", "simulated"), float(r["dose"]) if r.get("dose") not in (None, "") else None,
               r["method"])
        for k in ("psnr", "ssim", "f1", *COUNT_KEYS, "intensity_corr", "dent_corr", "noise_left", "mpix_per_s"):
            v = r.get(k)
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                acc[key][k].append(float(v))
    out: dict = {}
    for (set_, dose, method), d in acc.items():
        m = {}
        for k, vals in d.items():
            m[k] = (sum(vals) if k in COUNT_KEYS else sum(vals) / len(vals)) if vals else None
        out.setdefault(set_, {}).setdefault(str(dose), {})[method] = m
    return out


def _fmt(v, f="{:.2f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f.format(v)


def bench_table(summary: dict, set_: str, methods: list[tuple[str, str]]) -> list[str]:
    lines = ["| dose | " + " | ".join(label for _, label in methods) + " | model - oracle Gaussian |",
             "|---" * (len(methods) + 2) + "|"]
    for dose, ms in sorted(summary.get(set_, {}).items(), key=lambda kv: float(kv[0])):
        cells = [_fmt(ms.get(m, {}).get("psnr")) for m, _ in methods]
        g, o = ms.get("cyclegan", {}).get("psnr"), ms.get("gaussian_oracle", {}).get("psnr")
        margin = f"{g - o:+.2f} dB" if g is not None and o is not None else "n/a"
        lines.append(f"| {float(dose):g} | " + " | ".join(cells) + f" | {margin} |")
    return lines


def detail_table(summary: dict, set_: str, methods: list[tuple[str, str]]) -> list[str]:
    lines = ["| dose | method | PSNR | SSIM | F1 | lost | invented | in vacuum | filled vac. | vac. with col. counts | "
             "col. int. r | dent r | noise left |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dose, ms in sorted(summary.get(set_, {}).items(), key=lambda kv: float(kv[0])):
        for method, label in methods:
            m = ms.get(method)
            if not m:
                continue
            lines.append(f"| {float(dose):g} | {label} | {_fmt(m.get('psnr'))} | {_fmt(m.get('ssim'), '{:.3f}')} | "
                         f"{_fmt(m.get('f1'), '{:.3f}')} | {_fmt(m.get('lost'), '{:.0f}')} | "
                         f"{_fmt(m.get('fp'), '{:.0f}')} | {_fmt(m.get('in_vacuum'), '{:.0f}')} | "
                         f"{_fmt(m.get('hallucinations'), '{:.0f}')} | {_fmt(m.get('vacancy_counts'), '{:.0f}')} | "
                         f"{_fmt(m.get('intensity_corr'), '{:.3f}')} | {_fmt(m.get('dent_corr'), '{:.3f}')} | "
                         f"{_fmt(m.get('noise_left'), '{:.3f}')} |")
    return lines


def training_record(run: Path | None) -> dict:
    if run is None or not run.is_dir():
        return {}
    rec: dict = {}
    for name in ("config.json", "summary.json"):
        if (run / name).exists():
            rec[name.split(".")[0]] = json.loads((run / name).read_text(encoding="utf-8"))
    log = run / "log.jsonl"
    if log.exists():
        lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
        if lines:
            rec["first_log"], rec["last_log"] = lines[0], lines[-1]
            rec["log_wall_s"] = float(lines[-1]["time"]) - float(lines[0]["time"])
            ips = [float(x["images_per_s"]) for x in lines if "images_per_s" in x]
            rec["median_images_per_s"] = sorted(ips)[len(ips) // 2] if ips else None
    return rec


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from data_prep.io import list_micrographs
    from stem_denoise.evaluation.benchmark import BenchConfig, run_benchmark
    from stem_denoise.evaluation.realframes import DEFAULT_REAL_DIR, real_methods, run_realcheck

    model = Path(args.model)
    if not model.is_file():
        raise InputError(f"--model {model}: no such file")
    out = Path(args.out)
    work = Path(args.work) if args.work else out
    out.mkdir(parents=True, exist_ok=True)
    from stem_denoise.evaluation.benchmark import parse_compare

    compare = parse_compare(args.compare)
    t0 = time.time()
    bench_dir = work / "bench"
    if bench_dir.exists():
        shutil.rmtree(bench_dir)
    cfg = BenchConfig(out_dir=bench_dir, quick=args.quick, checkpoint=model, compare=tuple(compare),
                      methods=("noisy", "gaussian_oracle", "nlm", "cyclegan"), dip=False, cases="both",
                      n_large=0, size=128 if args.quick else 384, progress=False,
                      doses=(5.0, 20.0) if args.quick else (2.0, 5.0, 10.0, 20.0),
                      independent_kinds=("square", "honeycomb") if args.quick else None)
    bench = run_benchmark(cfg, log=lambda *a, **k: None)
    summary = summarise_bench(bench.rows)
    t_bench = time.time() - t0

    real_rows, real_dir = [], work / "real"
    real_src = Path(args.real) if args.real else DEFAULT_REAL_DIR
    frames = list_micrographs([real_src]) if real_src.exists() else []
    if frames:
        if real_dir.exists():
            shutil.rmtree(real_dir)
        methods, skipped = real_methods(["gaussian_1px", "gaussian_2px"],
                                        checkpoints=[str(model)] + [str(p) for _, p in compare],
                                        labels=["model"] + [lab for lab, _ in compare])
        res = run_realcheck(frames, methods, real_dir, skipped=skipped, log=lambda *a, **k: None)
        real_rows = res["rows"]
    train = training_record(Path(args.run) if args.run else None)
    if args.run and (Path(args.run) / "curve.png").exists():
        shutil.copyfile(Path(args.run) / "curve.png", out / "curve.png")
    lattices = list(dict.fromkeys(r["lattice"] for r in bench.rows if r.get("set") != "independent"))
    card = {"model": str(model.name), "benchmark": summary, "benchmark_lattices": lattices, "benchmark_size": cfg.size,
            "benchmark_wall_s": round(t_bench, 1),
            "real": [{k: v for k, v in r.items() if k != "failures_list"} for r in real_rows],
            "training": train, "measured": time.strftime("%Y-%m-%d")}
    (out / "card.json").write_text(json.dumps(card, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_card(card, compare, train, real_rows, model), encoding="utf-8")
    print(f"wrote {out / 'card.json'} and {out / 'README.md'} ({time.time() - t0:.0f} s)")
    return 0


def render_card(card: dict, compare, train: dict, real_rows: list[dict], model: Path) -> str:
    from cyclegan.infer import DEFAULT_NOISE_LEVEL_FACTOR

    s = card["benchmark"]
    lattices = card.get("benchmark_lattices") or ["square", "hex", "perovskite"]  # cards before it was recorded
    methods = [("noisy", "noisy"), ("gaussian_oracle", "Gaussian (oracle)"), ("nlm", "NLM"), ("cyclegan", "model")]
    methods += [(f"cyclegan_{lab}", lab) for lab, _ in compare]
    cfgd = train.get("config", {})
    summ = train.get("summary", {})
    lines = [
        f"# The shipped model: `models/{model.name}`",
        "",
        "A generator export (`cyclegan.checkpoint.export_generator`: the noisy-to-clean generator G, its "
        "architecture and the atom scale it works at). `scripts/denoise.py` uses it when no `--checkpoint` is "
        "given and says so in one line; `STEM_DENOISE_MODEL=PATH` points it elsewhere.",
        "",
        "Every number on this page was written by `python scripts/model_card.py --model stem_denoise/models/default.pt "
        "--run runs/default --out stem_denoise/models/` (measured " + card["measured"] + ").",
        "",
        "## How it was trained",
        "",
        "`python scripts/train_default.py --out runs/default --install` (the `default` profile with "
        "`cyclegan.config.SHIPPED_RECIPE` laid over it, objective "
        f"`{cfgd.get('objective', 'stochastic')}`, clean source `{cfgd.get('clean_source', 'synthetic')}`): "
        f"{cfgd.get('steps', '?')} steps of {cfgd.get('batch_size', '?')} pairs of {cfgd.get('crop_px', '?')} px, "
        f"Adam lr {cfgd.get('lr', '?')}, generator width {cfgd.get('generator', {}).get('width', '?')}, "
        f"{cfgd.get('generator', {}).get('n_blocks', '?')} blocks, {cfgd.get('generator', {}).get('n_down', '?')} "
        "stride-2 stages, no normalisation layers.",
        "",
        "- **Clean scenes** (`cyclegan/synth.py`): a seeded bank of "
        f"{cfgd.get('bank_size', '?')} scenes: square, rectangular, hexagonal, perovskite (weak B and O sites), "
        "honeycomb with unequal sublattices, dumbbells and random 2-4-site motifs; native periods "
        f"{cfgd.get('period_range', ['?', '?'])[0]}-{cfgd.get('period_range', ['?', '?'])[1]} px; Gaussian, "
        "tailed and elliptical probes; vacancies, heavier/lighter columns, dents, ramps, slow backgrounds, "
        "amorphous texture, vacuum regions and particles; scene family "
        f"`{cfgd.get('scene_family', 'full')}`"
        + (" (weak sites broader than strong ones in 60 % of the multi-site scenes, and in half of the scenes a "
           "periodic layer of diffuse glows and dips between the columns)." if cfgd.get("scene_family") == "rich"
           else "."),
        "- **Noise** (`cyclegan/pairs.py`, fresh at every step): Poisson at "
        f"{cfgd.get('noise', {}).get('dose', ['?', '?'])} counts per column peak (log-uniform), read noise, "
        "lag-1 correlations along rows / down columns, per-row offsets, a share of white noise and a "
        f"{cfgd.get('noise', {}).get('clean_frac', '?')} share of noise-free pairs (identity); added at the "
        "native scale and passed through the inference resampler (scale in the loop).",
        *([f"- **Noise level input**: G takes the std of its input's noise at the model's scale as a second "
            "channel (each training pair its own); at inference it is measured on the micrograph and multiplied by "
            f"{DEFAULT_NOISE_LEVEL_FACTOR:g} (`--noise-level-factor`), the setting every number below was measured "
            "with."] if cfgd.get("generator", {}).get("noise_input") else []),
        f"- **Wall time and hardware**: {_fmt(train.get('log_wall_s'), '{:.0f}')} s of training logged "
        f"({_fmt((train.get('log_wall_s') or 0) / 60, '{:.1f}')} min), median "
        f"{_fmt(train.get('median_images_per_s'), '{:.1f}')} images/s, {summ.get('device', 'cpu')}, "
        f"{summ.get('torch_threads', '?')} torch thread(s), "
        + (f"{summ['precision']} arithmetic." if summ.get("precision") else
           "precision auto (bf16 autocast where the CPU has native bf16, float32 elsewhere; not recorded by the run)."),
        "",
        "![training curve](curve.png)",
        "",
        "## Benchmark: PSNR (dB), mean per dose",
        "",
        f"The project's simulated test set ({', '.join(lattices)}; {card.get('benchmark_size', 384)} px; the period "
        "measured on each noisy image):",
        "",
        *bench_table(s, "simulated", methods),
        "",
        "The independent validation set (another simulator: white noise, other probe shapes and backgrounds, "
        "honeycomb, dumbbells, a nanoparticle in vacuum; periods 6-40 px):",
        "",
        *bench_table(s, "independent", methods),
        "",
        "Every metric (simulated set, then independent set; sums over the cases for lost, invented, in vacuum and "
        "filled vacancies): *in vacuum* counts the invented columns farther than one period from every true column "
        "(painted into the vacuum around a nanoparticle or into an empty region); *vac. with col. counts*: vacancy "
        "sites whose intensity in a disc of radius period/4 is nearer the neighbouring columns' than the truth's own "
        "(on the noisy input: the vacancies its data, read site by site, cannot tell from a column); "
        "*noise left* is the share of the "
        "input's noise realisation still in the output (1 = identity). The nanoparticle cases count every lattice "
        "site in the vacuum as a vacancy; the independent set's dumbbells and weak sites at periods of 8 px or less "
        "are not resolved even in the truth.",
        "",
        *detail_table(s, "simulated", methods),
        "",
        *detail_table(s, "independent", methods),
        "",
        "## Real frames (no truth): what must not change",
        "",
    ]
    if real_rows:
        lines += ["| frame | method | cell r | worst site | columns raw/out | Bragg % | result |",
                  "|---|---|---|---|---|---|---|"]
        for r in real_rows:
            lines.append(f"| {r['frame']} | {r['label']} | {_fmt(r.get('cell_r'), '{:.4f}')} | "
                         f"{_fmt(r.get('site_height_max_rel_err'), '{:.3f}')} | {r.get('n_columns_raw')}/"
                         f"{r.get('n_columns_out')} | {_fmt(100 * (r.get('bragg_power_frac') or 0), '{:.2f}')} | "
                         f"{'pass' if r.get('pass') else 'FAIL: ' + r.get('failures', '')} |")
    else:
        lines.append("(no real frames were found when the card was written)")
    lines += [
        "",
        "## Limits",
        "",
        "- Trained on simulated scenes only: a micrograph unlike all of them (strong amorphous layers, "
        "interfaces, very large unit cells) may be smoothed towards what the model knows; fine-tune on your "
        "own data (`scripts/train_cyclegan.py --data DATA --init stem_denoise/models/default.pt`).",
        "- The lattice period is measured on each micrograph and sets the scale; a wrong period (a superstructure "
        "read as the cell, or a cell read as half of itself) changes the scale the model sees: give `--period`.",
        "- **The noise level.** A model with a noise-level input is told the level measured on each micrograph "
        f"times `--noise-level-factor` (default {DEFAULT_NOISE_LEVEL_FACTOR:g}): lower keeps more faint columns "
        "and more noise, higher smooths harder and fills more vacancies at low dose (the README compares the "
        "factors).",
        "- **Faint columns and vacancies at low dose.** Columns weaker than about a third of their neighbours at "
        "doses of 2-5 counts are lost, and vacancies filled, more often than at higher doses (the *lost* and "
        "*filled vac.* columns of the tables); a column count on a real frame can differ from the lightly "
        "smoothed raw frame's by a few per cent (the real-frame table).",
        "- Trained on simulated scenes on a 2-core CPU: a longer run, a wider network (or a GPU) would do better.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
