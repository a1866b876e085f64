"""The shared config base: one-line ConfigError naming the key, strict types, merging, schema; device and JSON
helpers."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import Field

from stem_denoise.common.config import Config, Interval
from stem_denoise.common.device import pick_device
from stem_denoise.common.errors import ConfigError, InputError
from stem_denoise.common.jsonable import json_default, to_jsonable


class Inner(Config):
    width: int = Field(4, ge=1)
    mode: str = "a"


class Outer(Config):
    steps: int = Field(10, ge=1)
    rate: float = Field(0.5, gt=0.0, lt=1.0)
    flag: bool = False
    span: Interval(ge=0.0) = (1.0, 2.0)
    inner: Inner = Inner()


class Mutable(Config):
    model_config = {"frozen": False}

    count: int = Field(1, ge=0)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and isinstance(info.value, InputError)
    return text


@pytest.mark.parametrize("bad,expected", [
    ({"steps": "10"}, "steps: expected an integer, got str '10'"),
    ({"steps": 1.5}, "steps: expected an integer, got float 1.5"),
    ({"steps": True}, "steps: expected an integer, got bool True"),
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"rate": 1.0}, "rate must be < 1.0, got 1.0"),
    ({"rate": float("nan")}, "rate: expected a finite number"),
    ({"flag": 1}, "flag: expected true/false, got int 1"),
    ({"span": [3.0, 2.0]}, "span must be [low, high] with low <= high, got [3.0, 2.0]"),
    ({"span": [-1.0, 2.0]}, "span[0] must be >= 0.0, got -1.0"),
    ({"span": [1.0]}, "span: too few values"),
    ({"inner": {"width": 0}}, "inner.width must be >= 1, got 0"),
    ({"inner": 3}, "inner: expected an object, got int 3"),
    ({"stepz": 3}, "unknown key 'stepz'; known keys: steps, rate, flag, span, inner"),
    ({"inner": {"depth": 3, "size": 1}}, "inner: unknown keys 'depth', 'size'; known keys: width, mode"),
])
def test_one_line_error_names_the_key(bad, expected):
    assert _error(Outer.from_dict, bad).startswith(expected)
    assert _error(Outer, **bad).startswith(expected)  # the same line from keywords


def test_from_dict_prefix_merge_and_round_trip():
    assert _error(Outer.from_dict, {"inner": {"width": 0}}, "settings") == "settings.inner.width must be >= 1, got 0"
    assert _error(Outer.from_dict, [1]) == "config: expected an object, got list"
    base = Outer(steps=3, inner=Inner(width=7, mode="b"))
    merged = Outer.from_dict({"inner": {"width": 2}}, base=base)
    assert (merged.steps, merged.inner.width, merged.inner.mode) == (3, 2, "b")
    assert merged.to_dict() == {"steps": 3, "rate": 0.5, "flag": False, "span": [1.0, 2.0],
                                "inner": {"width": 2, "mode": "b"}}
    assert Outer.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged
    assert isinstance(Outer.from_dict({"span": [0, 4]}).span, tuple)  # JSON lists become tuples


def test_numpy_scalars_positional_values_and_immutability():
    cfg = Outer(np.int64(4), np.float32(0.25), np.bool_(True), np.array([0.0, 1.0]))
    assert (cfg.steps, cfg.rate, cfg.flag, cfg.span) == (4, 0.25, True, (0.0, 1.0))
    assert type(cfg.steps) is int and type(cfg.flag) is bool
    assert _error(Outer, 1, steps=2) == "Outer: steps given twice"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 5
    assert cfg.replace(steps=6).steps == 6 and cfg.steps == 4
    assert _error(cfg.replace, steps=-1) == "steps must be >= 1, got -1"
    assert _error(cfg.replace, stepz=1).startswith("unknown key 'stepz'")
    m = Mutable()
    m.count = np.int64(3)
    assert m.count == 3
    assert _error(setattr, m, "count", -1) == "count must be >= 0, got -1"
    m.validate()


def test_schema_lists_every_key_and_refuses_others(tmp_path):
    Outer.write_schema(tmp_path / "s.json")
    schema = json.loads((tmp_path / "s.json").read_text())
    assert set(schema["properties"]) == {"steps", "rate", "flag", "span", "inner"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["steps"]["minimum"] == 1


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")).type == "cpu"
    assert pick_device(None).type == pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, match in (("tpu:7", "device"), ("meta", "unsupported device"), ("cuda:99", "cuda")):
        if bad.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 99:
            continue
        with pytest.raises(ConfigError, match=match):
            pick_device(bad)


def test_json_default_and_to_jsonable():
    record = {"a": np.float32(1.5), "b": np.arange(3), "c": (1, np.int64(2)), "p": Path("x/y"), "s": {3}}
    text = json.dumps(record, default=json_default)
    assert json.loads(text) == {"a": 1.5, "b": [0, 1, 2], "c": [1, 2], "p": "x/y", "s": [3]}
    assert to_jsonable(record) == json.loads(text)
    with pytest.raises(TypeError, match="not JSON-able"):
        json.dumps({"x": object()}, default=json_default)
