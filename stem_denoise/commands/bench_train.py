"""Training speed: this project's default CycleGAN step against a reference-style loop, in one run.

    python scripts/bench_train.py [--device auto|cpu|cuda] [--profile default|quick] [--seconds 20]
                                  [--steps N] [--warmup 1] [--patch-px 64] [--threads N]
                                  [--precisions fp32,bf16]

Prints iterations/s and images/s (A patches per second; every step also sees as many B patches) for

* **ours**: the profile's networks, batch size, precision (the profile's "auto": bf16/fp16 autocast on CUDA,
  bf16 on CPUs with native bf16, else fp32) and channels_last, through the real training step
  (:class:`cyclegan.train.CycleGAN`; ``step_stochastic`` for the stochastic objective of the default profiles,
  fed a batch of noisy/clean pairs and a batch of micrograph and clean patches, all of the crop size);
* **reference**: the classic CycleGAN recipe at the same patch size -- ResNet-9 generator at 64 channels with
  instance norm and transposed convolutions, 70 px PatchGAN at 64 channels with instance norm, batch 1, fp32, no
  channels_last -- through the same step function (same losses and pools; no low-frequency term),

then the speed-up in images/s. Each loop runs ``--warmup`` untimed steps, then timed steps until ``--steps``
or ``--seconds`` is reached (at least one). Inputs are lattice patches with noise, made in memory.

``--precisions fp32,bf16`` instead times **ours** once per listed precision (same inputs, same initial weights,
one after the other in the same run) and prints each one's images/s and their ratio to the first; the
reference loop is skipped. On a CPU without native bf16 instructions bf16 is emulated and slower.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from stem_denoise.common.cli import ArgumentParser, run_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Benchmark the training step against a reference-style loop.")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--profile", choices=("default", "quick"), default="default")
    p.add_argument("--seconds", type=float, default=20.0, help="time budget per loop (timed part)")
    p.add_argument("--steps", type=int, default=50, help="at most this many timed steps per loop")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--patch-px", type=int, default=None, help="patch size (default: the profile's crop or 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--precisions", default=None, metavar="LIST",
                   help="time the profile's step once per precision in this comma-separated list (fp32, bf16, "
                        "auto; fp16 on CUDA) instead of against the reference loop")
    return p


def _precision_list(text: str) -> list[str]:
    from stem_denoise.common.errors import InputError

    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in ("auto", "fp32", "bf16", "fp16")]
    if not names or bad or len(set(names)) != len(names):
        raise InputError(f"--precisions must be distinct names from auto, fp32, bf16, fp16; got {text!r}")
    return names


def time_loop(model, real_a, real_b, *, warmup: int, steps: int, seconds: float,
              extra: tuple | None = None) -> tuple[int, float]:
    """Run ``warmup`` then timed steps of ``model.step``; returns (timed steps, seconds).

    For the stochastic objective (``model.stochastic``) the step is ``model.step_stochastic(real_a, real_b, *extra)``:
    ``real_a``/``real_b`` are the noisy/clean pair batch and ``extra`` the (micrograph, clean) patch batches.
    """
    import torch

    def sync():
        if real_a.device.type == "cuda":
            torch.cuda.synchronize(real_a.device)

    if getattr(model, "stochastic", False):
        def one():
            model.step_stochastic(real_a, real_b, *(extra or ()))
    else:
        def one():
            model.step(real_a, real_b)

    for _ in range(warmup):
        one()
    sync()
    t0 = time.perf_counter()
    n = 0
    while n < max(1, steps):
        one()
        n += 1
        if n >= 1 and time.perf_counter() - t0 > seconds:
            break
    sync()
    return n, time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch

    from cyclegan.config import config_from_dict, profile_config
    from cyclegan.data import DataInfo, toy_lattice
    from cyclegan.models import ReferencePatchDiscriminator, ReferenceResnetGenerator
    from cyclegan.train import CycleGAN, precision_for
    from stem_denoise.common.device import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = profile_config(args.profile)
    device = pick_device(args.device)
    cfg = config_from_dict({"device": str(device.type)}, base=cfg)
    patch = args.patch_px or cfg.crop_px or 64
    info = DataInfo(patch_px=patch, atoms_per_patch=patch / 12.8, period_px=12.8)
    rng = np.random.default_rng(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = [toy_lattice((patch, patch), 12.8, rng=rng) + 0.3 * rng.standard_normal((patch, patch))
             for _ in range(n)]
        b = [toy_lattice((patch, patch), 12.8, rng=rng) for _ in range(n)]
        as_t = lambda x: torch.from_numpy(np.stack(x).astype(np.float32))[:, None].to(device)  # noqa: E731
        return as_t(a), as_t(b)

    from stem_denoise.common.precision import cpu_has_native_bf16

    precisions = _precision_list(args.precisions) if args.precisions else None
    print(f"device: {device} ({torch.get_num_threads()} CPU threads), patch {patch} px, torch {torch.__version__}, "
          f"CPU native bf16: {'yes' if cpu_has_native_bf16() else 'no'}")
    results = {}
    a, b = batch(cfg.batch_size)
    extra = batch(cfg.batch_size)  # micrograph (A) and clean (B) patches for the stochastic objective's D_B
    g = cfg.generator
    for name in precisions or [cfg.precision]:
        run_cfg = config_from_dict({"precision": name}, base=cfg)
        amp, _ = precision_for(run_cfg, device)
        ours = CycleGAN(run_cfg, info, device)
        n, dt = time_loop(ours, a, b, warmup=args.warmup, steps=args.steps, seconds=args.seconds, extra=extra)
        key = "ours" if precisions is None else name
        results[key] = (n / dt, n * cfg.batch_size / dt)
        label = "ours" if precisions is None else f"ours {name}"
        print(f"{label:<10}: {cfg.objective} objective; generator width {g.width}, {g.n_blocks} blocks, {g.n_down} "
              f"stride-2 stage(s), no norm, resize+conv; PatchGAN width {cfg.discriminator.width}, "
              f"{cfg.discriminator.n_layers} layers; batch {cfg.batch_size}, "
              f"{'fp32' if amp is None else str(amp).replace('torch.', '')}, channels_last {ours.channels_last}: "
              f"{results[key][0]:.3f} it/s, {results[key][1]:.2f} images/s ({n} steps in {dt:.1f} s)", flush=True)
        del ours
    if precisions is not None:
        first = precisions[0]
        for name in precisions[1:]:
            print(f"{name} / {first}: {results[name][1] / results[first][1]:.2f}x images/s")
        return 0
    ref_cfg = config_from_dict({"objective": "classic", "batch_size": 1, "precision": "fp32",
                                "channels_last": False, "lambda_lowfreq": 0.0}, base=cfg)
    torch.manual_seed(0)
    nets = {"G": ReferenceResnetGenerator(64, 9), "F": ReferenceResnetGenerator(64, 9),
            "D_A": ReferencePatchDiscriminator(64, 3), "D_B": ReferencePatchDiscriminator(64, 3)}
    ref = CycleGAN(ref_cfg, info, device, nets=nets)
    a, b = batch(1)
    n, dt = time_loop(ref, a, b, warmup=args.warmup, steps=args.steps, seconds=args.seconds)
    results["reference"] = (n / dt, n / dt)
    print(f"reference : ResNet-9/64 generator, instance norm, transposed conv; PatchGAN 64/3 layers; batch 1, "
          f"fp32: {results['reference'][0]:.3f} it/s, {results['reference'][1]:.2f} images/s "
          f"({n} steps in {dt:.1f} s)")
    speedup = results["ours"][1] / results["reference"][1]
    print(f"speed-up  : {speedup:.2f}x images/s")
    return 0


if __name__ == "__main__":
    run_main(main)
