"""stem_denoise: denoising of atomic-resolution STEM micrographs.

The Python API (:mod:`stem_denoise.api`) is imported lazily, so ``import stem_denoise`` stays cheap::

    from stem_denoise import Denoiser
    clean = Denoiser.load().denoise(image)
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = ("Denoiser", "dip_denoise", "simulate", "measure_lattice", "evaluate", "psnr")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from stem_denoise import api

        return getattr(api, name)
    raise AttributeError(f"module 'stem_denoise' has no attribute {name!r}")
