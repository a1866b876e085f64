"""The one place that turns a device name ("auto", "cpu", "cuda", "cuda:K") into a ``torch.device``."""
from __future__ import annotations

import os

import torch

from stem_denoise.common.errors import ConfigError

__all__ = ["pick_device"]


def pick_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """The device to run on.

    ``"auto"`` (or None, ""): the local CUDA device if there is one, else the CPU. The local device is
    ``local_rank`` when given (a distributed run), else ``LOCAL_RANK`` (set by torchrun) modulo the visible GPUs.
    ``"cuda"`` without an index is the ``local_rank``-th GPU when ``local_rank`` is given. A device that is not
    a CPU or a visible CUDA device raises :class:`ConfigError` (an :class:`InputError`).
    """
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "auto")):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        rank = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", 0) or 0)
        return torch.device("cuda", rank % torch.cuda.device_count())
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown device {name!r}: {' '.join(str(exc).split())}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {str(name)!r}; use auto, cpu, cuda or cuda:K")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(name)!r} requested but CUDA is not available")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(name)!r} requested but only {torch.cuda.device_count()} GPU(s) are "
                              "visible")
    return dev
