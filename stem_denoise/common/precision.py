"""Numeric precision of the networks on CPU and GPU: one place that decides float32 or bfloat16.

``--precision auto|fp32|bf16`` on the scripts resolves here:

* ``fp32``: float32 everywhere.
* ``bf16``: bfloat16 autocast (convolutions and matrix products in bf16, losses, the generator's residual add and
  every accumulation in float32) plus channels_last memory layout. Allowed on any CPU -- where the CPU has no native
  bf16 instructions it is emulated and *slower* than float32 -- and on CUDA devices that support it.
* ``auto``: bf16 on a CUDA device with bf16 support (fp16 is the training loop's own fallback there) and on a CPU
  with native bf16 matrix instructions (AMX-BF16 or AVX512-BF16, as on current Xeon servers), where it runs the
  generator about 3x faster; float32 on every other CPU (e.g. AVX2-only CPUs, most laptops), where bf16 would
  only cost time.

Detection on CPU asks PyTorch's own CPU-feature probes when this version has them and reads ``/proc/cpuinfo``
otherwise; anything that cannot be determined counts as "no native bf16" (the safe, float32, answer).
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from stem_denoise.common.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    probes = [getattr(torch._C, "_cpu", None)]
    for mod in probes:
        for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            fn = getattr(mod, name, None) if mod is not None else None
            if fn is not None:
                try:
                    if fn():
                        return True
                except Exception:  # a private probe that misbehaves is simply not used
                    pass
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(f in flags for f in _CPU_BF16_FLAGS)
    return False


def resolve_precision(name: str | None, device: torch.device | str) -> torch.dtype | None:
    """Autocast dtype for ``name`` ("auto", "fp32", "bf16"; None = "auto") on ``device``: bf16 or None (float32).

    InputError for an unknown name or bf16 on a CUDA device without bf16 support.
    """
    name = "auto" if name in (None, "") else str(name)
    if name not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    dev = torch.device(device)
    if name == "fp32":
        return None
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if name == "bf16" and not ok:
            raise InputError("precision bf16 requested but this CUDA device does not support bfloat16")
        return torch.bfloat16 if ok else None
    if name == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def describe_precision(dtype: torch.dtype | None) -> str:
    """"bf16" or "fp32", for logs and result files."""
    return "bf16" if dtype == torch.bfloat16 else ("fp16" if dtype == torch.float16 else "fp32")


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` on ``device`` (a no-op context for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
