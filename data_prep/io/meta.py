"""Micrograph metadata: :class:`MicrographMeta`, length units and the range of plausible pixel sizes."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from stem_denoise.common.errors import InputError

# Resolution tags in inch or centimetre that give a pixel larger than this (in metres) are a print
# resolution (72 dpi), not a scan's pixel size.
_PRINT_RESOLUTION_M = 1e-5
# Pixel sizes outside this range (metres) are not a micrograph's: 0.1 pm to 1 mm. They are ignored on reading
# (with a MetadataWarning) and never written.
PIXEL_SIZE_RANGE_M = (1e-13, 1e-3)

_UNIT_M = {"pm": 1e-12, "nm": 1e-9, "um": 1e-6, "mm": 1e-3, "cm": 1e-2, "m": 1.0}
_UNIT_ALIASES: dict[str, tuple[str, float]] = {}
for _canon, _names in {
    "pm": ("pm", "picometer", "picometers", "picometre", "picometres"),
    "nm": ("nm", "nanometer", "nanometers", "nanometre", "nanometres"),
    "um": ("um", "\u00b5m", "\u03bcm", "\\u00b5m", "micron", "microns", "micrometer", "micrometers",
           "micrometre", "micrometres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "m": ("m", "meter", "meters", "metre", "metres"),
}.items():
    for _n in _names:
        _UNIT_ALIASES[_n] = (_canon, 1.0)
for _n in ("a", "\u00e5", "angstrom", "angstroms", "ang"):
    _UNIT_ALIASES[_n] = ("nm", 0.1)
for _n in ("inch", "inches", "in"):
    _UNIT_ALIASES[_n] = ("mm", 25.4)


def canonical_length_unit(unit: str | None) -> tuple[str, float] | None:
    """Return ``(canonical, factor)`` for a length unit name, or None if it is not a length.

    Canonical units are "pm", "nm", "um", "mm", "cm" and "m"; a value in ``unit`` times ``factor`` is the
    value in ``canonical`` (Angstrom becomes nm with factor 0.1; "micron", "µm" and "\\u00B5m" become "um").
    """
    if unit is None:
        return None
    key = str(unit).strip().replace("\u212b", "\u00e5").lower()
    return _UNIT_ALIASES.get(key)


def _nice_length(value_m: float) -> tuple[float, str]:
    """Express a length in metres in nm (below 1 um), um (below 1 mm) or mm."""
    if value_m < 1e-6:
        return value_m / 1e-9, "nm"
    if value_m < 1e-3:
        return value_m / 1e-6, "um"
    return value_m / 1e-3, "mm"


def plausible_pixel_size(value: Any, unit: str | None) -> bool:
    """True when ``value`` ``unit`` is a finite, positive length within :data:`PIXEL_SIZE_RANGE_M` (0.1 pm to
    1 mm): the pixel size of a micrograph rather than a corrupt or foreign value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    cu = canonical_length_unit(unit)
    if cu is None or not math.isfinite(v) or v <= 0:
        return False
    metres = v * cu[1] * _UNIT_M[cu[0]]
    return PIXEL_SIZE_RANGE_M[0] <= metres <= PIXEL_SIZE_RANGE_M[1]


def _shown_length(value: Any, unit: str | None) -> str:
    try:
        return f"{float(value):.4g} {unit or ''}".strip()
    except (TypeError, ValueError):
        return f"{value!r} {unit or ''}".strip()


@dataclass
class MicrographMeta:
    """What a reader learnt about a micrograph besides its pixels.

    ``source_dtype`` is the numpy dtype name of the stored samples ("uint16", "float32", ...);
    ``pixel_size`` is the width of one pixel in ``unit`` (canonical: "pm", "nm", "um", "mm"), or None when
    the file carries no physical calibration; ``path`` is the file read; ``shape`` is (rows, columns) of
    the returned image; ``extra`` holds JSON-able details (format, frame, axes, where the pixel size came
    from, a y pixel size that differs from x, ...).
    """

    source_dtype: str
    pixel_size: float | None
    unit: str | None
    path: str
    shape: tuple[int, int]
    extra: dict = field(default_factory=dict)

    def pixel_size_in(self, unit: str) -> float | None:
        """Pixel size converted to ``unit`` (any name :func:`canonical_length_unit` knows), or None."""
        if self.pixel_size is None or self.unit is None:
            return None
        src = canonical_length_unit(self.unit)
        dst = canonical_length_unit(unit)
        if src is None:
            return None
        if dst is None:
            raise InputError(f"unknown length unit {unit!r}")
        metres = self.pixel_size * src[1] * _UNIT_M[src[0]]
        return metres / (dst[1] * _UNIT_M[dst[0]])

    def to_dict(self) -> dict:
        """A JSON-able dict of all fields."""
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MicrographMeta":
        """Inverse of :meth:`to_dict`."""
        return cls(
            source_dtype=str(d["source_dtype"]),
            pixel_size=None if d.get("pixel_size") is None else float(d["pixel_size"]),
            unit=d.get("unit"),
            path=str(d.get("path", "")),
            shape=tuple(int(v) for v in d["shape"]),
            extra=dict(d.get("extra") or {}),
        )
