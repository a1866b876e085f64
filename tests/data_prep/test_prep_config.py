"""Data preparation settings: one-line errors naming the key, the angle parser, the schema."""
import numpy as np
import pytest

from data_prep.patches import PrepConfig
from stem_denoise.common.errors import ConfigError


@pytest.mark.parametrize("bad,expected", [
    ({"atoms": 0}, "atoms must be >= 1, got 0"),
    ({"per_image": 2.5}, "per_image: expected an integer, got float 2.5"),
    ({"test_frac": 1.0}, "test_frac must be < 1.0, got 1.0"),
    ({"angle": "sideways"}, "angle must be 'auto' or a number of degrees, got 'sideways'"),
    ({"angle": float("inf")}, "angle must be finite, got inf"),
    ({"dent_method": "median"}, "dent_method: expected one of 'recipe', 'min' or 'mean', got 'median'"),
    ({"dent_window_px": 0.5}, "dent_window_px must be >= 1.0, got 0.5"),
    ({"preview": "no"}, "preview: expected true/false, got str 'no'"),
    ({"noise_max_pixels": 100}, "noise_max_pixels must be >= 2304, got 100"),
    ({"patch_px": 16, "atoms": 5}, "patch_px / atoms = 3.20 px per period is too few"),
    ({"lo_pct": 60.0, "hi_pct": 40.0}, "need lo_pct < hi_pct"),
    ({"atom": 5}, "unknown key 'atom'; known keys: atoms, patch_px,"),
])
def test_bad_settings_give_one_line_naming_the_key(bad, expected):
    with pytest.raises(ConfigError) as info:
        PrepConfig(**bad)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_values_parsing_assignment_and_record():
    assert PrepConfig(angle="90").angle == 90.0 and PrepConfig(angle=" Auto ").angle == "auto"
    cfg = PrepConfig(seed=np.int64(3), per_image=np.int32(4))
    assert (cfg.seed, cfg.per_image) == (3, 4) and type(cfg.seed) is int
    cfg.seed = 5  # a mutable config, checked on assignment
    with pytest.raises(ConfigError, match="^atoms must be >= 1, got 0$"):
        cfg.atoms = 0
    cfg.validate()
    assert PrepConfig.from_dict(cfg.to_dict()) == cfg and cfg.model_period_px == pytest.approx(12.8)
    props = PrepConfig.model_json_schema()["properties"]
    assert props["dent_polarity"]["enum"] == ["dark", "bright"] and props["atoms"]["minimum"] == 1
