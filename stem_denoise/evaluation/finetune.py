"""How many training steps the shipped model saves a user: fine-tuning from it against training from scratch.

:func:`run_finetune_study` simulates a small user dataset of one lattice type (training micrographs cut into
patches by :func:`data_prep.patches.prepare_dataset`, plus held-out validation micrographs with known truth), then
trains the same generator architecture twice with the same settings and data -- once from the shipped export
(``init``), once from a fresh initialisation -- in segments, scoring each on the validation micrographs after every
segment (PSNR of the whole stitched output against the truth, mean over the validation set). The learning rate is
constant (no decay), so the segments of one arm equal one uninterrupted run (resume is exact). The result says how
many steps each arm needed to reach the from-scratch arm's best PSNR.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stem_denoise.common.errors import InputError
from stem_denoise.evaluation.metrics import psnr


@dataclass
class FinetuneStudy:
    """Settings of one study (see the module docstring)."""

    lattice: str = "rect"
    period_px: float = 14.0
    dose: float = 5.0
    n_train: int = 4
    n_val: int = 3
    size: int = 256
    per_image: int = 64
    checkpoints: Sequence[int] = (0, 50, 100, 200, 400)
    batch_size: int = 8
    crop_px: int = 48
    lr: float = 5e-4
    seed: int = 0
    init: str | None = None  # default: the shipped model
    extra: dict = field(default_factory=dict)  # laid over the run config (tests: smaller networks)


def _validation(study: FinetuneStudy, folder: Path):
    from data_prep.simulate import simulate

    cases = []
    for k in range(study.n_val):
        r = simulate(lattice=study.lattice, shape=(study.size, study.size), period_px=study.period_px,
                     angle_deg=11.0 + 23.0 * k, dose=study.dose, dents=1, vacancy_frac=0.01,
                     seed=10_000 + study.seed * 100 + k)
        cases.append((r.noisy, r.truth, float(r.period_px)))
    return cases


def _score(generator, info: dict, cases) -> float:
    from cyclegan.infer import denoise_array

    vals = [psnr(denoise_array(noisy, generator, info, period_px=period, device="cpu"), truth)
            for noisy, truth, period in cases]
    return float(np.mean(vals))


def make_dataset(study: FinetuneStudy, folder: Path) -> Path:
    """Simulate ``n_train`` noisy micrographs and a clean synthetic lattice under ``folder``; cut patches into
    ``folder/data`` (reused when present)."""
    import tifffile

    from data_prep.patches import PrepConfig, prepare_dataset
    from data_prep.simulate import simulate, synthetic_lattice

    data = folder / "data"
    if (data / "manifest.json").is_file():
        return data
    sims = folder / "sims"
    sims.mkdir(parents=True, exist_ok=True)
    for k in range(study.n_train):
        r = simulate(lattice=study.lattice, shape=(study.size, study.size), period_px=study.period_px,
                     angle_deg=5.0 + 31.0 * k, dose=study.dose, dents=1, vacancy_frac=0.01, seed=study.seed * 100 + k)
        tifffile.imwrite(sims / f"train_{k:02d}.tif", r.noisy)  # the user's micrographs: no truth beside them
    syn = folder / "synthetic_lattice.tif"
    tifffile.imwrite(syn, synthetic_lattice(study.lattice, period_px=24.0, n_cells=10))
    prepare_dataset(sims, syn, data, PrepConfig(per_image=study.per_image, seed=study.seed, preview=False,
                                                progress=False))
    return data


def _run_config(study: FinetuneStudy, steps: int, generator_cfg):
    from cyclegan.config import config_from_dict, config_to_dict, profile_config

    base = config_to_dict(profile_config("quick"))
    base.update(steps=max(1, steps), batch_size=study.batch_size, crop_px=study.crop_px, lr=study.lr,
                decay_start=1.0, seed=study.seed, log_every=10, image_every=10_000, checkpoint_every=10_000,
                generator=generator_cfg.to_dict())
    base.update(study.extra)
    return config_from_dict(base)


def run_finetune_study(study: FinetuneStudy, out: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """Run the study into folder ``out`` (dataset, two run folders, ``finetune.json``, ``finetune.png``)."""
    import torch

    from cyclegan.checkpoint import default_model_path, load_generator
    from cyclegan.models import build_generator
    from cyclegan.train import train

    steps = sorted({int(s) for s in study.checkpoints})
    if not steps or steps[0] < 0:
        raise InputError("checkpoints must be step counts >= 0")
    if "generator" in study.extra:
        raise InputError("the generator architecture is the init export's; do not override it")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    init = Path(study.init) if study.init else default_model_path()
    shipped, info = load_generator(init)
    gen_cfg = shipped.cfg
    t0 = time.perf_counter()
    data = make_dataset(study, out)
    cases = _validation(study, out)
    noisy_psnr = float(np.mean([psnr(n, t) for n, t, _ in cases]))
    log(f"dataset ready in {time.perf_counter() - t0:.0f} s: {study.n_train} training micrographs of {study.lattice} "
        f"(period {study.period_px} px, dose {study.dose}), {study.n_val} validation ones (noisy PSNR "
        f"{noisy_psnr:.2f} dB)")
    curves: dict[str, list[dict]] = {}
    for arm in ("finetuned", "scratch"):
        run = out / f"run_{arm}"
        curve = []
        for s in steps:
            if s == 0:
                if arm == "finetuned":
                    g = shipped
                else:
                    torch.manual_seed(study.seed)
                    g = build_generator(gen_cfg).eval()
                gi = dict(info)
            else:
                t1 = time.perf_counter()
                summary = train(_run_config(study, s, gen_cfg), data, run, resume=run.joinpath("last.pt").exists(),
                                dashboard=_Quiet(), progress=False, init=init if arm == "finetuned" else None)
                g, gi = load_generator(summary["generator"])
                log(f"{arm}: trained to step {s} ({time.perf_counter() - t1:.0f} s)")
            score = _score(g, gi, cases)
            curve.append({"step": s, "psnr": score})
            log(f"{arm:9s} step {s:5d}: validation PSNR {score:.2f} dB")
        curves[arm] = curve
    target = max(c["psnr"] for c in curves["scratch"])
    reach = {arm: next((c["step"] for c in curve if c["psnr"] >= target - 1e-9), None) for arm, curve in curves.items()}
    result = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in study.__dict__.items()},
              "init": str(init), "noisy_psnr": noisy_psnr, "curves": curves, "target_psnr": target,
              "steps_to_target": reach, "wall_s": time.perf_counter() - t0}
    s_ft, s_sc = reach["finetuned"], reach["scratch"]
    if s_ft is not None and s_sc is not None:
        result["steps_saved"] = s_sc - s_ft
    (out / "finetune.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _plot(result, out / "finetune.png")
    log(f"scratch's best {target:.2f} dB reached at step {s_sc} from scratch and at step {s_ft} when fine-tuned")
    return result


class _Quiet:
    """A dashboard that only keeps the JSONL log away (the study reads the run's summary instead)."""

    def scalars(self, step, values):
        pass

    def images(self, step, images):
        pass

    def close(self):
        pass


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, style in (("finetuned", "o-"), ("scratch", "s--")):
        c = result["curves"][arm]
        ax.plot([p["step"] for p in c], [p["psnr"] for p in c], style, label=arm)
    ax.axhline(result["noisy_psnr"], color="grey", lw=0.8, label="noisy input")
    ax.axhline(result["target_psnr"], color="k", ls=":", lw=0.8, label="scratch's best")
    s = result["settings"]
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(f"{s['lattice']}, period {s['period_px']} px, dose {s['dose']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
