"""Benchmark engine: denoisers against simulated micrographs with known truth.

A *case* is a noisy micrograph with its noise-free truth, the true column positions and vacancies (when known) and
the lattice period. A *method* is any callable ``fn(noisy: np.ndarray, ctx: MethodContext) -> np.ndarray`` that
returns an image of the same shape in the same units; the classical filters, the CycleGAN generator (stitched tiles,
:func:`cyclegan.infer.denoise_array`) and the Deep Image Prior (:func:`dip_baseline.api.dip_denoise`) are plugged in
through small adapters that import their packages only when used. Every output is scored with
:func:`stem_denoise.evaluation.metrics.evaluate` and timed; :func:`run_benchmark` writes ``results.csv``,
``results.md``, one
figure panel per case and the PSNR- and hallucination-versus-dose plots (:mod:`stem_denoise.evaluation.report`).

Two test sets: the *simulated* set from the project's own simulator (:mod:`data_prep.simulate`, which also makes the
training targets) and the *independent validation set* (:mod:`stem_denoise.evaluation.independent`: a separately written
simulator with another probe, background, lattice and noise model), so that no model is judged only on the
simulator that trained it. ``BenchConfig.cases`` picks one or both; the report keeps them apart.

Methods see what a microscopist would have: the noisy image, the lattice period *measured* on it
(:func:`data_prep.lattice.measure_lattice`; the true period only if the measurement fails, noted in the results),
and the detector gain and read noise that the simulator records (the independent set withholds them: its detector
has an unknown offset, so the filters estimate the noise model). Only methods marked ``oracle`` (the Gaussian with
the PSNR-best sigma) may read ``ctx.truth``; their rows say so.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from pydantic import ConfigDict, Field, PositiveFloat, field_validator, model_validator

from stem_denoise.common.atomic import make_output_dir
from stem_denoise.common.config import Config
from stem_denoise.common.errors import InputError
from stem_denoise.evaluation import filters
from stem_denoise.evaluation.metrics import ColumnMatch, ColumnTruth, evaluate, match_to_truth, visible_columns

LatticeName = Literal["square", "rect", "hex", "perovskite", "honeycomb", "nanoparticle"]

DEFAULT_DOSES = (2.0, 5.0, 10.0, 20.0)
DEFAULT_LATTICES = ("square", "hex", "perovskite", "honeycomb", "nanoparticle")
PARTICLE_RADIUS_FRAC = 0.7  # "nanoparticle": a square crystal in a disc of 0.7 x half the frame, vacuum around it
QUICK_DOSES = (5.0, 20.0)
QUICK_LATTICES = ("square", "hex")
QUICK_SIZE = 128
QUICK_DIP_STEPS = 400
PERIODS = (12.8, 11.0, 14.5)  # cycled over the cases: models must cope with more than one zoom
CLASSICAL = ("noisy", "gaussian_oracle", "median", "nlm", "bm3d", "bragg")
LEARNED = ("cyclegan", "dip")
PEERS = ("n2v2", "structn2v", "supervised")  # the learned peers: run with BenchConfig.peers or by name
ALL_METHODS = CLASSICAL + LEARNED + PEERS
DEFAULT_METHODS = CLASSICAL + LEARNED
QUICK_N2V_STEPS = 60
QUICK_SUPERVISED_STEPS = 150
CASE_SETS = ("simulated", "independent", "both")


# ------------------------------------------------------------------------------------------------ cases

@dataclass
class Case:
    """One test micrograph: ``noisy`` and ``truth`` float32 (H, W) in the same units; ``columns`` the known columns
    (None when only a truth image is known), restricted to those the finder sees in the truth
    (``hidden_columns``: how many true columns were too faint even there, see
    :func:`stem_denoise.evaluation.metrics.visible_columns`); ``period_px`` the true period; ``dose`` counts at a
    column peak
    (None when unknown); ``gain``/``read_sigma`` of the detector (None: the filters estimate them)."""

    name: str
    noisy: np.ndarray
    truth: np.ndarray
    period_px: float
    columns: ColumnTruth | None = None
    dose: float | None = None
    lattice: str = ""
    pixel_size_pm: float | None = None
    gain: float | None = None
    read_sigma: float | None = None
    source: str = "simulated"
    vacancies_known: bool = True
    hidden_columns: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.noisy.shape)


@dataclass
class CaseSpec:
    """Parameters of one simulated test case (see :class:`data_prep.simulate.SimParams`)."""

    name: str
    lattice: str
    dose: float
    size: int
    period_px: float = 12.8
    angle_deg: float = 0.0
    seed: int = 0
    vacancy_frac: float = 0.03
    heavy_frac: float = 0.05
    light_frac: float = 0.05
    dents: int = 2


def default_specs(*, quick: bool = False, doses: Sequence[float] | None = None,
                  lattices: Sequence[str] | None = None, size: int | None = None, n_large: int | None = None,
                  large_size: int = 2048, seed: int = 0) -> list[CaseSpec]:
    """The benchmark's test set: every lattice at every dose (``size`` px square), with vacancies (3 %), heavier
    and lighter columns (5 % each) and two random dents, periods cycling through 12.8, 11 and 14.5 px and random
    angles; plus ``n_large`` micrographs of ``large_size`` px for the stitched path. Lattices: square, hex,
    perovskite (weak B columns), honeycomb (two unequal sublattices, MoS2-like) and nanoparticle (a square crystal
    in a disc, vacuum around it: every lattice site in the vacuum counts as a vacancy, so a column painted there is
    a filled vacancy). ``quick``: square and hex at doses 5 and 20, 128 px, no large ones."""
    doses = tuple(doses) if doses else (QUICK_DOSES if quick else DEFAULT_DOSES)
    lattices = tuple(lattices) if lattices else (QUICK_LATTICES if quick else DEFAULT_LATTICES)
    size = int(size) if size else (QUICK_SIZE if quick else 384)
    n_large = (0 if quick else 2) if n_large is None else int(n_large)
    rng = np.random.default_rng(seed)
    specs = []
    k = 0
    for lattice in lattices:
        for dose in doses:
            specs.append(CaseSpec(f"{lattice}_d{_fmt_dose(dose)}_{size}", lattice, float(dose), size,
                                  PERIODS[k % len(PERIODS)], float(rng.uniform(0, 90)), seed * 1000 + k))
            k += 1
    for i in range(n_large):
        lattice = lattices[i % len(lattices)]
        dose = doses[min(len(doses) - 1, 1 + i) if len(doses) > 1 else 0]
        specs.append(CaseSpec(f"{lattice}_d{_fmt_dose(dose)}_{large_size}", lattice, float(dose), int(large_size),
                              12.8, float(rng.uniform(0, 90)), seed * 1000 + k, dents=3))
        k += 1
    return specs


def _fmt_dose(dose: float | None) -> str:
    if dose is None:
        return "na"
    return f"{dose:g}".replace(".", "p")


def simulate_case(spec: CaseSpec) -> Case:
    """Simulate ``spec`` with :func:`data_prep.simulate.simulate` (default detector model: correlated noise, row
    offsets, read noise, quantisation) and return it as a :class:`Case`."""
    from data_prep.simulate import simulate

    particle = spec.lattice == "nanoparticle"
    res = simulate(lattice="square" if particle else spec.lattice, shape=(spec.size, spec.size),
                   period_px=spec.period_px, angle_deg=spec.angle_deg, dose=spec.dose,
                   vacancy_frac=spec.vacancy_frac, heavy_frac=spec.heavy_frac, light_frac=spec.light_frac,
                   dents=spec.dents, seed=spec.seed, particle_radius_frac=PARTICLE_RADIUS_FRAC if particle else None)
    case = case_from_simulation(res, spec.name)
    case.lattice = spec.lattice
    return case


def case_from_simulation(res, name: str, source: str = "simulated") -> Case:
    """A :class:`Case` from a :class:`data_prep.simulate.SimResult`."""
    params = dict(res.params)
    pixel = params.get("pixel_size_pm")
    gain = params.get("gain")
    read = params.get("read_noise")
    cols = ColumnTruth(res.columns, res.vacancies, float(res.period_px), pixel, res.heavy, res.light)
    cols, hidden = visible_columns(res.truth, cols)
    return Case(name=name, noisy=np.asarray(res.noisy, dtype=np.float32), truth=np.asarray(res.truth, np.float32),
                period_px=float(res.period_px), columns=cols, dose=params.get("dose"),
                lattice=str(params.get("lattice", getattr(res, "lattice", ""))), pixel_size_pm=pixel,
                gain=float(gain) if gain else None,
                read_sigma=float(read) * float(gain) if read is not None and gain else None, source=source,
                hidden_columns=hidden)


_AUX_SUFFIXES = ("_truth", "_thickness")


def load_cases(data_dir: str | os.PathLike) -> list[Case]:
    """Cases from a folder: every ``*.json`` written by :func:`data_prep.simulate.save_simulation` (full column
    truth), and every other image with a ``{stem}_truth.tif`` beside it (truth image only: the reference columns
    are those :func:`stem_denoise.common.columns.find_columns` finds in the truth, vacancies are unknown, so
    hallucinations are
    not scored; the period is measured on the truth)."""
    from data_prep.simulate import load_simulation

    folder = Path(data_dir)
    if not folder.is_dir():
        raise InputError(f"--data {folder}: not a folder")
    cases: list[Case] = []
    covered: set[str] = set()
    for js in sorted(folder.glob("*.json")):
        try:
            kind = json.loads(js.read_text(encoding="utf-8")).get("kind")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            kind = None
        if kind != "stem-denoise-simulation":
            continue  # another JSON (a manifest, a record): not a test case
        res = load_simulation(js)
        cases.append(case_from_simulation(res, js.stem, source=str(js)))
        covered.add(js.stem)
    exts = {".tif", ".tiff", ".png", ".npy", ".dm3", ".dm4", ".emd"}
    for img_path in sorted(p for p in folder.iterdir() if p.suffix.lower() in exts):
        stem = img_path.stem
        if stem in covered or stem.endswith(_AUX_SUFFIXES):
            continue
        truth_path = next((folder / f"{stem}_truth{ext}" for ext in (".tif", ".tiff")
                           if (folder / f"{stem}_truth{ext}").exists()), None)
        if truth_path is None:
            continue
        cases.append(_case_from_images(img_path, truth_path))
    if not cases:
        raise InputError(f"--data {folder}: no simulation records (*.json) and no image with a *_truth.tif beside it")
    return cases


def _case_from_images(img_path: Path, truth_path: Path) -> Case:
    from data_prep.io import read_micrograph
    from data_prep.lattice import measure_lattice
    from stem_denoise.common.columns import find_columns

    noisy, meta = read_micrograph(img_path)
    truth, _ = read_micrograph(truth_path)
    if noisy.shape != truth.shape:
        raise InputError(f"{img_path} {noisy.shape} and {truth_path} {truth.shape} differ in shape")
    period = float(measure_lattice(truth).period_px)
    pixel_pm = _pixel_size_pm(meta)
    cols = ColumnTruth(find_columns(truth, period), np.zeros((0, 2)), period, pixel_pm)
    return Case(name=img_path.stem, noisy=np.asarray(noisy, np.float32), truth=np.asarray(truth, np.float32),
                period_px=period, columns=cols, pixel_size_pm=pixel_pm, source=str(img_path), vacancies_known=False)


def _pixel_size_pm(meta) -> float | None:
    try:
        size = meta.pixel_size_in("pm")
    except (AttributeError, InputError):
        return None
    return float(size) if size else None


# ------------------------------------------------------------------------------------------------ methods

@dataclass
class MethodContext:
    """What a method may know about the case besides the noisy image. ``period_px`` is measured on the noisy image;
    ``truth`` is for oracle methods only; a method may record notes (JSON-able) in ``notes``.
    ``lattice_period_px``: the lattice period as the lattice measurement reports it, when ``period_px`` is something
    else (on real frames ``period_px`` is the column spacing); the CycleGAN uses it, as ``denoise.py`` would."""

    case_name: str
    period_px: float
    pixel_size_pm: float | None = None
    dose: float | None = None
    gain: float | None = None
    read_sigma: float | None = None
    seed: int = 0
    truth: np.ndarray | None = None
    notes: dict = field(default_factory=dict)
    lattice_period_px: float | None = None


@dataclass
class Method:
    """A denoiser to benchmark: ``fn(noisy, ctx) -> output``; ``label`` for tables; ``oracle`` if it reads the
    truth; ``max_pixels``: cases larger than this are skipped for this method (None: no limit); ``lattices``: run
    only on cases of these lattices (None: all)."""

    name: str
    fn: Callable[[np.ndarray, MethodContext], np.ndarray]
    label: str
    oracle: bool = False
    max_pixels: int | None = None
    lattices: tuple[str, ...] | None = None

    def size_skip(self, shape: tuple[int, int], where: str) -> str | None:
        """Why this method skips an image of ``shape`` (above ``max_pixels``), or None when it runs on it."""
        h, w = (int(v) for v in shape)
        if self.max_pixels is not None and h * w > self.max_pixels:
            return f"{self.name} on {where}: {h}x{w} px is above its size limit"
        return None


def _noisy(noisy, ctx):
    return np.asarray(noisy, dtype=np.float32).copy()


def _gaussian_oracle(noisy, ctx):
    out, sigma = filters.gaussian_oracle(noisy, ctx.truth)
    ctx.notes["sigma_px"] = round(sigma, 3)
    return out


def _median(noisy, ctx):
    size = filters.median_size(ctx.period_px)
    ctx.notes["size_px"] = size
    return filters.median_denoise(noisy, size)


def _nlm(noisy, ctx):
    return filters.nlm_denoise(noisy, ctx.period_px, gain=ctx.gain, read_sigma=ctx.read_sigma)


def _bm3d(noisy, ctx):
    corr_row, corr_col = _noise_correlations(noisy, ctx.period_px)
    ctx.notes["corr_row"], ctx.notes["corr_col"] = round(corr_row, 3), round(corr_col, 3)
    return filters.bm3d_denoise(noisy, gain=ctx.gain, read_sigma=ctx.read_sigma, corr_row=corr_row,
                                corr_col=corr_col)


def _noise_correlations(noisy, period_px) -> tuple[float, float]:
    """Lag-1 noise correlations along the rows / down the columns, measured on the noisy image itself
    (:func:`data_prep.noise_model.estimate_noise`); (0, 0) when the estimate fails."""
    try:
        from data_prep.noise_model import estimate_noise

        est = estimate_noise(noisy, period_px)
    except (ImportError, InputError, ValueError, RuntimeError):
        return 0.0, 0.0
    rr, rc = float(est.corr_row), float(est.corr_col)
    if not (math.isfinite(rr) and math.isfinite(rc)):
        return 0.0, 0.0
    return rr, rc


def _bragg(noisy, ctx):
    return filters.bragg_filter(noisy, ctx.period_px)


def classical_methods() -> dict[str, Method]:
    """The classical filters (and the noisy input as reference), keyed by name."""
    return {
        "noisy": Method("noisy", _noisy, "noisy input"),
        "gaussian_oracle": Method("gaussian_oracle", _gaussian_oracle, "Gaussian (oracle sigma)", oracle=True),
        "median": Method("median", _median, "median"),
        "nlm": Method("nlm", _nlm, "NLM (Anscombe)"),
        "bm3d": Method("bm3d", _bm3d, "BM3D (Anscombe, measured noise PSD)"),
        "bragg": Method("bragg", _bragg, "Bragg filter"),
    }


def parse_compare(items) -> tuple[tuple[str, Path], ...]:
    """``["LABEL=PATH", ...]`` (the scripts' ``--compare``) as ``((label, Path), ...)``; InputError otherwise."""
    out = []
    for item in items or ():
        label, sep, path = str(item).partition("=")
        if not sep or not label.strip() or not path:
            raise InputError(f"--compare {item!r}: expected LABEL=PATH")
        out.append((label.strip(), Path(path)))
    return tuple(out)


def cyclegan_method(checkpoint: str | os.PathLike, *, device: str | None = None, tta: bool = False,
                    batch_size: int = 8, name: str = "cyclegan", label: str | None = None,
                    working_scale: str | None = None, noise_level_factor: float | None = None) -> Method:
    """The CycleGAN generator export at ``checkpoint``, run over stitched tiles by
    :func:`cyclegan.infer.denoise_array` with the period measured on each micrograph (``working_scale``,
    ``noise_level_factor``: see there)."""
    from cyclegan.checkpoint import load_generator
    from cyclegan.infer import denoise_array

    generator, info = load_generator(checkpoint)
    try:  # measure the receptive field (tile plan) once now, so that it is not timed as part of the first case
        from cyclegan.infer import pick_device, plan_tiles

        plan_tiles(generator, device=pick_device(device or "auto"))
    except (ImportError, TypeError):
        pass

    def fn(noisy, ctx):
        stats: dict = {}
        period = ctx.lattice_period_px or ctx.period_px
        out = denoise_array(noisy, generator, info, period_px=period, tta=tta, batch_size=batch_size,
                            device=device or "auto", stats=stats, working_scale=working_scale,
                            noise_level_factor=noise_level_factor)
        if "scale" in stats:
            ctx.notes["scale"] = round(float(stats["scale"]), 4)
        if "n_tiles" in stats:
            ctx.notes["n_tiles"] = int(stats["n_tiles"])
        return out

    if label is None:
        label = "CycleGAN (stitched" + (", TTA)" if tta else ")")
    return Method(name, fn, label)


def n2v_method(name: str, *, steps: int | None = None, max_pixels: int | None = None, backend=None) -> Method:
    """CAREamics Noise2Void trained on each test image alone (:mod:`stem_denoise.evaluation.peers`): ``name``
    "n2v2" (N2V2, 8 flips and rotations) or "structn2v" (N2V2 with the horizontal structN2V mask, span 5, 4 flips);
    ``steps`` overrides the variant's budget; images above ``max_pixels`` are skipped. The time of a row is
    training plus prediction. ``backend``: for tests."""
    from stem_denoise.evaluation import peers

    base = {"n2v2": peers.N2V2, "structn2v": peers.STRUCT_N2V}[name]
    settings = dataclasses.replace(base, steps=int(steps)) if steps else base
    settings.validate()

    def fn(noisy, ctx):
        return peers.n2v_denoise(noisy, settings, seed=ctx.seed, backend=backend, notes=ctx.notes)

    label = ("N2V2 + structN2V (CAREamics, per image)" if settings.struct_axis != "none"
             else "N2V2 (CAREamics, per image)")
    return Method(name, fn, label, max_pixels=max_pixels)


def available_n2v_method(name: str, **kw) -> tuple[Method | None, str | None]:
    """:func:`n2v_method` when CAREamics is installed, else ``(None, "name: how to install it")``."""
    from stem_denoise.evaluation.peers import MISSING, careamics_available

    if not careamics_available():
        return None, f"{name}: {MISSING}"
    return n2v_method(name, **kw), None


def supervised_method(path: str | os.PathLike, *, device: str | None = None, tta: bool = False,
                      working_scale: str | None = None) -> Method:
    """The supervised-on-simulation baseline's export at ``path`` (:mod:`stem_denoise.evaluation.supervised`), run
    through the same stitched-tile inference as the CycleGAN."""
    return cyclegan_method(path, device=device, tta=tta, name="supervised", working_scale=working_scale,
                           label="supervised on simulation (stitched" + (", TTA)" if tta else ")"))


def dip_method(*, preset: str | None = None, max_steps: int | None = None, device: str | None = None,
               max_pixels: int | None = None, lattices: Sequence[str] | None = None) -> Method:
    """Deep Image Prior (:func:`dip_baseline.api.dip_denoise`, automatic stop, no truth), default preset unless
    ``preset`` is given; ``max_steps`` caps the optimisation."""
    from dip_baseline.api import dip_denoise

    def fn(noisy, ctx):
        kwargs = {"stop": "auto", "seed": ctx.seed, "progress": False}
        if preset:
            kwargs["preset"] = preset
        if max_steps:
            kwargs["max_steps"] = int(max_steps)
        if device:
            kwargs["device"] = device
        out, record = dip_denoise(np.asarray(noisy, dtype=np.float32), **kwargs)
        if isinstance(record, dict):
            for key in ("preset", "stop_step", "steps_run", "auto_stop_fired"):
                if key in record and isinstance(record[key], (int, float, str)):
                    ctx.notes[key] = record[key]
        return out

    label = "DIP (auto stop" + (f", {preset})" if preset else ")")
    return Method("dip", fn, label, max_pixels=max_pixels, lattices=tuple(lattices) if lattices else None)


# ------------------------------------------------------------------------------------------------ config / run

class BenchConfig(Config):
    """Benchmark settings: types and ranges are checked when it is made (one-line :class:`ConfigError` naming the
    key); :meth:`validate` checks the files and folders it names. ``methods``: names to run (default: all available);
    ``dip_max_size``: DIP is skipped on micrographs with more than ``dip_max_size**2`` pixels (it optimises a
    network per image: hours for 2048^2 on a CPU); ``dip_lattices``: DIP only on cases of these lattices (default
    all; ``quick``: the first lattice only, at most 400 steps). ``cases``: the test set, ``"simulated"`` (the
    project's simulator, or ``data_dir``), ``"independent"`` (:mod:`stem_denoise.evaluation.independent`) or ``"both"``;
    ``independent_kinds``: kinds of the independent set to run (default all; its doses are ``doses`` or 2, 5, 10,
    20 also with ``quick``; its field side is ``size`` or 256, 128 with ``quick``, at most 512)."""

    model_config = ConfigDict(frozen=False)

    out_dir: Path
    quick: bool = False
    data_dir: Path | None = None
    doses: tuple[PositiveFloat, ...] | None = Field(None, min_length=1)
    lattices: tuple[LatticeName, ...] | None = Field(None, min_length=1)
    size: int | None = Field(None, ge=32, le=16384)
    n_large: int | None = Field(None, ge=0)
    large_size: int = Field(2048, ge=256, le=16384)
    seed: int = 0
    checkpoint: Path | None = None
    compare: tuple[tuple[str, Path], ...] = ()
    sites_scale: bool = False
    level_factors: tuple[float, ...] = ()
    tta: bool = False
    dip: bool = True
    dip_preset: str | None = None
    dip_max_steps: int | None = Field(None, ge=1)
    dip_max_size: int = Field(1024, ge=16)
    dip_lattices: tuple[LatticeName, ...] | None = Field(None, min_length=1)
    methods: tuple[str, ...] | None = None
    peers: bool = False
    n2v_steps: int | None = Field(None, ge=1)
    n2v_max_size: int = Field(1024, ge=16)
    supervised_model: Path | None = None
    supervised_steps: int | None = Field(None, ge=1)
    device: str | None = None
    cases: Literal["simulated", "independent", "both"] = "simulated"
    independent_kinds: tuple[str, ...] | None = Field(None, min_length=1)
    real_dir: Path | None = None
    save_outputs: bool = False
    overwrite: bool = False
    progress: bool = True

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v):
        bad = [m for m in v or () if m not in ALL_METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(ALL_METHODS)}")
        return v

    @field_validator("independent_kinds")
    @classmethod
    def _known_kinds(cls, v):
        from stem_denoise.evaluation.independent import INDEPENDENT_KINDS

        bad = [k for k in v or () if k not in INDEPENDENT_KINDS]
        if bad:
            raise ValueError(f"unknown independent kind(s) {bad}; choose from {', '.join(INDEPENDENT_KINDS)}")
        return v

    @field_validator("compare")
    @classmethod
    def _compare_labels(cls, v):
        labels = [lab for lab, _ in v]
        for lab in labels:
            if not lab or not all(c.isalnum() or c in "-_." for c in lab):
                raise ValueError(f"label {lab!r}: use letters, digits, '-', '_' or '.'")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must differ")
        return v

    @model_validator(mode="after")
    def _data_needs_simulated(self) -> "BenchConfig":
        if self.cases == "independent" and self.data_dir is not None:
            raise ValueError("--data replaces the simulated set; with --cases independent it would not be used "
                             "(use --cases both to run both)")
        return self

    def validate(self) -> None:
        """Check that the files and folders named exist (:class:`InputError`, one line)."""
        if self.supervised_model is not None and Path(self.supervised_model).is_dir():
            raise InputError(f"--supervised-model {self.supervised_model} is a folder; give a file path")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise InputError(f"--checkpoint {self.checkpoint}: no such file")
        for lab, path in self.compare:
            if not Path(path).is_file():
                raise InputError(f"--compare {lab}={path}: no such file")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise InputError(f"--data {self.data_dir}: not a folder")
        if self.real_dir is not None and not Path(self.real_dir).exists():
            raise InputError(f"--real {self.real_dir}: no such file or folder")


@dataclass
class BenchResult:
    rows: list[dict]
    skipped: list[str]
    paths: dict
    errors: list[str]
    real_rows: list[dict] = dataclasses.field(default_factory=list)


def build_methods(cfg: BenchConfig, *, log=print) -> tuple[list[Method], list[str]]:
    """The methods to run and a list of ``"name: reason"`` for the ones left out."""
    wanted = list(cfg.methods) if cfg.methods else list(DEFAULT_METHODS + (PEERS if cfg.peers else ()))
    methods: list[Method] = []
    skipped: list[str] = []
    classical = classical_methods()
    for name in wanted:
        if name in classical:
            if name == "bm3d" and not filters.bm3d_available():
                skipped.append("bm3d: the optional 'bm3d' package is not installed (non-commercial licence; "
                               "pip install '.[bench]')")
                continue
            methods.append(classical[name])
        elif name == "cyclegan":
            if cfg.checkpoint is None:
                skipped.append("cyclegan: no --checkpoint given")
            else:
                methods.append(cyclegan_method(cfg.checkpoint, device=cfg.device, tta=cfg.tta))
                if cfg.sites_scale:
                    methods.append(cyclegan_method(cfg.checkpoint, device=cfg.device, tta=cfg.tta,
                                                   name="cyclegan_sites",
                                                   label="CycleGAN, sites working scale (stitched)",
                                                   working_scale="sites"))
                for f in cfg.level_factors:
                    methods.append(cyclegan_method(cfg.checkpoint, device=cfg.device, tta=cfg.tta,
                                                   name=f"cyclegan_level{f:g}".replace(".", "p"),
                                                   label=f"CycleGAN, noise level x {f:g} (stitched)",
                                                   noise_level_factor=f))
            methods.extend(_compared(cfg))
        elif name == "dip":
            if not cfg.dip:
                skipped.append("dip: disabled (--no-dip)")
                continue
            try:
                steps = cfg.dip_max_steps or (QUICK_DIP_STEPS if cfg.quick else None)
                first = (cfg.lattices or QUICK_LATTICES)[:1]
                only = cfg.dip_lattices or (first if cfg.quick and cfg.data_dir is None else None)
                methods.append(dip_method(preset=cfg.dip_preset, max_steps=steps, device=cfg.device,
                                          max_pixels=int(cfg.dip_max_size) ** 2, lattices=only))
            except ImportError as exc:
                skipped.append(f"dip: dip_baseline.api is not available ({exc})")
        elif name in ("n2v2", "structn2v"):
            steps = cfg.n2v_steps or (QUICK_N2V_STEPS if cfg.quick else None)
            m, why = available_n2v_method(name, steps=steps, max_pixels=int(cfg.n2v_max_size) ** 2)
            if m is None:
                skipped.append(why)
            else:
                methods.append(m)
        elif name == "supervised":
            methods.append(supervised_method(prepare_supervised(cfg, log=log), device=cfg.device, tta=cfg.tta))
    if "cyclegan" not in wanted:
        methods.extend(_compared(cfg))  # --compare models run even when the cyclegan method is not asked for
    return methods, skipped


def _compared(cfg: BenchConfig) -> list[Method]:
    """The ``--compare`` generator exports, each at its own working scale."""
    return [cyclegan_method(path, device=cfg.device, tta=cfg.tta, name=f"cyclegan_{lab}",
                            label=f"CycleGAN {lab} (stitched)") for lab, path in cfg.compare]


def prepare_supervised(cfg: BenchConfig, *, log=print) -> Path:
    """The supervised baseline's weights: ``cfg.supervised_model`` (used as it is when the file exists, trained
    there otherwise) or ``<out>/supervised/generator.pt`` (reused when trained with the same settings)."""
    from stem_denoise.evaluation.supervised import SupervisedSettings, ensure_supervised

    steps = cfg.supervised_steps or (QUICK_SUPERVISED_STEPS if cfg.quick else None)
    settings = SupervisedSettings(seed=cfg.seed, **({"steps": int(steps)} if steps else {}))
    explicit = cfg.supervised_model is not None
    path = Path(cfg.supervised_model) if explicit else Path(cfg.out_dir) / "supervised" / "generator.pt"
    path, _, _ = ensure_supervised(path, settings, reuse_any=explicit and cfg.supervised_steps is None, log=log)
    return path


def _measured_period(case: Case) -> tuple[float, str]:
    try:
        from data_prep.lattice import measure_lattice

        return float(measure_lattice(case.noisy).period_px), "measured"
    except (ImportError, InputError):
        return float(case.period_px), "true (measurement failed)"


def run_case(case: Case, methods: Sequence[Method], *, seed: int = 0, on_method=None, after_method=None
             ) -> tuple[list[dict], dict[str, np.ndarray], dict[str, ColumnMatch], list[str], list[str]]:
    """Run every method on one case; returns ``(rows, outputs, matches, skipped, errors)``.

    A method that raises is recorded in ``errors`` (with its traceback's last line) and the others still run.
    ``on_method(case, method)`` / ``after_method(case, method)`` are called before / after each method (progress).
    """
    period, period_src = _measured_period(case)
    rows, outputs, matches, skipped, errors = [], {}, {}, [], []
    for m in methods:
        if on_method is not None:
            on_method(case, m)
        try:
            _run_one(case, m, period, period_src, seed, rows, outputs, matches, skipped, errors)
        finally:
            if after_method is not None:
                after_method(case, m)
    return rows, outputs, matches, skipped, errors


def call_method(m: Method, image: np.ndarray, ctx: MethodContext, where: str, skipped: list, errors: list
                ) -> tuple[np.ndarray | None, float]:
    """Run one method on one image: (float32 output, seconds), or (None, seconds) after recording why in
    ``skipped`` (its optional package is missing) or ``errors`` (it raised, or gave a non-finite or wrongly shaped
    image): one broken method must not sink the others."""
    t0 = time.perf_counter()
    try:
        out = m.fn(image, ctx)
    except filters.FilterUnavailable as exc:
        skipped.append(f"{m.name}: {exc}")
        return None, time.perf_counter() - t0
    except Exception as exc:
        errors.append(f"{m.name} on {where}: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return None, time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    out = np.asarray(out, dtype=np.float32)
    if out.shape != image.shape or not np.all(np.isfinite(out)):
        errors.append(f"{m.name} on {where}: output of shape {out.shape} is not a finite image of shape "
                      f"{image.shape}")
        return None, elapsed
    return out, elapsed


def _run_one(case: Case, m: Method, period: float, period_src: str, seed: int, rows: list, outputs: dict,
             matches: dict, skipped: list, errors: list) -> None:
    """Run one method on one case, score it, and append to the lists/dicts of :func:`run_case`."""
    from stem_denoise.common.columns import find_columns

    h, w = case.shape
    too_large = m.size_skip(case.shape, case.name)
    if too_large:
        skipped.append(too_large)
        return
    if m.lattices is not None and case.lattice not in m.lattices:
        skipped.append(f"{m.name} on {case.name}: runs on {', '.join(m.lattices)} cases only")
        return
    ctx = MethodContext(case.name, period, case.pixel_size_pm, case.dose, case.gain, case.read_sigma, seed,
                        truth=case.truth if m.oracle else None)
    out, elapsed = call_method(m, case.noisy, ctx, case.name, skipped, errors)
    if out is None:
        return
    match = None
    if case.columns is not None:
        match = match_to_truth(find_columns(out, case.columns.period_px), case.columns, case.shape,
                               output=out, truth_image=case.truth)
        matches[m.name] = match
    metrics = evaluate(out, case.truth, case.columns, match=match, noisy=case.noisy)
    if case.columns is not None and not case.vacancies_known:
        metrics["hallucinations"] = float("nan")  # vacancies unknown for truth-image-only data
        metrics["halluc_intensity"] = float("nan")
        metrics["halluc_peak"] = float("nan")
    row = {
        "case": case.name, "lattice": case.lattice, "set": case_set(case),
        "dose": case.dose if case.dose is not None else float("nan"),
        "height": h, "width": w, "method": m.name, "label": m.label, "oracle": m.oracle,
        "time_s": elapsed, "mpix_per_s": (h * w / 1e6) / elapsed if elapsed > 0 else float("inf"),
        "s_per_mp": elapsed / (h * w / 1e6),
        "period_px": period, "period_source": period_src, "hidden_columns": case.hidden_columns,
    }
    row.update(metrics)
    row["notes"] = json.dumps(ctx.notes, sort_keys=True) if ctx.notes else ""
    rows.append(row)
    outputs[m.name] = out


def case_set(case: Case) -> str:
    """The test set a case belongs to: ``"independent"`` (:mod:`stem_denoise.evaluation.independent`), ``"simulated"``
    (the
    project's simulator) or ``"data"`` (loaded from a folder)."""
    if case.source in ("independent", "simulated"):
        return case.source
    return "data"


def _plot_names(suffix: str = "") -> tuple[str, str]:
    return f"psnr_vs_dose{suffix}.png", f"hallucinations_vs_dose{suffix}.png"


def run_benchmark(cfg: BenchConfig, *, log=print) -> BenchResult:
    """Build or load the test set, run every method on every case, score and write the report files.

    Writes into ``cfg.out_dir``: ``results.csv``, ``results.md``, ``figures/<case>.png``, ``psnr_vs_dose.png``,
    ``hallucinations_vs_dose.png`` (the simulated set or the folder's cases), ``psnr_vs_dose_independent.png``,
    ``hallucinations_vs_dose_independent.png`` (the independent set), and ``outputs/<case>/<method>.tif`` with
    ``save_outputs``.
    """
    from tqdm import tqdm

    from stem_denoise.evaluation import report

    cfg.validate()
    out_dir = Path(cfg.out_dir)
    if not cfg.overwrite:
        for name in ("results.csv", "results.md", *_plot_names(), *_plot_names("_independent"), "figures",
                     "outputs", "real"):
            if (out_dir / name).exists():
                raise InputError(f"{out_dir / name} exists; pass --overwrite to replace the results in {out_dir}")
    make_output_dir(out_dir)
    make_output_dir(out_dir / "figures")

    methods, skipped = build_methods(cfg, log=log)
    if not methods:
        raise InputError("no method to run")
    for s in skipped:
        log(f"skipped {s}")
    cases_iter: list = []
    if cfg.cases in ("simulated", "both"):
        if cfg.data_dir is not None:
            cases_iter += [(c.name, (lambda c=c: c)) for c in load_cases(cfg.data_dir)]
        else:
            specs = default_specs(quick=cfg.quick, doses=cfg.doses, lattices=cfg.lattices, size=cfg.size,
                                  n_large=cfg.n_large, large_size=cfg.large_size, seed=cfg.seed)
            cases_iter += [(s.name, (lambda s=s: simulate_case(s))) for s in specs]
    if cfg.cases in ("independent", "both"):
        from stem_denoise.evaluation import independent

        ind_specs = independent.independent_specs(quick=cfg.quick, doses=cfg.doses or independent.DEFAULT_DOSES,
                                                  seed=cfg.seed, kinds=cfg.independent_kinds, size=cfg.size)
        cases_iter += [(s.name, (lambda s=s: independent.case_from_spec(s))) for s in ind_specs]
    log(f"{len(cases_iter)} cases x {len(methods)} methods: {', '.join(m.name for m in methods)}")

    rows: list[dict] = []
    errors: list[str] = []
    figures: list[str] = []
    bar = tqdm(total=len(cases_iter) * len(methods), desc="benchmark", unit="run", disable=not cfg.progress,
               dynamic_ncols=True)

    def on_method(case, m):
        bar.set_postfix_str(f"{case.name} {m.name}")

    for _name, make in cases_iter:
        case = make()
        case_rows, outputs, matches, case_skipped, case_errors = run_case(
            case, methods, seed=cfg.seed, on_method=on_method, after_method=lambda c, m: bar.update(1))
        rows.extend(case_rows)
        skipped.extend(case_skipped)
        errors.extend(case_errors)
        for e in case_errors:
            log(f"error: {e}")
        fig_path = out_dir / "figures" / f"{case.name}.png"
        report.case_panel(case, outputs, matches, case_rows, fig_path)
        figures.append(str(fig_path))
        if cfg.save_outputs:
            _save_outputs(out_dir / "outputs" / case.name, outputs)
    bar.close()

    csv_path = out_dir / "results.csv"
    report.write_csv(rows, csv_path)
    md_path = out_dir / "results.md"
    report.write_markdown(rows, md_path, skipped=skipped, errors=errors, config=_config_summary(cfg))
    paths = {"csv": str(csv_path), "markdown": str(md_path), "figures": figures}
    main_rows = [r for r in rows if r.get("set") != "independent"]
    ind_rows = [r for r in rows if r.get("set") == "independent"]
    for set_rows, suffix, title in ((main_rows, "", None), (ind_rows, "_independent", "independent validation set")):
        if not set_rows and (suffix or cfg.cases == "independent"):
            continue
        psnr_plot, halluc_plot = (out_dir / name for name in _plot_names(suffix))
        report.dose_plot(set_rows, "psnr", psnr_plot, ylabel="PSNR (dB)", title=title)
        report.dose_plot(set_rows, "halluc_frac", halluc_plot, ylabel="filled vacancies (% of vacancies)",
                         title=title)
        paths[f"psnr_plot{suffix}"] = str(psnr_plot)
        paths[f"hallucination_plot{suffix}"] = str(halluc_plot)
    real_rows: list[dict] = []
    if cfg.real_dir is not None:
        real_rows = _run_real_frames(cfg, methods, out_dir / "real", paths, errors, log=log)
    return BenchResult(rows=rows, skipped=skipped, paths=paths, errors=errors, real_rows=real_rows)


def _run_real_frames(cfg: BenchConfig, methods: Sequence[Method], out: Path, paths: dict, errors: list, *,
                     log=print) -> list[dict]:
    """The no-truth checks on the real frames in ``cfg.real_dir`` with the benchmark's own methods (the oracle
    Gaussian replaced by fixed Gaussians of sigma 1 and 2 px: a real frame has no truth), written to ``out``
    (:func:`stem_denoise.evaluation.realframes.run_realcheck`)."""
    from data_prep.io import list_micrographs
    from stem_denoise.evaluation.realframes import real_methods_from, run_realcheck

    frames = list_micrographs([Path(cfg.real_dir)])
    real = real_methods_from(methods)
    log(f"real frames (no truth): {len(frames)} frame(s) x {len(real)} method(s) from {cfg.real_dir}")
    result = run_realcheck(frames, real, out, log=log)
    errors.extend(f"real frames: {e}" for e in result["errors"])
    paths["real_csv"], paths["real_markdown"] = result["paths"]["csv"], result["paths"]["markdown"]
    paths["real_figures"] = result["paths"]["figures"]
    return result["rows"]


def _config_summary(cfg: BenchConfig) -> dict:
    d = cfg.to_dict()
    d.pop("out_dir", None)
    d.pop("progress", None)
    d.pop("overwrite", None)
    return d


def _save_outputs(folder: Path, outputs: dict[str, np.ndarray]) -> None:
    import tifffile

    from stem_denoise.common.atomic import atomic_write_with

    folder.mkdir(parents=True, exist_ok=True)
    for name, img in outputs.items():
        atomic_write_with(folder / f"{name}.tif",
                          lambda tmp, img=img: tifffile.imwrite(tmp, np.asarray(img, np.float32)))
