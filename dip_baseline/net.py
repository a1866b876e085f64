"""The encoder-decoder "skip" network of Deep Image Prior (Ulyanov et al., CVPR 2018).

The network maps a fixed random code ``z`` of shape (1, C_in, H, W) to an image of shape (1, 1, H, W).
Each of the ``depth`` levels has a downsampling block (two convolutions, the first one downsampling by 2),
an optional skip branch (one convolution, ``skip_channels[i]`` filters, 0 disables it) concatenated with the
upsampled deeper result, and an upsampling block (one convolution, optionally followed by a 1x1 one). All
convolutions pad by reflection (or zeros) so the spatial size only changes by the factor-2 resampling; the
input height and width must therefore be multiples of :attr:`SkipNet.multiple` (``2 ** depth``) and large
enough that the deepest level is wider than the largest kernel's padding (:meth:`SkipNetConfig.min_size`).

Everything that seed 002 varies is a field of :class:`SkipNetConfig`: filters per level, skip filters, kernel
sizes, activation (LeakyReLU, ReLU, Swish, Mish), downsampling (strided convolution, average or max pooling),
upsampling (bilinear, nearest), the number of input noise channels and the padding. Batch normalisation follows
the reference implementation; it is always used in training mode (statistics of the one image being fitted).
The output is linear by default: intensities are physical and normalised per micrograph without clipping, so
a sigmoid (the reference implementation's choice, ``output="sigmoid"``) would clip the brightest columns.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, Field, model_validator
from torch import nn

from stem_denoise.common.config import Config, plain_input
from stem_denoise.common.errors import ConfigError

ACTIVATIONS = ("leaky_relu", "relu", "swish", "mish")
DOWNSAMPLES = ("stride", "avg", "max")
UPSAMPLES = ("bilinear", "nearest")
PADS = ("reflection", "zero")
OUTPUTS = ("linear", "sigmoid")


def _odd(k: int) -> int:
    if k % 2 == 0:
        raise ValueError(f"must be odd, got {k}")
    return k


_Kernels = tuple[Annotated[int, Field(ge=1), AfterValidator(_odd)], ...] | int
_LEVEL_FIELDS = ("up_channels", "skip_channels", "down_kernel", "up_kernel", "skip_kernel")


class SkipNetConfig(Config):
    """Architecture of the DIP skip network (all sizes in pixels or filters).

    ``down_channels``, ``up_channels``, ``skip_channels`` and the kernel sizes are given per level, from the
    full-resolution level down; a single int is used for every level (the config holds the per-level tuple).
    ``depth`` is the length of ``down_channels``; ``up_channels`` None means the same as ``down_channels``.
    """

    down_channels: tuple[Annotated[int, Field(ge=1)], ...] = (128, 128, 128, 128, 128)
    up_channels: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    skip_channels: tuple[Annotated[int, Field(ge=0)], ...] | int = 4
    down_kernel: _Kernels = 3
    up_kernel: _Kernels = 3
    skip_kernel: _Kernels = 1
    activation: Literal[ACTIVATIONS] = "leaky_relu"
    leaky_slope: float = Field(0.2, ge=0.0, lt=1.0)
    downsample: Literal[DOWNSAMPLES] = "stride"
    upsample: Literal[UPSAMPLES] = "bilinear"
    input_channels: int = Field(32, ge=1)
    output_channels: int = Field(1, ge=1)
    pad: Literal[PADS] = "reflection"
    need_1x1_up: bool = True
    bias: bool = True
    output: Literal[OUTPUTS] = "linear"

    @model_validator(mode="before")
    @classmethod
    def _per_level(cls, data: Any) -> Any:
        """Broadcast a single int to every level; every per-level tuple must have one entry per level."""
        if not isinstance(data, dict):
            return data
        data = {k: plain_input(v) for k, v in data.items()}
        down = data.get("down_channels", cls.model_fields["down_channels"].default)
        if not isinstance(down, tuple):
            raise ValueError(f"down_channels must list the filters of each level, got {down!r}")
        depth = len(down)
        if not 1 <= depth <= 8:
            raise ValueError(f"the skip network needs 1 to 8 levels, got {depth}")
        if data.get("up_channels") is None:
            data["up_channels"] = down
        for name in _LEVEL_FIELDS:
            value = data.get(name, cls.model_fields[name].default)
            if isinstance(value, bool) or not isinstance(value, (int, tuple)):
                raise ValueError(f"{name} must be an int or a list of ints, got {value!r}")
            if isinstance(value, int):
                value = (value,) * depth
            if len(value) != depth:
                raise ValueError(f"{name} must have {depth} entries (one per level), got {list(value)}")
            data[name] = value
        return data

    @property
    def depth(self) -> int:
        return len(self.down_channels)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this (2 ** depth)."""
        return 2 ** self.depth

    def min_size(self) -> int:
        """Smallest allowed input side: the deepest level must be wider than the largest padding."""
        kmax = max(max(self.down_kernel), max(self.up_kernel), max(self.skip_kernel))
        return self.multiple * max(2, kmax // 2 + 1)

    def canvas_size(self, n: int) -> int:
        """Smallest allowed input side that is >= ``n``."""
        m = self.multiple
        return max(self.min_size(), m * math.ceil(n / m))

    def replace(self, **changes) -> "SkipNetConfig":
        """A copy with ``changes``; per-level fields that are uniform follow a new depth."""
        new_down = changes.get("down_channels")
        if new_down is not None and len(tuple(new_down)) != self.depth:
            if "up_channels" not in changes:
                same = self.up_channels == self.down_channels
                changes["up_channels"] = None if same else self._uniform("up_channels")
            for name in ("skip_channels", "down_kernel", "up_kernel", "skip_kernel"):
                if name not in changes:
                    changes[name] = self._uniform(name)
        return super().replace(**changes)

    def _uniform(self, name: str) -> int:
        values = set(getattr(self, name))
        if len(values) != 1:
            raise ConfigError(f"changing the depth: give {name} for the new levels too")
        return values.pop()


def _activation(cfg: SkipNetConfig) -> nn.Module:
    if cfg.activation == "leaky_relu":
        return nn.LeakyReLU(cfg.leaky_slope)
    if cfg.activation == "relu":
        return nn.ReLU()
    if cfg.activation == "swish":
        return nn.SiLU()
    return nn.Mish()


def _conv(cfg: SkipNetConfig, cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
    """Padded convolution; ``stride`` 2 downsamples with the configured method."""
    layers: list[nn.Module] = []
    p = k // 2
    conv_stride = stride if cfg.downsample == "stride" else 1
    if p:
        layers.append(nn.ReflectionPad2d(p) if cfg.pad == "reflection" else nn.ZeroPad2d(p))
    layers.append(nn.Conv2d(cin, cout, k, stride=conv_stride, bias=cfg.bias))
    if stride != 1 and cfg.downsample != "stride":
        layers.append(nn.AvgPool2d(2) if cfg.downsample == "avg" else nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Level(nn.Module):
    """One level: skip branch and deeper branch, concatenated, then the upsampling convolutions."""

    def __init__(self, cfg: SkipNetConfig, i: int, cin: int, deeper: nn.Module | None):
        super().__init__()
        down, up, skip = cfg.down_channels[i], cfg.up_channels[i], cfg.skip_channels[i]
        self.skip = None
        if skip:
            self.skip = nn.Sequential(_conv(cfg, cin, skip, cfg.skip_kernel[i]), nn.BatchNorm2d(skip),
                                      _activation(cfg))
        self.down = nn.Sequential(
            _conv(cfg, cin, down, cfg.down_kernel[i], stride=2), nn.BatchNorm2d(down), _activation(cfg),
            _conv(cfg, down, down, cfg.down_kernel[i]), nn.BatchNorm2d(down), _activation(cfg))
        self.deeper = deeper
        k = down if deeper is None else cfg.up_channels[i + 1]
        mode = cfg.upsample
        self.upsample = nn.Upsample(scale_factor=2, mode=mode, **({"align_corners": False}
                                                                  if mode == "bilinear" else {}))
        merged = skip + k
        layers: list[nn.Module] = [nn.BatchNorm2d(merged), _conv(cfg, merged, up, cfg.up_kernel[i]),
                                   nn.BatchNorm2d(up), _activation(cfg)]
        if cfg.need_1x1_up:
            layers += [_conv(cfg, up, up, 1), nn.BatchNorm2d(up), _activation(cfg)]
        self.up = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        if self.deeper is not None:
            y = self.deeper(y)
        y = self.upsample(y)
        if self.skip is not None:
            y = torch.cat([self.skip(x), y], dim=1)
        return self.up(y)


class SkipNet(nn.Module):
    """DIP skip network; input (B, input_channels, H, W) with H, W multiples of ``multiple``."""

    def __init__(self, cfg: SkipNetConfig):
        super().__init__()
        self.cfg = cfg
        deeper: nn.Module | None = None
        for i in reversed(range(cfg.depth)):
            cin = cfg.input_channels if i == 0 else cfg.down_channels[i - 1]
            deeper = _Level(cfg, i, cin, deeper)
        self.body = deeper
        self.head = nn.Conv2d(cfg.up_channels[0], cfg.output_channels, 1, bias=cfg.bias)

    @property
    def multiple(self) -> int:
        return self.cfg.multiple

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, w = z.shape[-2:]
        m, lo = self.cfg.multiple, self.cfg.min_size()
        if h % m or w % m or h < lo or w < lo:
            raise ValueError(f"skip network input must be multiples of {m} and at least {lo} px; got {h}x{w}")
        y = self.body(z)
        # The 1x1 head runs in float32 even under autocast, so the image is not quantised to half precision.
        with torch.autocast(device_type=y.device.type, enabled=False):
            y = self.head(y.float())
        return torch.sigmoid(y) if self.cfg.output == "sigmoid" else y


def build_skipnet(cfg: SkipNetConfig) -> SkipNet:
    """Build a freshly initialised :class:`SkipNet` (initialisation uses torch's global RNG)."""
    return SkipNet(cfg)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(cfg: SkipNetConfig, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass on a ``height`` x ``width`` canvas (convolutions only).

    A machine-independent cost measure: a training step (forward and backward) costs about three times this.
    """
    net = build_skipnet(cfg)
    total = 0

    def hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
        total += output.numel() * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, cfg.input_channels, cfg.canvas_size(height), cfg.canvas_size(width)))
    finally:
        for h in handles:
            h.remove()
    return total
