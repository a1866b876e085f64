"""Shared plumbing for the command-line scripts.

``run_main(main)`` runs a script's ``main(argv)`` and maps failures to exit codes:

* :class:`~stem_denoise.common.errors.InputError` -> one line ``error: ...`` on stderr, exit 2;
* ``KeyboardInterrupt`` -> one line, exit 130;
* argparse usage errors keep argparse's own exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from stem_denoise.common.errors import InputError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    raise SystemExit(code)


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
        code = main(argv)
    except InputError as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    raise SystemExit(int(code or 0))
