"""Unpaired dataset: data order as a pure function of (seed, step, rank), D4 + crop augmentation, no clipping."""
import json

import numpy as np
import pytest
import tifffile
import torch

from cyclegan.data import StepBatchSampler, UnpairedPatches, make_loader, read_data_info, sample_keys, write_toy_patches
from stem_denoise.common.errors import InputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_patches(root, n_a=10, n_b=7, patch_px=16, atoms_per_patch=2, seed=0)
    return root


def test_keys_pure_function_and_sharded_like_distributed_sampler():
    args = dict(seed=3, batch_size=4, n_a=10, n_b=7)
    one = sample_keys(step=5, rank=0, world_size=1, **args)
    assert one == sample_keys(step=5, rank=0, world_size=1, **args)
    assert one != sample_keys(step=6, rank=0, world_size=1, **args)
    assert sample_keys(step=5, rank=0, world_size=1, **{**args, "seed": 4}) != one
    # two ranks with batch b draw exactly the samples one process with batch 2b draws
    two = sample_keys(step=5, rank=0, world_size=2, **args) + sample_keys(step=5, rank=1, world_size=2, **args)
    assert two == sample_keys(step=5, rank=0, world_size=1, **{**args, "batch_size": 8})
    # an epoch visits every A patch exactly once, across ranks; B indices are random but valid
    n_a, b, world = 12, 3, 2
    seen = []
    for step in range(n_a // (b * world)):
        for rank in range(world):
            keys = sample_keys(1, step, rank, world, b, n_a, 5)
            seen += [k[0] for k in keys]
            assert all(0 <= k[1] < 5 for k in keys)
    assert sorted(seen) == list(range(n_a))


def test_sampler_resumes_mid_epoch_identically():
    full = list(StepBatchSampler(10, 7, batch_size=3, seed=0, start_step=0, total_steps=9))
    tail = list(StepBatchSampler(10, 7, batch_size=3, seed=0, start_step=5, total_steps=9))
    assert len(full) == 9 and tail == full[5:]


def test_items_float32_cropped_dihedral_and_unclipped(tmp_path):
    (tmp_path / "trainA").mkdir()
    (tmp_path / "trainB").mkdir()
    rr, cc = np.mgrid[0:16, 0:16]
    # a checkerboard of -0.5 and 2.0 (outside [0, 1]) plus a unique ramp that identifies every pixel
    patch = (np.where((rr + cc) % 2, 2.0, -0.5) + (rr * 16 + cc) / 1000.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "trainA" / "a.tif", patch)
    tifffile.imwrite(tmp_path / "trainB" / "b.tif", patch)
    ds = UnpairedPatches(tmp_path / "trainA", tmp_path / "trainB", crop_px=12)
    views = set()
    for seed in range(60):
        item = ds[(0, 0, seed, seed + 1)]
        a = item["A"]
        assert a.dtype == torch.float32 and a.shape == (1, 12, 12)
        a = a[0].numpy()
        assert a.min() >= -0.5 and a.max() <= 2.26 and (a > 2).any() and (a < 0).any()  # values kept as they are
        # the item is one of the 8 dihedral images of some 12 x 12 window of the patch
        found = None
        for k in range(4):
            for flip in (False, True):
                v = np.rot90(a, -k)
                v = v[:, ::-1] if flip else v
                pos = np.argwhere(np.isclose(patch, v[0, 0]))
                if len(pos) == 1:
                    r, c = pos[0]
                    if r + 12 <= 16 and c + 12 <= 16 and np.array_equal(patch[r:r + 12, c:c + 12], v):
                        found = (k, flip, r, c)
        assert found is not None
        views.add(found[:2])
        assert torch.equal(ds[(0, 0, seed, 0)]["A"], item["A"])  # same seed, same view
    assert len(views) == 8  # all of the dihedral group turns up


def test_loader_same_batches_with_and_without_workers(toy):
    ds = UnpairedPatches(toy / "trainA", toy / "trainB", crop_px=12)
    batches = []
    for workers in (0, 1):
        sampler = StepBatchSampler(ds.n_a, ds.n_b, batch_size=4, seed=2, start_step=3, total_steps=6)
        batches.append([b for b in make_loader(ds, sampler, num_workers=workers)])
    assert len(batches[0]) == 3
    for b0, b1 in zip(*batches):
        assert torch.equal(b0["A"], b1["A"]) and torch.equal(b0["B"], b1["B"])
        assert b0["A"].shape == (4, 1, 12, 12)


def test_data_info_from_manifest_and_overrides(toy, tmp_path):
    info = read_data_info(toy)
    assert (info.patch_px, info.atoms_per_patch, info.period_px) == (16, 2.0, 8.0)
    assert read_data_info(toy, period_px=5.0).period_px == 5.0
    (tmp_path / "trainA").mkdir()
    tifffile.imwrite(tmp_path / "trainA" / "a.tif", np.zeros((20, 20), np.float32))
    with pytest.raises(InputError, match="period_px"):
        read_data_info(tmp_path)
    assert read_data_info(tmp_path, atoms_per_patch=4).period_px == 5.0
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest"):
        read_data_info(tmp_path)


def test_bad_patch_folders(tmp_path, toy):
    with pytest.raises(InputError, match="does not exist"):
        UnpairedPatches(tmp_path / "nope", toy / "trainB")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .tif"):
        UnpairedPatches(tmp_path / "empty", toy / "trainB")
    (tmp_path / "ints").mkdir()
    tifffile.imwrite(tmp_path / "ints" / "a.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match="float32"):
        UnpairedPatches(tmp_path / "ints", toy / "trainB")
    with pytest.raises(InputError, match="smaller than crop_px"):
        UnpairedPatches(toy / "trainA", toy / "trainB", crop_px=32)
    (tmp_path / "nan").mkdir()
    tifffile.imwrite(tmp_path / "nan" / "a.tif", np.full((16, 16), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        UnpairedPatches(tmp_path / "nan", toy / "trainB")


def test_toy_manifest_matches_contract(toy):
    manifest = json.loads((toy / "manifest.json").read_text())
    for key in ("patch_px", "atoms_per_patch", "period_px"):
        assert key in manifest
    assert tifffile.imread(next((toy / "trainA").iterdir())).dtype == np.float32
