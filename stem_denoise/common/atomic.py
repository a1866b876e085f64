"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written file, and a crash or a full disk leaves the previous
file (if any) untouched. Temporary files are hidden and named ``.{name}.XXXXXXXX.tmp`` next to the
target; only a process killed outright (SIGKILL, power loss) can leave one behind.

The finished file gets the permissions an ordinary ``open(path, "w")`` would give (0666 minus the
umask), or keeps those of the file it replaces, not the owner-only mode of a temporary file.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from stem_denoise.common.errors import InputError


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _exists_error(path: Path) -> InputError:
    return InputError(f"{path} exists; pass --overwrite to replace it")


def _publish(tmp_path: Path, path: Path, overwrite: bool) -> None:
    """Move ``tmp_path`` onto ``path``; without ``overwrite`` never replace a file that appeared meanwhile."""
    if overwrite:
        os.replace(tmp_path, path)
        return
    try:
        # A hard link fails if ``path`` exists, so two writers cannot both win.
        os.link(tmp_path, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:
        # File systems without hard links: check, then rename (a small race remains).
        if path.exists():
            raise _exists_error(path) from None
        os.replace(tmp_path, path)
        return
    with contextlib.suppress(OSError):
        tmp_path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    With ``overwrite=False`` an existing ``path`` raises :class:`InputError` before anything is
    written, and again (without replacing it) if it appeared while writing.
    A missing or unwritable output folder raises :class:`InputError`.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise _exists_error(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"output folder {folder} is not writable")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"output folder {folder} is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise FileNotFoundError(f"the writer removed its temporary file {tmp_path}")
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        with contextlib.suppress(OSError):
            os.chmod(tmp_path, mode)
        _publish(tmp_path, path, overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None], overwrite: bool = True) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)


def make_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and its parents) if needed and check that it is writable.

    Every failure the user can fix (a file in the way, no permission, a read-only file system) becomes an
    :class:`InputError` naming the folder, instead of a traceback.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"output folder {path} cannot be created: a file is in the way") from None
    except NotADirectoryError:
        raise InputError(f"output folder {path} cannot be created: a parent is a file, not a folder") from None
    except OSError as exc:
        raise InputError(f"output folder {path} cannot be created: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise InputError(f"output {path} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"output folder {path} is not writable")
    return path
