"""The skip network: every option of seed 002 builds and keeps the image size; bad settings are refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dip_baseline.net import SkipNetConfig, build_skipnet, count_parameters
from dip_baseline.presets import PRESETS, get_preset
from stem_denoise.common.errors import ConfigError


@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "swish", "mish"])
@pytest.mark.parametrize("downsample,upsample", [("stride", "bilinear"), ("avg", "nearest"), ("max", "bilinear")])
def test_every_option_keeps_the_size(activation, downsample, upsample):
    cfg = SkipNetConfig(down_channels=(4, 8), skip_channels=(2, 0), activation=activation, downsample=downsample,
                        upsample=upsample, input_channels=3, down_kernel=(3, 5), up_kernel=3, skip_kernel=1)
    net = build_skipnet(cfg)
    z = torch.rand(1, 3, 32, 48)
    y = net(z)
    assert y.shape == (1, 1, 32, 48)
    assert torch.isfinite(y).all()
    kinds = {type(m) for m in net.modules()}
    assert nn.ConvTranspose2d not in kinds
    if downsample == "avg":
        assert nn.AvgPool2d in kinds
    if downsample == "max":
        assert nn.MaxPool2d in kinds


def test_skip_channels_zero_removes_the_skip_branch():
    with_skip = build_skipnet(SkipNetConfig(down_channels=(4, 4), skip_channels=4, input_channels=2))
    without = build_skipnet(SkipNetConfig(down_channels=(4, 4), skip_channels=0, input_channels=2))
    assert count_parameters(without) < count_parameters(with_skip)
    assert without.body.skip is None and with_skip.body.skip is not None


def test_zero_padding_and_sigmoid_output():
    net = build_skipnet(SkipNetConfig(down_channels=(4,), pad="zero", output="sigmoid", input_channels=2))
    assert not any(isinstance(m, nn.ReflectionPad2d) for m in net.modules())
    y = net(torch.rand(1, 2, 16, 16) * 10).detach()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_presets_follow_the_studied_settings():
    u = get_preset("ulyanov").net
    assert u.down_channels == (128,) * 5 and u.skip_channels == (4,) * 5
    assert u.activation == "leaky_relu" and u.input_channels == 32
    assert u.downsample == "stride" and u.upsample == "bilinear" and u.pad == "reflection"
    m = get_preset("microscopy").net
    assert m.activation == "swish" and set(m.skip_channels) == {8}
    light = get_preset("light").net
    assert count_parameters(build_skipnet(light)) < count_parameters(build_skipnet(u)) / 5
    assert set(PRESETS) >= {"ulyanov", "microscopy", "light"}
    with pytest.raises(ConfigError, match="unknown DIP preset"):
        get_preset("nope")


def test_input_size_rules():
    cfg = SkipNetConfig(down_channels=(4, 4, 4), input_channels=1)
    assert cfg.multiple == 8 and cfg.min_size() == 16
    assert cfg.canvas_size(5) == 16 and cfg.canvas_size(17) == 24
    net = build_skipnet(cfg)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 1, 20, 24))


@pytest.mark.parametrize("bad", [
    dict(down_channels=4), dict(down_channels=()), dict(down_channels=(4, 4), skip_channels=(1, 2, 3)),
    dict(activation="tanh"), dict(downsample="lanczos"), dict(upsample="deconv"), dict(pad="circular"),
    dict(down_kernel=4), dict(input_channels=0), dict(down_channels=(4, -1)), dict(output="relu"),
])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        SkipNetConfig(**bad)


def test_round_trip_and_depth_change():
    cfg = SkipNetConfig(down_channels=(8, 8, 8), skip_channels=2, activation="mish")
    assert SkipNetConfig.from_dict(cfg.to_dict()) == cfg
    deeper = cfg.replace(down_channels=(8, 8, 8, 8))
    assert deeper.depth == 4 and deeper.skip_channels == (2,) * 4 and deeper.up_channels == (8,) * 4
    with pytest.raises(ConfigError, match="unknown"):
        SkipNetConfig.from_dict({"filters": 3})


def test_multiply_accumulates_are_counted_per_convolution():
    from dip_baseline.net import count_macs

    cfg = SkipNetConfig(down_channels=(4,), skip_channels=0, input_channels=2)
    # 16 x 16 input: strided 3x3 conv 2->4 and 3x3 conv 4->4 at 8 x 8, 3x3 conv 4->4 and 1x1 conv 4->4 at
    # 16 x 16, then the 1x1 head 4->1.
    expected = 64 * 4 * 18 + 64 * 4 * 36 + 256 * 4 * 36 + 256 * 4 * 4 + 256 * 1 * 4
    assert count_macs(cfg, 16, 16) == expected
    assert count_macs(get_preset("light").net, 96, 96) * 10 < count_macs(get_preset("ulyanov").net, 96, 96)


def test_output_layer_stays_float32_under_autocast():
    # On CUDA the network runs under autocast; the 1x1 output layer is kept in float32 so the image is not
    # quantised to half precision. Checked here with the CPU's bfloat16 autocast.
    net = build_skipnet(SkipNetConfig(down_channels=(4, 4), input_channels=2))
    z = torch.rand(1, 2, 16, 16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y = net(z)
        inner = net.body(z)
    assert inner.dtype == torch.bfloat16 and y.dtype == torch.float32
