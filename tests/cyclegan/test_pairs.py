"""The stochastic clean-to-noisy generator F (noise layer), scale in the loop, and the synthetic clean scenes."""
import math

import numpy as np
import pytest
import torch

from cyclegan.infer import Resampler, resample_operator
from cyclegan.pairs import NoiseRanges, SyntheticPairs, draw_noise, make_pair, resample, stem_noise, step_generator
from cyclegan.synth import KINDS, SceneBank, render_scene
from stem_denoise.common.columns import find_columns


def _lag1(r: np.ndarray, axis: int) -> float:
    a = np.moveaxis(r, axis, -1)
    return float(np.corrcoef(a[..., 1:].ravel(), a[..., :-1].ravel())[0, 1])


@pytest.mark.parametrize("dose,read,rho_r,rho_c", [(10.0, 0.5, 0.3, -0.1), (3.0, 0.0, 0.0, 0.0),
                                                   (40.0, 1.2, -0.25, 0.2)])
def test_noise_layer_has_the_requested_statistics(dose, read, rho_r, rho_c):
    level = 0.7
    clean = torch.full((384, 384), level)
    g = torch.Generator().manual_seed(1)
    noisy = stem_noise(clean, {"dose": dose, "read_noise": read, "corr_row": rho_r, "corr_col": rho_c}, g)
    r = (noisy - clean).numpy() * dose  # in counts
    assert abs(r.mean()) < 0.05 * math.sqrt(dose * level)
    assert r.var() == pytest.approx(dose * level + read ** 2, rel=0.05)  # Poisson + read, variance kept
    assert _lag1(r, 1) == pytest.approx(rho_r, abs=0.02)
    assert _lag1(r, 0) == pytest.approx(rho_c, abs=0.02)


def test_noise_layer_row_offsets_and_fresh_noise():
    clean = torch.full((512, 256), 1.0)
    params = {"dose": 20.0, "read_noise": 0.0, "corr_row": 0.0, "corr_col": 0.0, "row_offset": 0.05}
    g = torch.Generator().manual_seed(3)
    a = stem_noise(clean, params, g)
    b = stem_noise(clean, params, g)
    assert not torch.equal(a, b)  # fresh noise at every call
    row_means = ((a - clean) * 20.0).mean(dim=1).numpy()
    expected = math.sqrt((0.05 * 20.0) ** 2 + 20.0 / 256)  # offset std plus the pixel noise averaged over a row
    assert row_means.std() == pytest.approx(expected, rel=0.15)
    # same generator state, same noise
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(stem_noise(clean, params, g1), stem_noise(clean, params, g2))


def test_torch_resampler_is_the_inference_resampler():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(37, 37)).astype(np.float32)
    for n_out in (80, 37, 16):
        ours = resample(torch.from_numpy(img), n_out).numpy()
        ref = Resampler(img, resample_operator(37, n_out), resample_operator(37, n_out))[0:n_out]
        np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_scale_in_the_loop_correlates_upsampled_noise_as_inference_does():
    # White noise at a native period of 6 px, upsampled to the model's 12.8 px: neighbouring model pixels
    # become strongly correlated, exactly as the inference resampler makes them.
    scene = np.full((200, 200), 0.5, np.float32)
    g = torch.Generator().manual_seed(0)
    noise = {"dose": 20.0, "read_noise": 0.0, "corr_row": 0.0, "corr_col": 0.0, "row_offset": 0.0,
             "clean": False}
    x, y = make_pair(scene, 6.0, 12.8, 96, g, noise, scale_jitter=0.0, norm_jitter=0.0)
    assert x.shape == y.shape == (96, 96)
    r = (x - y).numpy()
    assert _lag1(r, 1) > 0.6 and _lag1(r, 0) > 0.6
    # and at the native scale the same noise is white
    x2, y2 = make_pair(scene, 12.8, 12.8, 96, g, noise, scale_jitter=0.0, norm_jitter=0.0)
    assert abs(_lag1((x2 - y2).numpy(), 1)) < 0.05
    # the ablation (noise added at the model's scale) never shows the model interpolated noise
    x3, y3 = make_pair(scene, 6.0, 12.8, 96, g, noise, scale_jitter=0.0, norm_jitter=0.0, scale_in_loop=False)
    assert x3.shape == (96, 96) and abs(_lag1((x3 - y3).numpy(), 1)) < 0.05


def test_noise_offset_is_the_zero_count_level():
    clean = torch.full((256, 256), 0.3)
    g = torch.Generator().manual_seed(0)
    noisy = stem_noise(clean, {"dose": 50.0, "offset": 0.1}, g)  # 50 counts per unit above 0.1: 10 counts
    r = (noisy - clean).numpy() * 50.0
    assert abs(float(noisy.mean()) - 0.3) < 0.003 and r.var() == pytest.approx(10.0, rel=0.06)


def test_make_pair_clean_sample_is_identity_and_normalised_like_inference():
    rng = np.random.default_rng(0)
    scene = render_scene(rng, 10.0, 160, "square")
    g = torch.Generator().manual_seed(0)
    x, y = make_pair(scene.image, scene.period_px, 12.8, 64, g, {"clean": True, "dose": 1.0}, norm_jitter=0.0)
    assert torch.equal(x, y)
    # normalised by the crop's robust range: values span about [0, 1]
    assert -0.2 < float(x.min()) < 0.2 and 0.8 < float(np.percentile(x.numpy(), 99.9)) < 1.3


@pytest.mark.parametrize("weight,coef", [(0.5, 0.9), (0.85, 0.93)])
def test_scan_streaks_correlate_the_rows_far_and_keep_the_variance(weight, coef):
    clean = torch.full((256, 512), 1.0)
    g = torch.Generator().manual_seed(4)
    r = ((stem_noise(clean, {"dose": 20.0, "streak_weight": weight, "streak_coef": coef}, g) - clean) * 20.0).numpy()
    assert r.var() == pytest.approx(20.0, rel=0.05)  # Poisson variance kept
    v = r.var()
    lags = [float((r[:, k:] * r[:, :-k]).mean() / v) for k in (1, 2, 4, 8)]
    assert lags[0] > 0.4 and lags[3] > 0.15  # correlated far along the rows, unlike an MA(1) (0 beyond lag 1)
    assert lags[0] > lags[1] > lags[2] > lags[3]  # decaying with distance
    assert abs(_lag1(r, 0)) < 0.03  # not down the columns
    # a model of a real frame's profile: weight 0.85, coef 0.93 gives about 0.7 at lag 1 and 0.4 at lag 8
    if weight == 0.85:
        assert lags[0] == pytest.approx(0.71, abs=0.05) and lags[3] == pytest.approx(0.42, abs=0.05)


def test_streaks_are_drawn_only_when_asked_and_leave_older_draws_unchanged():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = [draw_noise(g1, NoiseRanges()) for _ in range(50)]
    assert not any("streak_weight" in d for d in plain)
    # the draws of a run without streaks do not depend on the streak ranges (older runs resume exactly)
    assert plain == [draw_noise(g2, NoiseRanges(streak_weight=(0.1, 0.2), streak_coef=(0.3, 0.4)))
                     for _ in range(50)]
    g = torch.Generator().manual_seed(6)
    draws = [draw_noise(g, NoiseRanges(streak_frac=0.5, white_frac=0.2)) for _ in range(400)]
    streaky = [d for d in draws if "streak_weight" in d]
    assert 0.3 < len(streaky) / len(draws) < 0.5  # half of the correlated 80 %
    assert all(0.2 <= d["streak_weight"] <= 0.9 and 0.5 <= d["streak_coef"] <= 0.95 for d in streaky)
    assert all(d["corr_row"] != 0.0 or d["corr_col"] != 0.0 for d in streaky)  # never on a white sample


def test_draw_noise_respects_ranges():
    ranges = NoiseRanges(dose=(2.0, 8.0), read_noise=(0.1, 0.2), white_frac=0.0, clean_frac=0.0)
    g = torch.Generator().manual_seed(0)
    draws = [draw_noise(g, ranges) for _ in range(200)]
    doses = np.array([d["dose"] for d in draws])
    assert doses.min() >= 2.0 and doses.max() <= 8.0 and np.median(doses) == pytest.approx(4.0, rel=0.2)
    assert all(0.1 <= d["read_noise"] <= 0.2 and not d["clean"] for d in draws)
    assert all(-0.3 <= d["corr_row"] <= 0.45 for d in draws)


@pytest.mark.parametrize("kind", KINDS)
def test_every_scene_kind_renders_columns_at_the_period(kind):
    rng = np.random.default_rng(5)
    scene = render_scene(rng, 16.0, 192, kind)
    img = scene.image
    assert img.shape == (192, 192) and img.dtype == np.float32 and np.isfinite(img).all() and img.min() >= 0
    cols = find_columns(img, 16.0)
    # where the specimen is (a vacuum scene leaves part of the field empty): at least the strongest sublattice
    # there, and no column found in the vacuum
    from scipy import ndimage

    specimen = ndimage.gaussian_filter(img, 4.0) > 0.05 * float(img.max())
    assert specimen.mean() > 0.2
    assert len(cols) >= 0.25 * specimen.sum() / 16.0 ** 2
    ij = np.clip(np.round(cols).astype(int), 0, 191)
    assert specimen[ij[:, 0], ij[:, 1]].all()


def test_weak_sublattices_and_close_pairs_are_in_the_scene_family():
    from cyclegan.synth import _basis_and_motif, _nearest_spacing

    rng = np.random.default_rng(2)
    for _ in range(20):
        _a1, _a2, motif = _basis_and_motif("honeycomb", 20.0, rng)
        assert len(motif) == 2 and motif[0][2] == 1.0 and 0.2 <= motif[1][2] <= 0.8  # unequal sublattices
        a1, a2, motif = _basis_and_motif("perovskite", 20.0, rng)
        assert min(m[2] for m in motif) <= 0.6  # a weaker B (and O) site
        a1, a2, motif = _basis_and_motif("dumbbell", 20.0, rng)
        assert 0.3 * 20.0 - 1e-6 <= _nearest_spacing(a1, a2, motif) <= 0.45 * 20.0 + 1e-6  # pairs, not blobs


def test_scene_bank_is_deterministic_and_spans_the_period_range():
    a = SceneBank(12, seed=4, period_range=(6.0, 40.0))
    b = SceneBank(12, seed=4, period_range=(6.0, 40.0))
    assert all(np.array_equal(x.image, y.image) and x.period_px == y.period_px for x, y in zip(a, b))
    periods = np.array([s.period_px for s in a])
    assert periods.min() >= 6.0 and periods.max() <= 40.0 and periods.max() / periods.min() > 2


def test_synthetic_batches_are_a_pure_function_of_seed_step_rank():
    bank = SceneBank(6, seed=0, period_range=(8.0, 16.0))
    src = SyntheticPairs(bank, model_period=12.8, crop_px=32, ranges=NoiseRanges())
    x1, y1 = src.batch(4, step_generator(0, 17, 0))
    x2, y2 = src.batch(4, step_generator(0, 17, 0))
    x3, _ = src.batch(4, step_generator(0, 18, 0))
    assert x1.shape == (4, 1, 32, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_broad_family_widens_only_the_weak_sites_and_full_draws_nothing():
    from cyclegan.synth import BROAD_BELOW, BROAD_WIDTH, render_scene, site_widths

    motif = [(0, 0, 1.0), (0.5, 0.5, 0.4), (0.5, 0, 0.9)]
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert np.array_equal(site_widths(motif, rng, "full"), np.ones(3))
    assert rng.bit_generator.state == state  # the full family's scenes are drawn exactly as before
    draws = np.array([site_widths(motif, rng, "broad") for _ in range(300)])
    assert np.all(draws[:, [0, 2]] == 1.0)  # the strong sites (1.0 and 0.9 >= 0.7 of the strongest) keep the width
    widened = draws[:, 1] > 1.0
    assert 0.5 < widened.mean() < 0.7  # in about 60 % of the scenes
    assert np.all((draws[widened, 1] >= BROAD_WIDTH[0]) & (draws[widened, 1] <= BROAD_WIDTH[1]))
    assert np.array_equal(site_widths([(0, 0, 1.0)], rng, "broad"), [1.0]) and 0.4 < BROAD_BELOW
    # a broad perovskite renders (its sites stamped group by group), the same for the same seed
    a = render_scene(np.random.default_rng(3), 20.0, 160, "perovskite", family="broad")
    b = render_scene(np.random.default_rng(3), 20.0, 160, "perovskite", family="broad")
    assert np.array_equal(a.image, b.image) and np.isfinite(a.image).all() and a.image.max() > 0.5


def test_rich_family_adds_a_periodic_layer_of_glows_and_dips_to_half_the_broad_scenes():
    from cyclegan.synth import GLOW_HEIGHT, _glows

    # the layer: periodic like the lattice, within the drawn heights, dips as well as glows over many draws
    a1, a2 = np.array([16.0, 0.0]), np.array([0.0, 16.0])
    lows, highs = [], []
    for seed in range(12):
        layer = _glows((96, 96), np.random.default_rng(seed), a1, a2, np.array([3.0, 5.0]), 1.5)
        assert np.allclose(layer[16:80, 16:80], layer[32:96, 16:80], atol=1e-4)  # shifted by a1
        assert np.allclose(layer[16:80, 16:80], layer[16:80, 32:96], atol=1e-4)  # shifted by a2
        lows.append(layer.min())
        highs.append(layer.max())
    assert min(lows) < -0.05 and max(highs) > 0.05
    assert max(abs(v) for v in lows + highs) <= 3 * max(abs(h) for h in GLOW_HEIGHT) + 1e-9
    # the scene: the broad family's scene, with the layer added in about half of them (drawn last, so the rest of
    # the scene is the broad one), absent where the specimen is vacuum
    same = 0
    for seed in range(24):
        b = render_scene(np.random.default_rng(seed), 14.0, 120, "perovskite", family="broad").image
        r = render_scene(np.random.default_rng(seed), 14.0, 120, "perovskite", family="rich").image
        if np.array_equal(b, r):
            same += 1
        else:
            diff = r - b
            assert np.abs(diff).max() > 1e-3 and np.isfinite(r).all() and r.min() >= 0.0
    assert 4 <= same <= 20


def test_simple_scene_family_has_only_round_equal_one_site_columns():
    from cyclegan.synth import SIMPLE_KINDS

    bank = SceneBank(6, seed=1, period_range=(10.0, 14.0), family="simple")
    assert {sc.kind for sc in bank} <= set(SIMPLE_KINDS)


def test_vacancy_max_sets_how_many_sites_a_scene_may_leave_empty():
    base = render_scene(np.random.default_rng(11), 12.0, 144, "square")
    same = render_scene(np.random.default_rng(11), 12.0, 144, "square", vacancy_max=0.05)
    assert np.array_equal(base.image, same.image)  # the default draws exactly what it drew before
    sums = {}
    for vmax in (0.0, 0.5):
        totals = [render_scene(np.random.default_rng(s), 12.0, 144, "square", vacancy_max=vmax).image.sum()
                  for s in range(6)]
        sums[vmax] = np.array(totals)
    assert np.all(sums[0.5] <= sums[0.0] + 1e-6) and np.mean(sums[0.5] / sums[0.0]) < 0.95
