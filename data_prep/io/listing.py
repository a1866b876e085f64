"""Finding micrographs: files and folders expanded into a sorted list of micrograph files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from stem_denoise.common.errors import InputError

MICROGRAPH_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".dm3", ".dm4", ".emd")


def list_micrographs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted, duplicate-free list of micrograph files.

    A folder contributes its files (not its subfolders) whose suffix is one of
    :data:`MICROGRAPH_SUFFIXES` (any case), hidden files skipped, sorted by name. A file given by name
    must exist and have one of those suffixes. A missing input, a folder with no micrographs, or an
    empty ``inputs`` raises :class:`InputError`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no input micrographs given")
    found: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(
                (c for c in p.iterdir()
                 if c.is_file() and not c.name.startswith(".") and c.suffix.lower() in MICROGRAPH_SUFFIXES),
                key=lambda c: c.name,
            )
            if not files:
                raise InputError(
                    f"{p}: folder holds no micrographs ({' '.join(MICROGRAPH_SUFFIXES)})"
                )
        elif p.exists():
            if p.suffix.lower() not in MICROGRAPH_SUFFIXES:
                raise InputError(
                    f"{p}: not a micrograph file type (expected one of {' '.join(MICROGRAPH_SUFFIXES)})"
                )
            files = [p]
        else:
            raise InputError(f"{p}: no such file or folder")
        for f in files:
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found
