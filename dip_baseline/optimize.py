"""Per-image DIP optimisation on normalised arrays.

:func:`fit_dip` fits a freshly initialised skip network, fed a fixed random code, to one corrupted image and
returns the restored image. All arrays are float32 in normalised units (the caller normalises the whole
micrograph once, see :mod:`dip_baseline.api`). Tasks and their data terms (mean over the pixels that count):

* ``denoise``:  ||x - x0||^2
* ``inpaint``:  ||(x - x0) * m||^2, ``m`` = 1 on known pixels, 0 on missing ones
* ``sr``:       ||d(x) - x0||^2, ``d`` the Lanczos-3 downsampler by ``scale`` (2 or 4); x is ``scale`` times larger

The network needs sides that are multiples of ``2 ** depth``; the image is placed in the middle of such a
canvas and only its own pixels enter the data term, the stopping rule and the result (no border pixel is
dropped, no padding is invented as data). The result is the moving average of the outputs (or the raw output
when ``ema`` is 0), taken at the step the stopping rule picks.

Precision (``precision`` = "auto", "fp32" or "bf16"; :func:`dip_precision`): "auto" runs the network under
bfloat16 autocast on a CUDA device with bf16 (float16 with loss scaling on older GPUs) and on a CPU with native
bf16 instructions (AMX-BF16/AVX512-BF16), in float32 elsewhere; "bf16" forces bfloat16 autocast on any CPU (where
it is emulated it is slower) and on CUDA devices with bf16. Under autocast the layout is channels-last; the data
term, the averages and the result stay in float32. On the CPU the same seed and precision give a bit-identical
result: weights, code and input perturbations all come from seeded generators.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from dip_baseline.lanczos import LanczosDownsampler
from dip_baseline.net import SkipNetConfig, build_skipnet, count_parameters
from dip_baseline.presets import DipSettings
from dip_baseline.stopping import ValidationStopper, WindowedVarianceStopper, holdout_pixels
from stem_denoise.common.device import pick_device
from stem_denoise.common.errors import InputError
from stem_denoise.common.precision import describe_precision, resolve_precision

TASKS = ("denoise", "inpaint", "sr")
MIN_HOLDOUT_PIXELS = 16
SR_SCALES = (2, 4)


@dataclass
class DipRun:
    """What :func:`fit_dip` returns: the result (float32, normalised units) and what happened."""

    output: np.ndarray
    record: dict
    loss_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    psnr_history: np.ndarray | None = None
    variance_history: np.ndarray | None = None


def _grad_scaler(enabled: bool):
    """Loss scaling for float16 autocast (bfloat16 needs none)."""
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def dip_precision(precision: str | None, device: torch.device, settings: DipSettings | None = None
                  ) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, None for float32; whether float16 loss scaling is on) for ``precision`` on ``device``.

    As :func:`stem_denoise.common.precision.resolve_precision`, except that "auto" on a CUDA device without bf16 keeps
    the float16 (+ loss scaling) the DIP has always used there, and that ``settings.amp = False`` turns "auto" into
    float32 (an explicit "bf16" still wins). InputError for an unknown name or bf16 on a GPU without it.
    """
    dtype = resolve_precision(precision, device)  # checks the name first
    name = "auto" if precision in (None, "") else precision
    if name == "auto" and settings is not None and not settings.amp:
        return None, False
    if name == "auto" and dtype is None and torch.device(device).type == "cuda":
        return torch.float16, True
    return dtype, False


def psnr(x: torch.Tensor, truth: torch.Tensor, data_range: float) -> float:
    """PSNR in dB of ``x`` against ``truth`` with the given data range: the squared error on the tensors' device,
    the formula the benchmark's (:func:`stem_denoise.evaluation.metrics.psnr_from_mse`, capped at 100 dB)."""
    from stem_denoise.evaluation.metrics import psnr_from_mse

    return psnr_from_mse(float(torch.mean((x.float() - truth.float()) ** 2)), data_range)


def _check_inputs(target: np.ndarray, task: str, mask, scale, truth) -> tuple[np.ndarray, np.ndarray | None,
                                                                                 int, np.ndarray | None]:
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    target = np.asarray(target, dtype=np.float32)
    if target.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {target.shape}")
    if not np.isfinite(target).all():
        raise InputError("the image holds NaN or infinite values")
    if task == "inpaint":
        if mask is None:
            raise InputError("inpainting needs a mask (1 = known pixel, 0 = missing)")
        mask = np.asarray(mask)
        if mask.shape != target.shape:
            raise InputError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px but the image is "
                             f"{target.shape[1]}x{target.shape[0]} px")
        mask = (mask > 0).astype(np.float32)
        if not mask.any():
            raise InputError("the mask marks no known pixel")
    elif mask is not None:
        raise InputError(f"a mask is only used by the inpaint task, not {task!r}")
    if task == "sr":
        if isinstance(scale, bool) or scale not in SR_SCALES:
            raise InputError(f"the super-resolution scale must be 2 or 4, got {scale!r}")
        scale = int(scale)
    elif scale not in (None, 1):
        raise InputError(f"a scale is only used by the sr task, not {task!r}")
    else:
        scale = 1
    if truth is not None:
        truth = np.asarray(truth, dtype=np.float32)
        want = (target.shape[0] * scale, target.shape[1] * scale)
        if truth.shape != want:
            raise InputError(f"the truth image is {truth.shape[1]}x{truth.shape[0]} px; "
                             f"expected {want[1]}x{want[0]} px")
        if not np.isfinite(truth).all():
            raise InputError("the truth image holds NaN or infinite values")
    return target, mask, scale, truth


def _canvas(net_cfg: SkipNetConfig, h: int, w: int, scale: int) -> tuple[int, int, int, int]:
    """Canvas size (output resolution) and offsets of the image on it, offsets multiples of ``scale``."""
    unit = math.lcm(net_cfg.multiple, scale)
    lo = net_cfg.min_size()

    def side(n: int) -> tuple[int, int]:
        c = unit * math.ceil(max(n * scale, lo) / unit)
        off = ((c // scale - n) // 2) * scale
        return c, off

    hc, oy = side(h)
    wc, ox = side(w)
    return hc, wc, oy, ox


@dataclass
class _Problem:
    """Everything one optimisation pass needs, on the device."""

    net_cfg: SkipNetConfig
    settings: DipSettings
    dev: torch.device
    data: torch.Tensor  # (1, 1, h_data, w_data) target on the data canvas
    crop: tuple[int, int, int, int]  # oy, ox, oh, ow of the image on the output canvas
    canvas: tuple[int, int]  # output canvas (hc, wc)
    down: LanczosDownsampler | None
    truth: torch.Tensor | None
    data_range: float | None
    seed: int
    precision: str | None = "auto"


@dataclass
class _Pass:
    result: torch.Tensor
    result_step: int
    steps_run: int
    elapsed: float
    losses: list[float]
    psnrs: list[float]
    best_psnr: float
    best_step: int
    fired_at: int | None
    criterion_best_step: int | None
    criterion_history: np.ndarray | None
    parameters: int
    amp: str | bool
    precision: str


def _optimise(pb: _Problem, weight: torch.Tensor, *, rule: str, max_steps: int, keep_step: int | None = None,
              validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
              observe_only: bool = False, progress: bool = False, desc: str = "DIP") -> _Pass:
    """One DIP optimisation from a fresh network (seeded).

    ``rule``: "fixed" (result = output at ``keep_step``, default the last step), "oracle" (best PSNR),
    "wmv" (windowed variance) or "holdout" (lowest loss on the ``validation`` pixels (rows, cols, values),
    which ``weight`` must leave out). The result is the moving average of the outputs when ``ema`` > 0.
    """
    settings, dev = pb.settings, pb.dev
    hc, wc = pb.canvas
    oy, ox, oh, ow = pb.crop
    use_cuda = dev.type == "cuda"
    amp_dtype, use_scaler = dip_precision(pb.precision, dev, settings)
    with torch.random.fork_rng(devices=[]):  # weights and code come from the CPU generator: same on any device
        torch.manual_seed(pb.seed)
        net = build_skipnet(pb.net_cfg)
        gen = torch.Generator().manual_seed(pb.seed)
        z = torch.rand((1, pb.net_cfg.input_channels, hc, wc), generator=gen) * settings.input_scale
    net = net.to(dev).train()
    memory_format = (torch.channels_last if settings.channels_last and (use_cuda or amp_dtype is not None)
                     else torch.contiguous_format)
    net = net.to(memory_format=memory_format)
    z = z.to(dev).contiguous(memory_format=memory_format)
    perturb_gen = torch.Generator(device=dev).manual_seed(pb.seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    scaler = _grad_scaler(use_scaler)
    weight_sum = float(weight.sum())

    stopper = None
    if rule == "wmv":
        stopper = WindowedVarianceStopper(settings.wmv)
    elif rule == "holdout":
        stopper = ValidationStopper(settings.holdout.patience, settings.holdout.min_steps)
    # The windowed variance at step t describes the outputs of steps t-W+1..t; the result is the saved output
    # nearest the window's centre. Outputs are saved every ``every`` steps, so at most W/every+1 are held.
    window = settings.wmv.window
    every = max(1, window // 10)
    snapshots: deque[tuple[int, torch.Tensor]] = deque()
    ema: torch.Tensor | None = None
    chosen: torch.Tensor | None = None
    chosen_step = -1
    fired_at: int | None = None
    best_psnr, best_step, best_out = -math.inf, -1, None
    losses: list[float] = []
    psnrs: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    step = -1
    current = None
    try:
        for step in range(max_steps):
            inp = z
            if settings.input_noise_std > 0:
                noise = torch.randn(z.shape, generator=perturb_gen, device=dev)
                inp = z + settings.input_noise_std * noise.contiguous(memory_format=memory_format)
            opt.zero_grad(set_to_none=True)
            ctx = torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with ctx:
                out = net(inp)
            out = out.float()
            pred = out if pb.down is None else pb.down(out)
            loss = torch.sum(weight * (pred - pb.data) ** 2) / weight_sum
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

            with torch.no_grad():
                crop = out[0, 0, oy:oy + oh, ox:ox + ow].detach()
                if settings.ema > 0:
                    ema = crop.clone() if ema is None else ema.mul_(settings.ema).add_(crop, alpha=1 - settings.ema)
                    current = ema
                else:
                    current = crop
                loss_value = float(loss)
                losses.append(loss_value)
                p = None
                if pb.truth is not None:
                    p = psnr(current, pb.truth, pb.data_range)
                    psnrs.append(p)
                    if p > best_psnr:
                        best_psnr, best_step = p, step
                        if rule == "oracle":
                            best_out = current.clone()
                if keep_step is not None and step == keep_step:
                    chosen, chosen_step = current.clone(), step
                if rule == "holdout" and fired_at is None:
                    rows, cols, values = validation
                    fired = stopper.update(float(torch.mean((current[rows, cols] - values) ** 2)))
                    if stopper.improved:
                        chosen, chosen_step = current.clone(), step
                    if fired:
                        fired_at = step
                elif rule == "wmv" and fired_at is None:
                    if step % every == 0:
                        snapshots.append((step, current.clone()))
                        while snapshots and snapshots[0][0] <= step - window:
                            snapshots.popleft()
                    fired = stopper.update(crop)
                    if stopper.improved:
                        centre = step - (window - 1) / 2
                        chosen_step, chosen = min(snapshots, key=lambda item: abs(item[0] - centre))
                    if fired:
                        fired_at = step
                        snapshots.clear()
                if fired_at is not None and not observe_only:
                    break
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == max_steps - 1:
                    post = {"loss": f"{loss_value:.3g}"}
                    if p is not None:
                        post["PSNR"] = f"{p:.2f}"
                    bar.set_postfix(post, refresh=False)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    steps_run = step + 1
    if rule == "oracle":
        result, result_step = best_out, best_step
    elif chosen is not None:
        result, result_step = chosen, chosen_step
    else:  # fixed rule, or an automatic rule with fewer steps than it needs: the last output
        result, result_step = current, steps_run - 1
    return _Pass(result=result, result_step=int(result_step), steps_run=steps_run, elapsed=elapsed, losses=losses,
                 psnrs=psnrs, best_psnr=best_psnr, best_step=best_step, fired_at=fired_at,
                 criterion_best_step=None if stopper is None else stopper.best_step,
                 criterion_history=None if stopper is None else stopper.variance_history,
                 parameters=count_parameters(net),
                 amp=False if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
                 precision=describe_precision(amp_dtype))


def fit_dip(target: np.ndarray, net_cfg: SkipNetConfig, settings: DipSettings, *, task: str = "denoise",
            mask: np.ndarray | None = None, scale: int | None = None, truth: np.ndarray | None = None,
            seed: int = 0, device: str | torch.device | None = None, progress: bool = False,
            desc: str = "DIP", keep_history: bool = False, observe_only: bool = False,
            precision: str | None = "auto") -> DipRun:
    """Fit DIP to ``target`` (float32 H x W, normalised units) and return the restored image.

    ``mask`` (inpaint): same shape, nonzero = known pixel. ``scale`` (sr): 2 or 4; the result is
    (H*scale, W*scale). ``truth`` (optional, the result's shape and units) gives a PSNR per step, and is
    required by the ``oracle`` stopping rule. The same ``seed`` on the same device gives the same result.
    ``observe_only`` (benchmarks): the automatic rule picks its result but the run goes on to ``max_steps``,
    so the oracle figures cover the whole run. ``precision``: "auto", "fp32" or "bf16" (see the module docstring
    and :func:`dip_precision`).

    The automatic stop (``settings.stop == "auto"``) uses ``settings.auto_rule``: "holdout" (the default; see
    :mod:`dip_baseline.stopping`) runs a first pass with held-out pixels to find the step, then (``refit``) a
    second pass, from the same seed on all pixels, to that step; "wmv" (and "holdout" for super-resolution or
    images too small to hold pixels out) runs the windowed-variance rule in one pass.
    """
    target, mask, scale, truth = _check_inputs(target, task, mask, scale, truth)
    if settings.stop == "oracle" and truth is None:
        raise InputError("the oracle stopping rule needs a truth image")
    dev = pick_device(device)
    dip_precision(precision, dev, settings)  # a bad name fails before any work
    h, w = target.shape
    oh, ow = h * scale, w * scale
    hc, wc, oy, ox = _canvas(net_cfg, h, w, scale)
    ly, lx = oy // scale, ox // scale  # offsets on the data canvas

    # Data canvas (the resolution of the data term) with the image in the middle; weight 0 outside it.
    data = np.zeros((hc // scale, wc // scale), np.float32)
    weight = np.zeros_like(data)
    data[ly:ly + h, lx:lx + w] = target
    weight[ly:ly + h, lx:lx + w] = 1.0 if mask is None else mask
    pb = _Problem(net_cfg=net_cfg, settings=settings, dev=dev, data=torch.from_numpy(data)[None, None].to(dev),
                  crop=(oy, ox, oh, ow), canvas=(hc, wc),
                  down=LanczosDownsampler(scale).to(dev) if task == "sr" else None,
                  truth=None if truth is None else torch.from_numpy(truth).to(dev),
                  data_range=None if truth is None else (float(truth.max() - truth.min()) or 1.0), seed=int(seed),
                  precision=precision)
    weight_t = torch.from_numpy(weight)[None, None].to(dev)

    rule = settings.stop if settings.stop != "auto" else settings.auto_rule
    centres = None
    if rule == "holdout":
        if task != "sr":
            known = np.ones((h, w), bool) if mask is None else mask > 0
            centres, held = holdout_pixels(known, settings.holdout, seed=int(seed))
        if centres is None or len(centres) < MIN_HOLDOUT_PIXELS:
            rule, centres = "wmv", None  # nothing to hold out: fall back to the variance rule
    first = None
    if rule == "holdout":
        w1 = weight.copy()
        w1[ly:ly + h, lx:lx + w][held] = 0.0
        validation = (torch.from_numpy(centres[:, 0]).to(dev), torch.from_numpy(centres[:, 1]).to(dev),
                      torch.from_numpy(target[centres[:, 0], centres[:, 1]]).to(dev))
        first = _optimise(pb, torch.from_numpy(w1)[None, None].to(dev), rule="holdout",
                          max_steps=settings.max_steps, validation=validation, observe_only=observe_only,
                          progress=progress, desc=f"{desc} (pass 1: find the step)")
        if settings.holdout.refit:
            stop_at = first.result_step
            final = _optimise(pb, weight_t, rule="fixed", keep_step=stop_at,
                              max_steps=settings.max_steps if observe_only else stop_at + 1,
                              progress=progress, desc=f"{desc} (pass 2)")
        else:
            final, first = first, None
    else:
        final = _optimise(pb, weight_t, rule=rule, max_steps=settings.max_steps, observe_only=observe_only,
                          progress=progress, desc=desc)
    output = final.result.float().cpu().numpy().astype(np.float32, copy=True)
    decider = first if first is not None else final
    two_pass = first is not None
    steps_run = final.steps_run + (first.steps_run if first is not None else 0)
    elapsed = final.elapsed + (first.elapsed if first is not None else 0.0)
    record = {
        "task": task,
        "scale": scale if task == "sr" else None,
        "stop": settings.stop,
        "auto_rule": rule if settings.stop == "auto" else None,
        "steps_run": steps_run,
        "stop_step": final.result_step,
        "auto_stop_fired": (decider.fired_at is not None) if settings.stop == "auto" else None,
        "auto_stop_fired_at": decider.fired_at,
        "auto_criterion_best_step": decider.criterion_best_step,
        "holdout_pixels": None if centres is None else int(len(centres)),
        "first_pass_steps": first.steps_run if two_pass else None,
        "time_s": round(elapsed, 3),
        "s_per_step": round(elapsed / max(steps_run, 1), 5),
        "final_loss": final.losses[-1] if final.losses else None,
        "seed": int(seed),
        "device": str(dev),
        "amp": final.amp,
        "precision": final.precision,
        "canvas": [hc, wc],
        "parameters": final.parameters,
        "network": net_cfg.to_dict(),
        "settings": settings.to_dict(),
    }
    if pb.truth is not None:
        record["psnr_of_result"] = psnr(final.result, pb.truth, pb.data_range)
        record["oracle_best_psnr"] = final.best_psnr
        record["oracle_best_step"] = final.best_step
        record["psnr_note"] = "oracle figures use the truth image (benchmarks only)"
    return DipRun(output=output, record=record,
                  loss_history=np.asarray(final.losses, np.float64),
                  psnr_history=np.asarray(final.psnrs, np.float64) if pb.truth is not None else None,
                  variance_history=decider.criterion_history if keep_history else None)
