"""Benchmark stitched tile inference: throughput against a naive tile loop, and peak memory on a huge micrograph.

    python scripts/bench_infer.py --mode speed  [--size 1024] [--model default|tiny] [--period 20]
    python scripts/bench_infer.py --mode memory [--size 16384] [--model tiny|default] [--period 20]
    python scripts/bench_infer.py --mode figure --checkpoint RUN_DIR/generator.pt [--out docs/stitched.png]
    python scripts/bench_infer.py --mode precision [--size 4096] [--checkpoint G.pt] [--precisions auto,fp32]
    options: [--tile PX] [--batch-size N] [--device auto|cpu|cuda] [--threads N] [--workdir DIR] [--keep]

speed: one simulated-looking lattice micrograph of --size^2 px (float32, in memory) is denoised by
  * this project's pipeline (cyclegan.infer.denoise_array: whole-image normalisation, streamed resampling,
    tiles of 512 model px with the receptive-field overlap, batches, inference_mode, channels_last), and
  * a naive loop, the way the reference recipe stitched 5 x 5-atom crops: tiles of the training patch size (64 model px)
    with 50 % overlap and a Hann-window average, each tile normalised by its own percentiles, one tile at a
    time in fp32 under torch.no_grad, default memory format, whole-image arrays for the accumulation,
and both are compared with the network run once on the whole image (PSNR, dB). Throughput is in megapixels of
INPUT per second. The network weights are random (the head too, so it is not the identity): speed does not
depend on them.
memory: a --size^2 float32 TIFF is written to --workdir (strip by strip) and denoised by scripts' own code path
  (cyclegan.infer.denoise_file: memory-mapped input and output, streamed) in a SUBPROCESS, whose peak resident
  memory (resource.getrusage ru_maxrss) is printed together with the time and the resident memory it had
  after start-up (torch, the model) before the work began.
precision: a --size^2 float32 TIFF (simulated-looking lattice) is written to --workdir and denoised end to end
  by cyclegan.infer.denoise_file (read, normalise, resample, tiles, write) once per precision in --precisions
  (default "auto,fp32"), all in the same run with the same generator: --checkpoint, else the shipped
  stem_denoise/models/default.pt when it exists, else a freshly initialised generator of the default profile's
  architecture (random weights, head not zero). Prints seconds and MP/s of input for each, the ratio to the fp32 run,
  what "auto" resolved to, whether the CPU has native bf16 instructions, and how far each output is from fp32's.
figure: a simulated micrograph (dents, vacancies) denoised in stitched tiles with a trained generator, drawn
  next to its noisy input and the noise-free truth, tile edges marked, with a zoom on a tile corner.
"""
from __future__ import annotations

import argparse
import dataclasses

from stem_denoise.common.cli import ArgumentParser, run_main
from stem_denoise.common.errors import InputError
from stem_denoise.evaluation.inference import (
    MODELS,
    InferBench,
    run_figure,
    run_memory,
    run_precision,
    run_speed,
    run_worker,
)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Benchmark stitched tile inference (speed vs a naive loop; memory).")
    p.add_argument("--mode", choices=["speed", "memory", "figure", "precision"], default="speed")
    p.add_argument("--size", type=int, default=None,
                   help="image side in px (default: 1024 speed, 16384 memory, 4096 precision)")
    p.add_argument("--model", choices=sorted(MODELS), default=None,
                   help="generator size (default: default for speed, tiny for memory)")
    p.add_argument("--period", type=float, default=20.0, help="lattice period of the test image in px")
    p.add_argument("--tile", type=int, default=None, help="tile in model px (default: the pipeline's)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per batch (default: the pipeline's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-naive", action="store_true", help="speed: skip the naive loop")
    p.add_argument("--workdir", default=None,
                   help="memory, precision: folder for the test TIFFs (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="memory, precision: keep the TIFFs")
    p.add_argument("--checkpoint", default=None,
                   help="figure: generator export to denoise with (default: train a supervised stand-in); "
                        "precision: default the shipped stem_denoise/models/default.pt, else a fresh default-profile "
                        "generator")
    p.add_argument("--precisions", default="auto,fp32",
                   help="precision: comma-separated precisions to time in one run (default %(default)s)")
    p.add_argument("--out", default="docs/stitched.png", help="figure: PNG to write (default %(default)s)")
    p.add_argument("--worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.size is not None and ns.size < 16:
        raise InputError("--size must be at least 16 px")
    if not ns.period > 0:
        raise InputError("--period must be positive")
    if ns.threads:
        import torch

        torch.set_num_threads(ns.threads)
    defaults = {"figure": (None, None), "precision": (4096, None), "speed": (1024, "default"),
                "memory": (16384, "tiny")}[ns.mode]
    settings = InferBench(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(InferBench)
                             if getattr(ns, f.name) is not None})
    settings.size = ns.size or defaults[0] or 0
    settings.model = ns.model or defaults[1] or "default"
    if ns.worker:
        settings.model = ns.model or "tiny"
        run_worker(settings)
    else:
        {"figure": run_figure, "precision": run_precision, "speed": run_speed, "memory": run_memory}[ns.mode](settings)
    return 0


if __name__ == "__main__":
    run_main(main)
