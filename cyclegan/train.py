"""CycleGAN training loop: one file, read top to bottom.

``train(cfg, data_dir, out_dir)`` trains G: A -> B (noisy micrograph -> clean lattice) and F: B -> A on the unpaired
patch folders ``DATA/trainA``, ``DATA/trainB`` and writes into ``out_dir``:

* ``config.json``: the resolved configuration;
* ``log.jsonl``: every logged number (through :class:`cyclegan.dashboard.Dashboard`, which also plots on visdom);
* ``last.pt`` (and ``previous.pt``): training checkpoints holding the four networks, both optimisers, both LR
  schedulers, the AMP scalers, every rank's image pools and RNG states, the step and the config -- written
  atomically, loaded with ``weights_only=True``;
* ``generator.pt``: the generator-only export that inference loads (:func:`cyclegan.checkpoint.load_generator`).

Losses per step (all L1 terms are means over pixels):
``L_G = lsgan(D_B(G(a)), 1) + lsgan(D_A(F(b)), 1) + lambda_cycle * (|F(G(a)) - a| + |G(F(b)) - b|)
+ lambda_cycle * lambda_identity * (|F(a) - a| + |G(b) - b|) + lambda_lowfreq * (|blur(G(a)) - blur(a)|
+ |blur(F(b)) - blur(b)|)`` and ``L_D = sum over domains of 0.5 * (lsgan(D(real), 1) + lsgan(D(pool(fake)), 0))``.
Adam (lr 2e-4, betas 0.5/0.999), LR constant for ``decay_start * steps`` steps then linear to zero.

The stochastic objective (the default profiles) trains G on pairs from an explicit noise layer instead
(:meth:`CycleGAN.step_stochastic`, :mod:`cyclegan.pairs`); on a data folder whose manifest holds the micrographs'
noise estimates it draws the noise around them and refines them adversarially (networks ``D_A`` and ``noise``).

Exact resume: the data order is a pure function of (seed, step, rank) (:mod:`cyclegan.data`); the image pools draw
from their own seeded generators; nothing else is random after initialisation. A run killed at any point and
resumed with ``resume=True`` therefore reaches the same weights, bit for bit on CPU, as one that never stopped.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) each of the four networks is wrapped in its own
DistributedDataParallel (nccl on GPU, gloo on CPU); every rank draws its own share of each step's samples and
keeps its own image pools and RNG streams; rank 0 alone logs and writes checkpoints (it gathers the other
ranks' pools and RNG states into the checkpoint). In the generator step the discriminators run unwrapped with
their parameters frozen, so only G and F synchronise gradients there; in the discriminator step only D_A and D_B
run (on detached fakes). Every parameter of a wrapped network is used in each of its backward passes, so
``find_unused_parameters`` stays off. The noise refiner (five scalars) is not wrapped: its gradients are averaged
across ranks by hand.

Mixed precision on CUDA: bf16 autocast where supported (fp16 with GradScaler otherwise) and channels_last;
float32 on CPU. The residual add of the generator and every loss are computed in float32.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from cyclegan import losses
from cyclegan.checkpoint import (
    FORMAT_VERSION,
    TRAIN_KIND,
    CheckpointWriteError,
    export_generator,
    safe_torch_load,
    save_checkpoint,
)
from cyclegan.config import RUNTIME_FIELDS, TrainConfig, config_differences, config_to_dict, write_config_record
from cyclegan.data import DataInfo, StepBatchSampler, UnpairedPatches, make_loader, read_data_info
from cyclegan.models import build_discriminator, build_generator
from stem_denoise.common.device import pick_device
from stem_denoise.common.errors import CheckpointError, ConfigError, InputError
from stem_denoise.common.precision import resolve_precision

LOSS_NAMES = ("loss_G", "gan_G", "gan_F", "cycle_A", "cycle_B", "idt_A", "idt_B", "lowfreq", "loss_D_A", "loss_D_B")
STOCHASTIC_LOSS_NAMES = ("loss_G", "clean", "gan_G", "lowfreq", "loss_D_B")
REFINE_LOSS_NAMES = ("gan_noise", "loss_D_A")  # logged as well by runs that refine the noise estimates
NETS = ("G", "F", "D_A", "D_B")


class TrainingDiverged(InputError):
    """A loss became NaN or infinite; training stopped before the optimiser step, checkpoints untouched."""


# ---------------------------------------------------------------------------------------------------------------
# Process set-up: distributed context, device, precision
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl with CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    initialized_here = False
    if world > 1 and not dist.is_initialized():
        use_cuda = device_pref != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        initialized_here = True
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, initialized_here)
    return DistContext()


def precision_for(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for float32, use GradScaler).

    "auto": bf16 on CUDA (fp16 + GradScaler where bf16 is missing) and on CPUs with native bf16 instructions
    (:func:`stem_denoise.common.precision.cpu_has_native_bf16`), float32 on other CPUs; "bf16" forces bf16 anywhere.
    """
    p = cfg.precision
    if device.type != "cuda":
        if p == "fp16":
            raise ConfigError("precision 'fp16' needs a CUDA device; use 'fp32' or 'bf16' on CPU")
        return resolve_precision(p, device), False
    if p == "fp32":
        return None, False
    if p == "auto":
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p == "bf16":
        return torch.bfloat16, False
    return torch.float16, True


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """LR multiplier: 1 for the first ``decay_start * total`` steps, then linear towards 0 at ``total``."""
    start = int(round(decay_start * total))
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(1, total - start))


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, DDP) else m


def _say(msg: str, ctx: DistContext) -> None:
    if ctx.is_main:
        tqdm.write(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# The model set: four networks, optimisers, schedulers, scalers, pools, and one training step
# ---------------------------------------------------------------------------------------------------------------


class CycleGAN:
    """Everything that changes during training, and the step that changes it."""

    def __init__(self, cfg: TrainConfig, info: DataInfo, device: torch.device, ctx: DistContext | None = None,
                 *, nets: dict[str, nn.Module] | None = None, has_a: bool = True,
                 noise_estimates: list | None = None) -> None:
        """``noise_estimates`` (:class:`cyclegan.pairs.EstimatedNoise`, the noise source of the pairs): with them,
        micrographs and ``cfg.refine_noise``, the stochastic objective refines them adversarially (networks
        ``D_A`` and ``noise``, a :class:`cyclegan.pairs.NoiseRefiner`; see :func:`_refines`)."""
        ctx = ctx or DistContext()
        self.cfg, self.info, self.device, self.ctx = cfg, info, device, ctx
        self.amp_dtype, use_scaler = precision_for(cfg, device)
        self.channels_last = cfg.channels_last and (device.type == "cuda" or self.amp_dtype is not None)
        self.stochastic = cfg.objective == "stochastic"
        # the stochastic objective judges G(a) only when there are micrographs (domain A) to judge
        self.adversarial = self.stochastic and has_a and cfg.lambda_adv > 0
        self.refine = nets is None and has_a and _refines(cfg, noise_estimates)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        if nets is None and self.stochastic:
            nets = {"G": build_generator(cfg.generator)}
            if self.adversarial:
                nets["D_B"] = build_discriminator(cfg.discriminator)
            if self.refine:
                from cyclegan.pairs import NoiseRefiner

                nets["D_A"] = build_discriminator(cfg.discriminator)
                reference = (float(np.mean([e.corr_row for e in noise_estimates])),
                             float(np.mean([e.corr_col for e in noise_estimates])))
                nets["noise"] = NoiseRefiner(reference)
        if nets is None:  # (the training benchmark passes other networks)
            nets = {
                "G": build_generator(cfg.generator), "F": build_generator(cfg.generator),
                "D_A": build_discriminator(cfg.discriminator), "D_B": build_discriminator(cfg.discriminator),
            }
        self.net_names = tuple(nets)
        self.loss_names = STOCHASTIC_LOSS_NAMES if self.stochastic else LOSS_NAMES
        if self.refine:
            self.loss_names = STOCHASTIC_LOSS_NAMES + REFINE_LOSS_NAMES
        self.nets: dict[str, nn.Module] = {}
        for name, net in nets.items():
            net = net.to(device)
            if self.channels_last:
                net = net.to(memory_format=torch.channels_last)
            if ctx.ddp and name != "noise":  # (five scalars: their gradients are averaged by hand)
                net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None,
                          gradient_as_bucket_view=True)
            self.nets[name] = net
        betas = (cfg.beta1, cfg.beta2)
        gen_params: list = [p for n in ("G", "F") if n in self.nets for p in self.nets[n].parameters()]
        if "noise" in self.nets:
            gen_params = [{"params": gen_params},
                          {"params": list(self.nets["noise"].parameters()), "lr": cfg.lr * cfg.noise_lr_factor}]
        dis_params = [p for n in ("D_A", "D_B") if n in self.nets for p in self.nets[n].parameters()]
        if not dis_params:  # keeps one code path for optimiser/scheduler state; never stepped
            dis_params = [nn.Parameter(torch.zeros(1, device=device))]
        self.opt_G = torch.optim.Adam(gen_params, lr=cfg.lr, betas=betas)
        self.opt_D = torch.optim.Adam(dis_params, lr=cfg.lr, betas=betas)
        total, start = cfg.steps, cfg.decay_start
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, lambda s: lr_factor(s, total, start))
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, lambda s: lr_factor(s, total, start))
        self.scaler_G = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.scaler_D = torch.amp.GradScaler(device.type, enabled=use_scaler)
        pool_seed = cfg.seed * 1_000_003 + 7919 * ctx.rank + 1
        self.pool_A = losses.ImagePool(cfg.pool_size, seed=pool_seed)
        self.pool_B = losses.ImagePool(cfg.pool_size, seed=pool_seed + 1)
        self.lowpass = losses.LowPass(cfg.lowfreq_sigma_periods * info.period_px).to(device)

    def raw(self, name: str) -> nn.Module:
        return _unwrap(self.nets[name])

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _clip_G(self) -> float:
        """Limit the global norm of G's gradient to ``cfg.grad_clip`` (after unscaling an fp16 GradScaler's
        factor); returns the norm before clipping. Under DDP the gradients are already averaged here."""
        self.scaler_G.unscale_(self.opt_G)
        params = [p for p in self.nets["G"].parameters() if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))

    def step_stochastic(self, noisy: torch.Tensor, clean: torch.Tensor, real_A: torch.Tensor | None = None,
                        real_B: torch.Tensor | None = None, *, soft: list | None = None, visuals: bool = False
                        ) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
        """One update of the stochastic objective.

        ``noisy = F(b)`` (fresh noise, scale in the loop) and ``clean = b`` come from :mod:`cyclegan.pairs`; the
        clean cycle ``|G(F(b)) - b|`` (weight ``lambda_clean``; a ``noise.clean_frac`` share of the pairs is
        noise-free, which is the identity term ``G(b) = b``) is supervised by construction. With micrographs
        (``real_A``), ``G(a)`` is also judged by D_B against clean patches ``real_B`` (weight ``lambda_adv``) and
        its low-pass must equal the micrograph's (``lambda_lowfreq``): this is where the noisy side acts, only
        through a low-pass, so G gains nothing by hiding noise.

        Noise refinement (runs built with ``noise_estimates``; ``soft``: the batch's
        :class:`cyclegan.pairs.SoftSample` list): D_A learns ``real_A`` (centre crop) against the refiner's
        differentiable noisy crops ``F~(b)`` (through an image pool) and the refiner's corrections learn from
        ``lambda_noise_adv * lsgan(D_A(F~(b)), 1)``, and from nothing else: ``noisy`` was made by the Poisson layer
        with the corrections as plain numbers, so G's clean loss does not reach them.
        """
        cfg = self.cfg
        G = self.nets["G"]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        n = noisy.shape[0]
        judge = real_A is not None and self.adversarial
        refine = self.refine and real_A is not None and soft is not None
        self.opt_G.zero_grad(set_to_none=True)
        self.opt_D.zero_grad(set_to_none=True)
        D_B, D_A = self.nets.get("D_B"), self.nets.get("D_A")
        for D in (D_B, D_A):
            if D is not None:
                for p in D.parameters():
                    p.requires_grad_(False)
        # A noise-level input (generator.noise_input): each pair's own level, the std of F(b) - b at the model's
        # scale (0 for the noise-free pairs); the micrographs' patches get the batch's median level, since their
        # pairs are drawn around their own noise estimates (noise_source "estimated").
        lv = lv_a = None
        if _unwrap(G).cfg.noise_input:
            lv = (noisy - clean).flatten(1).float().std(dim=1)
            lv_a = lv.median().expand(real_A.shape[0]) if judge else None
        with self._autocast():
            if judge and real_A.shape[-2:] == noisy.shape[-2:]:
                out = G(torch.cat([noisy, real_A]).contiguous(memory_format=fmt),
                        level=None if lv is None else torch.cat([lv, lv_a]))
                denoised, fake_B = out[:n], out[n:]
            else:
                denoised = G(noisy.contiguous(memory_format=fmt), level=lv)
                fake_B = G(real_A.contiguous(memory_format=fmt), level=lv_a) if judge else None
        clean_loss = losses.cycle_l1(denoised, clean)
        zero = torch.zeros((), device=self.device)
        gan_G, lowfreq, loss_D_B, gan_noise, loss_D_A = zero, zero, zero, zero, zero
        if fake_B is not None:
            with self._autocast():
                gan_G = losses.lsgan_loss(_unwrap(D_B)(fake_B), True)
            if cfg.lambda_lowfreq > 0:
                lowfreq = losses.lowfreq_l1(fake_B, real_A, self.lowpass)
        fake_A = None
        if refine:
            fake_A = self.nets["noise"](soft)  # float32, differentiable in the refiner's corrections only
            with self._autocast():
                gan_noise = losses.lsgan_loss(_unwrap(D_A)(fake_A.contiguous(memory_format=fmt)), True)
        loss_G = (cfg.lambda_clean * clean_loss + cfg.lambda_adv * gan_G + cfg.lambda_lowfreq * lowfreq
                  + cfg.lambda_noise_adv * gan_noise)
        self.scaler_G.scale(loss_G).backward()
        if refine and self.ctx.ddp:
            for p in self.nets["noise"].parameters():
                dist.all_reduce(p.grad)
                p.grad /= self.ctx.world_size
        for D in (D_B, D_A):
            if D is not None:
                for p in D.parameters():
                    p.requires_grad_(True)
        if refine:
            pooled_A = self.pool_A.query(fake_A.detach().float())
            side = pooled_A.shape[-1]
            k = (real_A.shape[-1] - side) // 2
            real = real_A[..., k:k + side, k:k + side]
            with self._autocast():
                pred = D_A(torch.cat([real, pooled_A.to(real.dtype)]).contiguous(memory_format=fmt))
            m = real.shape[0]
            loss_D_A = 0.5 * (losses.lsgan_loss(pred[:m], True) + losses.lsgan_loss(pred[m:], False))
            self.scaler_D.scale(loss_D_A).backward()
        if fake_B is not None:
            pooled = self.pool_B.query(fake_B.detach().float())
            with self._autocast():
                pred = D_B(torch.cat([real_B, pooled.to(real_B.dtype)]).contiguous(memory_format=fmt))
            m = real_B.shape[0]
            loss_D_B = 0.5 * (losses.lsgan_loss(pred[:m], True) + losses.lsgan_loss(pred[m:], False))
            self.scaler_D.scale(loss_D_B).backward()
        terms = [loss_G, clean_loss, gan_G, lowfreq, loss_D_B] + ([gan_noise, loss_D_A] if self.refine else [])
        vec = torch.stack(terms).detach().float()
        if self.ctx.ddp:
            dist.all_reduce(vec)
            vec /= self.ctx.world_size
        values = dict(zip(self.loss_names, vec.tolist()))
        if self.refine:
            values.update(self.raw("noise").summary())
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise TrainingDiverged(", ".join(f"{k}={v}" for k, v in bad.items()))
        if cfg.grad_clip is not None:
            values["grad_norm_G"] = self._clip_G()
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        if fake_B is not None or refine:
            self.scaler_D.step(self.opt_D)
            self.scaler_D.update()
        self.sched_G.step()
        if D_B is not None or D_A is not None:
            self.sched_D.step()
        panels = None
        if visuals:
            views = [("F(B)", noisy), ("G(F(B))", denoised), ("B", clean)]
            if fake_A is not None:
                views.insert(1, ("F~(B)", fake_A))
            if fake_B is not None:
                views = [("A", real_A), ("G(A)", fake_B)] + views
            panels = {k: v[0, 0].detach().float().cpu().numpy() for k, v in views}
        return values, panels

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor, *, visuals: bool = False
             ) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
        """One generator + discriminator update on a batch; returns the losses (averaged over ranks) and, if asked,
        the display panels. A non-finite loss raises TrainingDiverged before any weight changes."""
        cfg = self.cfg
        G, F, D_A, D_B = (self.nets[n] for n in NETS)
        if self.channels_last:
            real_A = real_A.contiguous(memory_format=torch.channels_last)
            real_B = real_B.contiguous(memory_format=torch.channels_last)
        n = real_A.shape[0]
        self.opt_G.zero_grad(set_to_none=True)
        self.opt_D.zero_grad(set_to_none=True)

        # Generator step: D_A and D_B frozen and unwrapped (no DDP gradient sync for them here).
        d_params = [p for m in (D_A, D_B) for p in m.parameters()]
        for p in d_params:
            p.requires_grad_(False)
        with self._autocast():
            fake_B, idt_B = G(torch.cat([real_A, real_B])).split(n)  # G(a), G(b)
            fake_A, idt_A = F(torch.cat([real_B, real_A])).split(n)  # F(b), F(a)
            rec_A = F(fake_B)
            rec_B = G(fake_A)
            gan_G = losses.lsgan_loss(_unwrap(D_B)(fake_B), True)
            gan_F = losses.lsgan_loss(_unwrap(D_A)(fake_A), True)
        cycle_A = losses.cycle_l1(rec_A, real_A)
        cycle_B = losses.cycle_l1(rec_B, real_B)
        idt_A = losses.identity_l1(idt_A, real_A)
        idt_B_loss = losses.identity_l1(idt_B, real_B)
        if cfg.lambda_lowfreq > 0:
            lowfreq = (losses.lowfreq_l1(fake_B, real_A, self.lowpass)
                       + losses.lowfreq_l1(fake_A, real_B, self.lowpass))
        else:
            lowfreq = torch.zeros((), device=self.device)
        lc = cfg.lambda_cycle
        loss_G = (gan_G + gan_F + lc * (cycle_A + cycle_B) + lc * cfg.lambda_identity * (idt_A + idt_B_loss)
                  + cfg.lambda_lowfreq * lowfreq)
        self.scaler_G.scale(loss_G).backward()
        for p in d_params:
            p.requires_grad_(True)

        # Discriminator step on real images and pooled (detached) fakes.
        pooled_B = self.pool_B.query(fake_B.detach().float())
        pooled_A = self.pool_A.query(fake_A.detach().float())
        with self._autocast():
            pred_B = D_B(torch.cat([real_B, pooled_B.to(real_B.dtype)]))
            pred_A = D_A(torch.cat([real_A, pooled_A.to(real_A.dtype)]))
        loss_D_B = 0.5 * (losses.lsgan_loss(pred_B[:n], True) + losses.lsgan_loss(pred_B[n:], False))
        loss_D_A = 0.5 * (losses.lsgan_loss(pred_A[:n], True) + losses.lsgan_loss(pred_A[n:], False))
        self.scaler_D.scale(loss_D_A + loss_D_B).backward()

        # One collective gives both the logged means and an agreement on finiteness across ranks.
        vec = torch.stack([loss_G, gan_G, gan_F, cycle_A, cycle_B, idt_A, idt_B_loss, lowfreq, loss_D_A,
                           loss_D_B]).detach().float()
        if self.ctx.ddp:
            dist.all_reduce(vec)
            vec /= self.ctx.world_size
        values = dict(zip(LOSS_NAMES, vec.tolist()))
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise TrainingDiverged(", ".join(f"{k}={v}" for k, v in bad.items()))
        if cfg.grad_clip is not None:
            values["grad_norm_G"] = self._clip_G()
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        self.sched_G.step()
        self.sched_D.step()

        panels = None
        if visuals:
            panels = {k: v[0, 0].detach().float().cpu().numpy() for k, v in (
                ("A", real_A), ("G(A)", fake_B), ("F(G(A))", rec_A),
                ("B", real_B), ("F(B)", fake_A), ("G(F(B))", rec_B))}
        return values, panels

    # -- checkpoint state ------------------------------------------------------------------------------------------

    def shared_state(self) -> dict:
        """State identical on every rank: weights, optimisers, schedulers, scalers."""
        return {
            "models": {n: self.raw(n).state_dict() for n in self.net_names},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "schedulers": {"G": self.sched_G.state_dict(), "D": self.sched_D.state_dict()},
            "scalers": {"G": self.scaler_G.state_dict(), "D": self.scaler_D.state_dict()},
        }

    def rank_state(self) -> dict:
        """State of this rank alone: image pools and RNG states (on CPU, plain types)."""
        return {"pools": {"A": self.pool_A.state_dict(), "B": self.pool_B.state_dict()}, "rng": get_rng_state()}

    def load_shared_state(self, state: dict) -> None:
        try:
            if set(state["models"]) != set(self.net_names):
                raise KeyError(f"networks {sorted(state['models'])} vs {sorted(self.net_names)}")
            for n in self.net_names:
                self.raw(n).load_state_dict(state["models"][n], strict=True)
            self.opt_G.load_state_dict(state["optimizers"]["G"])
            self.opt_D.load_state_dict(state["optimizers"]["D"])
            self.sched_G.load_state_dict(state["schedulers"]["G"])
            self.sched_D.load_state_dict(state["schedulers"]["D"])
            self.scaler_G.load_state_dict(state["scalers"]["G"])
            self.scaler_D.load_state_dict(state["scalers"]["D"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint does not fit this model set: {str(exc).splitlines()[0][:200]}"
                                  ) from None

    def load_rank_state(self, state: dict) -> None:
        self.pool_A.load_state_dict(state["pools"]["A"], self.device)
        self.pool_B.load_state_dict(state["pools"]["B"], self.device)
        set_rng_state(state["rng"])

    def digests(self) -> dict[str, str]:
        """SHA-256 of each network's weights (to compare runs and ranks bit for bit)."""
        return {n: state_digest(self.raw(n).state_dict()) for n in self.net_names}


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and exact bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for k, v in state_dict.items():
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def get_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain types (safe for weights_only loading)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npk = state["numpy"]
    np.random.set_state(("MT19937", npk["key"].numpy().astype(np.uint32), npk["pos"], npk["has_gauss"],
                         npk["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def _check_resume_config(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """A resumed run may change only runtime settings; another architecture is a CheckpointError. Keys a run of an
    earlier version did not record take their field defaults (which are that version's behaviour)."""
    saved = {**config_to_dict(TrainConfig()), **saved}
    current = config_to_dict(cfg)
    arch = [d for d in config_differences({k: saved.get(k) for k in ("generator", "discriminator")},
                                          {k: current[k] for k in ("generator", "discriminator")})]
    if arch:
        raise CheckpointError(f"{path} holds another architecture than the config ({'; '.join(arch)}); "
                              f"use the run's own config.json or a new --out folder")
    other = [d for d in config_differences({k: v for k, v in saved.items() if k not in RUNTIME_FIELDS},
                                           {k: v for k, v in current.items() if k not in RUNTIME_FIELDS})]
    if other:
        raise ConfigError(f"resuming {path} with changed training settings would not continue the same run "
                          f"({'; '.join(other)}); only {', '.join(sorted(RUNTIME_FIELDS))} may change")


def _find_checkpoint(out_dir: Path) -> Path | None:
    for name in ("last.pt", "previous.pt"):
        if (out_dir / name).exists():
            return out_dir / name
    return None


def _open_dashboard(cfg: TrainConfig, out_dir: Path, ctx: DistContext):
    from cyclegan.dashboard import Dashboard

    d = cfg.dashboard
    return Dashboard(out_dir / "log.jsonl", enabled=d.enabled, server=d.server, port=d.port, env=d.env,
                     rank=ctx.rank)


def train(cfg: TrainConfig, data_dir: str | os.PathLike | None, out_dir: str | os.PathLike, *, resume: bool = False,
          dashboard: Any = None, progress: bool = True, init: str | os.PathLike | None = None,
          force_period: bool = False) -> dict:
    """Train a CycleGAN on ``data_dir/trainA`` vs ``data_dir/trainB``; write the run into ``out_dir``.

    ``resume=True`` continues from ``out_dir/last.pt`` (or ``previous.pt``; a fresh start if neither exists);
    without it, a folder that already holds a checkpoint is refused. ``dashboard``: an object with
    ``scalars(step, dict)``/``images(step, dict)`` (default: a :class:`cyclegan.dashboard.Dashboard` on
    ``out_dir/log.jsonl``). ``init``: a generator export (e.g. the shipped ``stem_denoise/models/default.pt``) whose
    weights start G in a fresh run (fine-tuning); its architecture must equal ``cfg.generator``. The data folder's
    period (manifest or config) is checked against the lattice measured on its patches (more than 15 % apart is refused
    unless ``force_period``). A run that fails before its first checkpoint removes the config.json and log.jsonl
    it wrote and the folders it made, so a plain rerun can start. Returns a summary dict (final step, last losses,
    images/s, paths, weight digests). Raises ConfigError/CheckpointError/InputError for problems the user can fix and
    TrainingDiverged when a loss is not finite.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError("cfg must be a TrainConfig")
    ctx = setup_distributed(cfg.device)
    out = Path(out_dir)
    before = _run_folder_state(out)
    try:
        return _train(cfg, Path(data_dir) if data_dir is not None else None, out, ctx, resume=resume,
                      dashboard=dashboard, progress=progress, init=init, force_period=force_period)
    except BaseException:
        if ctx.is_main:
            _undo_failed_start(out, before)
        raise
    finally:
        if ctx.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


_CHECKPOINTS = ("last.pt", "previous.pt", "generator.pt")


def _run_folder_state(out_dir: Path) -> tuple[list[Path], set[str]]:
    """(folders missing above and including ``out_dir``, names already in it) before a run starts."""
    missing = []
    probe = out_dir
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    names = set(os.listdir(out_dir)) if out_dir.is_dir() and not missing else set()
    return missing, names


def _undo_failed_start(out_dir: Path, before: tuple[list[Path], set[str]]) -> None:
    """After a run that failed before writing any checkpoint: remove the files it wrote into the run folder
    (config.json, log.jsonl, ...: they would block a plain rerun) and the folders it created, if empty. A run that
    saved a checkpoint is left as it is: it can be resumed."""
    missing, names = before
    if not out_dir.is_dir():
        return
    if any((out_dir / n).exists() and n not in names for n in _CHECKPOINTS):
        return
    for f in out_dir.iterdir():  # config.json, its schema, log.jsonl, ...: all written by this run
        if f.name not in names and (f.is_file() or f.is_symlink()):
            with contextlib.suppress(OSError):
                f.unlink()
    for d in missing:  # innermost first
        with contextlib.suppress(OSError):
            d.rmdir()


def _check_manifest_period(info: DataInfo, data_dir: Path, ctx: DistContext, *, force: bool) -> str | None:
    """Compare the data folder's lattice period (manifest.json or config, model px) with the lattice measured on a
    few of its patches (trainB, else trainA): more than 15 % apart is refused unless ``force``. Returns a note to
    show once the run has started: where no patch can be measured (the given period is used), or where ``force``
    let a disagreeing period through."""
    from cyclegan.data import list_patches, read_patch
    from data_prep.lattice import measure_lattice

    files: list[Path] = []
    for sub in ("trainB", "trainA"):
        with contextlib.suppress(InputError):
            files = list_patches(data_dir / sub)
            break
    if not files:
        return None
    picks = [files[int(k)] for k in np.unique(np.linspace(0, len(files) - 1, min(8, len(files))).round())]
    measured = []
    for f in picks:
        with contextlib.suppress(InputError, ValueError):
            measured.append(float(measure_lattice(read_patch(f)).period_px))
    source = data_dir / "manifest.json"
    if not measured:
        return (f"note: the lattice could not be measured on the patches of {data_dir}; using period_px "
                f"{info.period_px:g} px from {source.name} as given")
    m = float(np.median(measured))
    off = abs(info.period_px / m - 1.0)
    if off <= PERIOD_TOLERANCE:
        return None
    if force:
        return (f"note: period_px {info.period_px:g} px of {source} differs from the {m:.2f} px measured on its "
                f"patches by {100 * off:.0f} %; used as given (--force-period)")
    raise InputError(f"{source}: period_px {info.period_px:g} px disagrees with the lattice period {m:.2f} px measured "
                     f"on its patches by {100 * off:.0f} % (more than {100 * PERIOD_TOLERANCE:.0f} %); fix the "
                     f"manifest (or the config's period_px), or pass --force-period to use it anyway")


PERIOD_TOLERANCE = 0.15


def _train(cfg: TrainConfig, data_dir: Path | None, out_dir: Path, ctx: DistContext, *, resume: bool, dashboard: Any,
           progress: bool, init: str | os.PathLike | None = None, force_period: bool = False) -> dict:
    device = pick_device(cfg.device, ctx.local_rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: let cuDNN pick its fastest kernels
    stochastic = cfg.objective == "stochastic"
    if data_dir is not None and cfg.working_scale != "cell":
        raise ConfigError("working_scale 'sites' is built for training without --data (synthetic scenes only): "
                          "prepare_data cuts a data folder's patches at the cell scale")
    if data_dir is None:
        if not stochastic or cfg.clean_source != "synthetic":
            raise ConfigError("training without --data needs the stochastic objective with clean_source "
                              "'synthetic'")
        info = DataInfo(patch_px=int(cfg.patch_px or 64), atoms_per_patch=float(cfg.atoms_per_patch or 5.0),
                        period_px=float(cfg.period_px or (cfg.patch_px or 64) / (cfg.atoms_per_patch or 5.0)))
        dataset = None
    else:
        info = read_data_info(data_dir, patch_px=cfg.patch_px, atoms_per_patch=cfg.atoms_per_patch,
                              period_px=cfg.period_px)
    estimates = None
    if stochastic and cfg.clean_source == "trainB" and data_dir is not None:
        estimates = _noise_estimates(cfg, data_dir, ctx)
    if data_dir is not None:
        # a discriminator that judges the noise needs the micrographs' scan rows kept as rows
        dataset = UnpairedPatches(data_dir / "trainA", data_dir / "trainB", crop_px=cfg.crop_px,
                                  scan_aligned_a=_refines(cfg, estimates))
    noise_note = None  # said once every check on the run folder has passed
    if data_dir is not None and stochastic and cfg.clean_source == "trainB":
        if estimates:
            doses = sorted(e.peak_dose for e in estimates)
            noise_note = (f"noise drawn around the estimates of {len(estimates)} micrograph(s) (dose "
                          f"{doses[0]:.3g}-{doses[-1]:.3g} counts at a column peak)")
        elif cfg.noise_source == "auto":
            noise_note = "no noise estimates in the data folder's manifest: noise drawn from the config's ranges"

    # Run folder and checkpoint to resume from.
    ckpt_path = _find_checkpoint(out_dir) if out_dir.is_dir() else None
    if ckpt_path is not None and not resume:
        raise ConfigError(f"{out_dir} already holds a training checkpoint ({ckpt_path.name}); pass --resume to "
                          f"continue it or choose a new --out folder")
    if ckpt_path is None and not resume and out_dir.is_dir():
        earlier = [n for n in ("config.json", "log.jsonl", "generator.pt") if (out_dir / n).exists()]
        if earlier:
            raise ConfigError(f"{out_dir} holds files of an earlier run ({', '.join(earlier)}); choose a new --out "
                              f"folder")
    ckpt = None
    if ckpt_path is not None:
        ckpt = safe_torch_load(ckpt_path, kind=TRAIN_KIND)
        _check_resume_config(ckpt.get("config", {}), cfg, ckpt_path)
        if ckpt_path.name != "last.pt":
            _say(f"warning: {out_dir / 'last.pt'} is missing; resuming from {ckpt_path.name}", ctx)
    elif resume:
        _say(f"no checkpoint in {out_dir}; starting from step 0", ctx)
    period_note = _check_manifest_period(info, data_dir, ctx, force=force_period) if data_dir is not None else None
    if ctx.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create run folder {out_dir}: {exc.strerror or exc}") from None
        for stale in [*out_dir.glob(".last.pt.*.tmp"), *out_dir.glob(".generator.pt.*.tmp"),
                      *out_dir.glob(".config.json.*.tmp"), *out_dir.glob(".previous.pt.link")]:
            stale.unlink(missing_ok=True)  # left by a run killed while writing
    if ctx.ddp:
        dist.barrier()

    # Seeds, models, state.
    random.seed(cfg.seed + ctx.rank)
    np.random.seed((cfg.seed + ctx.rank) % 2**32)
    model = CycleGAN(cfg, info, device, ctx, has_a=dataset is not None, noise_estimates=estimates)
    refiner = model.raw("noise") if model.refine else None
    pairs = _pair_source(cfg, info, dataset, data_dir, ctx, estimates=estimates, refiner=refiner) if stochastic \
        else None
    torch.manual_seed(cfg.seed + 1 + ctx.rank)  # per-rank stream after the shared initialisation
    start_step = 0
    if init is not None and ckpt is None:
        load_init_generator(model.raw("G"), init, cfg)
        _say(f"generator initialised from {init}", ctx)
    if ckpt is not None:
        model.load_shared_state(ckpt)
        start_step = int(ckpt["step"])
        ranks = ckpt.get("ranks", [])
        if int(ckpt.get("world_size", 1)) == ctx.world_size and len(ranks) == ctx.world_size:
            model.load_rank_state(ranks[ctx.rank])
        else:
            _say(f"warning: checkpoint written by {ckpt.get('world_size')} process(es), resumed by "
                 f"{ctx.world_size}: data order continues, image pools and RNG streams restart", ctx)
        saved_data = ckpt.get("data", {})
        if dataset is not None and saved_data.get("digest") not in (None, dataset.digest()):
            _say(f"warning: the patch folders in {data_dir} changed since the checkpoint; the data order differs",
                 ctx)
        del ckpt
    if start_step >= cfg.steps:
        _say(f"checkpoint is at step {start_step} >= steps={cfg.steps}; nothing to train (raise --steps)", ctx)

    gen_info = {"patch_px": info.patch_px, "atoms_per_patch": info.atoms_per_patch, "period_px": info.period_px,
                "direction": "A2B", "lowfreq_sigma_px": model.lowpass.sigma_px, "objective": cfg.objective,
                "working_scale": cfg.working_scale}
    if ctx.is_main:
        try:
            write_config_record(cfg, out_dir)
        except OSError as exc:
            raise InputError(f"cannot write {out_dir / 'config.json'}: {exc.strerror or exc}") from None
    if period_note:
        _say(period_note, ctx)
    if noise_note:
        _say(noise_note, ctx)
    own_dashboard = dashboard is None and ctx.is_main
    if own_dashboard:
        dashboard = _open_dashboard(cfg, out_dir, ctx)
    if not ctx.is_main:
        dashboard = None

    def save(step: int) -> None:
        rank_states = [model.rank_state()]
        if ctx.ddp:
            gathered = [None] * ctx.world_size if ctx.is_main else None
            dist.gather_object(rank_states[0], gathered, dst=0)
            rank_states = gathered
        error = None
        if ctx.is_main:
            obj = {"kind": TRAIN_KIND, "version": FORMAT_VERSION, "step": step, "config": config_to_dict(cfg),
                   "world_size": ctx.world_size, "ranks": rank_states, "info": gen_info,
                   "data": ({"digest": dataset.digest(), "n_a": dataset.n_a, "n_b": dataset.n_b}
                            if dataset is not None else {"synthetic": True}),
                   "torch_version": str(torch.__version__), **model.shared_state()}
            try:
                save_checkpoint(out_dir / "last.pt", obj,
                                previous=out_dir / "previous.pt" if cfg.keep_previous else None)
                export_generator(out_dir / "generator.pt", model.raw("G"), cfg.generator, {**gen_info, "step": step})
            except CheckpointError as exc:
                error = str(exc)
        if ctx.ddp:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error:
            raise CheckpointWriteError(error)

    if dataset is not None:
        sampler = StepBatchSampler(dataset.n_a, dataset.n_b, batch_size=cfg.batch_size, seed=cfg.seed,
                                   start_step=start_step, total_steps=cfg.steps, rank=ctx.rank,
                                   world_size=ctx.world_size)
        loader = _batches(make_loader(dataset, sampler, num_workers=cfg.num_workers,
                                      pin_memory=device.type == "cuda"))
    else:
        loader = iter([{}] * max(0, cfg.steps - start_step))

    images_per_step = cfg.batch_size * ctx.world_size
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (progress and ctx.is_main))
    step, saved_step, values = start_step, start_step, {}
    t_start = t_log = time.perf_counter()
    log_from = start_step
    try:
        for batch in loader:
            real_A = batch["A"].to(device, non_blocking=True) if "A" in batch else None
            real_B = batch["B"].to(device, non_blocking=True) if "B" in batch else None
            want_panels = dashboard is not None and (step + 1) % cfg.image_every == 0
            try:
                if stochastic:
                    noisy, clean, soft = pairs(step, real_B)
                    values, panels = model.step_stochastic(noisy.to(device), clean.to(device), real_A, real_B,
                                                           soft=soft, visuals=want_panels)
                else:
                    values, panels = model.step(real_A, real_B, visuals=want_panels)
            except TrainingDiverged as exc:
                kept = (f"the last good checkpoint {out_dir / 'last.pt'} (step {saved_step}) is intact"
                        if saved_step > 0 or ckpt_path is not None else "no checkpoint had been written yet")
                raise TrainingDiverged(f"non-finite loss at step {step + 1} ({exc}); training stopped; {kept}; "
                                       f"try a lower lr or precision 'fp32'") from None
            step += 1
            bar.update(1)
            if ctx.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                ips = (step - log_from) * images_per_step / max(now - t_log, 1e-9)
                t_log, log_from = now, step
                record = {**values, "lr": model.opt_G.param_groups[0]["lr"], "images_per_s": ips}
                if stochastic:
                    bar.set_postfix(G=f"{values['loss_G']:.3f}", clean=f"{values['clean']:.4f}",
                                    img_s=f"{ips:.0f}", refresh=False)
                else:
                    bar.set_postfix(G=f"{values['loss_G']:.3f}",
                                    D=f"{values['loss_D_A'] + values['loss_D_B']:.3f}",
                                    cyc=f"{values['cycle_A']:.3f}", img_s=f"{ips:.0f}", refresh=False)
                if dashboard is not None:
                    dashboard.scalars(step, record)
            if panels is not None and dashboard is not None:
                dashboard.images(step, panels)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(step)
                saved_step = step
    finally:
        bar.close()
        if own_dashboard and dashboard is not None:
            dashboard.close()
    elapsed = time.perf_counter() - t_start
    return {
        "step": step, "steps": cfg.steps, "start_step": start_step, "run_dir": str(out_dir),
        "checkpoint": str(out_dir / "last.pt"), "generator": str(out_dir / "generator.pt"),
        "losses": values, "elapsed_s": elapsed,
        "images_per_s": (step - start_step) * images_per_step / max(elapsed, 1e-9),
        "digests": model.digests(), "rank": ctx.rank, "world_size": ctx.world_size, "device": str(device),
    }


def load_init_generator(generator: nn.Module, path: str | os.PathLike, cfg: TrainConfig) -> None:
    """Copy a generator export's weights into ``generator`` (fine-tuning); CheckpointError if the export's
    architecture differs from ``cfg.generator``."""
    from cyclegan.checkpoint import load_generator

    net, _info = load_generator(path)
    if net.cfg != cfg.generator:
        raise CheckpointError(f"{path} holds another generator ({net.cfg}) than the config ({cfg.generator}); "
                              f"use the same generator settings to fine-tune it")
    with torch.no_grad():
        generator.load_state_dict(net.state_dict(), strict=True)


def _refines(cfg: TrainConfig, estimates: list | None) -> bool:
    """Whether a run with micrographs refines the noise estimates: the stochastic objective with noise drawn around
    ``estimates``, ``refine_noise`` on and ``lambda_noise_adv > 0``."""
    return (cfg.objective == "stochastic" and cfg.clean_source == "trainB" and bool(estimates) and cfg.refine_noise
            and cfg.lambda_noise_adv > 0)


def _noise_estimates(cfg: TrainConfig, data_dir: Path, ctx: DistContext) -> list | None:
    """The training micrographs' noise models when ``cfg.noise_source`` resolves to "estimated", else None (the
    pairs then draw from ``cfg.noise``); ConfigError when "estimated" is asked for and the manifest has none."""
    from cyclegan.pairs import read_noise_estimates

    if cfg.noise_source == "ranges":
        return None
    estimates = read_noise_estimates(data_dir)
    if not estimates:
        if cfg.noise_source == "estimated":
            raise ConfigError(f"noise_source 'estimated' needs noise estimates in {data_dir / 'manifest.json'}; "
                              f"prepare the data again with scripts/prepare_data.py or use noise_source 'ranges'")
        return None
    return estimates


def _pair_source(cfg: TrainConfig, info: DataInfo, dataset, data_dir: Path | None, ctx: DistContext, *,
                 estimates: list | None = None, refiner: nn.Module | None = None):
    """``pairs(step, real_B) -> (noisy, clean, soft)``: model-scale batches of the stochastic objective, a pure
    function of (seed, step, rank) and the refiner's state: from a seeded bank of synthetic scenes (``clean_source``
    "synthetic") or from the clean patches ``real_B`` of the data folder ("trainB"), through the noise layer and the
    inference resampler. ``soft`` is None, or with a ``refiner`` the batch's inputs to its differentiable noise.

    trainB patches are in their micrograph's normalised units, so the pairs keep those units. Their noise comes
    from ``estimates`` (:func:`cyclegan.pairs.draw_estimated_noise`, at the chosen micrograph's own period, with the
    refiner's corrections) or, without them, from ``cfg.noise`` at a native period drawn from ``period_range``."""
    from cyclegan.pairs import (
        MARGIN_MODEL_PX,
        SoftSample,
        SyntheticPairs,
        draw_estimated_noise,
        draw_noise,
        log_uniform,
        native_crop,
        pair_from_crop,
        resample,
        step_generator,
    )
    from cyclegan.synth import SceneBank

    crop = int(cfg.crop_px or info.patch_px)
    jitter = cfg.scale_jitter
    if cfg.clean_source == "synthetic":
        _say(f"rendering {cfg.bank_size} synthetic scenes (periods {cfg.period_range[0]:g}-"
             f"{cfg.period_range[1]:g} px)", ctx)
        bank = SceneBank(cfg.bank_size, seed=cfg.seed, period_range=cfg.period_range, family=cfg.scene_family,
                         vacancy_max=cfg.vacancy_max)
        source = SyntheticPairs(bank, model_period=info.period_px, crop_px=crop, ranges=cfg.noise,
                                scale_jitter=jitter, scale_in_loop=cfg.scale_in_loop,
                                working_scale=cfg.working_scale)

        def pairs(step: int, real_B):
            x, y = source.batch(cfg.batch_size, step_generator(cfg.seed, step, ctx.rank))
            return x, y, None
        return pairs
    if dataset is None:
        raise ConfigError("clean_source 'trainB' needs a data folder")
    lo, hi = (float(v) for v in cfg.period_range)

    def pairs_b(step: int, real_B):
        gen = step_generator(cfg.seed, step, ctx.rank)
        gen_soft = step_generator(cfg.seed, step, ctx.rank, stream=1) if refiner is not None else None
        xs, ys, soft = [], [], []
        for b in real_B.detach().float().cpu():
            # the patch is at the model's scale; put it at a native period: its micrograph's, or drawn from a range
            if estimates:
                noise, est = draw_estimated_noise(gen, estimates, cfg.noise_spread, cfg.noise.clean_frac)
                native = est.period_px
            else:
                native = log_uniform(gen, lo, hi)
                noise = draw_noise(gen, cfg.noise)
            if not cfg.scale_in_loop:
                native = info.period_px
            n_nat = max(8, int(round(b.shape[-1] * native / info.period_px)))
            scene = resample(b[0], n_nat).numpy()
            side = b.shape[-1] - 2 * MARGIN_MODEL_PX
            clean_nat = native_crop(scene, native, info.period_px, side, gen,
                                    scale_jitter=jitter if cfg.scale_in_loop else 0.0)
            x, y = pair_from_crop(clean_nat, side, gen, refiner.refine(noise) if refiner is not None else noise,
                                  scale_in_loop=cfg.scale_in_loop, renormalise=False)
            xs.append(x)
            ys.append(y)
            if refiner is not None:
                at = clean_nat if cfg.scale_in_loop else resample(clean_nat, side + 2 * MARGIN_MODEL_PX)
                soft.append(SoftSample.draw(at, noise, side, gen_soft))
        return torch.stack(xs)[:, None], torch.stack(ys)[:, None], (soft if refiner is not None else None)
    return pairs_b


def _batches(loader):
    """Iterate the loader; an InputError from a worker process comes back as one clean line."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except InputError as exc:
            last = str(exc).strip().splitlines()[-1]
            raise InputError(last.split("InputError: ", 1)[-1]) from None
        yield batch
