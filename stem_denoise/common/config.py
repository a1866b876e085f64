"""Typed configs: one pydantic base class and the one-line :class:`ConfigError` every config raises.

Every config of the project derives from :class:`Config`: unknown keys are refused, numbers, flags and strings are
strict (``"10"`` is not an integer, ``true`` is not a number, ``1.5`` is not a count; numpy scalars count as the
numbers they hold), floats must be finite, and a sequence of fixed length is a tuple. A bad value raises
:class:`ConfigError` with one line naming the key (``generator.width must be >= 1, got 0``), whether the config
was built from keywords, from a dict (:meth:`Config.from_dict`) or changed (:meth:`Config.replace`, or an
assignment on a mutable config). :meth:`Config.write_schema` writes the JSON schema of a config class.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Annotated, Any

import annotated_types as at
import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator

from stem_denoise.common.errors import ConfigError

__all__ = ["Config", "Interval", "config_error", "plain_input"]

_REPR_MAX = 60


def plain_input(value: Any) -> Any:
    """``value`` as a config field takes it: numpy scalars as the Python numbers they hold, lists and arrays as
    tuples (JSON has no tuples), also inside lists and dicts."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(plain_input(v) for v in value)
    if isinstance(value, dict):
        return {k: plain_input(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[:_REPR_MAX - 3] + "..."


def _got(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)) and len(repr(value)) > _REPR_MAX:
        return type(value).__name__
    return f"{type(value).__name__} {_show(value)}"


def _path(loc: tuple, where: str = "") -> str:
    """Dotted key path of a pydantic error location (list positions as ``[i]``). Union and validator tags that
    pydantic inserts (never valid identifiers, e.g. ``function-after[...]``) are left out."""
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}" if out else part
    return out


def _known_keys(model: type | None, parents: tuple) -> list[str]:
    """Field names of the (nested) config class at ``parents`` below ``model``, where they can be found."""
    for part in parents:
        if model is None or not isinstance(part, str):
            return []
        field = getattr(model, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(getattr(model, "model_fields", {})) if model is not None else []


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true/false", "bool_parsing": "true/false", "string_type": "a string",
    "model_type": "an object", "model_attributes_type": "an object", "dict_type": "an object",
    "dataclass_type": "an object", "tuple_type": "a list", "list_type": "a list", "none_required": "null",
}
_LIMITS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def _describe(err: dict, where: str) -> str:
    kind, loc, value, ctx = err["type"], tuple(err["loc"]), err.get("input"), err.get("ctx") or {}
    path = _path(loc, where)
    if kind in _TYPE_WORDS:
        return f"{path}: expected {_TYPE_WORDS[kind]}, got {_got(value)}"
    if kind in _LIMITS:
        key, op = _LIMITS[kind]
        return f"{path} must be {op} {ctx.get(key)}, got {_show(value)}"
    if kind == "literal_error":
        return f"{path}: expected one of {ctx.get('expected')}, got {_show(value)}"
    if kind == "missing":
        if loc and isinstance(loc[-1], int):  # a tuple of fixed length given too few values
            return f"{_path(loc[:-1], where)}: too few values, got {_show(value)}"
        return f"{path}: missing"
    if kind == "too_long":
        return f"{path}: expected at most {ctx.get('max_length')} values, got {ctx.get('actual_length')}"
    if kind == "too_short":
        return f"{path}: expected at least {ctx.get('min_length')} values, got {ctx.get('actual_length')}"
    if kind in ("value_error", "assertion_error"):
        text = str(ctx.get("error", err.get("msg", "")))
        if not path:
            return text
        return f"{path} {text}" if text.startswith("must ") else f"{path}: {text}"
    msg = str(err.get("msg", kind))
    return f"{path}: {msg[:1].lower()}{msg[1:]}" if path else msg


def config_error(exc: ValidationError, model: type | None = None, where: str = "") -> ConfigError:
    """The first problem of a pydantic ``ValidationError`` as a one-line :class:`ConfigError` naming its key.

    Unknown keys at the same level are reported together with the keys ``model`` knows there. ``where`` prefixes
    every key path (e.g. the name of the dict the config was read from).
    """
    errors = exc.errors(include_url=False)
    if not errors:
        return ConfigError(f"{where or 'config'}: invalid")
    first = errors[0]
    if first["type"] == "extra_forbidden":
        parents = tuple(first["loc"][:-1])
        unknown = [e["loc"][-1] for e in errors if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parents]
        parent = _path(parents, where)
        text = f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
        known = _known_keys(model, parents)
        if known:
            text += f"; known keys: {', '.join(known)}"
        line = f"{parent}: {text}" if parent else text
    else:
        line = _describe(first, where)
    return ConfigError(" ".join(line.split()))


class _ConfigMeta(type(BaseModel)):
    """Calling a config class maps positional values to fields and turns a ValidationError into ConfigError.

    (Done here rather than in ``__init__``: pydantic calls a custom ``__init__`` for nested configs too, where
    the error must stay a ValidationError so that its key path includes the parent's key.)
    """

    def __call__(cls, *args: Any, **data: Any) -> Any:
        if args:
            names = list(cls.model_fields)
            if len(args) > len(names):
                raise ConfigError(f"{cls.__name__} takes at most {len(names)} values, got {len(args)}")
            for name, value in zip(names, args):
                if name in data:
                    raise ConfigError(f"{cls.__name__}: {name} given twice")
                data[name] = value
        try:
            return super().__call__(**data)
        except ValidationError as exc:
            raise config_error(exc, cls) from None


class Config(BaseModel, metaclass=_ConfigMeta):
    """Base of every config: frozen, strict, unknown keys refused, errors as one-line :class:`ConfigError`.

    Fields may also be given by position, in declaration order (as the dataclasses these configs replace
    allowed). A subclass that should be mutable sets ``frozen=False`` (assignments are validated).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _plain_input(cls, data: Any) -> Any:
        return {k: plain_input(v) for k, v in data.items()} if isinstance(data, dict) else data

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, plain_input(value))
        except ValidationError as exc:
            if exc.errors()[0]["type"] in ("frozen_instance", "frozen_field"):
                raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r} of a frozen "
                                                      f"{type(self).__name__}; use .replace()") from None
            raise config_error(exc, type(self)) from None

    @classmethod
    def from_dict(cls, data: Any, where: str = "", base: "Config | None" = None):
        """A config from a plain dict (e.g. read from JSON), checking every key and type.

        Keys missing from ``data`` take their value from ``base`` (an instance of this class; nested configs are
        merged key by key) or from the field defaults. Lists are accepted where a tuple is expected.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: expected an object, got {type(data).__name__}")
        if base is not None:
            data = _merge(cls, base.model_dump(), data)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, cls, where) from None

    def validate(self) -> None:  # an instance method here, not pydantic v1's deprecated classmethod
        """Check the whole config again (ConfigError if not valid); every way of building or changing a config
        already checks it, so this only repeats the check for callers that want it stated."""
        type(self).from_dict(self.model_dump())

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the config (tuples as lists, nested configs as dicts)."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any):
        """A validated copy with ``changes`` (ConfigError for a bad key or value)."""
        return type(self)(**{**dict(self), **changes})

    @classmethod
    def schema_json(cls) -> str:
        """The JSON schema of this config class, as indented text."""
        return json.dumps(cls.model_json_schema(), indent=2) + "\n"

    @classmethod
    def write_schema(cls, path: str | os.PathLike) -> None:
        """Write :meth:`schema_json` to ``path`` atomically."""
        from stem_denoise.common.atomic import atomic_write_bytes

        atomic_write_bytes(path, cls.schema_json().encode("utf-8"))


def _low_le_high(value: tuple) -> tuple:
    if value[0] > value[1]:
        raise ValueError(f"must be [low, high] with low <= high, got {list(value)}")
    return value


def Interval(ge: float | None = None, le: float | None = None, *, gt: float | None = None,
             lt: float | None = None) -> Any:
    """Type of a ``[low, high]`` pair of numbers with ``low <= high``, both within the given bounds."""
    lo = [at.Ge(ge)] if ge is not None else [at.Gt(gt)] if gt is not None else []
    hi = [at.Le(le)] if le is not None else [at.Lt(lt)] if lt is not None else []
    bounds = lo + hi
    item = Annotated[(float, *bounds)] if bounds else float
    return Annotated[tuple[item, item], AfterValidator(_low_le_high)]


def _sub_config(cls: type, name: str) -> type | None:
    field = cls.model_fields.get(name) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
    annotation = getattr(field, "annotation", None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _merge(cls: type, base: dict, data: dict) -> dict:
    """``data`` laid over ``base`` (a dumped config); nested configs are merged key by key."""
    out = dict(base)
    for key, value in data.items():
        sub = _sub_config(cls, key)
        if sub is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(sub, out[key], value)
        else:
            out[key] = value
    return out
