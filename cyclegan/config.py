"""Training configuration: typed dataclasses, two profiles, strict loading from JSON.

A config file is a JSON object holding any subset of :class:`TrainConfig`'s fields (nested objects for
``generator``, ``discriminator`` and ``dashboard``); it is laid over a profile (``default`` or ``quick``). An
unknown key, a wrong type or a bad value raises :class:`~stem_denoise.common.errors.ConfigError` naming the key.

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

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stem_denoise.common.errors import ConfigError
from cyclegan.models import DiscriminatorConfig, GeneratorConfig
from cyclegan.pairs import NoiseRanges

PROFILES = ("default", "quick", "classic", "classic-quick")

# Laid over a stochastic profile to train on the synthetic scene bank with no data folder (the shipped model, the
# ablation): with no manifest, the model's scale is stated here (64 px crops of 5 x 5 periods).
SYNTHETIC_SOURCE = {"clean_source": "synthetic", "period_px": 12.8, "patch_px": 64, "atoms_per_patch": 5.0}

# Fields that may change when a run is resumed; any other difference would break exact resumption.
RUNTIME_FIELDS = frozenset({"steps", "log_every", "image_every", "checkpoint_every", "keep_previous",
                            "num_workers", "device", "dashboard"})


@dataclass(frozen=True)
class DashboardConfig:
    """Live visdom dashboard (the JSONL log in the run folder is always written)."""

    enabled: bool = True
    server: str = "http://127.0.0.1"
    port: int = 8097
    env: str = "cyclegan"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"dashboard.port must be in 1..65535, got {self.port}")


@dataclass(frozen=True)
class TrainConfig:
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
    the estimates alone were the more accurate) refines the estimates adversarially: a discriminator D_A tells real micrograph patches from noise-layer outputs, and the
    noise corrections learn from its verdict (weight ``lambda_noise_adv``) at ``noise_lr_factor`` times the
    generator's learning rate (see :mod:`cyclegan.pairs`). None of these change a synthetic-source run.
    """

    seed: int = 0
    steps: int = 20000
    batch_size: int = 16
    crop_px: int | None = None
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_start: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_lowfreq: float = 5.0
    lowfreq_sigma_periods: float = 1.0
    pool_size: int = 50
    objective: Literal["classic", "stochastic"] = "classic"
    clean_source: Literal["synthetic", "trainB"] = "synthetic"
    lambda_clean: float = 10.0
    lambda_adv: float = 1.0
    scale_in_loop: bool = True
    scale_jitter: float = 0.08
    period_range: tuple[float, float] = (6.0, 40.0)
    bank_size: int = 600
    scene_family: Literal["full", "simple"] = "full"
    noise: NoiseRanges = field(default_factory=NoiseRanges)
    noise_source: Literal["auto", "ranges", "estimated"] = "auto"
    noise_spread: float = 0.3
    refine_noise: bool = False
    lambda_noise_adv: float = 1.0
    noise_lr_factor: float = 4.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    device: str = "auto"
    num_workers: int = 2
    log_every: int = 10
    image_every: int = 250
    checkpoint_every: int = 500
    keep_previous: bool = True
    period_px: float | None = None
    patch_px: int | None = None
    atoms_per_patch: float | None = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.crop_px is None or self.crop_px >= 8, f"crop_px must be >= 8 or null, got {self.crop_px}")
        need(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)")
        need(0 <= self.decay_start <= 1, f"decay_start must be a fraction in [0, 1], got {self.decay_start}")
        for name in ("lambda_cycle", "lambda_identity", "lambda_lowfreq"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.lowfreq_sigma_periods > 0, "lowfreq_sigma_periods must be > 0")
        need(0 <= self.pool_size <= 10000, f"pool_size must be in 0..10000, got {self.pool_size}")
        need(self.num_workers >= 0, "num_workers must be >= 0")
        for name in ("log_every", "image_every", "checkpoint_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        need(self.period_px is None or self.period_px > 1, "period_px must be > 1 pixel")
        need(self.patch_px is None or self.patch_px >= 8, "patch_px must be >= 8")
        need(self.atoms_per_patch is None or self.atoms_per_patch > 0, "atoms_per_patch must be > 0")
        need(self.lambda_clean >= 0 and self.lambda_adv >= 0, "lambda_clean and lambda_adv must be >= 0")
        need(0 <= self.scale_jitter <= 0.5, f"scale_jitter must be in [0, 0.5], got {self.scale_jitter}")
        lo, hi = self.period_range
        need(2 <= lo <= hi <= 200, f"period_range must be [low, high] px with 2 <= low <= high <= 200, got "
                                   f"{list(self.period_range)}")
        need(1 <= self.bank_size <= 100000, f"bank_size must be in 1..100000, got {self.bank_size}")
        need(0 <= self.noise_spread <= 1, f"noise_spread must be in [0, 1], got {self.noise_spread}")
        need(self.lambda_noise_adv >= 0, f"lambda_noise_adv must be >= 0, got {self.lambda_noise_adv}")
        need(0 < self.noise_lr_factor <= 1000, f"noise_lr_factor must be in (0, 1000], got {self.noise_lr_factor}")
        need(not (self.noise_source == "estimated" and self.clean_source != "trainB"),
             "noise_source 'estimated' needs clean_source 'trainB' (the estimates are in the units of the data "
             "folder's patches)")
        self.noise.validate()


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


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def config_to_dict(cfg: Any) -> dict:
    """Plain JSON-able dict of a (nested) config dataclass (tuples as lists, as JSON holds them)."""
    return _plain(dataclasses.asdict(cfg))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, "
                          f"got {type(value).__name__} {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        return dataclass_from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def dataclass_from_dict(cls: type, data: Any, where: str = "config", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a plain dict, checking every key and type (ConfigError otherwise).

    Keys missing from ``data`` take their value from ``base`` (an instance of ``cls``) or the class default;
    nested dataclass fields are merged the same way.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"known keys: {', '.join(fields)}")
    kwargs = {}
    for name in fields:
        sub = f"{where}.{name}" if where != "config" else name
        if name in data:
            tp = hints[name]
            if dataclasses.is_dataclass(tp):
                kwargs[name] = dataclass_from_dict(tp, data[name], sub,
                                                   base=getattr(base, name) if base is not None else None)
            else:
                kwargs[name] = _check_value(data[name], tp, sub)
        elif base is not None:
            kwargs[name] = getattr(base, name)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def config_from_dict(data: Any, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from a (possibly partial) dict laid over ``base`` (default profile if None)."""
    return dataclass_from_dict(TrainConfig, data, "config", base=base if base is not None else TrainConfig())


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
