"""Stitched tile inference: identity, constants, tiled == whole for a trained generator, no seams, columns kept."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import tifffile
import torch

from cyclegan.checkpoint import export_generator, load_generator
from cyclegan.infer import (
    Resampler,
    denoise_array,
    denoise_file,
    make_tile_fn,
    measure_receptive_field,
    pick_device,
    plan_tiles,
    resample_operator,
    shard,
)
from cyclegan.models import GeneratorConfig, build_generator, generator_receptive_field
from data_prep.io import MicrographMeta, read_micrograph, write_micrograph
from data_prep.normalize import robust_range
from data_prep.simulate import simulate
from stem_denoise.common.columns import find_columns, match_columns
from stem_denoise.common.errors import InputError
from stem_denoise.common.tiling import TileGrid, map_tiles
from stem_denoise.evaluation.inference import train_supervised

MODEL_PERIOD = 12.8
INFO = dict(patch_px=64, atoms_per_patch=5, period_px=MODEL_PERIOD, direction="A2B")
TINY = GeneratorConfig(width=8, n_blocks=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, and the test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained():
    """A tiny generator trained for 60 Adam steps to map noisy simulated lattices to their noise-free truth."""
    pairs = []
    for s in range(3):
        r = simulate(shape=(192, 192), period_px=MODEL_PERIOD, angle_deg=10 + 20 * s, dose=8, dents=1, seed=100 + s)
        lo, hi = robust_range(r.noisy)
        pairs.append(((r.noisy - lo) / (hi - lo), (r.truth - lo) / (hi - lo)))
    g, losses = train_supervised(pairs, TINY, steps=60, crop=48, batch=8, lr=3e-3, seed=0)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])  # it did learn something
    assert float(g.head.weight.detach().abs().max()) > 0  # not the identity it started as
    return g


def psnr(a, b):
    mse = float(np.mean((np.asarray(a, np.float64) - b) ** 2))
    rng = float(b.max() - b.min())
    return np.inf if mse == 0 else 10 * np.log10(rng ** 2 / mse)


# ----------------------------------------------------------------------------------------------- receptive field


@pytest.mark.parametrize("cfg", [TINY, GeneratorConfig(width=4, n_blocks=2, n_down=2),
                                 GeneratorConfig(width=4, n_down=0)])
def test_receptive_field_measured_matches_architecture(cfg):
    g = build_generator(cfg)  # identity at start (zero head): the measurement must still see the architecture
    assert measure_receptive_field(g) == (generator_receptive_field(cfg) - 1) // 2


def test_plan_tiles_follows_receptive_field():
    g = build_generator(TINY)
    plan = plan_tiles(g)
    assert plan.rf_radius == 13 and plan.align == 2
    assert plan.margin >= plan.rf_radius and plan.margin % plan.align == 0
    assert plan.overlap > 2 * plan.margin and plan.overlap % 2 == 0 and plan.tile % 2 == 0
    assert plan.tile > 2 * plan.overlap
    with pytest.raises(InputError, match="receptive field"):
        plan_tiles(g, overlap=2 * plan.margin)
    with pytest.raises(InputError, match="larger than the overlap"):
        plan_tiles(g, tile=plan.overlap)


# ----------------------------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("shape", [(123, 301), (300, 77), (20, 33), (1, 1)])
def test_identity_generator_reproduces_input(shape):
    """The real architecture with its zero-initialised head is exactly the identity."""
    g = build_generator(TINY)
    x = np.random.default_rng(0).normal(500.0, 80.0, shape).astype(np.float32)
    y = denoise_array(x, g, INFO, period_px=MODEL_PERIOD, tile=64, lo_hi=(300.0, 700.0))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-4)  # (x - lo) / s * s + lo in float32 on values ~500


def test_identity_with_tta_is_identity():
    g = build_generator(TINY)
    x = np.random.default_rng(1).normal(size=(70, 90)).astype(np.float32)
    y = denoise_array(x, g, INFO, period_px=MODEL_PERIOD, tile=48, tta=True, lo_hi=(-3.0, 3.0))
    np.testing.assert_allclose(y, x, atol=1e-5)


@pytest.mark.parametrize("period", [MODEL_PERIOD, 20.0, 7.0])
def test_constant_image_stays_constant(trained, period):
    g = build_generator(TINY)  # identity network; with resampling on the way in and out (period != 12.8)
    x = np.full((150, 211), 812.0, np.float32)
    y = denoise_array(x, g, INFO, period_px=period, tile=64, lo_hi=(0.0, 1000.0))
    np.testing.assert_allclose(y, 812.0, rtol=2e-6)
    # the trained network maps a constant to a constant (up to its own image-border effects)
    z = denoise_array(x, trained, INFO, period_px=MODEL_PERIOD, tile=64, lo_hi=(0.0, 1000.0))
    interior = z[20:-20, 20:-20]
    assert np.ptp(interior) < 1e-3 * 1000.0


@pytest.mark.parametrize("period, tile", [(MODEL_PERIOD, 64), (20.0, 48), (9.0, 96)])
def test_tiled_equals_whole_image_for_trained_generator(trained, period, tile):
    r = simulate(shape=(230, 317), period_px=period, angle_deg=23, dose=10, dents=1, seed=3)
    stats = {}
    tiled = denoise_array(r.noisy, trained, INFO, period_px=period, tile=tile, batch_size=5, stats=stats)
    whole = denoise_array(r.noisy, trained, INFO, period_px=period, whole=True)
    assert stats["n_tiles"] >= 6  # really stitched
    assert np.abs(whole - r.noisy).mean() > 0.05 * r.noisy.std()  # the network does change the image
    assert psnr(tiled, whole) >= 50.0


def test_too_small_overlap_would_show_and_is_refused(trained):
    """With the blend margin below the receptive field the tiles differ from the whole image; the planner refuses it."""
    r = simulate(shape=(160, 200), period_px=MODEL_PERIOD, angle_deg=23, dose=10, seed=4)
    lo, hi = robust_range(r.noisy)
    x = (r.noisy - lo) / (hi - lo)
    fn = make_tile_fn(trained, torch.device("cpu"))
    whole = fn(x[None])[0]
    plan = plan_tiles(trained, tile=48)
    good = map_tiles(x, fn, tile=plan.tile, overlap=plan.overlap, margin=plan.margin, align=plan.align)
    assert np.abs(good - whole).max() < 1e-5
    cut = map_tiles(x, fn, tile=48, overlap=0, margin=0, align=2)  # tiles side by side
    assert psnr(cut, whole) < 50.0
    leaky = map_tiles(x, fn, tile=48, overlap=8, margin=0, align=2)  # blended, but over the tiles' edges
    assert np.abs(leaky - whole).max() > 1e-2
    with pytest.raises(InputError):
        plan_tiles(trained, tile=48, overlap=8)


def seam_ratio(out: np.ndarray, grid: TileGrid, axis: int) -> float:
    """Mean |gradient| across tile edges over mean |gradient| across every other line, along ``axis``."""
    d = np.abs(np.diff(out.astype(np.float64), axis=axis)).mean(axis=1 - axis)
    n = out.shape[axis]
    starts = grid.col_starts if axis == 1 else grid.row_starts
    lines = sorted({e - 1 for s in starts for e in (s, s + grid.tile) if 0 < e < n})
    mask = np.zeros(n - 1, bool)
    mask[lines] = True
    assert mask.sum() >= 4
    return float(d[mask].mean() / d[~mask].mean())


def test_no_seam_on_denoised_simulated_micrograph(trained):
    r = simulate(shape=(400, 520), period_px=MODEL_PERIOD, angle_deg=17, dose=10, dents=2, seed=5)
    stats = {}
    out = denoise_array(r.noisy, trained, INFO, period_px=MODEL_PERIOD, tile=96, stats=stats)
    p = stats["plan"]
    grid = TileGrid.plan(out.shape, tile=p["tile"], overlap=p["overlap"], margin=p["margin"], align=p["align"])
    for axis in (0, 1):
        assert abs(seam_ratio(out, grid, axis) - 1.0) <= 0.05
    # the reference recipe's way (5 x 5-atom crops side by side, each normalised on its own) fails the same measure
    lo, hi = robust_range(r.noisy)

    def per_tile(batch):
        res = []
        for t in batch:
            tlo, thi = np.percentile(t, [0.5, 99.5])
            with torch.no_grad():
                y = trained(torch.from_numpy((t - tlo) / (thi - tlo))[None, None].float())[0, 0].numpy()
            res.append(y * (hi - lo) + lo)
        return np.stack(res)

    naive = map_tiles(r.noisy, per_tile, tile=64, overlap=0)
    naive_grid = TileGrid.plan(out.shape, tile=64, overlap=0)
    assert max(abs(seam_ratio(naive, naive_grid, a) - 1.0) for a in (0, 1)) > 0.2


@pytest.mark.parametrize("period", [MODEL_PERIOD, 18.0])
def test_columns_keep_their_place_and_order(trained, period):
    """Every true column is found once in the stitched output, near its true place; no extra column inside."""
    r = simulate(shape=(300, 420), period_px=period, angle_deg=17, dose=30, dents=2, vacancy_frac=0.02, seed=6)
    out = denoise_array(r.noisy, trained, INFO, period_px=period, tile=64)
    found = find_columns(out, period)
    fi, ti, dist = match_columns(found, r.columns, period / 3)

    def inside(p):
        return (p[:, 0] >= period) & (p[:, 0] < out.shape[0] - period) & (p[:, 1] >= period) & (
            p[:, 1] < out.shape[1] - period)

    lost = np.setdiff1d(np.arange(len(r.columns)), ti)
    extra = np.setdiff1d(np.arange(len(found)), fi)
    assert inside(r.columns[lost]).sum() == 0
    assert inside(found[extra]).sum() == 0
    assert np.sqrt(np.mean(dist ** 2)) < 0.05 * period
    # and the stitched output shows exactly the columns the whole-image output shows
    whole = denoise_array(r.noisy, trained, INFO, period_px=period, whole=True)
    np.testing.assert_allclose(find_columns(whole, period), found, atol=1e-3)


def test_tta_is_equivariant_to_rotations_and_flips(trained):
    x = simulate(shape=(96, 128), period_px=MODEL_PERIOD, angle_deg=11, dose=10, seed=7).noisy
    kw = dict(period_px=MODEL_PERIOD, whole=True, tta=True, lo_hi=robust_range(x))
    y = denoise_array(x, trained, INFO, **kw)
    np.testing.assert_allclose(denoise_array(np.rot90(x).copy(), trained, INFO, **kw), np.rot90(y), atol=1e-4)
    np.testing.assert_allclose(denoise_array(x[:, ::-1].copy(), trained, INFO, **kw), y[:, ::-1], atol=1e-4)
    plain = denoise_array(x, trained, INFO, period_px=MODEL_PERIOD, whole=True, lo_hi=kw["lo_hi"])
    assert np.abs(plain - y).max() > 1e-3  # the averaging does something for a trained network


# ----------------------------------------------------------------------------------------------- resampling


def test_resampler_strips_equal_the_whole_operator():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(97, 131)).astype(np.float32)
    for hm, wm in [(41, 57), (200, 262), (97, 131)]:
        rows, cols = resample_operator(97, hm), resample_operator(131, wm)
        view = Resampler(x, rows, cols, offset=1.0, scale=2.0)
        whole = view[0:hm]
        strips = np.concatenate([view[a:a + 13] for a in range(0, hm, 13)])
        np.testing.assert_array_equal(strips, whole)
        if hm != 97:
            dense = rows.matrix.toarray() @ ((x - 1.0) / 2.0) @ cols.matrix.toarray().T
            np.testing.assert_allclose(whole, dense, atol=1e-5)
        const = Resampler(np.full((97, 131), 5.0, np.float32), rows, cols)[0:hm]
        np.testing.assert_allclose(const, 5.0, rtol=1e-6)


def test_resampling_down_and_up_keeps_a_smooth_lattice():
    yy, xx = np.mgrid[0:300, 0:300]
    x = (np.cos(2 * np.pi * (yy * 0.3 + xx) / 25.0) + np.cos(2 * np.pi * (xx * -0.3 + yy) / 25.0)).astype(np.float32)
    g = build_generator(TINY)  # identity
    y = denoise_array(x, g, INFO, period_px=25.0, tile=64, lo_hi=(-2.0, 2.0))  # scale 0.512 and back
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(y - x)[inner].max() < 0.02 * np.ptp(x)


# ----------------------------------------------------------------------------------------------- files


def test_denoise_file_streamed_equals_in_memory(tmp_path, trained):
    r = simulate(shape=(200, 260), period_px=15.0, angle_deg=9, dose=10, seed=9)
    meta = MicrographMeta(source_dtype="uint16", pixel_size=12.5, unit="pm", path="", shape=(200, 260))
    src = tmp_path / "in16.tif"
    write_micrograph(src, r.noisy * 50.0, meta)
    ckpt = tmp_path / "g.pt"
    export_generator(ckpt, trained, TINY, INFO)
    g, info = load_generator(ckpt)
    a = denoise_file(src, tmp_path / "mem.tif", g, info, tile=64)
    b = denoise_file(src, tmp_path / "stream.tif", g, info, tile=64, stream_bytes=0)
    assert not a["streamed"] and b["streamed"]
    ya, ma = read_micrograph(tmp_path / "mem.tif")
    yb, mb = read_micrograph(tmp_path / "stream.tif")
    assert ma.source_dtype == mb.source_dtype == "uint16"
    assert ma.pixel_size == pytest.approx(12.5) and mb.pixel_size == pytest.approx(12.5) and mb.unit == "pm"
    np.testing.assert_array_equal(ya, yb)
    c = denoise_file(src, tmp_path / "f32.tif", g, info, tile=64, float32=True, stream_bytes=0)
    assert c["dtype"] == "float32" and tifffile.imread(tmp_path / "f32.tif").dtype == np.float32
    with pytest.raises(InputError, match="exists"):
        denoise_file(src, tmp_path / "mem.tif", g, info)
    assert not list(tmp_path.glob(".*.tmp"))


def test_shard_splits_files_between_ranks():
    files = [f"f{i}" for i in range(11)]
    parts = [shard(files, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(files)
    assert parts[1] == files[1::3]
    with pytest.raises(InputError):
        shard(files, 3, 3)


def test_bad_arguments():
    g = build_generator(TINY)
    x = np.ones((50, 50), np.float32)
    with pytest.raises(InputError, match="2-D"):
        denoise_array(np.ones((2, 5, 5), np.float32), g, INFO, period_px=12.8)
    with pytest.raises(InputError, match="period"):
        denoise_array(x, g, INFO, period_px=-1.0)
    with pytest.raises(InputError, match="period_px"):
        denoise_array(x, g, {"patch_px": 64}, period_px=12.8)
    with pytest.raises(InputError, match="constant"):
        denoise_array(x, g, INFO, period_px=12.8)
    with pytest.raises(InputError, match="batch size"):
        denoise_array(x, g, INFO, period_px=12.8, lo_hi=(0.0, 2.0), batch_size=0)
    with pytest.raises(InputError, match="device"):
        denoise_array(x, g, INFO, period_px=12.8, lo_hi=(0.0, 2.0), device="tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            pick_device("cuda")
    assert pick_device("cpu").type == "cpu"


# ----------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize("period, tile", [(MODEL_PERIOD, 64), (20.0, 48)])
def test_bf16_tiled_equals_whole_image(trained, period, tile):
    """bf16 autocast (emulated where the CPU has no bf16 instructions: only slower) keeps tiles seamless."""
    r = simulate(shape=(150, 190), period_px=period, angle_deg=23, dose=10, dents=1, seed=3)
    stats = {}
    tiled = denoise_array(r.noisy, trained, INFO, period_px=period, tile=tile, batch_size=3, stats=stats,
                          precision="bf16")
    whole = denoise_array(r.noisy, trained, INFO, period_px=period, whole=True, precision="bf16")
    assert stats["precision"] == "bf16" and stats["n_tiles"] >= 4
    assert tiled.dtype == np.float32 and np.isfinite(tiled).all()
    assert psnr(tiled, whole) >= 50.0


def test_bf16_output_is_close_to_fp32(trained):
    r = simulate(shape=(160, 200), period_px=16.0, angle_deg=31, dose=10, dents=1, seed=11)
    fp32 = denoise_array(r.noisy, trained, INFO, period_px=16.0, tile=64, precision="fp32")
    bf16 = denoise_array(r.noisy, trained, INFO, period_px=16.0, tile=64, precision="bf16")
    assert bf16.dtype == np.float32
    assert not np.array_equal(bf16, fp32)  # bf16 really ran
    assert psnr(bf16, fp32) >= 45.0
    # the network's change of the image is kept, not only the input carried through the residual path
    change = fp32 - r.noisy
    assert np.corrcoef((bf16 - r.noisy).ravel(), change.ravel())[0, 1] > 0.99


def test_fp32_is_the_plain_float32_network_and_auto_follows_the_cpu(trained):
    """precision fp32 runs exactly the float32 network (as before precision existed); "auto" on a CPU picks bf16
    only with native bf16 instructions."""
    from stem_denoise.common.precision import cpu_has_native_bf16

    x = np.random.default_rng(12).random((2, 40, 56)).astype(np.float32)
    fn = make_tile_fn(trained, torch.device("cpu"), precision="fp32")
    assert fn.precision == "fp32"
    net = copy.deepcopy(trained).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)[:, None].contiguous(memory_format=torch.channels_last))[:, 0].numpy()
    np.testing.assert_array_equal(fn(x), ref)
    auto = make_tile_fn(trained, torch.device("cpu"))
    assert auto.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    if not cpu_has_native_bf16():
        np.testing.assert_array_equal(auto(x), ref)
    with pytest.raises(InputError, match="precision"):
        make_tile_fn(trained, torch.device("cpu"), precision="fp16")
    with pytest.raises(InputError, match="precision"):
        denoise_array(x[0], trained, INFO, period_px=MODEL_PERIOD, lo_hi=(0.0, 1.0), precision="half")
