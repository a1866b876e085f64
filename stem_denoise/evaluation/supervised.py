"""The "supervised on simulation" baseline: the project's generator trained on paired noisy/clean simulations.

This is what the field reports as the strong alternative to unpaired learning (networks trained with supervision
on simulated micrographs, e.g. tk_r_em, Lobato et al. 2023). Here it is built from the project's own parts so that
the only difference from the shipped CycleGAN is the objective:

* the same generator architecture as the shipped model (the ``default`` profile's: width 16, 6 residual blocks,
  two stride-2 stages, residual output, no normalisation layers);
* the same clean scenes (:class:`cyclegan.synth.SceneBank`), the same STEM noise layer with fresh noise per pair
  and the same noise ranges (:class:`cyclegan.pairs.NoiseRanges`), the same scale-in-the-loop pairs
  (:class:`cyclegan.pairs.SyntheticPairs`) at the same model scale (12.8 px per period, 64 px crops);
* the loss is plain L1 between ``G(noisy)`` and ``clean``: no discriminator, no cycle, no identity term.

The stochastic CycleGAN's clean cycle ``G(F(b)) = b`` is this very loss on these very pairs, so the comparison
shows what the adversarial and cycle terms add or cost at a given budget. The budget is small by default (a few
CPU minutes, far below the shipped model's 3000 steps), and recorded in the export's ``info``; the weights are
written as a normal generator export (:func:`cyclegan.checkpoint.export_generator`) and reused on the next run
(:func:`ensure_supervised`), and the benchmark runs them through the same stitched-tile inference as the CycleGAN.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stem_denoise.common.errors import ConfigError, InputError

MODEL_PERIOD_PX = 12.8  # the shipped model's scale: lattice period in model px (cyclegan.config.SYNTHETIC_SOURCE)
ATOMS_PER_PATCH = 5.0
PATCH_PX = 64


@dataclass(frozen=True)
class SupervisedSettings:
    """Training budget of the supervised baseline: ``steps`` Adam steps of ``batch_size`` pairs of ``crop_px`` px at
    learning rate ``lr`` (linear decay to zero over the second half), from a bank of ``bank_size`` scenes."""

    steps: int = 300
    batch_size: int = 16
    crop_px: int = 64
    lr: float = 5e-4
    bank_size: int = 120
    seed: int = 0

    def validate(self) -> None:
        if int(self.steps) < 1:
            raise ConfigError(f"supervised steps must be >= 1, got {self.steps}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"supervised batch size must be >= 1, got {self.batch_size}")
        if int(self.crop_px) < 16:
            raise ConfigError(f"supervised crop must be >= 16 px, got {self.crop_px}")
        if not (0.0 < float(self.lr) < 1.0):
            raise ConfigError(f"supervised learning rate must be in (0, 1), got {self.lr}")
        if int(self.bank_size) < 1:
            raise ConfigError(f"supervised bank size must be >= 1, got {self.bank_size}")


def lr_factor(step: int, steps: int) -> float:
    """Learning-rate multiplier: 1 over the first half, then linear to 0 at ``steps``."""
    half = steps / 2.0
    if step < half:
        return 1.0
    return max(0.0, (steps - step) / max(steps - half, 1.0))


def train_supervised(path: str | Path, settings: SupervisedSettings = SupervisedSettings(), *, log=print,
                     bank=None) -> dict:
    """Train the generator with L1 on simulator pairs and export it to ``path``; returns the export's ``info``.

    ``bank``: a scene bank to draw from (default: :class:`cyclegan.synth.SceneBank` of ``settings.bank_size``
    scenes); anything with ``len()`` and items with ``.image`` and ``.period_px`` will do (tests). Deterministic
    for a seed on one thread count."""
    import torch

    from cyclegan.checkpoint import export_generator
    from cyclegan.config import profile_config
    from cyclegan.models import build_generator
    from cyclegan.pairs import NoiseRanges, SyntheticPairs, step_generator

    settings.validate()
    gen_cfg = profile_config("default").generator
    torch.manual_seed(int(settings.seed))
    net = build_generator(gen_cfg)
    net.train()
    if bank is None:
        from cyclegan.synth import SceneBank

        log(f"supervised baseline: rendering {settings.bank_size} clean scenes")
        bank = SceneBank(int(settings.bank_size), seed=int(settings.seed))
    pairs = SyntheticPairs(bank, model_period=MODEL_PERIOD_PX, crop_px=int(settings.crop_px), ranges=NoiseRanges())
    opt = torch.optim.Adam(net.parameters(), lr=float(settings.lr), betas=(0.9, 0.999))
    steps = int(settings.steps)
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = float(settings.lr) * lr_factor(step, steps)
        x, y = pairs.batch(int(settings.batch_size), step_generator(int(settings.seed), step, 0, stream=77))
        loss = torch.nn.functional.l1_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            recent = losses[-max(1, steps // 10):]
            log(f"supervised baseline: step {step + 1}/{steps}, L1 {sum(recent) / len(recent):.4f}, "
                f"{time.perf_counter() - t0:.0f} s")
    train_s = time.perf_counter() - t0
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError("supervised baseline: the loss became non-finite")
    info = {"patch_px": PATCH_PX, "atoms_per_patch": ATOMS_PER_PATCH, "period_px": MODEL_PERIOD_PX,
            "direction": "A2B", "objective": "supervised", "step": steps, "train_s": round(train_s, 1),
            "final_l1": round(sum(losses[-10:]) / len(losses[-10:]), 5),
            "supervised_settings": asdict(settings)}
    net.eval()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    export_generator(path, net, gen_cfg, info)
    return info


def ensure_supervised(path: str | Path, settings: SupervisedSettings = SupervisedSettings(), *,
                      reuse_any: bool = False, log=print) -> tuple[Path, dict, str]:
    """The supervised baseline's weights at ``path``: reused when the file is there and was trained with the same
    settings (or, with ``reuse_any``, whatever it was trained with), else trained now. Returns ``(path, info,
    how)`` with ``how`` "reused" or "trained". A file there that is not a supervised export is refused
    (InputError) rather than overwritten."""
    from cyclegan.checkpoint import CheckpointError, load_generator

    path = Path(path)
    if path.is_file():
        try:
            _, info = load_generator(path)
        except CheckpointError as exc:
            raise InputError(f"supervised model {path}: {exc}") from None
        if info.get("objective") != "supervised":
            raise InputError(f"supervised model {path} is a generator export with objective "
                             f"{info.get('objective')!r}, not the supervised baseline; give another path")
        if reuse_any or info.get("supervised_settings") == asdict(settings):
            log(f"supervised baseline: reusing {path} ({info.get('step')} steps, {info.get('train_s')} s)")
            return path, info, "reused"
        log(f"supervised baseline: {path} was trained with other settings; training again")
    info = train_supervised(path, settings, log=log)
    return path, info, "trained"
