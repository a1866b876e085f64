"""Safe checkpoint files: loading with ``weights_only=True``, atomic writing, and the generator export.

Two kinds of file exist, told apart by their ``"kind"`` entry:

* ``stem-denoise-train-checkpoint`` (``RUN_DIR/last.pt``): everything needed to resume training exactly
  (written by :mod:`cyclegan.train`);
* ``stem-denoise-generator`` (``RUN_DIR/generator.pt``): the A -> B generator alone with its architecture and
  the atom scale it was trained at (``info["patch_px"]``, ``info["atoms_per_patch"]``, ``info["period_px"]``, the
  lattice period in the model's pixel space); this is what inference loads.

The project ships one generator export, ``stem_denoise/models/default.pt`` (see ``stem_denoise/models/README.md``);
:func:`default_model_path` finds it (or the file the environment variable ``STEM_DENOISE_MODEL`` names instead).

Every file is read with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers: a
crafted pickle that would run code is refused. Every failure (missing, truncated, unsafe, wrong kind, another
architecture) becomes a :class:`~stem_denoise.common.errors.CheckpointError` with one clear line.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cyclegan.models import GeneratorConfig, build_generator
from stem_denoise.common.atomic import atomic_path
from stem_denoise.common.errors import CheckpointError, ConfigError

DEFAULT_MODEL_ENV = "STEM_DENOISE_MODEL"
DEFAULT_MODEL_RELPATH = Path("stem_denoise") / "models" / "default.pt"
GENERATOR_KIND = "stem-denoise-generator"
TRAIN_KIND = "stem-denoise-train-checkpoint"
FORMAT_VERSION = 1
_REQUIRED_INFO = ("patch_px", "atoms_per_patch", "period_px", "direction")


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (full disk, I/O error); the previous file is left as it was."""


def safe_torch_load(path: str | os.PathLike, *, kind: str | None = None, map_location: Any = "cpu") -> dict:
    """Load a checkpoint dict with ``torch.load(weights_only=True)``; any failure raises CheckpointError.

    With ``kind`` given, the file's ``"kind"`` entry must equal it (a generator export given where a training
    checkpoint is expected, or the reverse, is refused with a message naming both).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(exc).__name__]
        detail = next((ln for ln in lines if "Unsupported global" in ln or "Unsupported operand" in ln), lines[0])
        detail = detail.replace("WeightsUnpickler error: ", "").split(" was not an allowed global")[0]
        if "weights only" in text.lower() or "unsupported" in text.lower():
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects that safe loading does not allow "
                f"(possibly code); only tensors and plain containers are accepted ({detail[:160]})") from None
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid checkpoint ({detail[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or not a checkpoint file ({first[:160]})") from None
    except Exception as exc:  # anything else the unpickler throws on a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:160]}") from None
    if not isinstance(obj, dict) or "kind" not in obj:
        raise CheckpointError(f"{path} is not a stem-denoise checkpoint (no 'kind' entry)")
    if kind is not None and obj["kind"] != kind:
        hint = {
            GENERATOR_KIND: "a generator export (for denoising), not a training checkpoint",
            TRAIN_KIND: "a training checkpoint; inference wants RUN_DIR/generator.pt",
        }.get(obj["kind"], f"of kind {obj['kind']!r}")
        raise CheckpointError(f"{path} is {hint} (expected kind {kind!r})")
    version = obj.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version!r}; this code reads up to {FORMAT_VERSION}")
    return obj


def default_model_path() -> Path:
    """Where the shipped generator export lives: ``stem_denoise/models/default.pt`` (package data, so it
    travels with an installed wheel), or the file named
    by the environment variable ``STEM_DENOISE_MODEL`` when it is set (and not empty). The file may not exist;
    :func:`load_generator` checks."""
    env = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1] / DEFAULT_MODEL_RELPATH


def save_checkpoint(path: str | os.PathLike, obj: dict, *, previous: str | os.PathLike | None = None) -> None:
    """Write ``obj`` with torch.save atomically (temp file, fsync, rename).

    With ``previous`` given, an existing ``path`` is kept as ``previous`` (hard link, or a copy where links are not
    supported) just before the new file takes its place. An OSError (full disk, I/O error) raises
    :class:`CheckpointWriteError`, and ``path`` keeps its previous content.
    """
    path = Path(path)
    try:
        with atomic_path(path, overwrite=True) as tmp:
            torch.save(obj, tmp)
            if previous is not None and path.exists():
                _keep_previous(path, Path(previous))
    except OSError as exc:
        state = "the previous checkpoint is left intact" if path.exists() else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"could not write checkpoint {path} ({exc.strerror or exc}); {state}") from None


def _keep_previous(path: Path, previous: Path) -> None:
    tmp = previous.with_name(f".{previous.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            import shutil

            shutil.copy2(path, tmp)
        os.replace(tmp, previous)
    finally:
        tmp.unlink(missing_ok=True)


def _unwrap(module: nn.Module) -> nn.Module:
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module  # DistributedDataParallel
    return getattr(module, "_orig_mod", module)  # torch.compile


def export_generator(path: str | os.PathLike, generator: nn.Module, gen_cfg: GeneratorConfig, info: dict) -> None:
    """Write the small generator-only file that inference loads (atomically).

    ``info`` must hold ``patch_px``, ``atoms_per_patch``, ``period_px`` (lattice period in the model's pixel space
    = patch_px / atoms_per_patch) and ``direction`` ("A2B"); other plain entries are kept as they are.
    """
    missing = [k for k in _REQUIRED_INFO if k not in info]
    if missing:
        raise ValueError(f"generator export info lacks {missing}")
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in _unwrap(generator).state_dict().items()}
    obj = {
        "kind": GENERATOR_KIND,
        "version": FORMAT_VERSION,
        "generator_config": gen_cfg.to_dict(),
        "state_dict": state,
        "info": dict(info),
    }
    save_checkpoint(path, obj)


def generator_config_from_dict(d: Any, where: str = "generator_config") -> GeneratorConfig:
    """Build a GeneratorConfig from a plain dict, refusing unknown keys and wrong types (ConfigError)."""
    return GeneratorConfig.from_dict(d, where)


def load_generator(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """Load a generator export: returns ``(generator in eval mode on map_location, info dict)``.

    A training checkpoint, a damaged file, or a state dict that does not fit the stored architecture raises
    CheckpointError.
    """
    obj = safe_torch_load(path, kind=GENERATOR_KIND, map_location=map_location)
    try:
        cfg = generator_config_from_dict(obj.get("generator_config"))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: bad generator configuration: {exc}") from None
    info = obj.get("info")
    if not isinstance(info, dict) or any(k not in info for k in _REQUIRED_INFO):
        raise CheckpointError(f"{path}: generator info lacks one of {list(_REQUIRED_INFO)}")
    net = build_generator(cfg)
    try:
        net.load_state_dict(obj["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored architecture "
                              f"({str(exc).splitlines()[0][:200]})") from None
    net.to(map_location).eval()
    return net, dict(info)
