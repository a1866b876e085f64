"""Training configuration: typed pydantic models, two profiles, strict loading from JSON.

A config file is a JSON object holding any subset of :class:`TrainConfig`'s fields (nested objects for
``generator``, ``discriminator``, ``noise`` and ``dashboard``); it is laid over a profile (``default`` or
``quick``). An unknown key, a wrong type or a bad value raises :class:`~stem_denoise.common.errors.ConfigError`
naming the key (the configs are pydantic models, :mod:`stem_denoise.common.config`). A run folder holds the
resolved ``config.json`` and its JSON schema ``config.schema.json`` (:func:`write_config_record`).

Profiles:

* ``default``: the stochastic objective (see :mod:`cyclegan.pairs`): the clean cycle G(F(b)) = b with an explicit
  noise layer F and scale in the loop, plus (with micrographs) the adversarial and low-pass terms on G(a).
  Generator width 16 / 6 blocks / two stride-2 stages (receptive field 131 px, about 10 periods), 64 px crops,
  batch 16, Adam 5e-4, 3000 steps. ``scripts/train_default.py`` trains the shipped model with it on synthetic
  scenes (``clean_source="synthetic"``); on a data folder the clean side is ``DATA/trainB``.
* ``quick``: the same objective with a width 8 / 3 block generator, 48 px crops, batch 8, 300 steps.
* ``classic``: the classic CycleGAN objective of the reference recipe (deterministic F, noisy cycle at full
  weight): generator width 32 / 6 blocks / one stride-2 stage, PatchGAN width 32 / 2 layers, 64 px patches,
  batch 16, 20 000 steps. These are also :class:`TrainConfig`'s field defaults, so a run written by the first
  version resumes unchanged.
* ``classic-quick``: the classic objective at the old quick size (width 16 / 3 blocks, 48 px, batch 8, 600 steps).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cyclegan.models import DiscriminatorConfig, GeneratorConfig
from cyclegan.pairs import NoiseRanges
from stem_denoise.common.atomic import atomic_write_bytes
from stem_denoise.common.config import Config, Interval
from stem_denoise.common.errors import ConfigError

PROFILES = ("default", "quick", "classic", "classic-quick")

# Laid over a stochastic profile to train on the synthetic scene bank with no data folder (the shipped model, the
# ablation): with no manifest, the model's scale is stated here (64 px crops of 5 x 5 periods).
SYNTHETIC_SOURCE = {"clean_source": "synthetic", "period_px": 12.8, "patch_px": 64, "atoms_per_patch": 5.0}
# The shipped model's recipe, laid over the default profile and SYNTHETIC_SOURCE by scripts/train_default.py: the
# rich scene family (glows and dips between the columns), doses up to 1000 counts per column peak (low-noise
# micrographs, and large ones shrunk to the model's scale, are nearly noise-free there), a 0.3 share of noise-free
# pairs, the noise level as a second input of the generator (measured on each micrograph at inference), 12 000
# steps, and a generator of width 24 (the default profile's is 16). Each part was measured against the default
# profile (README, "The shipped model's recipe"): without them the network flattens the faint features between
# strong columns; the width buys 0.6-0.8 dB and fewer lost columns at about 1.5x the inference time.
SHIPPED_RECIPE = {"steps": 12000, "scene_family": "rich", "noise": {"dose": [1.0, 1000.0], "clean_frac": 0.3},
                  "generator": {"noise_input": True, "width": 24}}

# Fields that may change when a run is resumed; any other difference would break exact resumption.
RUNTIME_FIELDS = frozenset({"steps", "log_every", "image_every", "checkpoint_every", "keep_previous",
                            "num_workers", "device", "dashboard"})


class DashboardConfig(Config):
    """Live visdom dashboard (the JSONL log in the run folder is always written)."""

    enabled: bool = True
    server: str = "http://127.0.0.1"
    port: int = Field(8097, ge=1, le=65535)
    env: str = "cyclegan"


class TrainConfig(Config):
    """Everything a training run depends on.

    Units: ``crop_px``, ``patch_px`` and ``period_px`` are pixels of the model's (patch) space;
    ``lowfreq_sigma_periods`` is in lattice periods; ``decay_start`` is a fraction of ``steps``; ``lambda_identity``
    is relative to ``lambda_cycle`` (the CycleGAN convention: identity weight = 0.5 * 10).
    ``period_px``/``patch_px``/``atoms_per_patch`` are read from ``DATA/manifest.json``; set them here only for a
    patch folder without a manifest. ``precision`` "auto" is bf16 autocast on CUDA (fp16 + GradScaler where bf16
    is unsupported) and float32 on CPU; ``channels_last`` applies on CUDA only. ``num_workers``: DataLoader worker
    processes (the batches do not depend on it).

    Noise of the stochastic objective with ``clean_source`` "trainB": ``noise_source`` "estimated" draws each pair's
    noise around a random training micrograph's noise model from ``DATA/manifest.json`` (dose, read noise and row
    offsets scaled by log-uniform factors within ``exp(+-noise_spread)``, correlations shifted by up to
    ``+-noise_spread / 6``) at that micrograph's own period (``noise.clean_frac`` still sets the share of noise-free
    pairs); "ranges" draws it from ``noise``; "auto" is "estimated" when the manifest holds estimates, else "ranges"
    (and always "ranges" for the synthetic source). With estimated noise and micrographs, ``refine_noise`` (off by
    default: on simulations it recovered a wrong dose but let good correlation and read-noise estimates drift, so
    the estimates alone were the more accurate) refines the estimates adversarially: a discriminator D_A tells real
    micrograph patches from noise-layer outputs, and the
    noise corrections learn from its verdict (weight ``lambda_noise_adv``) at ``noise_lr_factor`` times the
    generator's learning rate (see :mod:`cyclegan.pairs`). None of these change a synthetic-source run.

    ``working_scale`` (synthetic source without a data folder only): which length of a scene maps to ``period_px``:
    "cell" (the lattice period) or "sites" (the nearest column spacing of a multi-site cell, at most 1/0.7 of the
    cell: the rule of :func:`cyclegan.infer.site_spacing_factor`). The export records it, and inference runs such
    a model at the same scale unless told otherwise.

    ``grad_clip`` (default None: off): the largest global norm of the generator's gradient per step; a longer run
    of the shipped recipe at a constant learning rate once blew up (its clean loss jumped from 0.015 to 82 in a few
    dozen steps and never fully recovered), which a norm limit guards against. When set, the log also records
    ``grad_norm_G`` (the norm before clipping).

    ``scene_family`` ("full", "simple", "broad", "rich": :func:`cyclegan.synth.render_scene`) and ``vacancy_max``
    (each scene's share of vacant sites is drawn from [0, vacancy_max]) shape the synthetic clean scenes.
    """

    seed: int = 0
    steps: int = Field(20000, ge=1)
    batch_size: int = Field(16, ge=1)
    crop_px: int | None = Field(None, ge=8)
    lr: float = Field(2e-4, gt=0.0, lt=1.0)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    decay_start: float = Field(0.5, ge=0.0, le=1.0)
    grad_clip: float | None = Field(None, gt=0.0)
    lambda_cycle: float = Field(10.0, ge=0.0)
    lambda_identity: float = Field(0.5, ge=0.0)
    lambda_lowfreq: float = Field(5.0, ge=0.0)
    lowfreq_sigma_periods: float = Field(1.0, gt=0.0)
    pool_size: int = Field(50, ge=0, le=10000)
    objective: Literal["classic", "stochastic"] = "classic"
    clean_source: Literal["synthetic", "trainB"] = "synthetic"
    lambda_clean: float = Field(10.0, ge=0.0)
    lambda_adv: float = Field(1.0, ge=0.0)
    scale_in_loop: bool = True
    working_scale: Literal["cell", "sites"] = "cell"
    scale_jitter: float = Field(0.08, ge=0.0, le=0.5)
    period_range: Interval(2.0, 200.0) = (6.0, 40.0)
    bank_size: int = Field(600, ge=1, le=100000)
    scene_family: Literal["full", "simple", "broad", "rich"] = "full"
    vacancy_max: float = Field(0.05, ge=0.0, le=0.5)
    noise: NoiseRanges = NoiseRanges()
    noise_source: Literal["auto", "ranges", "estimated"] = "auto"
    noise_spread: float = Field(0.3, ge=0.0, le=1.0)
    refine_noise: bool = False
    lambda_noise_adv: float = Field(1.0, ge=0.0)
    noise_lr_factor: float = Field(4.0, gt=0.0, le=1000.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    device: str = "auto"
    num_workers: int = Field(2, ge=0)
    log_every: int = Field(10, ge=1)
    image_every: int = Field(250, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_previous: bool = True
    period_px: float | None = Field(None, gt=1.0)
    patch_px: int | None = Field(None, ge=8)
    atoms_per_patch: float | None = Field(None, gt=0.0)
    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    dashboard: DashboardConfig = DashboardConfig()

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not (v in ("auto", "cpu") or v.startswith("cuda")):
            raise ValueError(f"must be 'auto', 'cpu' or 'cuda[:N]', got {v!r}")
        return v

    @model_validator(mode="after")
    def _estimates_need_data(self) -> "TrainConfig":
        if self.noise_source == "estimated" and self.clean_source != "trainB":
            raise ValueError("noise_source 'estimated' needs clean_source 'trainB' (the estimates are in the units "
                             "of the data folder's patches)")
        if self.generator.noise_input and self.objective != "stochastic":
            raise ValueError("generator.noise_input needs the stochastic objective (its pairs carry the noise level)")
        return self


def profile_config(name: str = "default") -> TrainConfig:
    """The named profile's config (see the module docstring)."""
    if name == "default":
        return TrainConfig(
            objective="stochastic", clean_source="trainB", steps=3000, batch_size=16, crop_px=64, lr=5e-4,
            beta1=0.9, decay_start=0.5, num_workers=0, log_every=10, image_every=250, checkpoint_every=250,
            generator=GeneratorConfig(width=16, n_blocks=6, n_down=2),
        )
    if name == "quick":
        return TrainConfig(
            objective="stochastic", clean_source="trainB", steps=300, batch_size=8, crop_px=48, lr=5e-4,
            beta1=0.9, decay_start=0.5, num_workers=0, log_every=10, image_every=100, checkpoint_every=100,
            bank_size=80,
            generator=GeneratorConfig(width=8, n_blocks=3, n_down=2),
            discriminator=DiscriminatorConfig(width=16, n_layers=2),
        )
    if name == "classic":
        return TrainConfig()
    if name == "classic-quick":
        return TrainConfig(
            steps=600, batch_size=8, crop_px=48, decay_start=0.5, num_workers=0, log_every=10,
            image_every=100, checkpoint_every=100,
            generator=GeneratorConfig(width=16, n_blocks=3),
            discriminator=DiscriminatorConfig(width=16, n_layers=2),
        )
    raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")


def config_to_dict(cfg: Config) -> dict:
    """Plain JSON-able dict of a (nested) config (tuples as lists, as JSON holds them)."""
    return cfg.to_dict()


def config_from_dict(data: Any, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from a (possibly partial) dict laid over ``base`` (the field defaults if None)."""
    return TrainConfig.from_dict(data, base=base if base is not None else TrainConfig())


def write_config_record(cfg: TrainConfig, out_dir: str | os.PathLike) -> None:
    """Write ``config.json`` (the resolved config) and ``config.schema.json`` (its JSON schema) to a run folder."""
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode("utf-8"))
    TrainConfig.write_schema(out_dir / "config.schema.json")


def read_config_file(path: str | Path) -> dict:
    """Read a JSON config file into a dict; unreadable or invalid JSON raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data


def load_config(path: str | Path | None = None, profile: str = "default", *, steps: int | None = None,
                base: TrainConfig | None = None) -> TrainConfig:
    """Resolve a config: ``base`` (or the profile), then the JSON file's keys, then ``steps`` if given."""
    cfg = base if base is not None else profile_config(profile)
    if path is not None:
        cfg = config_from_dict(read_config_file(path), base=cfg)
    if steps is not None:
        cfg = config_from_dict({"steps": steps}, base=cfg)
    return cfg


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Human-readable list of ``key: a -> b`` for every leaf that differs between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, name + ".")
        elif va != vb:
            out.append(f"{name}: {va!r} -> {vb!r}")
    return out
