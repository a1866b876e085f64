"""Shared plumbing for the command-line scripts.

``run_main(main)`` runs a script's ``main(argv)`` and maps failures to exit codes:

* :class:`~stem_denoise.common.errors.InputError` -> one line ``error: ...`` on stderr, exit 2;
* ``KeyboardInterrupt`` -> one line, exit 130;
* argparse usage errors keep argparse's own exit code 2;
* a :class:`~stem_denoise.common.errors.MetadataWarning` is printed as one ``warning: ...`` line.

Batch scripts report each file that fails with :func:`report_error` (one ``error: ...`` line naming the file),
go on with the others and return exit status 2 at the end when any failed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import Callable, Iterator, Sequence

from stem_denoise.common.errors import InputError, MetadataWarning

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(message).split())


def report_error(message: object) -> None:
    """Print ``error: message`` as one line on stderr (a batch goes on with its next file)."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()


def warn(message: object) -> None:
    """Print ``warning: message`` as one line on stderr."""
    sys.stderr.write(f"warning: {one_line(message)}\n")
    sys.stderr.flush()


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    report_error(message)
    raise SystemExit(code)


@contextlib.contextmanager
def _one_line_metadata_warnings() -> Iterator[None]:
    """Show :class:`MetadataWarning` as ``warning: ...`` lines, each message once per run (a file's header and
    its pixels may be read apart); other warnings as before."""
    seen: set[str] = set()
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        original = warnings.showwarning
        warnings.simplefilter("always", MetadataWarning)

        def show(message, category, filename, lineno, file=None, line=None):
            if isinstance(category, type) and issubclass(category, MetadataWarning):
                if str(message) not in seen:
                    seen.add(str(message))
                    warn(message)
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``error: ...; see --help``), exit 2."""

    def error(self, message: str) -> "NoReturn":  # noqa: F821
        fail(f"{message} (see {self.prog} --help)", 2)


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` and exit with its status, turning user errors into one clear line."""
    try:
        with _one_line_metadata_warnings():
            code = main(argv)
    except InputError as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    raise SystemExit(int(code or 0))
