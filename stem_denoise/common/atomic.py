"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written file, and a crash or a full disk leaves the previous
file (if any) untouched. Temporary files are hidden and named ``.{name}.XXXXXXXX.tmp`` next to the
target; only a process killed outright (SIGKILL, power loss) can leave one behind.

The finished file gets the permissions an ordinary ``open(path, "w")`` would give (0666 minus the
umask), or keeps those of the file it replaces, not the owner-only mode of a temporary file.

While a temporary file is being written its writer holds an exclusive ``flock`` on it, so
:func:`remove_stale_temps` can tell the leftover of a killed run (no lock: removed) from the work of a run
that is still going (locked: left alone). :func:`reserve_space` allocates a file's final size up front, so a
full disk is an error before anything is written rather than a SIGBUS in the middle of a memory-mapped write.

Output folders: :func:`check_output_location` refuses an output folder that is, holds or lies inside one of a
command's inputs (symlinks followed); :func:`make_output_dir` records the folders it creates so that
:func:`remove_created_dirs` can take them away again, if still empty, when a run fails.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

try:  # POSIX only; without it temp files are simply not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

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

    On any exception the temporary file is removed and ``path`` is left as it was. With ``overwrite=False`` an existing
    ``path`` raises :class:`InputError` before anything is
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
    _lock(fd)  # held until the file is published or removed: marks it as live for remove_stale_temps
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
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def _disk_full_is_input_error(path: str | os.PathLike) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"{path}: not enough disk space ({exc.strerror})") from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; a full disk is an :class:`InputError` naming ``path``."""
    with _disk_full_is_input_error(path), atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None], overwrite: bool = True) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically; a full disk is an
    :class:`InputError` naming ``path``."""
    with _disk_full_is_input_error(path), atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)


def make_output_dir(path: str | os.PathLike, created: list[Path] | None = None) -> Path:
    """Create the output folder ``path`` (and its parents) if needed and check that it is writable.

    Every failure the user can fix (a file in the way, no permission, a read-only file system) becomes an
    :class:`InputError` naming the folder, instead of a traceback. The folders this call made (outermost first)
    are appended to ``created``, for :func:`remove_created_dirs` after a failed run.
    """
    path = Path(path)
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
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
    if created is not None:
        created.extend(reversed(missing))
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"output folder {path} is not writable")
    return path


def remove_created_dirs(created: Iterable[Path]) -> None:
    """Remove the folders listed by :func:`make_output_dir` (innermost first) where they are still empty."""
    for d in reversed(list(created)):
        with contextlib.suppress(OSError):
            os.rmdir(d)  # fails, and keeps the folder, when anything is in it


@contextlib.contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`make_output_dir` for the length of a block: when the block raises, the folders it created are
    removed again if they are still empty, so a failed run leaves no empty output folder behind."""
    created: list[Path] = []
    out = make_output_dir(path, created)
    try:
        yield out
    except BaseException:
        remove_created_dirs(created)
        raise


# ------------------------------------------------------------------------------------------ inputs vs outputs


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _inside(child: str, parent: str) -> bool:
    """``child`` lies strictly below ``parent`` (both real, absolute paths)."""
    if child == parent:
        return False
    try:
        return os.path.commonpath([child, parent]) == parent
    except ValueError:  # different drives
        return False


def check_output_location(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *,
                          option: str = "--out") -> None:
    """Refuse, before any work, an output folder that is, holds or lies inside one of ``inputs``.

    Paths are compared after following symlinks (of the folder, of its parents and of each input), so a
    linked folder or a linked input file is seen for what it is. ``None`` entries are skipped. Raises
    :class:`InputError` naming the output folder and the input.
    """
    o = _real(out)
    for item in inputs:
        if item is None:
            continue
        i = _real(item)
        if o == i:
            kind = "folder" if os.path.isdir(i) else "file"
            raise InputError(f"{option} {out} is the input {kind} {item}; choose an output folder apart from the "
                             f"inputs, so that no input can be overwritten or deleted")
        if _inside(i, o):
            raise InputError(f"{option} {out} holds the input {item}; choose an output folder apart from the "
                             f"inputs, so that no input can be overwritten or deleted")
        if _inside(o, i):
            raise InputError(f"{option} {out} lies inside the input folder {item}; choose an output folder apart "
                             f"from the inputs")


# ------------------------------------------------------------------------------------------ temp files and space


def _lock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def temp_files_of(path: str | os.PathLike) -> list[Path]:
    """The hidden temporary files :func:`atomic_path` makes (or made) for ``path``."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f".{glob_escape(path.name)}.*.tmp"))


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters made literal."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def remove_stale_temps(path: str | os.PathLike) -> bool:
    """Remove temporary files of ``path`` left by a killed run; return True when another live process is
    writing ``path`` right now (its temporary file is locked and left alone)."""
    busy = False
    for tmp in temp_files_of(path):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    busy = True
                    continue
                except OSError:
                    pass
            with contextlib.suppress(OSError):
                tmp.unlink()
        finally:
            os.close(fd)
    return busy


def _size_text(nbytes: float) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= k:
            return f"{nbytes / k:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def free_space(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use in ``folder``'s file system, or None if unknown."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def reserve_space(path: str | os.PathLike, nbytes: int, *, name: str | os.PathLike | None = None) -> None:
    """Allocate ``nbytes`` for the file ``path`` now (``posix_fallocate``), so that writing it later, even
    through a memory map, cannot run out of disk space half way (a SIGBUS for a memory map).

    On a file system that cannot allocate ahead the free space is checked instead. A full disk raises
    :class:`InputError` naming ``name`` (default ``path``), how much is needed and how much is free.
    """
    shown = name if name is not None else path
    nbytes = int(nbytes)
    if nbytes <= 0:
        return

    def full() -> InputError:
        free = free_space(Path(path).parent)
        have = f", {_size_text(free)} free" if free is not None else ""
        return InputError(f"{shown}: not enough disk space: it needs {_size_text(nbytes)}{have}")

    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except AttributeError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise full() from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", -1)):
                raise InputError(f"{shown}: could not be written ({exc.strerror or exc})") from None
        free = free_space(Path(path).parent)
        if free is not None:
            have = os.fstat(fd).st_blocks * 512
            if nbytes - have > free:
                raise full()
    finally:
        os.close(fd)
