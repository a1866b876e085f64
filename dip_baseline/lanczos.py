"""Lanczos downsampling by an integer factor, as a fixed strided convolution.

The super-resolution data term of DIP compares ``d(x)`` with the low-resolution micrograph, where ``d`` is
this operator. Low-resolution pixel ``k`` covers high-resolution pixels ``k*s .. k*s+s-1`` (pixel-centre
alignment, the "phase 0.5" of the reference implementation), so its centre sits at high-resolution coordinate
``k*s + (s-1)/2``. The 1-D kernel samples the Lanczos window ``L(t) = sinc(t) sinc(t/a)`` (``|t| < a``) at the
high-resolution taps, with ``t`` measured in low-resolution pixels, and is normalised to sum 1, so a constant
image stays constant. The 2-D kernel is the outer product; borders are extended by reflection.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stem_denoise.common.errors import InputError


def lanczos_kernel_1d(scale: int, support: int = 3) -> np.ndarray:
    """1-D Lanczos-``support`` taps (float64, sum 1) for downsampling by the integer ``scale``.

    The kernel has ``2 * support * scale`` taps, symmetric about its centre.
    """
    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise InputError(f"the downsampling factor must be a positive integer, got {scale!r}")
    if support < 1:
        raise InputError(f"the Lanczos support must be >= 1, got {support!r}")
    n = 2 * support * scale
    centre = (n - 1) / 2.0
    t = (np.arange(n) - centre) / scale  # distance from the centre in low-resolution pixels
    taps = np.sinc(t) * np.sinc(t / support)
    taps[np.abs(t) >= support] = 0.0
    return taps / taps.sum()


def lanczos_kernel_2d(scale: int, support: int = 3) -> np.ndarray:
    """Separable 2-D Lanczos kernel (float64, sum 1) of side ``2 * support * scale``."""
    k = lanczos_kernel_1d(scale, support)
    return np.outer(k, k)


class LanczosDownsampler(nn.Module):
    """Fixed (non-trainable) Lanczos downsampling: (B, C, H*s, W*s) -> (B, C, H, W), C channels independent."""

    def __init__(self, scale: int, support: int = 3):
        super().__init__()
        self.scale = int(scale)
        kernel = torch.from_numpy(lanczos_kernel_2d(self.scale, support).astype(np.float32))
        self.register_buffer("kernel", kernel[None, None], persistent=False)
        n = kernel.shape[-1]
        self.pad = (n - self.scale) // 2  # n - s is even: n = 2*a*s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.scale
        if h % s or w % s:
            raise ValueError(f"image size {h}x{w} is not a multiple of the factor {s}")
        y = x.reshape(b * c, 1, h, w)
        p = self.pad
        mode = "reflect" if p < h and p < w else "replicate"
        y = F.pad(y, (p, p, p, p), mode=mode)
        y = F.conv2d(y, self.kernel.to(dtype=y.dtype), stride=s)
        return y.reshape(b, c, h // s, w // s)


def lanczos_downsample(image: np.ndarray, scale: int, support: int = 3) -> np.ndarray:
    """Downsample a 2-D image (any units) by the integer ``scale``; its sides must be multiples of ``scale``.

    Returns float32 of shape ``(H // scale, W // scale)`` in the image's units.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {image.shape}")
    if image.shape[0] % scale or image.shape[1] % scale:
        raise InputError(f"image size {image.shape} is not a multiple of the factor {scale}")
    with torch.no_grad():
        out = LanczosDownsampler(scale, support)(torch.from_numpy(image)[None, None])
    return out[0, 0].numpy()
