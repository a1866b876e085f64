"""Stopping rules for the DIP optimisation.

* ``fixed``: run a given number of steps and keep the last output.
* ``oracle``: keep the output with the best PSNR against a known truth. It needs the truth, so it exists only
  for benchmarks and is always reported as an oracle.
* ``auto``: a rule that needs no truth. Two are implemented (``DipSettings.auto_rule``):

  ``holdout`` (the default), self-validation in the spirit of Li et al., "Self-validation: early stopping for
  single-instance deep generative priors" (BMVC 2021). A sparse set of short blocks of pixels (1 x 3 along the
  fast-scan rows, one per 6 x 6 px cell, about 8 % of the image) is left out of the data term. The network
  never sees the noise of a block's centre pixel (real fast-scan noise is correlated with the next pixel along
  the row, which is held out too), so the mean squared difference between the output there and the noisy
  centre pixels is, up to a constant (the noise variance), an estimate of the output's error against the
  unknown truth: it falls while the structure is fitted and rises once the noise is. The step with the lowest
  value is kept and the run stops once ``patience`` further steps have not lowered it. A second pass then
  fits all pixels from the same seed for exactly that many steps (``refit``), so no pixel is lost to the
  validation set; ``refit=False`` keeps the first pass's output instead (half the cost, the held-out pixels
  are then filled in by the network, measured about 0.3 dB worse).

  ``wmv``, the windowed-moving-variance rule of Wang et al., "Early stopping for deep image prior" (ES-WMV,
  TMLR 2023): the variance of the last ``window`` outputs,

      VAR_t = 1/W * sum_{w<W} || x_{t-w} - mean(x_{t-W+1..t}) ||^2 / N_pixels,

  its lowest value, and a stop once ``patience`` further steps have not lowered it; the result is the output
  saved nearest the centre of the lowest-variance window. A fresh network's outputs hardly move during its
  first steps (on a lattice DIP fits the flat background first), so the lowest variance is searched for only
  after the highest variance seen so far. Measured on simulated micrographs (``scripts/bench_dip.py``) this
  rule is not reliable there: at low dose the variance has no valley after the structure is fitted (it climbs
  on into the noise) and at high dose its valley comes long after the best step, so it is not the default.
  It is used for super-resolution, where there are no noisy pixels to hold out.

All quantities are computed over the pixels of the input image only (not the network's padding) and in the
normalised units of the optimisation.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from stem_denoise.common.config import Config

STOP_RULES = ("auto", "fixed", "oracle")
AUTO_RULES = ("wmv", "holdout")


class WMVConfig(Config):
    """Settings of the ES-WMV rule, in optimisation steps."""

    window: int = Field(100, ge=2)
    patience: int = Field(300, ge=1)
    min_steps: int = Field(0, ge=0)  # no stop is declared before this step


class WindowedVarianceStopper:
    """Online ES-WMV detector over a stream of equally shaped tensors (one per step).

    Call :meth:`update` with each step's output; it returns True when the rule fires. ``best_step`` is the
    step with the lowest windowed variance seen so far (``None`` until the first full window) and
    ``improved`` says whether the last update set a new lowest variance (the caller saves its result then).
    Running sums make each update O(pixels) whatever the window.
    """

    def __init__(self, cfg: WMVConfig | None = None):
        self.cfg = WMVConfig() if cfg is None else cfg
        self._buf: deque[torch.Tensor] = deque()
        self._sum: torch.Tensor | None = None
        self._sumsq = 0.0
        self.step = -1
        self.best_step: int | None = None
        self.best_var = float("inf")
        self.peak_var = -1.0
        self.improved = False
        self.fired = False
        self.history: list[float] = []

    def update(self, x: torch.Tensor) -> bool:
        """Add the output of the next step; return True once the rule has fired."""
        self.step += 1
        x = x.detach().to(torch.float64).flatten()
        if self._sum is None:
            self._sum = torch.zeros_like(x)
        self._buf.append(x)
        self._sum += x
        self._sumsq += float(torch.dot(x, x))
        w = self.cfg.window
        if len(self._buf) > w:
            old = self._buf.popleft()
            self._sum -= old
            self._sumsq -= float(torch.dot(old, old))
        self.improved = False
        if len(self._buf) < w:
            return self.fired
        mean = self._sum / w
        var = max(self._sumsq / w - float(torch.dot(mean, mean)), 0.0) / x.numel()
        self.history.append(var)
        if var > self.peak_var:  # still climbing the first hill: restart the search for the valley
            self.peak_var = var
            self.best_var = float("inf")
        if var < self.best_var:
            self.best_var = var
            self.best_step = self.step
            self.improved = True
        elif (self.step - self.best_step >= self.cfg.patience and self.step >= self.cfg.min_steps):
            self.fired = True
        return self.fired

    @property
    def variance_history(self) -> np.ndarray:
        """Windowed variance per step, starting at step ``window - 1``."""
        return np.asarray(self.history, dtype=np.float64)


class HoldoutConfig(Config):
    """Settings of the self-validation rule (sizes in pixels, patience in steps).

    One ``block`` (rows, cols; odd) of pixels per ``spacing`` x ``spacing`` px cell is left out of the data term;
    only each block's centre pixel is scored, so its noise is independent of every fitted pixel as long as the
    noise is correlated over less than half a block (real fast-scan noise: about one pixel along the rows).
    Blocks never touch each other.
    """

    spacing: int = Field(6, ge=2)
    block: tuple[int, int] = (1, 3)
    patience: int = Field(200, ge=1)
    min_steps: int = Field(0, ge=0)
    refit: bool = True  # second pass on all pixels up to the chosen step

    @field_validator("block")
    @classmethod
    def _odd_block(cls, block: tuple[int, int]) -> tuple[int, int]:
        if any(b < 1 or b % 2 == 0 for b in block):
            raise ValueError(f"must be two odd sizes >= 1, got {list(block)}")
        return block

    @model_validator(mode="after")
    def _spacing(self) -> "HoldoutConfig":
        if self.spacing < max(self.block) + 1:
            raise ValueError(f"spacing must exceed the held-out block size, got {self.spacing}")
        return self


def holdout_pixels(known: np.ndarray, cfg: HoldoutConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pick the held-out blocks of an image; return (centres (K, 2) int rows/cols, held-out bool mask).

    ``known`` (bool H x W) marks the pixels with data; a block is placed only where all of its pixels are known.
    One block per ``spacing`` px cell at a random position (``seed``), so the set covers the image evenly.
    """
    known = np.asarray(known, bool)
    h, w = known.shape
    by, bx = cfg.block[0] // 2, cfg.block[1] // 2
    rng = np.random.default_rng(seed)
    held = np.zeros((h, w), bool)
    centres = []
    s = int(cfg.spacing)
    for r0 in range(0, h, s):
        for c0 in range(0, w, s):
            rows = np.arange(max(r0, by), min(r0 + s, h - by))
            cols = np.arange(max(c0, bx), min(c0 + s, w - bx))
            if rows.size == 0 or cols.size == 0:
                continue
            for _ in range(8):  # a few tries to land on known pixels
                r, c = int(rng.choice(rows)), int(rng.choice(cols))
                sl = np.s_[r - by:r + by + 1, c - bx:c + bx + 1]
                if known[sl].all() and not held[max(r - by - 1, 0):r + by + 2, max(c - bx - 1, 0):c + bx + 2].any():
                    held[sl] = True
                    centres.append((r, c))
                    break
    return np.asarray(centres, dtype=np.int64).reshape(-1, 2), held


class ValidationStopper:
    """Stop once a validation loss has not reached a new minimum for ``patience`` steps."""

    def __init__(self, patience: int, min_steps: int = 0):
        self.patience = int(patience)
        self.min_steps = int(min_steps)
        self.step = -1
        self.best_step: int | None = None
        self.best = float("inf")
        self.improved = False
        self.fired = False
        self.history: list[float] = []

    def update(self, value: float) -> bool:
        self.step += 1
        self.history.append(float(value))
        self.improved = value < self.best
        if self.improved:
            self.best, self.best_step = float(value), self.step
        elif self.step - self.best_step >= self.patience and self.step >= self.min_steps:
            self.fired = True
        return self.fired

    @property
    def variance_history(self) -> np.ndarray:  # same accessor as the WMV stopper, for the records
        return np.asarray(self.history, dtype=np.float64)
