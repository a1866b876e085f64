"""Training config models: one-line errors naming the key for every config, the schema record, older run records."""
import json
from pathlib import Path

import pytest

from cyclegan.config import PROFILES, TrainConfig, config_from_dict, config_to_dict, profile_config, write_config_record
from cyclegan.models import DiscriminatorConfig, GeneratorConfig
from cyclegan.pairs import NoiseRanges
from cyclegan.train import _check_resume_config
from stem_denoise.common.errors import ConfigError


def _line(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("bad,expected", [
    ({"lr": 0}, "lr must be > 0.0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"crop_px": 4}, "crop_px must be >= 8"),
    ({"device": "tpu"}, "device must be 'auto', 'cpu' or 'cuda[:N]'"),
    ({"objective": "wgan"}, "objective: expected one of 'classic' or 'stochastic'"),
    ({"period_range": [40.0, 6.0]}, "period_range must be [low, high] with low <= high"),
    ({"period_range": [1.0, 6.0]}, "period_range[0] must be >= 2.0"),
    ({"keep_previous": "yes"}, "keep_previous: expected true/false"),
    ({"generator": {"n_down": 5}}, "generator.n_down must be <= 4"),
    ({"generator": {"upsample": "transposed"}}, "generator.upsample: expected one of 'bilinear' or 'nearest'"),
    ({"discriminator": {"n_layers": 0}}, "discriminator.n_layers must be >= 1"),
    ({"discriminator": {"widht": 8}}, "discriminator: unknown key 'widht'; known keys: width, n_layers"),
    ({"noise": {"dose": [0.0, 5.0]}}, "noise.dose[0] must be > 0.0"),
    ({"noise": {"white_frac": 2}}, "noise.white_frac must be <= 1.0"),
    ({"dashboard": {"port": 70000}}, "dashboard.port must be <= 65535"),
    ({"dashboard": {"port": "8097"}}, "dashboard.port: expected an integer"),
    ({"clean_source": "synthetic", "noise_source": "estimated"}, "noise_source 'estimated' needs clean_source"),
])
def test_train_config_errors_name_the_key(bad, expected):
    assert _line(config_from_dict, bad).startswith(expected)


@pytest.mark.parametrize("cls,bad,expected", [
    (GeneratorConfig, {"width": 0}, "width must be >= 1, got 0"),
    (GeneratorConfig, {"res_scale": "0.2"}, "res_scale: expected a number, got str '0.2'"),
    (GeneratorConfig, {"blocks": 3}, "unknown key 'blocks'"),
    (DiscriminatorConfig, {"width": 2.5}, "width: expected an integer, got float 2.5"),
    (NoiseRanges, {"corr_col": (0.1, 0.5)}, "corr_col[1] must be <= 0.45, got 0.5"),
    (NoiseRanges, {"clean": 0.1}, "unknown key 'clean'"),
])
def test_sub_config_errors_name_the_key(cls, bad, expected):
    assert _line(cls, **bad).startswith(expected)
    assert _line(cls.from_dict, bad).startswith(expected)


def test_configs_are_immutable_and_profiles_round_trip():
    cfg = profile_config("quick")
    with pytest.raises(AttributeError):
        cfg.steps = 5
    assert cfg.replace(steps=5).steps == 5
    assert isinstance(cfg.period_range, tuple) and isinstance(cfg.noise.dose, tuple)
    for name in PROFILES:
        p = profile_config(name)
        assert config_from_dict(json.loads(json.dumps(config_to_dict(p)))) == p


def test_schema_is_written_beside_the_config(tmp_path):
    cfg = profile_config("default")
    write_config_record(cfg, tmp_path)
    assert config_from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
    schema = json.loads((tmp_path / "config.schema.json").read_text())
    assert set(schema["properties"]) == set(TrainConfig.model_fields)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["precision"]["enum"] == ["auto", "fp32", "bf16", "fp16"]
    sub = schema["$defs"]["GeneratorConfig"]
    assert sub["properties"]["width"]["maximum"] == 1024 and sub["additionalProperties"] is False


def test_a_config_record_of_an_earlier_version_loads_and_resumes():
    # A run written before the stochastic objective and the noise settings existed: those keys are missing.
    old = config_to_dict(TrainConfig(steps=40))
    for key in ("objective", "clean_source", "noise", "noise_source", "noise_spread", "refine_noise",
                "scene_family", "lambda_noise_adv", "noise_lr_factor", "channels_last"):
        old.pop(key)
    cfg = config_from_dict(old)  # what --resume reads from the run's config.json
    assert cfg == TrainConfig(steps=40)
    _check_resume_config(old, cfg.replace(steps=80), Path("run/last.pt"))  # a runtime field may change
    with pytest.raises(ConfigError, match="lr"):
        _check_resume_config(old, cfg.replace(lr=1e-3), Path("run/last.pt"))
