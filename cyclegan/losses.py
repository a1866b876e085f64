"""CycleGAN losses and the image pool of past fakes.

All images are (B, 1, H, W) tensors in normalised micrograph units; losses are computed in float32.

* :func:`lsgan_loss`: least-squares GAN (real -> 1, fake -> 0).
* :func:`cycle_l1`, :func:`identity_l1`: plain mean absolute errors (weights 10 and 0.5 * 10 in the loop).
* :class:`LowPass` and :func:`lowfreq_l1`: L1 between Gaussian-blurred input and output, sigma about one lattice
  period in the model's pixel space. A blur over one period averages the atom columns away and keeps what varies
  slowly -- dents (thinner regions), thickness gradients, scan-intensity drift -- so this term tells the
  generators to change the lattice and the noise but to keep the slow intensity map. The blur is a normalised
  convolution (zero padding divided by the blurred ones), so it is defined for any patch size, even smaller
  than the kernel, and has no border bias.
* :class:`ImagePool`: the buffer of 50 past generated images from which the discriminators are updated
  (Shrivastava et al.), with its own seeded random generator so that a resumed run draws the same numbers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def lsgan_loss(pred: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean of (pred - 1)^2 for real targets, pred^2 for fake ones."""
    pred = pred.float()
    target = torch.ones_like(pred) if real else torch.zeros_like(pred)
    return F.mse_loss(pred, target)


def cycle_l1(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Cycle-consistency loss: mean |F(G(x)) - x|."""
    return F.l1_loss(reconstructed.float(), original.float())


def identity_l1(mapped: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Identity loss: mean |G(y) - y| for y already in G's target domain."""
    return F.l1_loss(mapped.float(), original.float())


def gaussian_kernel1d(sigma_px: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian with standard deviation ``sigma_px`` pixels, radius ceil(truncate * sigma)."""
    if not sigma_px > 0:
        raise ValueError(f"sigma must be > 0, got {sigma_px}")
    radius = max(1, int(math.ceil(truncate * sigma_px)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return (k / k.sum()).float()


class LowPass(nn.Module):
    """Separable Gaussian blur (sigma in pixels) by normalised convolution; (B, 1, H, W) -> same shape."""

    def __init__(self, sigma_px: float) -> None:
        super().__init__()
        self.sigma_px = float(sigma_px)
        k = gaussian_kernel1d(self.sigma_px)
        self.register_buffer("kernel", k, persistent=False)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        r = self.kernel.numel() // 2
        k = self.kernel.to(x.dtype)
        x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
        return F.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        ones = torch.ones_like(x[:1, :1])
        return self._blur(x) / self._blur(ones)


def lowfreq_l1(output: torch.Tensor, inp: torch.Tensor, lowpass: LowPass) -> torch.Tensor:
    """Low-frequency consistency: mean |blur(output) - blur(input)|, blur sigma ~ one lattice period."""
    return F.l1_loss(lowpass(output), lowpass(inp))


class ImagePool:
    """Buffer of past generated images (default 50) used to update the discriminators.

    ``query(batch)`` returns a batch of the same size: while the pool fills, the new images; then, for each
    image, with probability 1/2 a stored image (replaced by the new one), otherwise the new image. Random draws
    come from the pool's own ``torch.Generator`` seeded by ``seed``; :meth:`state_dict` holds the images and that
    generator's state so a resumed run continues identically.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(int(seed))

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.detach()
        if self.size == 0:
            return batch
        out = []
        for img in batch:
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand((), generator=self.gen).item() < 0.5:
                idx = int(torch.randint(0, self.size, (), generator=self.gen).item())
                old = self.images[idx]
                self.images[idx] = img.clone()
                out.append(old.to(img.dtype))
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        images = torch.cat([im.cpu() for im in self.images], 0) if self.images else torch.zeros(0)
        return {"size": self.size, "images": images, "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.size = int(state["size"])
        imgs = state["images"]
        self.images = [imgs[i:i + 1].to(device) for i in range(imgs.shape[0])] if imgs.numel() else []
        self.gen.set_state(state["rng"])
