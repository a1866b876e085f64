"""The Python API: what a notebook needs, one call per job, arrays in and arrays out.

::

    from stem_denoise import Denoiser, simulate, evaluate

    sim = simulate(lattice="perovskite", shape=(256, 256), period_px=16, dose=5, seed=1)
    clean = Denoiser.load().denoise(sim.noisy)          # the shipped model; the period is measured
    print(evaluate(clean, sim)["psnr"])

* :class:`Denoiser` -- a trained generator (default: the shipped ``stem_denoise/models/default.pt``) that
  denoises arrays and files of any size, tile by tile, in the micrograph's own units.
* :func:`dip_denoise` -- Deep Image Prior, one fit per image (no training data).
* :func:`simulate` -- a simulated micrograph with its ground truth (:class:`data_prep.simulate.SimResult`).
* :func:`measure_lattice` -- period and orientation of a micrograph's lattice.
* :func:`evaluate` / :func:`psnr` -- the benchmark's metrics against a known truth.

Everything heavy (torch, the networks) is imported when first used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from stem_denoise.common.errors import InputError

__all__ = ["Denoiser", "dip_denoise", "simulate", "measure_lattice", "evaluate", "psnr"]


def _as_image(array: Any, name: str = "image") -> np.ndarray:
    """A 2-D numeric array (not copied when it already is one); one clear error otherwise."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)) or a.dtype == np.bool_:
        raise InputError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    return a


class Denoiser:
    """A trained generator ready to denoise micrographs.

    ``Denoiser.load()`` gives the shipped default model, ``Denoiser.load(path)`` a generator export
    (``RUN_DIR/generator.pt`` of a training run). ``device``: "auto" (CUDA when present), "cpu", "cuda", ...;
    ``precision``: "auto" (bf16 only where the hardware has it), "fp32" or "bf16".
    """

    def __init__(self, generator, info: dict, *, path: str | os.PathLike | None = None, device: str = "auto",
                 precision: str = "auto"):
        from cyclegan.infer import pick_device

        self.generator = generator.eval()
        self.info = dict(info)
        self.path = None if path is None else Path(path)
        self.device = pick_device(device)
        self.precision = precision
        self.last_stats: dict = {}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, device: str = "auto",
             precision: str = "auto") -> "Denoiser":
        """Load a generator export; ``path=None`` loads the shipped default model (or the file the environment
        variable ``STEM_DENOISE_MODEL`` names)."""
        from cyclegan.checkpoint import default_model_path, load_generator

        path = default_model_path() if path is None else Path(path)
        if not path.is_file():
            raise InputError(f"no generator export at {path}")
        generator, info = load_generator(path)
        return cls(generator, info, path=path, device=device, precision=precision)

    @property
    def model_period_px(self) -> float:
        """The lattice period (px) the network works at; micrographs are resampled to it and back."""
        return float(self.info.get("period_px", 0.0))

    def __repr__(self) -> str:
        where = self.path.name if self.path is not None else "in memory"
        return f"Denoiser({where}, period {self.model_period_px:g} px, {self.device}, precision={self.precision})"

    def denoise(self, array, period_px: float | None = None, *, tta: bool = False, tile: int | None = None,
                batch_size: int | None = None, progress: bool = False, force_period: bool = False,
                working_scale: str | None = None, noise_level_factor: float | None = None) -> np.ndarray:
        """Denoise a 2-D micrograph; return a float32 array of the same shape in the same units.

        ``period_px``: the lattice period in the micrograph's px (as :func:`measure_lattice` reports it); measured
        when None. A given period is checked against the measured lattice: more than 15 % apart raises
        :class:`~stem_denoise.common.errors.InputError` naming both, unless ``force_period``. ``tta``: average the
        8 dihedral transforms (8x slower, a little better). ``tile``/``batch_size``: memory knobs (defaults suit
        the device). ``working_scale``: "cell" or "sites" (a multi-site cell is magnified so that its nearest
        column spacing maps closer to the model's period; see :func:`cyclegan.infer.site_spacing_factor`); None
        (default): the scale the model was trained at ("cell" for the shipped model). ``noise_level_factor``
        (models with a noise-level input, the shipped one): multiplies the noise level measured on the micrograph
        (default 0.85, :data:`cyclegan.infer.DEFAULT_NOISE_LEVEL_FACTOR`); lower keeps more (weak columns, and
        noise), higher smooths harder.
        The settings actually used (scale, tiles, precision, the period, a note on the period) are in
        ``self.last_stats`` afterwards.
        """
        from cyclegan.infer import check_period, denoise_array

        image = _as_image(array)
        stats: dict = {}
        if period_px is not None:
            period_px, note = check_period(image, period_px, force=force_period)
            if note:
                stats["period_note"] = note
        out = denoise_array(image, self.generator, self.info, period_px=period_px, tile=tile, batch_size=batch_size,
                            tta=tta, device=self.device, precision=self.precision, progress=progress, stats=stats,
                            working_scale=working_scale, noise_level_factor=noise_level_factor)
        self.last_stats = stats
        return out

    def denoise_file(self, path: str | os.PathLike, out: str | os.PathLike, *, period_px: float | None = None,
                     tta: bool = False, float32: bool = False, overwrite: bool = False,
                     force_period: bool = False) -> dict:
        """Denoise the micrograph file ``path`` into the TIFF ``out`` with the input's dtype (``float32=True``:
        float32) and pixel size; large files stream through memory maps; a given period is checked as in
        :meth:`denoise`. Returns what was done (a dict)."""
        from cyclegan.infer import denoise_file

        stats = denoise_file(path, out, self.generator, self.info, period_px=period_px, float32=float32,
                             overwrite=overwrite, tta=tta, device=self.device, precision=self.precision,
                             force_period=force_period)
        self.last_stats = stats
        return stats


def dip_denoise(array, *, steps: int | None = None, preset: str | None = None, seed: int = 0,
                device: str | None = None, return_record: bool = False, **options):
    """Deep Image Prior on one micrograph: a fresh network fitted to this image alone, stopped by held-out
    pixels (no truth needed). Returns the denoised array in the input's dtype and units, or ``(array, record)``
    with ``return_record=True`` (settings, steps run, time). ``steps`` caps the optimisation; other options go
    to :func:`dip_baseline.api.dip_denoise` (e.g. ``stop="fixed"``, ``tile``, ``precision``)."""
    from dip_baseline.api import DEFAULT_PRESET
    from dip_baseline.api import dip_denoise as _dip

    image = _as_image(array)
    out, record = _dip(image, preset=preset or DEFAULT_PRESET, max_steps=steps, seed=seed, device=device, **options)
    return (out, record) if return_record else out


def simulate(**params):
    """A simulated STEM micrograph with its ground truth: ``.noisy``, ``.truth``, ``.columns``, ``.vacancies``,
    ``.period_px`` ... (:class:`data_prep.simulate.SimResult`). Keyword arguments are
    :class:`data_prep.simulate.SimParams` fields, e.g. ``lattice="perovskite", shape=(256, 256), period_px=16,
    dose=5, seed=1``."""
    from data_prep.simulate import simulate as _simulate

    return _simulate(**params)


def measure_lattice(array, **options):
    """Period (px) and orientation (degrees) of a micrograph's lattice (:class:`data_prep.lattice.LatticeInfo`:
    ``.period_px``, ``.angle_deg``, ``.period2_px``, ``.angle2_deg``, ``.lattice``). Raises
    :class:`~stem_denoise.common.errors.InputError` when no lattice is found."""
    from data_prep.lattice import measure_lattice as _measure

    return _measure(_as_image(array), **options)


def psnr(output, truth, *, data_range: float | None = None) -> float:
    """PSNR (dB) of ``output`` against ``truth``; the data range defaults to the truth's (max - min)."""
    from stem_denoise.evaluation.metrics import psnr as _psnr

    return _psnr(_as_image(output, "output"), _as_image(truth, "truth"), data_range=data_range)


def evaluate(output, truth, *, noisy=None) -> dict:
    """The benchmark's metrics of ``output`` against a known truth, as one flat dict.

    ``truth``: a :class:`data_prep.simulate.SimResult` (from :func:`simulate`) -- then the column metrics
    (found, lost, invented columns, filled vacancies, position error, F1, dent fidelity) come too and ``noisy``
    defaults to its noisy image -- or a plain 2-D truth image (PSNR and SSIM, plus ``noise_left`` with ``noisy``).
    """
    from stem_denoise.evaluation.metrics import evaluate as _evaluate

    out = _as_image(output, "output")
    if hasattr(truth, "truth") and hasattr(truth, "columns"):
        from stem_denoise.evaluation.benchmark import case_from_simulation

        case = case_from_simulation(truth, "api")
        noisy = case.noisy if noisy is None else noisy
        return _evaluate(out, case.truth, case.columns, noisy=None if noisy is None else _as_image(noisy, "noisy"))
    return _evaluate(out, _as_image(truth, "truth"), None, noisy=None if noisy is None else _as_image(noisy, "noisy"))
