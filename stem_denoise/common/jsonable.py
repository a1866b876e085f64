"""The one JSON encoding of the values records hold besides JSON's own: numpy scalars and arrays, paths,
tuples and sets.

``json.dumps(obj, default=json_default)`` writes them; :func:`to_jsonable` converts a whole structure ahead (for
a caller that needs plain values, e.g. to compare or to apply ``allow_nan=False`` after mapping non-finite floats).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["json_default", "to_jsonable"]


def json_default(obj: Any) -> Any:
    """``default=`` hook for :func:`json.dumps`: numpy scalars -> Python numbers, arrays/tuples/sets -> lists,
    paths -> strings; anything else is a ``TypeError`` (a bug, not silently ``str()``-ed)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def to_jsonable(obj: Any) -> Any:
    """``obj`` with every value :func:`json_default` knows converted, recursively (dict keys kept)."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray, os.PathLike)):
        return to_jsonable(json_default(obj))
    return obj
