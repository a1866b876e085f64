"""Stitched-inference benchmarks (speed against a naive tile loop, peak memory, precision, the stitching figure):
the logic behind ``stem-denoise bench-infer`` (:mod:`stem_denoise.commands.bench_infer`, whose help describes each
mode), here so that tests reach it.

* :func:`lattice_rows` / :func:`write_test_tiff` -- a noisy lattice test image, strip by strip.
* :func:`naive_denoise` -- the baseline loop the pipeline is compared with; :func:`reference_recipe_stitch` -- the
  predecessor project's stitching (5 x 5-atom crops side by side, each normalised alone), for the figure.
* :func:`train_standin` -- a small generator trained with supervision, for the figure when no checkpoint is given.
* :func:`run_speed`, :func:`run_memory` (+ :func:`run_worker`, its subprocess), :func:`run_precision`,
  :func:`run_figure` -- each prints its numbers and returns them as a dict.
"""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stem_denoise.common.errors import InputError
from stem_denoise.evaluation.metrics import psnr


@dataclass
class InferBench:
    """Settings of one inference benchmark run (see the command's help for what each mode does)."""

    size: int = 1024
    period: float = 20.0
    model: str = "default"
    tile: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    threads: int | None = None
    no_naive: bool = False
    workdir: str | None = None
    keep: bool = False
    checkpoint: str | None = None
    precisions: str = "auto,fp32"
    out: str = "docs/stitched.png"
    worker: tuple[str, str] | None = None


MODEL_PERIOD = 12.8
INFO = {"patch_px": 64, "atoms_per_patch": 5, "period_px": MODEL_PERIOD, "direction": "A2B"}
MODELS = {"default": {}, "tiny": {"width": 8, "n_blocks": 1}}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def build_model(kind: str, seed: int = 0):
    """A generator of the project's architecture with random (non-identity) weights."""
    import torch

    from cyclegan.models import GeneratorConfig, build_generator

    cfg = GeneratorConfig(**MODELS[kind])
    torch.manual_seed(seed)
    g = build_generator(cfg)
    torch.nn.init.normal_(g.head.weight, 0.0, 0.02)
    return g.eval(), cfg


def lattice_rows(r0: int, r1: int, width: int, period: float, seed: int = 0):
    """Rows r0..r1 of a noisy square lattice (angle 17 deg, ~30 counts at a column) as float32."""

    rng = np.random.default_rng([seed, r0])
    y = np.arange(r0, r1, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    a = math.radians(17.0)
    u = (x * math.cos(a) + y * math.sin(a)) * (2 * math.pi / period)
    v = (-x * math.sin(a) + y * math.cos(a)) * (2 * math.pi / period)
    clean = 3.0 + 27.0 * ((1 + np.cos(u)) * (1 + np.cos(v)) / 4.0) ** 3
    return (clean + rng.normal(0.0, 1.0, clean.shape) * np.sqrt(clean)).astype(np.float32)


def write_test_tiff(path: Path, size: int, period: float) -> None:
    """A size x size float32 TIFF written strip by strip (never whole in memory)."""
    from data_prep.io import MicrographMeta, create_output_memmap
    from stem_denoise.common.tiling import release_pages

    meta = MicrographMeta(source_dtype="float32", pixel_size=10.0, unit="pm", path=str(path), shape=(size, size))
    step = max(1, (1 << 22) // size)
    with create_output_memmap(path, (size, size), "float32", meta, overwrite=True) as mm:
        for r in range(0, size, step):
            mm[r:r + step] = lattice_rows(r, min(size, r + step), size, period)
            release_pages(mm, r, r + step)


# ----------------------------------------------------------------------------------------------- naive loop


def naive_denoise(image, generator, info: dict, period_px: float):
    """The baseline: reference-recipe crops of the training patch size, per-tile normalisation, one tile at a time."""
    import torch

    from cyclegan.infer import resample_operator

    h, w = image.shape
    scale = info["period_px"] / period_px
    hm, wm = max(1, round(h * scale)), max(1, round(w * scale))
    rows, cols = resample_operator(h, hm), resample_operator(w, wm)
    x = image if rows.identity else rows.apply_rows(np.asarray(image, np.float32), 0, hm, 0)
    x = cols.apply_cols(x)
    t = int(info["patch_px"])
    step = t // 2
    starts_r = sorted({*range(0, max(1, hm - t + 1), step), max(0, hm - t)})
    starts_c = sorted({*range(0, max(1, wm - t + 1), step), max(0, wm - t)})
    win = np.outer(np.hanning(t + 2)[1:-1], np.hanning(t + 2)[1:-1])
    acc = np.zeros((max(hm, t), max(wm, t)))
    wsum = np.zeros_like(acc)
    xp = np.pad(x, ((0, max(0, t - hm)), (0, max(0, t - wm))), mode="reflect")
    generator = generator.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        for r in starts_r:
            for c in starts_c:
                tile = xp[r:r + t, c:c + t]
                lo, hi = np.percentile(tile, [0.5, 99.5])
                hi = hi if hi > lo else lo + 1.0
                inp = torch.from_numpy(((tile - lo) / (hi - lo)).astype(np.float32))[None, None]
                y = generator(inp)[0, 0].numpy() * (hi - lo) + lo
                acc[r:r + t, c:c + t] += y * win
                wsum[r:r + t, c:c + t] += win
    y = (acc / wsum)[:hm, :wm].astype(np.float32)
    up_r, up_c = resample_operator(hm, h), resample_operator(wm, w)
    y = up_r.apply_rows(y, 0, h, 0)
    return up_c.apply_cols(y)


def reference_recipe_stitch(image, generator, info: dict, period_px: float):
    """The reference recipe's stitching (the predecessor project), for the figure: 5 x 5-atom crops side by
    side, each normalised on its own."""
    import torch

    from cyclegan.infer import resample_operator
    from stem_denoise.common.tiling import map_tiles

    h, w = image.shape
    scale = info["period_px"] / period_px
    hm, wm = max(1, round(h * scale)), max(1, round(w * scale))
    x = resample_operator(w, wm).apply_cols(resample_operator(h, hm).apply_rows(np.asarray(image, np.float32),
                                                                                 0, hm, 0))

    def per_crop(batch):
        res = []
        for t in batch:
            lo, hi = np.percentile(t, [0.5, 99.5])
            with torch.no_grad():
                y = generator(torch.from_numpy((t - lo) / (hi - lo)).float()[None, None])[0, 0].numpy()
            res.append(y * (hi - lo) + lo)
        return np.stack(res)

    y = map_tiles(x, per_crop, tile=int(info["patch_px"]), overlap=0)
    return resample_operator(wm, w).apply_cols(resample_operator(hm, h).apply_rows(y, 0, h, 0))


def run_speed(s: InferBench) -> dict:
    import torch

    from cyclegan.infer import denoise_array, pick_device, plan_tiles

    dev = pick_device(s.device)
    g, cfg = build_model(s.model)
    image = lattice_rows(0, s.size, s.size, s.period)
    plan = plan_tiles(g, tile=s.tile, device=dev)
    print(f"device {dev} ({torch.get_num_threads()} threads), model {s.model} (width {cfg.width}, "
          f"{cfg.n_blocks} blocks, receptive-field radius {plan.rf_radius} px), image {s.size}x{s.size} px, "
          f"period {s.period} px -> scale {MODEL_PERIOD / s.period:.3f}", flush=True)
    # warm-up (first-call allocations, oneDNN kernels)
    denoise_array(image[:256, :256], g, INFO, period_px=s.period, plan=plan, device=dev)
    stats: dict = {}
    t0 = time.perf_counter()
    ours = denoise_array(image, g, INFO, period_px=s.period, plan=plan, batch_size=s.batch_size, device=dev,
                         stats=stats)
    t_ours = time.perf_counter() - t0
    mp = s.size * s.size / 1e6
    whole = denoise_array(image, g, INFO, period_px=s.period, whole=True, device=dev)
    res = {"ours_s": t_ours, "ours_mpps": mp / t_ours, "ours_psnr_vs_whole": psnr(ours, whole), "plan": stats["plan"],
           "batch_size": stats["batch_size"], "n_tiles": stats["n_tiles"], "tile_shape": stats["tile_shape"]}
    print(f"ours : tile {stats['tile_shape']} overlap {plan.overlap} margin {plan.margin} batch {stats['batch_size']}"
          f" ({stats['n_tiles']} tiles), channels_last, inference_mode: {t_ours:.1f} s = {mp / t_ours:.4f} MP/s; "
          f"PSNR vs whole image {res['ours_psnr_vs_whole']:.1f} dB", flush=True)
    if not s.no_naive:
        gn, _ = build_model(s.model)
        t0 = time.perf_counter()
        naive = naive_denoise(image, gn, INFO, s.period)
        t_naive = time.perf_counter() - t0
        res.update(naive_s=t_naive, naive_mpps=mp / t_naive, naive_psnr_vs_whole=psnr(naive, whole),
                   speedup=t_naive / t_ours)
        print(f"naive: tile 64 overlap 32 batch 1, fp32, no_grad, per-tile normalisation: {t_naive:.1f} s = "
              f"{mp / t_naive:.4f} MP/s; PSNR vs whole image {res['naive_psnr_vs_whole']:.1f} dB", flush=True)
        print(f"speed-up over the naive loop: {t_naive / t_ours:.2f}x", flush=True)
    return res


# ----------------------------------------------------------------------------------------------- figure


def train_supervised(pairs, cfg, *, steps: int, crop: int = 64, batch: int = 8, lr: float = 2e-3, seed: int = 0,
                     log_every: int = 0):
    """Train a generator of architecture ``cfg`` with supervision: random ``crop`` px crops of the (noisy, clean)
    arrays in ``pairs`` (normalised, same shape per pair), MSE, Adam at ``lr``, ``batch`` crops a step. Returns
    ``(generator in eval mode, per-step losses)``. Prints the loss every ``log_every`` steps (0: never)."""
    import torch

    from cyclegan.models import build_generator

    torch.manual_seed(seed)
    g = build_generator(cfg)
    opt = torch.optim.Adam(g.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            noisy, clean = pairs[rng.integers(len(pairs))]
            i, j = rng.integers(0, noisy.shape[0] - crop + 1), rng.integers(0, noisy.shape[1] - crop + 1)
            xs.append(noisy[i:i + crop, j:j + crop])
            ys.append(clean[i:i + crop, j:j + crop])
        x = torch.from_numpy(np.stack(xs)[:, None]).float()
        y = torch.from_numpy(np.stack(ys)[:, None]).float()
        loss = torch.mean((g(x) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"supervised step {step}: mse {loss.item():.5f}", flush=True)
    return g.eval(), losses


def train_standin(path: Path, *, steps: int = 300, seed: int = 0) -> None:
    """Export a generator of the project's architecture (quick-profile size) trained WITH SUPERVISION on simulated
    noisy/clean pairs at the model's atom scale. Only for the figure when no CycleGAN checkpoint is given: the
    figure is about stitching, and a network that visibly changes the image shows seams if there are any."""
    from cyclegan.checkpoint import export_generator
    from cyclegan.models import GeneratorConfig
    from data_prep.normalize import robust_range
    from data_prep.simulate import simulate

    pairs = []
    for k in range(6):
        r = simulate(shape=(256, 256), period_px=MODEL_PERIOD, angle_deg=7.0 + 13 * k, dose=12, dents=1,
                     vacancy_frac=0.01, seed=1000 + k)
        lo, hi = robust_range(r.noisy)
        pairs.append(((r.noisy - lo) / (hi - lo), (r.truth - lo) / (hi - lo)))
    cfg = GeneratorConfig(width=16, n_blocks=3)
    g, _ = train_supervised(pairs, cfg, steps=steps, crop=64, batch=8, lr=2e-3, seed=seed, log_every=50)
    export_generator(path, g, cfg, {**INFO, "note": "supervised stand-in for the stitching figure"})


def run_figure(s: InferBench) -> dict:
    """Before/after PNG of a stitched denoised simulated micrograph, tile edges marked, a tile corner zoomed."""
    import cv2

    from cyclegan.checkpoint import load_generator
    from cyclegan.infer import denoise_array, pick_device
    from data_prep.simulate import simulate
    from stem_denoise.common.atomic import atomic_write_bytes
    from stem_denoise.common.columns import find_columns, match_columns
    from stem_denoise.common.tiling import TileGrid

    dev = pick_device(s.device)
    checkpoint = s.checkpoint
    if checkpoint:
        g, info = load_generator(checkpoint)
    else:
        with tempfile.TemporaryDirectory(prefix="standin_") as tmp:
            checkpoint = Path(tmp) / "generator.pt"
            train_standin(checkpoint)
            g, info = load_generator(checkpoint)
    who = info.get("note") or f"generator {Path(checkpoint).name} (step {info.get('step', '?')})"
    size = s.size or 1024
    r = simulate(shape=(size, size), period_px=s.period, angle_deg=13.0, dose=12, dents=2, vacancy_frac=0.01,
                 seed=77)
    stats: dict = {}
    out = denoise_array(r.noisy, g, info, period_px=s.period, tile=s.tile or 256, device=dev, stats=stats,
                        batch_size=s.batch_size)
    whole = denoise_array(r.noisy, g, info, period_px=s.period, whole=True, device=dev)
    recipe_style = reference_recipe_stitch(r.noisy, g, info, s.period)
    plan = stats["plan"]
    grid = TileGrid.plan(stats["model_shape"], tile=plan["tile"], overlap=plan["overlap"], margin=plan["margin"],
                         align=plan["align"], shrink=True)
    scale = stats["scale"]
    edges = sorted({e for s0 in grid.col_starts for e in (s0, s0 + grid.tile_shape[1])
                    if 0 < e < stats["model_shape"][1]})
    edges_src = [e / scale for e in edges]  # edge between model px e-1 and e, as a source-px boundary
    found = find_columns(out, s.period)
    fi, ti, dist = match_columns(found, r.columns, s.period / 3)
    lo, hi = np.percentile(r.truth, [0.5, 99.5])

    def to8(img):
        return np.clip((img - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)

    def label(img, text):
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img
        cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        return img

    side = 320
    gain = 20.0
    dlo, dhi = 0.0, (hi - lo) / gain

    def diff8(img):
        return np.clip((np.abs(img - whole) - dlo) / (dhi - dlo) * 255.0, 0, 255).astype(np.uint8)

    columns = (
        (to8(r.noisy), False, "noisy (simulated)"),
        (to8(out), True, "denoised, stitched tiles"),
        (diff8(out), True, f"|stitched - whole| x{gain:g}"),
        (diff8(recipe_style), False, f"|reference-recipe - whole| x{gain:g}"),
        (to8(r.truth), False, "truth"),
    )
    f = side / size
    panels = []
    for img, marks, text in columns:
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        small = label(small, text)
        if marks:
            for e in edges_src:  # tile edges: short coloured marks on the right and bottom borders
                x = int(round(e * f))
                cv2.line(small, (x, side - 10), (x, side - 1), (0, 200, 255), 2)
                cv2.line(small, (side - 10, x), (side - 1, x), (0, 200, 255), 2)
        panels.append(small)
    # zoom on the tile corner nearest the centre
    cx = int(round(min(edges_src, key=lambda e: abs(e - size / 2)))) if edges_src else size // 2
    half = 80
    y0 = x0 = int(np.clip(cx - half, 0, size - 2 * half))
    crops = []
    for k, (img, marks, text) in enumerate(columns):
        c = cv2.resize(img[y0:y0 + 2 * half, x0:x0 + 2 * half], (side, side), interpolation=cv2.INTER_NEAREST)
        c = label(c, "zoom on a tile corner" if k == 0 else text.split(" (")[0])
        if marks:
            e = int(round((cx - x0) * side / (2 * half)))
            cv2.line(c, (e, side - 10), (e, side - 1), (0, 200, 255), 2)
            cv2.line(c, (side - 10, e), (side - 1, e), (0, 200, 255), 2)
        crops.append(c)
    diff = float(np.abs(out - whole).max())
    recipe_diff = float(np.abs(recipe_style - whole).max())
    text = (f"{who}. {size}x{size} px, period {s.period} px -> model scale {scale:.2f}; {stats['n_tiles']} tiles of "
            f"{grid.tile_shape[0]} model px (edges marked), overlap {plan['overlap']}, receptive-field radius "
            f"{plan['rf_radius']}; max |stitched - whole| = {diff:.2g}, reference-recipe {recipe_diff:.2g} (data range "
            f"{hi - lo:.3g}); columns in the stitched output: {len(fi)}/{len(r.columns)} true ones matched, "
            f"{len(found) - len(fi)} extra, rms shift {np.sqrt(np.mean(dist ** 2)):.2f} px")
    band = np.full((56, len(columns) * side, 3), 255, np.uint8)
    cut = text.rfind(";", 0, len(text) // 2 + 40) + 1
    for k, part in enumerate((text[:cut], text[cut:].strip())):
        cv2.putText(band, part, (8, 22 + 24 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    canvas = np.vstack([np.hstack(panels), np.hstack(crops), band])
    ok, png = cv2.imencode(".png", canvas, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    Path(s.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(s.out, png.tobytes())
    print(text)
    print(f"wrote {s.out}")
    return {"max_diff": diff, "recipe_max_diff": recipe_diff, "matched": len(fi), "n_true": len(r.columns),
            "n_found": len(found)}


# ----------------------------------------------------------------------------------------------- precision


def precision_model(checkpoint: str | None):
    """(generator, info, description) for the precision benchmark: see the module docstring."""
    import torch

    from cyclegan.checkpoint import default_model_path, load_generator

    path = Path(checkpoint) if checkpoint else default_model_path()
    if checkpoint or path.is_file():
        g, info = load_generator(path)
        cfg = g.cfg
        return g, info, f"{path} (width {cfg.width}, {cfg.n_blocks} blocks)"
    from cyclegan.config import profile_config
    from cyclegan.models import build_generator

    cfg = profile_config("default").generator
    torch.manual_seed(0)
    g = build_generator(cfg)
    torch.nn.init.normal_(g.head.weight, 0.0, 0.02)
    return (g.eval(), dict(INFO), f"fresh default-profile generator (width {cfg.width}, {cfg.n_blocks} blocks, "
            f"{cfg.n_down} stride-2 stages; random weights: {path} does not exist)")


def run_precision(s: InferBench) -> dict:
    import torch

    from cyclegan.infer import denoise_array, denoise_file, pick_device, plan_tiles
    from data_prep.io import read_micrograph
    from stem_denoise.common.precision import cpu_has_native_bf16, describe_precision, resolve_precision

    names = [p.strip() for p in s.precisions.split(",") if p.strip()]
    if not names or len(set(names)) != len(names):
        raise InputError(f"--precisions must list distinct precisions, got {s.precisions!r}")
    dev = pick_device(s.device)
    for p in names:  # checks every name before any work
        resolve_precision(p, dev)
    g, info, who = precision_model(s.checkpoint)
    g = g.to(dev)
    plan = plan_tiles(g, tile=s.tile, device=dev)
    workdir = Path(s.workdir) if s.workdir else Path(tempfile.mkdtemp(prefix="bench_precision_"))
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / f"lattice_{s.size}.tif"
    t0 = time.perf_counter()
    if not src.exists():
        write_test_tiff(src, s.size, s.period)
    native = cpu_has_native_bf16()
    print(f"device {dev} ({torch.get_num_threads()} threads), CPU native bf16: {'yes' if native else 'no'}; "
          f"\"auto\" resolves to {describe_precision(resolve_precision('auto', dev))}; model {who}; input "
          f"{s.size}x{s.size} float32 TIFF, period {s.period} px -> scale "
          f"{info['period_px'] / s.period:.3f} (written in {time.perf_counter() - t0:.1f} s)", flush=True)
    warm = np.asarray(read_micrograph(src)[0][:256, :256])
    mp = s.size * s.size / 1e6
    res: dict = {"size": s.size, "device": str(dev), "cpu_native_bf16": native, "model": who, "runs": {}}
    outputs = {}
    for p in names:
        denoise_array(warm, g, info, period_px=s.period, plan=plan, device=dev, precision=p)  # kernels, caches
        dst = workdir / f"denoised_{s.size}_{p}.tif"
        t0 = time.perf_counter()
        stats = denoise_file(src, dst, g, info, period_px=s.period, plan=plan, batch_size=s.batch_size,
                             device=dev, precision=p, overwrite=True)
        seconds = time.perf_counter() - t0
        res["runs"][p] = {"seconds": seconds, "mp_per_s": mp / seconds, "ran_as": stats["precision"],
                          "n_tiles": stats.get("n_tiles"), "streamed": stats["streamed"]}
        outputs[p] = dst
        print(f"{p:>4} (ran as {stats['precision']}): {seconds:.2f} s = {mp / seconds:.3f} MP/s "
              f"({stats.get('n_tiles', 1)} tiles, batch {stats.get('batch_size')})", flush=True)
    base = "fp32" if "fp32" in res["runs"] else names[0]
    ref = read_micrograph(outputs[base])[0].astype(np.float64)
    for p in names:
        r = res["runs"][p]
        r["speedup_vs_" + base] = res["runs"][base]["seconds"] / r["seconds"]
        if p != base:
            other = read_micrograph(outputs[p])[0]
            db = psnr(other, ref) if not np.array_equal(other, ref) else math.inf
            r["psnr_vs_" + base] = db if math.isfinite(db) else None  # None: bit-identical (strict JSON)
            same = r["ran_as"] == res["runs"][base]["ran_as"]
            print(f"{p} vs {base}: {r['speedup_vs_' + base]:.2f}x the speed of {base}; output "
                  f"{'bit-identical to' if not math.isfinite(db) else f'PSNR {db:.1f} dB against'} {base}'s"
                  f"{' (same arithmetic: the time ratio is run-to-run noise)' if same else ''}", flush=True)
    print("RESULT " + json.dumps(res), flush=True)
    if not s.keep:
        for f in (src, *outputs.values()):
            f.unlink(missing_ok=True)
        if not s.workdir:
            workdir.rmdir()
    return res


# ----------------------------------------------------------------------------------------------- memory


def run_worker(s: InferBench) -> dict:
    """In the subprocess: denoise s.worker[0] into s.worker[1] (streamed) and report peak RSS."""
    import torch

    from cyclegan.infer import denoise_file, pick_device, plan_tiles

    if s.threads:
        torch.set_num_threads(s.threads)
    dev = pick_device(s.device)
    g, cfg = build_model(s.model)
    plan = plan_tiles(g, tile=s.tile, device=dev)
    baseline = _rss_mb()
    t0 = time.perf_counter()
    stats = denoise_file(s.worker[0], s.worker[1], g, INFO, period_px=s.period, plan=plan,
                         batch_size=s.batch_size, device=dev, overwrite=True, stream_bytes=0)
    seconds = time.perf_counter() - t0
    out = {"peak_rss_mb": _rss_mb(), "startup_rss_mb": baseline, "seconds": seconds, "streamed": stats["streamed"],
           "scale": stats["scale"], "model_shape": stats["model_shape"], "n_tiles": stats.get("n_tiles"),
           "tile_shape": stats.get("tile_shape"), "batch_size": stats.get("batch_size"), "plan": stats.get("plan"),
           "threads": torch.get_num_threads(), "device": str(dev)}
    print("RESULT " + json.dumps(out), flush=True)
    return out


def run_memory(s: InferBench) -> dict:
    workdir = Path(s.workdir) if s.workdir else Path(tempfile.mkdtemp(prefix="bench_infer_"))
    workdir.mkdir(parents=True, exist_ok=True)
    src, dst = workdir / f"lattice_{s.size}.tif", workdir / f"denoised_{s.size}.tif"
    t0 = time.perf_counter()
    if not src.exists():
        write_test_tiff(src, s.size, s.period)
    print(f"input {src} ({s.size}x{s.size} float32, {src.stat().st_size / 2**30:.2f} GiB; written in "
          f"{time.perf_counter() - t0:.1f} s)", flush=True)
    cmd = [sys.executable, "-m", "stem_denoise.commands.bench_infer", "--worker", str(src), str(dst),
           "--model", s.model, "--period", str(s.period), "--device", s.device]
    for flag, value in (("--tile", s.tile), ("--batch-size", s.batch_size), ("--threads", s.threads)):
        if value:
            cmd += [flag, str(value)]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    from data_prep.io import read_micrograph_meta

    meta = read_micrograph_meta(dst)
    mp = s.size * s.size / 1e6
    print(f"worker (device {res['device']}, {res['threads']} threads, model {s.model}): {res['seconds']:.1f} s = "
          f"{mp / res['seconds']:.3f} MP/s of input; scale {res['scale']:.3f} (model {res['model_shape'][0]}x"
          f"{res['model_shape'][1]} px), {res['n_tiles']} tiles of {res['tile_shape']}, batch {res['batch_size']}",
          flush=True)
    print(f"peak RSS of the worker: {res['peak_rss_mb']:.0f} MiB = {res['peak_rss_mb'] / 1024:.2f} GiB "
          f"(after start-up, before the work: {res['startup_rss_mb']:.0f} MiB); output {dst.name} "
          f"{meta.shape[0]}x{meta.shape[1]} {meta.source_dtype}", flush=True)
    if not s.keep:
        for p in (src, dst):
            p.unlink(missing_ok=True)
        if not s.workdir:
            workdir.rmdir()
    return res
