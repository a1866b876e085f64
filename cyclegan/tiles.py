"""The network side of tiled inference: receptive field, tile plan and the batch function that runs the generator.

Tile geometry (model pixels). The generator's receptive field is measured (gradient of one output pixel with
respect to the input of a positive-weight copy; it reproduces :func:`cyclegan.models.generator_receptive_field`):
for the default generator it is 131 px, a radius of 65 px (67 px / 33 px for the classic profile's). Inner tile
edges get zero blending weight over ``margin`` = that radius rounded up to the generator's stride (68 px), so
every output pixel comes from a tile
that saw its whole neighbourhood and the tiled result equals the whole-image result to float rounding (measured:
PSNR > 150 dB between them). Where tiles overlap they therefore agree; an 8 px sin^2 ramp between the two margins
only hides rounding differences (bf16): ``overlap = 2 * margin + 8`` = 144 px for the default generator.
Tiles are 512 px: the overlap then costs (512 / 368)^2 = 1.94x extra compute for the default generator (1.38x
for the classic one's 76 px overlap);
on the CPU one tile per batch is fastest (a second 512 px tile only adds cache misses; ~0.3 GiB of activations),
on CUDA 16. Images smaller than a tile get one smaller tile instead of padding. Numbers: scripts/bench_infer.py.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from stem_denoise.common.errors import InputError
from stem_denoise.common.precision import autocast, describe_precision, resolve_precision

DEFAULT_TILE = 512  # model px
RAMP_PX = 8  # blending ramp beyond the two margins: tiles agree exactly there, the ramp only hides bf16 rounding


def measure_receptive_field(generator: nn.Module, *, start: int = 96, limit: int = 1024) -> int:
    """Receptive-field radius of ``generator``'s architecture in input px: how far an input change can reach.

    Measured on a copy whose weights are all set to small positive values (so that no path cancels and an
    identity-initialised head does not hide the body): the gradient of the centre output pixel with respect to the
    input is non-zero exactly where the architecture connects. The probe grows until that region stops short of
    its border. Exact for networks of convolutions, resizes and pointwise activations (e.g. 33 px for the default
    generator, whose theoretical receptive field is 131 px).
    """
    probe = copy.deepcopy(generator).to(device="cpu", dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
            p.copy_((torch.rand(p.shape, generator=gen) + 0.5) / fan_in)
    size = start
    while True:
        x = torch.rand((1, 1, size + 1, size + 1), generator=gen).requires_grad_(True)
        # a noise-level input is a constant channel: any level shows the same connections
        y = probe(x, 0.1) if getattr(getattr(probe, "cfg", None), "noise_input", False) else probe(x)
        c = size // 2
        y[0, 0, c, c].backward()
        nz = torch.nonzero(x.grad[0, 0] != 0)
        if len(nz) == 0:
            return 0
        radius = int((nz - c).abs().max())
        if radius < c - 2 or size >= limit:
            return radius
        size *= 2


_RF_CACHE: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class TilePlan:
    """Tile geometry in model pixels: see the module docstring for how it follows from the receptive field."""

    tile: int
    overlap: int
    margin: int
    align: int
    rf_radius: int

    def as_dict(self) -> dict:
        return dict(tile=self.tile, overlap=self.overlap, margin=self.margin, align=self.align,
                    rf_radius=self.rf_radius)


def _round_up(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def plan_tiles(generator: nn.Module, *, tile: int | None = None, overlap: int | None = None,
               device: torch.device | None = None, rf_radius: int | None = None) -> TilePlan:
    """Choose tile, overlap and margin (model px) for ``generator``; user values are checked, not trusted.

    margin = receptive-field radius rounded up to the generator's stride; overlap = 2 * margin + an 8 px ramp;
    tile = 512 (and at least twice the overlap). A user overlap below
    ``2 * margin + 1`` would let tile edges into the result and is refused.
    """
    align = int(getattr(generator, "size_multiple", 1) or 1)
    if rf_radius is None:
        rf_radius = _RF_CACHE.get(generator)
        if rf_radius is None:
            rf_radius = _RF_CACHE[generator] = measure_receptive_field(generator)
    radius = int(rf_radius)
    margin = _round_up(radius, align)
    min_overlap = 2 * margin + align
    if overlap is None:
        overlap = 2 * margin + _round_up(RAMP_PX, align)
    else:
        if overlap < min_overlap:
            raise InputError(
                f"overlap {overlap} px is too small for this generator: its receptive field reaches {radius} px, "
                f"so the overlap must be at least {min_overlap} px (model pixels)")
        overlap = _round_up(overlap, align)
    if tile is None:
        tile = max(DEFAULT_TILE, _round_up(2 * overlap + align, 32))
    else:
        if tile <= overlap:
            raise InputError(f"tile ({tile} px) must be larger than the overlap ({overlap} px)")
        tile = _round_up(tile, align)
    return TilePlan(tile=int(tile), overlap=int(overlap), margin=int(margin), align=align, rf_radius=radius)


_DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def make_tile_fn(generator: nn.Module, device: torch.device, *, tta: bool = False, precision: str | None = "auto",
                 channels_last: bool | None = None, noise_level: float | None = None
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap ``generator`` as a numpy batch function for :func:`stem_denoise.common.tiling.map_tiles`.

    The batch ``(B, h, w)`` float32 (normalised units) goes to ``device`` as ``(B, 1, h, w)`` in the channels_last
    layout; ``precision`` ("auto", "fp32" or "bf16", see :mod:`stem_denoise.common.precision`) decides whether it
    runs under bfloat16 autocast, on CUDA and on the CPU alike. The result is always float32. ``tta`` averages the
    outputs over the 8 dihedral transforms (rotations by 90 deg and flips), each undone before averaging. The
    function's ``precision`` attribute says what "auto" resolved to ("bf16" or "fp32"). ``noise_level``: the level
    handed to a ``noise_input`` generator with every tile (the generator itself is not changed).
    """
    dtype = resolve_precision(precision, device)
    generator.eval()
    if channels_last is None:
        channels_last = True  # faster on CUDA and with oneDNN on CPU
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    generator.to(device=device, memory_format=fmt)

    level = None if noise_level is None else float(noise_level)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=fmt)
        with autocast(device, dtype):
            return (generator(x) if level is None else generator(x, level=level)).float()

    def fn(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).unsqueeze(1)
            x = x.to(device, non_blocking=True)
            if not tta:
                y = run(x)
            else:
                y = torch.zeros_like(x)
                for k, flip in _DIHEDRAL:
                    t = torch.rot90(x, k, dims=(2, 3))
                    if flip:
                        t = torch.flip(t, dims=(3,))
                    o = run(t)
                    if flip:
                        o = torch.flip(o, dims=(3,))
                    y += torch.rot90(o, -k, dims=(2, 3))
                y /= len(_DIHEDRAL)
            return y[:, 0].cpu().numpy()

    fn.precision = describe_precision(dtype)
    return fn
