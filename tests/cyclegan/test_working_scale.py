"""The "sites" working scale: the nearest column spacing of the unit-cell average sets how much a multi-site cell
is magnified before the network sees it (cyclegan.infer.site_spacing_factor)."""
from __future__ import annotations

import numpy as np
import pytest

from cyclegan.infer import denoise_array, site_spacing_factor
from cyclegan.synth import SITE_FACTOR_MIN
from data_prep.simulate import simulate
from stem_denoise.common.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def perovskite():
    return simulate(lattice="perovskite", shape=(256, 256), period_px=16.0, dose=5.0, seed=1)


def test_one_site_cells_keep_the_cell_scale():
    for lattice, period in (("square", 12.0), ("hex", 14.0)):
        r = simulate(lattice=lattice, shape=(256, 256), period_px=period, dose=5.0, seed=3)
        factor, record = site_spacing_factor(r.noisy)
        assert factor == 1.0 and record["sites"] == 1 and record["spacing_px"] is None


def test_perovskite_b_sites_set_the_spacing(perovskite):
    clean = simulate(lattice="perovskite", shape=(256, 256), period_px=16.0, dose=40.0, seed=2)
    factor, record = site_spacing_factor(clean.noisy)
    assert record["sites"] == 2 and factor == pytest.approx(1 / np.sqrt(2), abs=0.01)
    factor, record = site_spacing_factor(perovskite.noisy, 16.0)
    assert SITE_FACTOR_MIN <= factor <= 0.72 and record["cell_period_px"] == pytest.approx(16.0, rel=0.02)


def test_no_lattice_means_the_cell_scale():
    rng = np.random.default_rng(0)
    factor, record = site_spacing_factor(rng.normal(size=(128, 128)).astype(np.float32), 10.0)
    assert factor == 1.0 and "no cell average" in record["note"]


def test_sites_scale_keeps_more_weak_columns_with_the_shipped_model(perovskite):
    from cyclegan.checkpoint import default_model_path, load_generator
    from stem_denoise.evaluation.benchmark import case_from_simulation
    from stem_denoise.evaluation.metrics import evaluate

    g, info = load_generator(default_model_path())
    case = case_from_simulation(perovskite, "p")
    lost = {}
    for scale in ("cell", "sites"):
        stats: dict = {}
        out = denoise_array(perovskite.noisy, g, info, period_px=16.0, device="cpu", stats=stats,
                            working_scale=scale)
        lost[scale] = evaluate(out, case.truth, case.columns)["lost"]
        expect = info["period_px"] / (16.0 * (1.0 if scale == "cell" else stats["sites"]["factor"]))
        assert stats["working_scale"] == scale and stats["scale"] == pytest.approx(expect)
    assert lost["sites"] < lost["cell"]
    with pytest.raises(InputError, match="working scale"):
        denoise_array(perovskite.noisy, g, info, period_px=16.0, device="cpu", working_scale="atoms")


# ------------------------------------------------------------------------------------------- training at "sites"

def test_scene_site_factor_follows_the_inference_rule():
    import math

    from cyclegan.synth import SITE_MIN_HEIGHT, SceneBank, _rot, site_factor

    a1, sq, hx = 10 * _rot(0), 10 * _rot(90), 10 * _rot(60)
    assert site_factor(a1, sq, [(0, 0, 1.0)], 10) == pytest.approx(1.0)  # one site per cell: the cell scale
    assert site_factor(a1, sq, [(0, 0, 1.0), (0.5, 0.5, 0.4)], 10) == pytest.approx(1 / math.sqrt(2))
    # a B site below the height threshold does not count, as in the cell average at inference
    assert site_factor(a1, sq, [(0, 0, 1.0), (0.5, 0.5, 0.9 * SITE_MIN_HEIGHT)], 10) == pytest.approx(1.0)
    # honeycomb (a / sqrt 3) and close pairs are clipped to the largest magnification
    assert site_factor(a1, hx, [(0, 0, 1.0), (1 / 3, 1 / 3, 0.5)], 10) == SITE_FACTOR_MIN
    bank = SceneBank(24, seed=5, period_range=(8.0, 16.0))
    factors = {s.kind: s.site_factor for s in bank.scenes}
    assert all(SITE_FACTOR_MIN <= s.site_factor <= 1.0 for s in bank.scenes)
    assert factors.get("square", 1.0) == pytest.approx(1.0) and factors.get("hex", 1.0) == pytest.approx(1.0)
    assert any(f < 1.0 for f in factors.values())


def test_synthetic_pairs_magnify_by_the_site_factor(monkeypatch):
    import cyclegan.pairs as P
    from cyclegan.synth import Scene

    seen = []
    real = P.make_pair

    def spy(image, native, *a, **k):
        seen.append(native)
        return real(image, native, *a, **k)

    monkeypatch.setattr(P, "make_pair", spy)
    scene = Scene(np.ones((96, 96), np.float32), 12.0, "perovskite", 0.75)
    for scale, expect in (("cell", 12.0), ("sites", 9.0)):
        seen.clear()
        P.SyntheticPairs([scene], model_period=8.0, crop_px=16, ranges=P.NoiseRanges(),
                         working_scale=scale).batch(2, P.step_generator(0, 0, 0))
        assert seen == [expect, expect]
    with pytest.raises(ValueError, match="working_scale"):
        P.SyntheticPairs([scene], model_period=8.0, crop_px=16, ranges=P.NoiseRanges(), working_scale="atoms")


def test_a_model_trained_at_sites_runs_at_sites_unless_told(tmp_path):
    from cyclegan.checkpoint import load_generator
    from cyclegan.config import config_from_dict
    from cyclegan.data import write_toy_patches
    from cyclegan.train import train
    from stem_denoise.common.errors import ConfigError
    from tests.cyclegan.test_train_stochastic import TINY

    cfg = config_from_dict({**TINY, "steps": 2, "working_scale": "sites"})
    train(cfg, None, tmp_path / "run", progress=False)
    g, info = load_generator(tmp_path / "run" / "generator.pt")
    assert info["working_scale"] == "sites"
    img = simulate(lattice="perovskite", shape=(128, 128), period_px=16.0, dose=40.0, seed=2).noisy
    for asked, used in ((None, "sites"), ("cell", "cell")):
        stats: dict = {}
        denoise_array(img, g, info, period_px=16.0, device="cpu", stats=stats, working_scale=asked)
        assert stats["working_scale"] == used
    legacy = {k: v for k, v in info.items() if k != "working_scale"}  # exports that do not say: the cell scale
    stats = {}
    denoise_array(img, g, legacy, period_px=16.0, device="cpu", stats=stats)
    assert stats["working_scale"] == "cell"
    data = tmp_path / "data"
    write_toy_patches(data, n_a=2, n_b=2, patch_px=32, atoms_per_patch=4, noise=0.3, seed=0)
    with pytest.raises(ConfigError, match="without --data"):
        train(config_from_dict({**TINY, "steps": 2, "working_scale": "sites", "clean_source": "trainB"}), data,
              tmp_path / "run2", progress=False)
