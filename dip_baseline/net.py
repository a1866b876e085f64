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

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from stem_denoise.common.errors import ConfigError

ACTIVATIONS = ("leaky_relu", "relu", "swish", "mish")
DOWNSAMPLES = ("stride", "avg", "max")
UPSAMPLES = ("bilinear", "nearest")
PADS = ("reflection", "zero")
OUTPUTS = ("linear", "sigmoid")


def _as_levels(value, depth: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to ``depth`` levels or check a sequence has ``depth`` entries."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an int or a list of ints, not {value!r}")
    if isinstance(value, int):
        return (value,) * depth
    try:
        values = tuple(value)
    except TypeError as exc:
        raise ConfigError(f"{name} must be an int or a list of ints, not {value!r}") from exc
    if len(values) != depth or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{name} must have {depth} integer entries (one per level), got {value!r}")
    return values


@dataclass(frozen=True)
class SkipNetConfig:
    """Architecture of the DIP skip network (all sizes in pixels or filters).

    ``down_channels``, ``up_channels``, ``skip_channels`` and the kernel sizes are given per level, from the
    full-resolution level down; a single int is used for every level. ``depth`` defaults to the length of
    ``down_channels``.
    """

    down_channels: tuple[int, ...] = (128, 128, 128, 128, 128)
    up_channels: tuple[int, ...] | None = None  # None: same as down_channels
    skip_channels: tuple[int, ...] | int = 4
    down_kernel: tuple[int, ...] | int = 3
    up_kernel: tuple[int, ...] | int = 3
    skip_kernel: tuple[int, ...] | int = 1
    activation: str = "leaky_relu"
    leaky_slope: float = 0.2
    downsample: str = "stride"
    upsample: str = "bilinear"
    input_channels: int = 32
    output_channels: int = 1
    pad: str = "reflection"
    need_1x1_up: bool = True
    bias: bool = True
    output: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.down_channels, (int, str)) or not hasattr(self.down_channels, "__len__"):
            raise ConfigError(f"down_channels must list the filters of each level, got {self.down_channels!r}")
        down = _as_levels(self.down_channels, len(self.down_channels), "down_channels")
        depth = len(down)
        if depth < 1 or depth > 8:
            raise ConfigError(f"the skip network needs 1 to 8 levels, got {depth}")
        up = down if self.up_channels is None else _as_levels(self.up_channels, depth, "up_channels")
        skip = _as_levels(self.skip_channels, depth, "skip_channels")
        kd = _as_levels(self.down_kernel, depth, "down_kernel")
        ku = _as_levels(self.up_kernel, depth, "up_kernel")
        ks = _as_levels(self.skip_kernel, depth, "skip_kernel")
        for name, vals, lo in (("down_channels", down, 1), ("up_channels", up, 1), ("skip_channels", skip, 0)):
            if any(v < lo for v in vals):
                raise ConfigError(f"{name} entries must be >= {lo}, got {vals}")
        for name, vals in (("down_kernel", kd), ("up_kernel", ku), ("skip_kernel", ks)):
            if any(v < 1 or v % 2 == 0 for v in vals):
                raise ConfigError(f"{name} entries must be odd and >= 1, got {vals}")
        for name, value, allowed in (("activation", self.activation, ACTIVATIONS),
                                     ("downsample", self.downsample, DOWNSAMPLES),
                                     ("upsample", self.upsample, UPSAMPLES), ("pad", self.pad, PADS),
                                     ("output", self.output, OUTPUTS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.input_channels < 1 or self.output_channels < 1:
            raise ConfigError("input_channels and output_channels must be >= 1")
        if not 0.0 <= float(self.leaky_slope) < 1.0:
            raise ConfigError(f"leaky_slope must be in [0, 1), got {self.leaky_slope}")
        object.__setattr__(self, "down_channels", down)
        object.__setattr__(self, "up_channels", up)
        object.__setattr__(self, "skip_channels", skip)
        object.__setattr__(self, "down_kernel", kd)
        object.__setattr__(self, "up_kernel", ku)
        object.__setattr__(self, "skip_kernel", ks)

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

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "SkipNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown skip-network settings: {', '.join(sorted(unknown))}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})

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
        return dataclasses.replace(self, **changes)

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
