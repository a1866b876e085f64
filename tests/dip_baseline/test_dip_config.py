"""DIP configs: network, optimisation settings, stopping rules and presets give one-line errors naming the key."""
import json

import pytest

from dip_baseline.net import SkipNetConfig
from dip_baseline.presets import PRESETS, DipPreset, DipSettings, get_preset
from dip_baseline.stopping import HoldoutConfig, WMVConfig
from stem_denoise.common.errors import ConfigError


@pytest.mark.parametrize("cls,bad,expected", [
    (SkipNetConfig, {"down_channels": 4}, "down_channels must list the filters of each level, got 4"),
    (SkipNetConfig, {"down_channels": (4, 4), "skip_channels": (1, 2, 3)},
     "skip_channels must have 2 entries (one per level), got [1, 2, 3]"),
    (SkipNetConfig, {"down_channels": (4, 0)}, "down_channels[1] must be >= 1, got 0"),
    (SkipNetConfig, {"down_kernel": 4}, "down_kernel[0] must be odd, got 4"),
    (SkipNetConfig, {"activation": "tanh"}, "activation: expected one of 'leaky_relu', 'relu', 'swish' or 'mish'"),
    (SkipNetConfig, {"leaky_slope": 1.0}, "leaky_slope must be < 1.0, got 1.0"),
    (SkipNetConfig, {"filters": 3}, "unknown key 'filters'; known keys: down_channels,"),
    (DipSettings, {"lr": 0.0}, "lr must be > 0.0, got 0.0"),
    (DipSettings, {"max_steps": 10.0}, "max_steps: expected an integer, got float 10.0"),
    (DipSettings, {"stop": "never"}, "stop: expected one of 'auto', 'fixed' or 'oracle', got 'never'"),
    (DipSettings, {"holdout": {"block": [2, 3]}}, "holdout.block must be two odd sizes >= 1, got [2, 3]"),
    (DipSettings, {"wmv": {"window": 1}}, "wmv.window must be >= 2, got 1"),
    (DipSettings, {"wmv": {"windows": 5}}, "wmv: unknown key 'windows'; known keys: window, patience, min_steps"),
    (WMVConfig, {"patience": 0}, "patience must be >= 1, got 0"),
    (HoldoutConfig, {"spacing": 3}, "spacing must exceed the held-out block size, got 3"),
    (DipPreset, {"name": "x", "net": {}, "settings": {}, "extra": 1}, "unknown key 'extra'"),
    (DipPreset, {"name": "x", "net": {}}, "settings: missing"),
])
def test_bad_settings_give_one_line_naming_the_key(cls, bad, expected):
    for make in (lambda: cls(**bad), lambda: cls.from_dict(bad)):
        with pytest.raises(ConfigError) as info:
            make()
        assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_settings_are_immutable_and_replace_checks():
    s = get_preset("light").settings
    with pytest.raises(AttributeError):
        s.lr = 1.0
    assert s.replace(max_steps=10).max_steps == 10 and s.max_steps == 3000
    with pytest.raises(ConfigError, match="^max_steps must be >= 1, got 0$"):
        s.replace(max_steps=0)
    assert DipSettings(holdout={"block": [1, 5], "spacing": 8}).holdout.block == (1, 5)


def test_presets_round_trip_through_json():
    for preset in PRESETS.values():
        again = DipPreset.from_dict(json.loads(json.dumps(preset.to_dict())))
        assert again == preset and isinstance(again.net.down_channels, tuple)
    assert set(DipSettings.model_json_schema()["properties"]) == set(DipSettings.model_fields)
