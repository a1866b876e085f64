"""The dataset folder prepare_data writes: its strict-JSON manifest, the checks on ``--out`` before any work, and
the move of a finished dataset into place (a new folder, or over an earlier dataset's own files only)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from stem_denoise.common.atomic import check_output_location
from stem_denoise.common.errors import InputError

MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "stem-denoise-patches"


def _finite(obj: Any) -> Any:
    """``obj`` as plain JSON values (numpy scalars and arrays, tuples, paths converted) with non-finite floats
    (NaN, Inf) as null: the manifest is strict JSON."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    elif isinstance(obj, os.PathLike):
        obj = os.fspath(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_finite(v) for v in obj]
    return obj


def _safe_relative(name: Any) -> str | None:
    """``name`` as a relative path that stays inside its folder, or None."""
    if not isinstance(name, str) or not name:
        return None
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts or not parts:
        return None
    return str(PurePosixPath(*parts))


def _own_files(manifest: dict) -> set[str]:
    """Every file an earlier prepare_data run wrote, as its manifest lists them (relative paths)."""
    names = set(manifest.get("files") or []) if isinstance(manifest.get("files"), list) else set()
    for rec in manifest.get("patches") or []:
        if isinstance(rec, dict):
            names.add(rec.get("file"))
    names |= {MANIFEST_NAME, "preview.png"}
    return {n for n in (_safe_relative(x) for x in names) if n is not None}


def _check_out_dir(out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike | None]) -> tuple[Path, set[str]]:
    """Refuse an unusable ``out`` before any work; return its real path (symlinks followed) and the files of an
    earlier dataset there that ``overwrite`` may replace (empty when there is none)."""
    check_output_location(out, inputs)
    real = Path(os.path.realpath(out))
    if real.exists() and not real.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if not real.is_dir():
        return real, set()
    entries = [e for e in real.iterdir() if not e.name.startswith(".prepare_data.")]
    if not entries:
        if not os.access(real, os.W_OK | os.X_OK):
            raise InputError(f"output folder {out} is not writable")
        return real, set()
    if not overwrite:
        raise InputError(f"{out} is not empty; pass --overwrite to replace it")
    mpath = real / MANIFEST_NAME
    if not mpath.is_file():
        raise InputError(
            f"{out} is not empty and holds no {MANIFEST_NAME}: refusing to replace a folder that prepare_data "
            "did not write")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise InputError(f"{out} holds a {MANIFEST_NAME} that prepare_data did not write: refusing to replace "
                         f"anything in it")
    for sub in ("trainA", "trainB", "testA"):
        d = real / sub
        if os.path.lexists(d) and (d.is_symlink() or not d.is_dir()):
            raise InputError(f"{out / sub} is not a plain folder (a file or a link): refusing to write into it")
    if not os.access(real, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out} is not writable")
    return real, _own_files(manifest)


def _finalise(staging: Path, real: Path, old_files: set[str], existed: bool) -> None:
    """Put the finished dataset in ``staging`` into the folder ``real``.

    A new folder is one rename. Into an existing folder the files of the earlier dataset (``old_files``, from its
    manifest) are first moved aside, then the new files are moved in (the manifest last), then the old ones are
    deleted: anything else in the folder -- files prepare_data did not write -- stays where it is, and a failure
    on the way puts everything back.
    """
    if not existed:
        if real.exists():
            raise InputError(f"{real} was created by another run while this one was working; this run's dataset "
                             f"was discarded and nothing of the other's was touched")
        os.rename(staging, real)
        return
    root = os.path.realpath(real)
    trash = real / f".prepare_data.old-{secrets.token_hex(4)}"
    trash.mkdir()
    moved: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    made: list[Path] = []
    try:
        for rel in sorted(old_files, key=lambda n: (n == MANIFEST_NAME, n), reverse=True):  # manifest first
            src = real / rel
            if not os.path.lexists(src) or (src.is_dir() and not src.is_symlink()):
                continue
            parent = os.path.realpath(src.parent)
            if parent != root and not parent.startswith(root + os.sep):
                continue  # never follow a link out of the folder
            dst = trash / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
            moved.append((src, dst))
        new_files = sorted((f for f in staging.rglob("*") if not f.is_dir()),
                           key=lambda f: (f.name == MANIFEST_NAME, str(f)))  # manifest last
        for f in new_files:
            target = real / f.relative_to(staging)
            if not target.parent.is_dir():
                target.parent.mkdir()
                made.append(target.parent)
            if os.path.lexists(target):
                raise InputError(f"{target} is in the way: prepare_data did not write it (it is not in the earlier "
                                 f"dataset's manifest); move it away and run again")
            os.rename(f, target)
            placed.append(target)
    except BaseException:
        for t in reversed(placed):
            with contextlib.suppress(OSError):
                t.unlink()
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        for src, dst in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(dst, src)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)  # holds only files the earlier run wrote
    shutil.rmtree(staging, ignore_errors=True)
