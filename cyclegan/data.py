"""Unpaired patch data for CycleGAN training, with a data order that is a pure function of (seed, step, rank).

Patch folders are written by ``scripts/prepare_data.py``: ``DATA/trainA/*.tif`` (noisy micrograph patches),
``DATA/trainB/*.tif`` (clean synthetic-lattice patches), single-channel float32, normalised per whole source
micrograph to about [0, 1] (not clipped), plus ``DATA/manifest.json`` with the global ``patch_px``,
``atoms_per_patch`` and ``period_px``.

Order and augmentation. Sample number ``g = (step * world_size + rank) * batch_size + j`` takes A patch
``perm(seed, epoch)[g mod n_A]`` with ``epoch = g // n_A`` (every A patch once per epoch, ranks interleaved, like
``DistributedSampler`` with ``set_epoch``), a B patch drawn at random from a generator seeded by ``(seed, g)``
(unpaired), and augmentation seeds from the same generator. So the batch of a given step is the same whatever
the number of DataLoader workers, whether the run was resumed, and wherever epoch boundaries fall; the sampler's
whole state is ``(seed, step)``.

Augmentation (albumentations 2.0.8): ``A.RandomCrop`` to ``crop_px`` and ``A.SquareSymmetry`` (the dihedral group
D4: identity, three rotations by 90 degrees, four flips; an alias of ``A.D4``). Both are geometric, so float32
values pass unchanged -- nothing clips. With ``scan_aligned_a`` the A patches get only the flips that keep rows as
rows (identity, either flip, both), so their noise keeps its fast-scan orientation (for a discriminator that judges
the noise: :class:`cyclegan.pairs.NoiseRefiner`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset, Sampler  # noqa: E402

from stem_denoise.common.errors import InputError  # noqa: E402

PATCH_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class DataInfo:
    """Atom scale of a patch folder: patch side in px, atoms per patch side, lattice period in model px."""

    patch_px: int
    atoms_per_patch: float
    period_px: float


def list_patches(folder: str | os.PathLike) -> list[Path]:
    """Sorted list of the TIFF patches in ``folder``; InputError if it is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"patch folder {folder} does not exist (expected DATA/trainA and DATA/trainB "
                         f"written by prepare_data)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PATCH_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"patch folder {folder} holds no .tif patches")
    return files


def read_patch(path: str | os.PathLike) -> np.ndarray:
    """Read one patch as a 2-D float32 array in normalised units; InputError for anything else."""
    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many kinds on damaged files
        raise InputError(f"cannot read patch {path}: {exc}") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputError(f"patch {path} is not single-channel 2-D (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"patch {path} has dtype {arr.dtype}; expected float32 patches normalised per "
                         f"micrograph (as written by prepare_data)")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"patch {path} contains NaN or Inf")
    return arr


def _classic_tiff_dims(path: str | os.PathLike) -> tuple[int, int] | None:
    """(rows, cols) of a single-page, single-sample classic TIFF read straight from its one IFD (tens of
    microseconds: patch folders hold many thousands of files), or None for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8 or head[:2] not in (b"II", b"MM"):
                return None
            bo = "<" if head[:2] == b"II" else ">"
            magic, ifd = struct.unpack(bo + "HI", head[2:8])
            if magic != 42:
                return None
            fh.seek(ifd)
            raw = fh.read(2)
            if len(raw) < 2:
                return None
            (n,) = struct.unpack(bo + "H", raw)
            body = fh.read(12 * n + 4)
            if len(body) < 12 * n + 4:
                return None
    except OSError:
        return None
    tags = {}
    for k in range(n):
        tag, typ, count = struct.unpack(bo + "HHI", body[12 * k:12 * k + 8])
        if tag in (256, 257, 277) and count == 1 and typ in (3, 4):
            fmt = bo + ("H" if typ == 3 else "I")
            tags[tag] = struct.unpack(fmt, body[12 * k + 8:12 * k + 8 + struct.calcsize(fmt)])[0]
    (next_ifd,) = struct.unpack(bo + "I", body[12 * n:12 * n + 4])
    if next_ifd != 0 or 256 not in tags or 257 not in tags or tags.get(277, 1) != 1:
        return None
    return int(tags[257]), int(tags[256])


def patch_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of a patch TIFF from its header, without decoding the pixels; InputError for an unreadable one."""
    dims = _classic_tiff_dims(path)
    if dims is not None:
        return dims
    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(int(v) for v in tif.series[0].shape if int(v) != 1) if tif.series else ()
    except Exception as exc:  # tifffile raises many kinds on damaged files
        raise InputError(f"cannot read patch {path}: {exc}") from None


def check_patch_shapes(files: Sequence[Path], need: tuple[int, int], *, exact: bool) -> None:
    """Refuse, before training starts, a patch that is not 2-D or is smaller than ``need`` (rows, cols), or (with
    ``exact``) of another size. Reads headers only."""
    for f in files:
        shape = patch_shape(f)
        if len(shape) != 2:
            raise InputError(f"patch {f} is not single-channel 2-D (shape {shape})")
        if exact and shape != tuple(need):
            raise InputError(f"patch {f} is {shape[0]}x{shape[1]} px, unlike the others ({need[0]}x{need[1]} px); "
                             f"all patches must have one size (or set crop_px)")
        if shape[0] < need[0] or shape[1] < need[1]:
            raise InputError(f"patch {f} is {shape[0]}x{shape[1]} px, smaller than crop_px={need[0]}: every patch "
                             f"must hold the crop")


def read_data_info(data_dir: str | os.PathLike, *, patch_px: int | None = None,
                   atoms_per_patch: float | None = None, period_px: float | None = None) -> DataInfo:
    """Atom scale of ``data_dir`` from its manifest.json; explicit arguments take precedence.

    Without a manifest, ``patch_px`` defaults to the size of the first trainA patch and ``period_px`` to
    ``patch_px / atoms_per_patch``; if neither ``period_px`` nor ``atoms_per_patch`` is known, InputError.
    """
    data_dir = Path(data_dir)
    manifest = {}
    mpath = data_dir / "manifest.json"
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {mpath}: {exc}") from None
        if not isinstance(manifest, dict):
            raise InputError(f"{mpath} must hold a JSON object")
    patch_px = patch_px or manifest.get("patch_px")
    if patch_px is None:
        patch_px = read_patch(list_patches(data_dir / "trainA")[0]).shape[0]
    atoms = atoms_per_patch or manifest.get("atoms_per_patch")
    period = period_px or manifest.get("period_px")
    if period is None and atoms:
        period = float(patch_px) / float(atoms)
    if atoms is None and period:
        atoms = float(patch_px) / float(period)
    if period is None:
        raise InputError(f"{data_dir} has no manifest.json with period_px; set period_px or atoms_per_patch "
                         f"in the config")
    values = {"patch_px": patch_px, "atoms_per_patch": atoms, "period_px": period}
    for name, v in values.items():
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0
        if not ok:
            raise InputError(f"{mpath if manifest else data_dir}: {name} must be a positive number, got {v!r}")
    if float(patch_px) != int(patch_px):
        raise InputError(f"{mpath}: patch_px must be a whole number of pixels, got {patch_px!r}")
    if not 2.0 <= float(period) <= float(patch_px):
        raise InputError(f"{mpath if manifest else data_dir}: period_px {float(period):g} does not fit patches of "
                         f"{int(patch_px)} px (it must lie between 2 px and the patch side)")
    return DataInfo(patch_px=int(patch_px), atoms_per_patch=float(atoms), period_px=float(period))


def files_digest(files: Sequence[Path]) -> str:
    """Short digest of a list of file names (to notice a patch folder that changed under a resumed run)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def build_augment(crop_px: int | None, *, scan_aligned: bool = False) -> A.Compose:
    """Albumentations pipeline: optional random crop to ``crop_px``, then a random element of the D4 group (with
    ``scan_aligned``: of its subgroup that keeps rows as rows, the horizontal and vertical flips)."""
    transforms = []
    if crop_px is not None:
        transforms.append(A.RandomCrop(height=crop_px, width=crop_px, p=1.0))
    if scan_aligned:
        transforms += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    else:
        transforms.append(A.SquareSymmetry(p=1.0))
    return A.Compose(transforms, seed=0)


class UnpairedPatches(Dataset):
    """Map-style dataset indexed by keys ``(index_a, index_b, seed_a, seed_b)`` from :class:`StepBatchSampler`.

    Returns ``{"A": (1, c, c) float32 tensor, "B": (1, c, c) float32 tensor}`` with ``c = crop_px`` (or the
    patch size). Patches are read lazily, so worker processes share nothing but file names. ``scan_aligned_a``:
    A patches are only flipped, never turned by 90 degrees (module docstring).
    """

    def __init__(self, dir_a: str | os.PathLike, dir_b: str | os.PathLike, *, crop_px: int | None = None,
                 augment: bool = True, scan_aligned_a: bool = False) -> None:
        self.files_a = list_patches(dir_a)
        self.files_b = list_patches(dir_b)
        first_a = read_patch(self.files_a[0])
        first_b = read_patch(self.files_b[0])
        self.crop_px = crop_px
        if crop_px is None and (first_a.shape != first_b.shape or first_a.shape[0] != first_a.shape[1]):
            raise InputError(f"trainA patches {first_a.shape} and trainB patches {first_b.shape} must be the "
                             f"same square size (or set crop_px)")
        # every patch, not only the first: a smaller one found at step 5000 would end the run there
        need = (crop_px, crop_px) if crop_px is not None else first_a.shape
        for files in (self.files_a, self.files_b):
            check_patch_shapes(files, need, exact=crop_px is None)
        self.augment = build_augment(crop_px) if augment else None
        self.augment_a = build_augment(crop_px, scan_aligned=True) if augment and scan_aligned_a else self.augment

    @property
    def n_a(self) -> int:
        return len(self.files_a)

    @property
    def n_b(self) -> int:
        return len(self.files_b)

    def digest(self) -> str:
        return files_digest(self.files_a + self.files_b)

    def __len__(self) -> int:
        return self.n_a

    def _load(self, path: Path, seed: int, augment: A.Compose | None) -> torch.Tensor:
        arr = read_patch(path)
        if augment is not None:
            augment.set_random_seed(seed)
            arr = augment(image=arr)["image"]
        elif self.crop_px is not None:
            arr = arr[: self.crop_px, : self.crop_px]
        if self.crop_px is not None and arr.shape != (self.crop_px, self.crop_px):
            raise InputError(f"patch {path} has shape {arr.shape}, smaller than crop_px={self.crop_px}")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).unsqueeze(0)

    def __getitem__(self, key: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        ia, ib, sa, sb = key
        return {"A": self._load(self.files_a[ia], sa, self.augment_a),
                "B": self._load(self.files_b[ib], sb, self.augment)}


def sample_keys(seed: int, step: int, rank: int, world_size: int, batch_size: int, n_a: int, n_b: int,
                _perm_cache: dict | None = None) -> list[tuple[int, int, int, int]]:
    """Dataset keys of one rank's batch at ``step``: a pure function of its arguments (see module docstring)."""
    keys = []
    for j in range(batch_size):
        g = (step * world_size + rank) * batch_size + j
        epoch, pos = divmod(g, n_a)
        perm = None if _perm_cache is None else _perm_cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([seed, epoch, 0xA]).permutation(n_a)
            if _perm_cache is not None:
                _perm_cache.clear()
                _perm_cache[epoch] = perm
        rng = np.random.default_rng([seed, g, 0xB])
        ib = int(rng.integers(n_b))
        sa, sb = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))
        keys.append((int(perm[pos]), ib, sa, sb))
    return keys


class StepBatchSampler(Sampler):
    """Batch sampler yielding the key lists of steps ``start_step .. total_steps - 1`` for one rank."""

    def __init__(self, n_a: int, n_b: int, *, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n_a, self.n_b = n_a, n_b
        self.batch_size, self.seed = batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        cache: dict = {}
        for step in range(self.start_step, self.total_steps):
            yield sample_keys(self.seed, step, self.rank, self.world_size, self.batch_size, self.n_a, self.n_b,
                              cache)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size}


def make_loader(dataset: UnpairedPatches, sampler: StepBatchSampler, *, num_workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """DataLoader over ``sampler``'s batches. A private torch generator keeps it off the global RNG."""
    gen = torch.Generator()
    gen.manual_seed(sampler.seed)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory, generator=gen,
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
    )


def toy_lattice(shape: tuple[int, int], period_px: float, *, rng: np.random.Generator, angle_deg: float = 0.0,
                sigma_frac: float = 0.18) -> np.ndarray:
    """Noise-free square lattice of Gaussian columns (peak 1, background 0), random phase; float32 (H, W).

    A small stand-in for a simulated micrograph, used by the tests and the training benchmark (real patches come
    from ``scripts/prepare_data.py``). ``period_px``: column spacing in pixels; ``sigma_frac``: column width as a
    fraction of the period.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = np.deg2rad(angle_deg)
    u = (np.cos(t) * xx + np.sin(t) * yy) / period_px + rng.random()
    v = (-np.sin(t) * xx + np.cos(t) * yy) / period_px + rng.random()
    du, dv = u - np.round(u), v - np.round(v)
    r2 = (du ** 2 + dv ** 2) * period_px ** 2
    return np.exp(-r2 / (2 * (sigma_frac * period_px) ** 2)).astype(np.float32)


def toy_dent(shape: tuple[int, int], *, rng: np.random.Generator, depth: float, sigma_px: float) -> np.ndarray:
    """Thickness map (1 = nominal) with one Gaussian dent of relative ``depth`` and width ``sigma_px`` pixels."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    return (1.0 - depth * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma_px ** 2))).astype(np.float32)


def write_toy_patches(out_dir: str | os.PathLike, *, n_a: int = 64, n_b: int = 64, patch_px: int = 32,
                      atoms_per_patch: float = 4.0, noise: float = 0.3, dent_frac: float = 0.0,
                      dent_depth: float = 0.5, dented_b: bool = False, seed: int = 0) -> DataInfo:
    """Write a toy patch folder (``trainA/``, ``trainB/``, ``manifest.json``) in the prepare_data format.

    A patches: a lattice times a thickness map (a Gaussian dent of relative ``dent_depth`` and width 1.5 periods in
    a fraction ``dent_frac`` of them) plus Gaussian noise of standard deviation ``noise`` (normalised units,
    column peak = 1) correlated along rows like a fast scan; B patches: clean lattices (with dents too if
    ``dented_b``). For tests and benchmarks.
    """
    out = Path(out_dir)
    (out / "trainA").mkdir(parents=True, exist_ok=True)
    (out / "trainB").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    period = patch_px / atoms_per_patch
    shape = (patch_px, patch_px)
    for i in range(n_a):
        img = toy_lattice(shape, period, rng=rng)
        if rng.random() < dent_frac:
            img = img * toy_dent(shape, rng=rng, depth=dent_depth, sigma_px=1.5 * period)
        white = rng.normal(0.0, 1.0, size=(patch_px, patch_px + 1))
        correlated = (white[:, 1:] + 0.5 * white[:, :-1]) / np.sqrt(1.25)
        img = (img + noise * correlated).astype(np.float32)
        tifffile.imwrite(out / "trainA" / f"a_{i:05d}.tif", img)
    for i in range(n_b):
        img = toy_lattice(shape, period, rng=rng)
        if dented_b and rng.random() < dent_frac:
            img = img * toy_dent(shape, rng=rng, depth=dent_depth, sigma_px=1.5 * period)
        tifffile.imwrite(out / "trainB" / f"b_{i:05d}.tif", img.astype(np.float32))
    info = DataInfo(patch_px=patch_px, atoms_per_patch=float(atoms_per_patch), period_px=float(period))
    (out / "manifest.json").write_text(json.dumps({"patch_px": patch_px, "atoms_per_patch": atoms_per_patch,
                                                   "period_px": period, "patches": []}, indent=1))
    return info
