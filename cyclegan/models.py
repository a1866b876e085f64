"""CycleGAN networks for single-channel STEM patches: a ResNet-style generator and a PatchGAN discriminator.

Both take ``(B, 1, H, W)`` float tensors in normalised micrograph units (the whole micrograph mapped to about
[0, 1] by robust percentiles, not clipped) and are sized for patches counted in atoms: the default patch is
64 px holding 5 x 5 atoms, i.e. 12.8 px per lattice period.

Design choices, and why:

* **No per-sample normalisation.** InstanceNorm/GroupNorm/LayerNorm compute statistics over the tile they see, so
  a tile and the same pixels inside a whole micrograph would be processed differently and tiles would show. The
  generator has no normalisation at all; it trains stably because every residual branch is scaled down
  (``res_scale``, as in EDSR super-resolution networks) and the output head starts at zero. The discriminator
  has no normalisation either (it never runs at inference; this keeps DDP free of SyncBatchNorm).
* **Residual output** ``out = x + g(x)`` (``residual_output=True``): the network starts as the identity, so
  column positions, dents and slow thickness gradients pass through unless the losses ask for a change; the
  network only has to learn the noise correction.
* **No transposed convolution.** Upsampling is a bilinear (or nearest) resize followed by a 3 x 3 convolution,
  which cannot produce checkerboard artefacts.
* **Modest receptive field.** One stride-2 stage and six residual blocks give a theoretical receptive field of
  about 67 px (~5 periods; see :func:`generator_receptive_field`), enough to use the local periodicity of the
  lattice, small enough that tiles with a ~32 px overlap reproduce whole-image inference, and far below the
  classic ResNet-9 (two stride-2 stages, nine blocks at 256 channels: ~250 px and ~25x the compute per pixel).
  Any H, W works: the input is reflect-padded (bottom/right) to a multiple of ``2 ** n_down`` and the output
  cropped back.
  Tiles whose offsets are multiples of ``size_multiple`` see the same stride grid as the whole image.
* **PatchGAN with a ~2.7-period receptive field.** ``n_layers=2`` gives 34 px patches (classic 70 px with
  ``n_layers=3`` would judge a whole 5 x 5-atom patch at once and learn to count atoms), enough to judge
  column shape, noise texture and the local lattice.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from stem_denoise.common.config import Config


class GeneratorConfig(Config):
    """Generator architecture. ``width`` = channels at full resolution (doubled at each of ``n_down`` stride-2
    stages), ``n_blocks`` residual blocks at the lowest resolution, ``res_scale`` multiplies each residual
    branch, ``residual_output`` makes the network predict a correction added to its input. ``noise_input`` adds
    a second input channel holding the noise level (std of the input's noise at the model's scale, normalised
    units), constant over the image: given per call (``forward(x, level)``) or set with ``set_noise_level``."""

    width: int = Field(32, ge=1, le=1024)
    n_blocks: int = Field(6, ge=0, le=64)
    n_down: int = Field(1, ge=0, le=4)
    res_scale: float = Field(0.2, gt=0.0, le=1.0)
    residual_output: bool = True
    upsample: Literal["bilinear", "nearest"] = "bilinear"
    padding: Literal["reflect", "zeros"] = "reflect"
    noise_input: bool = False


class DiscriminatorConfig(Config):
    """PatchGAN architecture: ``n_layers`` stride-2 4 x 4 convolutions starting at ``width`` channels (doubled
    each layer, capped at ``8 * width``), then two stride-1 4 x 4 convolutions to a map of real/fake scores."""

    width: int = Field(32, ge=1, le=1024)
    n_layers: int = Field(2, ge=1, le=6)


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding_mode: str = "zeros") -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, padding_mode=padding_mode)


class ResBlock(nn.Module):
    """``x + res_scale * conv(act(conv(x)))`` with no normalisation."""

    def __init__(self, channels: int, res_scale: float, padding_mode: str) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 3, padding_mode=padding_mode)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.conv2 = _conv(channels, channels, 3, padding_mode=padding_mode)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(self.act(self.conv1(x)))


class Upsample(nn.Module):
    """Resize by 2 then a 3 x 3 convolution (no transposed convolution, hence no checkerboard)."""

    def __init__(self, cin: int, cout: int, mode: str, padding_mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = _conv(cin, cout, 3, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class Generator(nn.Module):
    """ResNet-style image-to-image generator; see the module docstring for the design."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        pm = "reflect" if cfg.padding == "reflect" else "zeros"
        w = cfg.width
        self.size_multiple = 2 ** cfg.n_down
        self.stem = nn.Sequential(_conv(2 if cfg.noise_input else 1, w, 5, padding_mode=pm),
                                  nn.LeakyReLU(0.2, inplace=True))
        self.noise_level: float | None = None
        down, ch = [], w
        for _ in range(cfg.n_down):
            down += [_conv(ch, ch * 2, 3, stride=2, padding_mode=pm), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        self.down = nn.Sequential(*down)
        self.body = nn.Sequential(*[ResBlock(ch, cfg.res_scale, pm) for _ in range(cfg.n_blocks)])
        self.body_out = _conv(ch, ch, 3, padding_mode=pm)
        up = []
        for _ in range(cfg.n_down):
            up += [Upsample(ch, ch // 2, cfg.upsample, pm), nn.LeakyReLU(0.2, inplace=True)]
            ch //= 2
        self.up = nn.Sequential(*up)
        self.head = _conv(ch, 1, 5, padding_mode=pm)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        if self.cfg.residual_output:
            # Start as the identity: out = x + 0.
            nn.init.zeros_(self.head.weight)

    def set_noise_level(self, level: float | None) -> None:
        """The noise level a ``noise_input`` generator uses when ``forward`` is not given one (None: none)."""
        if level is not None and not (math.isfinite(float(level)) and float(level) >= 0):
            raise ValueError(f"noise level must be a finite number >= 0, got {level}")
        self.noise_level = None if level is None else float(level)

    def forward(self, x: torch.Tensor, level: torch.Tensor | float | None = None) -> torch.Tensor:
        """``x`` (B, 1, H, W); ``level`` (``noise_input`` generators only): a number or a (B,) tensor, the
        noise level of each input (default: the one set with ``set_noise_level``)."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"generator expects (B, 1, H, W), got {tuple(x.shape)}")
        if self.cfg.noise_input:
            if level is None:
                level = self.noise_level
            if level is None:
                raise ValueError("this generator takes the input's noise level: pass level= or call "
                                 "set_noise_level first")
            level = torch.as_tensor(level, dtype=x.dtype, device=x.device).reshape(-1)
            if level.numel() == 1:
                level = level.expand(x.shape[0])
            elif level.numel() != x.shape[0]:
                raise ValueError(f"{level.numel()} noise levels for a batch of {x.shape[0]}")
        h, w = x.shape[-2:]
        m = self.size_multiple
        # Pad bottom/right to a multiple of 2**n_down, and to at least 2 px at the lowest resolution (4 px at
        # full) so that every reflect-padded convolution is defined; cropped back below.
        ph = max(-(-h // m) * m, 2 * m, 4) - h
        pw = max(-(-w // m) * m, 2 * m, 4) - w
        xp = x
        if ph or pw:
            mode = "reflect" if (h > ph and w > pw) else "replicate"
            xp = F.pad(x, (0, pw, 0, ph), mode=mode)
        if self.cfg.noise_input:
            xp = torch.cat([xp, level.to(xp.dtype).reshape(-1, 1, 1, 1).expand(-1, 1, *xp.shape[-2:])], 1)
        feat = self.stem(xp)
        skip = feat
        feat = self.down(feat)
        feat = self.body_out(self.body(feat))
        feat = self.up(feat) + skip  # long skip at full resolution
        y = self.head(feat)
        if ph or pw:
            y = y[..., :h, :w]
        if self.cfg.residual_output:
            # The add happens in the input's precision (float32 under autocast too).
            return x + y.to(x.dtype)
        return y.to(x.dtype)


class Discriminator(nn.Module):
    """PatchGAN discriminator returning a (B, 1, h, w) map of least-squares real/fake scores."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        layers: list[nn.Module] = [nn.Conv2d(1, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        ch = w
        for i in range(1, cfg.n_layers):
            nxt = w * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            ch = nxt
        nxt = w * min(2 ** cfg.n_layers, 8)
        layers += [nn.Conv2d(ch, nxt, 4, stride=1, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(nxt, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_generator(cfg: GeneratorConfig) -> Generator:
    """Build the generator described by ``cfg`` (input and output (B, 1, H, W), any H, W)."""
    return Generator(cfg)


def build_discriminator(cfg: DiscriminatorConfig) -> Discriminator:
    """Build the PatchGAN discriminator described by ``cfg``."""
    return Discriminator(cfg)


def generator_receptive_field(cfg: GeneratorConfig) -> int:
    """Theoretical receptive field of the generator in input pixels (an upper bound on the effective one).

    Tiled inference needs an overlap of at least half of it on each side for a tile to reproduce the whole-image
    result; the effective receptive field of a trained network is smaller.
    """
    rf, jump = 5, 1  # stem 5 x 5
    for _ in range(cfg.n_down):
        rf += 2 * jump
        jump *= 2
    rf += 2 * jump * (2 * cfg.n_blocks + 1)  # residual blocks and body_out, 3 x 3 each
    for _ in range(cfg.n_down):
        rf += jump  # bilinear/nearest resize mixes neighbouring low-resolution pixels
        jump //= 2
        rf += 2 * jump  # 3 x 3 conv after the resize
    rf += 4  # head 5 x 5
    return rf


def discriminator_receptive_field(cfg: DiscriminatorConfig) -> int:
    """Receptive field of one PatchGAN score in input pixels."""
    rf = 1
    for stride in [1, 1] + [2] * cfg.n_layers:  # walk from the output back to the input
        rf = (rf - 1) * stride + 4
    return rf


class ReferenceResnetGenerator(nn.Module):
    """The classic CycleGAN ResNet generator (for the training benchmark only, never trained here).

    7 x 7 stem, two stride-2 convolutions, ``n_blocks`` residual blocks at 4 x ``width`` channels, two transposed
    convolutions, instance normalisation throughout and a tanh output -- the 256 px RGB reference design, given
    one channel.
    """

    def __init__(self, width: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c)  # noqa: E731
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(1, width, 7), norm(width), nn.ReLU(True)]
        ch = width
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        for _ in range(n_blocks):
            layers.append(_RefBlock(ch))
        for _ in range(2):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                       norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 1, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _RefBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(True),
                                   nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ReferencePatchDiscriminator(nn.Module):
    """The classic 70 x 70 PatchGAN (n_layers=3, 64 channels, instance norm), for the benchmark only."""

    def __init__(self, width: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(width * prev, width * mult, 4, 2, 1), nn.InstanceNorm2d(width * mult),
                       nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(width * prev, width * mult, 4, 1, 1), nn.InstanceNorm2d(width * mult),
                   nn.LeakyReLU(0.2, True), nn.Conv2d(width * mult, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
