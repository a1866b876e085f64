"""Self-supervised peers for the benchmark: Noise2Void as packaged by CAREamics (N2V2, structN2V).

What a microscopist without clean data would try first: CAREamics (BSD-3) trains a small U-Net on the noisy image
itself, blind-spot style, so it needs no training data at all. Two variants are benchmarked, both **trained on each
test image alone** (no other image, no truth), the way the benchmark's Deep Image Prior is run:

* ``n2v2``: N2V2 (median replacement, blur-pool U-Net without the top skip connection: no checkerboard), trained
  on the image's 8 flips and 90-degree rotations;
* ``structn2v``: N2V2 plus the structN2V mask, which also hides the pixels of a ``span``-long segment centred on
  each blind spot along the fast-scan rows ("horizontal", CAREamics' last axis; span 5: two on either side).
  Row-correlated noise (what the simulator and real frames show) lets a plain blind spot read a masked pixel's
  noise off its row neighbours; the mask takes that away. Rotating the image would turn the rows into columns, so
  this variant trains on the 4 flips only, which keep rows as rows.

The training stack is the image's transforms, repeated so that one CAREamics epoch holds ``steps`` batches (one
epoch: no per-epoch validation or checkpoint overhead). CAREamics normalises with the stack's mean and std and
undoes it on the way out, so the output has the input's units. The image is mirror-padded to a multiple of 4 (the
U-Net's two poolings) for prediction and cropped back.

:func:`n2v_denoise` does the planning, stacking and padding in plain numpy and hands the training and the
prediction to a *backend* (:class:`CareamicsBackend` by default), so the adapter is tested without CAREamics.
When CAREamics is missing, the benchmark says so (:class:`stem_denoise.evaluation.filters.FilterUnavailable`,
"pip install '.[bench]'") and runs the other methods.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from stem_denoise.common.arrays import as_real_image
from stem_denoise.common.errors import ConfigError, InputError
from stem_denoise.evaluation.filters import FilterUnavailable

MISSING = ("the optional 'careamics' package is not installed (Noise2Void / N2V2 / structN2V); "
           "install the benchmark extra: pip install '.[bench]'")
StructAxis = Literal["none", "horizontal", "vertical"]


def careamics_available() -> bool:
    """True when CAREamics can be imported (the optional ``bench`` extra)."""
    try:
        import careamics  # noqa: F401
    except Exception:  # ImportError, or a broken optional install
        return False
    return True


@dataclass(frozen=True)
class N2VSettings:
    """One Noise2Void variant and its training budget.

    ``steps``: optimiser steps (batches) per image; ``batch_size`` patches of ``patch_px`` px (CAREamics' default
    patch is 64; smaller images use the largest power of two that fits, at least 16); ``n2v2``: N2V2 instead of the
    original N2V; ``struct_axis``/``struct_span``: the structN2V mask ("horizontal": along the fast-scan rows);
    ``masked_percent``: blind-spot pixels per patch, % (CAREamics' default 0.2); ``val_patches``: patches CAREamics
    holds out of the training data for its validation loss.
    """

    steps: int = 200
    batch_size: int = 8
    patch_px: int = 64
    n2v2: bool = True
    struct_axis: StructAxis = "none"
    struct_span: int = 5
    masked_percent: float = 0.2
    val_patches: int = 2

    def validate(self) -> None:
        if int(self.steps) < 1:
            raise ConfigError(f"N2V steps must be >= 1, got {self.steps}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"N2V batch size must be >= 1, got {self.batch_size}")
        p = int(self.patch_px)
        if p < 16 or p & (p - 1):
            raise ConfigError(f"N2V patch must be a power of two >= 16 px, got {self.patch_px}")
        if self.struct_axis not in ("none", "horizontal", "vertical"):
            raise ConfigError(f"structN2V axis must be none, horizontal or vertical, got {self.struct_axis!r}")
        if self.struct_axis != "none" and not (1 <= int(self.struct_span) <= 15):
            raise ConfigError(f"structN2V span must be 1-15 px, got {self.struct_span}")
        if not (0.0 < float(self.masked_percent) <= 10.0):
            raise ConfigError(f"masked_percent must be in (0, 10], got {self.masked_percent}")
        if int(self.val_patches) < 1:
            raise ConfigError(f"val_patches must be >= 1, got {self.val_patches}")


N2V2 = N2VSettings()
STRUCT_N2V = N2VSettings(struct_axis="horizontal", struct_span=5)


@dataclass(frozen=True)
class N2VPlan:
    """What one image's training will be: ``patch_px`` (fitted to the image), the ``transforms`` (dihedral indices
    0-7, see :func:`dihedral`), ``repeats`` of them in the stack, and the settings."""

    settings: N2VSettings
    patch_px: int
    transforms: tuple[int, ...]
    repeats: int
    seed: int

    @property
    def stack_len(self) -> int:
        return len(self.transforms) * self.repeats


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th (0-7) of the 8 flips and 90-degree rotations: 0-3 keep the axes (identity, flip left-right,
    flip up-down, both), 4-7 transpose first (rows become columns)."""
    a = np.asarray(img)
    if k >= 4:
        a = a.T
    if k % 4 in (1, 3):
        a = a[:, ::-1]
    if k % 4 in (2, 3):
        a = a[::-1, :]
    return np.ascontiguousarray(a)


def fit_patch(shape: tuple[int, int], patch_px: int) -> int:
    """The largest power of two <= ``patch_px`` that fits the image's smaller side (at least 16);
    InputError for images under 16 px."""
    side = min(int(shape[0]), int(shape[1]))
    if side < 16:
        raise InputError(f"Noise2Void needs an image of at least 16 x 16 px, got {shape[0]} x {shape[1]}")
    p = int(patch_px)
    while p > side:
        p //= 2
    return max(16, p)


def plan_training(shape: tuple[int, int], settings: N2VSettings, seed: int = 0) -> N2VPlan:
    """Plan one image's training: the transforms (4 axis-keeping flips with a structN2V mask, else all 8), and
    enough repeats that the stack yields at least ``steps * batch_size`` patches in one epoch (CAREamics cuts
    about ``(H // patch) * (W // patch)`` patches per image per epoch)."""
    settings.validate()
    patch = fit_patch(shape, settings.patch_px)
    transforms = (0, 1, 2, 3) if settings.struct_axis != "none" else tuple(range(8))
    per_image = max(1, (int(shape[0]) // patch) * (int(shape[1]) // patch))
    need = int(settings.steps) * int(settings.batch_size) + int(settings.val_patches)
    repeats = max(1, math.ceil(need / (per_image * len(transforms))))
    return N2VPlan(settings, patch, transforms, repeats, max(1, int(seed) + 1))  # CAREamics wants a seed > 0


def training_stack(image: np.ndarray, plan: N2VPlan) -> np.ndarray:
    """The (S, H', W') float32 stack CAREamics trains on: the plan's transforms of ``image``, repeated. Transposed
    members (non-square images) are cropped to the common shape."""
    img = np.asarray(image, dtype=np.float32)
    members = [dihedral(img, k) for k in plan.transforms]
    h = min(m.shape[0] for m in members)
    w = min(m.shape[1] for m in members)
    members = [m[:h, :w] for m in members]
    return np.ascontiguousarray(np.stack(members * plan.repeats))


def pad_to_multiple(image: np.ndarray, m: int = 4) -> tuple[np.ndarray, tuple[int, int]]:
    """Mirror-pad ``image`` at the bottom and right to a multiple of ``m`` px; returns ``(padded, (h, w))``."""
    h, w = image.shape
    ph, pw = (-h) % m, (-w) % m
    if ph == 0 and pw == 0:
        return np.asarray(image, np.float32), (h, w)
    return np.pad(np.asarray(image, np.float32), ((0, ph), (0, pw)), mode="symmetric"), (h, w)


class N2VBackend(Protocol):
    """Trains on a stack and predicts one image (same units in and out)."""

    def fit_predict(self, stack: np.ndarray, image: np.ndarray, plan: N2VPlan, workdir: Path) -> np.ndarray:
        ...


@contextlib.contextmanager
def _quiet():
    """Silence Lightning's and CAREamics' console chatter (progress bars, tips, warnings) for one run."""
    prefixes = ("lightning", "pytorch_lightning", "careamics")
    names = {"lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "careamics"}
    names |= {n for n in list(logging.root.manager.loggerDict) if n.startswith(prefixes)}
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    sink = io.StringIO()
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)  # loggers CAREamics creates during the run hold the real stdout
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)


class CareamicsBackend:
    """The real thing: ``careamics.CAREamist`` with ``create_advanced_n2v_config`` (CAREamics >= 0.3)."""

    def fit_predict(self, stack: np.ndarray, image: np.ndarray, plan: N2VPlan, workdir: Path) -> np.ndarray:
        try:
            from careamics import CAREamist
            from careamics.config import create_advanced_n2v_config
        except Exception as exc:
            raise FilterUnavailable(MISSING) from exc
        s = plan.settings
        with _quiet():
            cfg = create_advanced_n2v_config(
                experiment_name="benchmark_n2v", data_type="array", axes="SYX", patch_size=[plan.patch_px] * 2,
                batch_size=int(s.batch_size), num_epochs=1, num_steps=int(s.steps), augmentations=[],
                n_val_patches=int(s.val_patches), use_n2v2=bool(s.n2v2),
                masked_pixel_percentage=float(s.masked_percent), struct_n2v_axes=s.struct_axis,
                struct_n2v_span=int(s.struct_span), num_workers=0, logger="none", seed=plan.seed)
            model = CAREamist(cfg, work_dir=workdir, enable_progress_bar=False)
            model.train(train_data=stack)
            pred, _ = model.predict(image, axes="YX", data_type="array", tile_size=None)
        return np.asarray(pred[0], dtype=np.float32).reshape(image.shape)


def n2v_denoise(image: np.ndarray, settings: N2VSettings = N2V2, *, seed: int = 0,
                backend: N2VBackend | None = None, notes: dict | None = None) -> np.ndarray:
    """Noise2Void (CAREamics) trained on ``image`` alone, then applied to it; float32, same shape and units.

    ``settings``: the variant and budget (:data:`N2V2`, :data:`STRUCT_N2V`); ``backend``: for tests (default
    :class:`CareamicsBackend`); ``notes``: filled with the plan, the steps run and the wall time of training plus
    prediction. Raises :class:`FilterUnavailable` when CAREamics is missing, InputError for a bad image."""
    img = as_real_image(image)
    plan = plan_training(img.shape, settings, seed)
    if backend is None:
        if not careamics_available():
            raise FilterUnavailable(MISSING)
        backend = CareamicsBackend()
    stack = training_stack(img, plan)
    padded, (h, w) = pad_to_multiple(img, 4)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="n2v_") as tmp:
        out = backend.fit_predict(stack, padded, plan, Path(tmp))
    out = np.asarray(out, dtype=np.float32)
    if out.shape != padded.shape:
        raise RuntimeError(f"Noise2Void backend returned shape {out.shape} for an input of {padded.shape}")
    if notes is not None:
        s = asdict(plan.settings)
        notes.update({"steps": s["steps"], "batch": s["batch_size"], "patch_px": plan.patch_px,
                      "transforms": len(plan.transforms), "struct": s["struct_axis"], "n2v2": s["n2v2"],
                      "fit_predict_s": round(time.perf_counter() - t0, 2), "trained_on": "this image"})
    return np.ascontiguousarray(out[:h, :w])
