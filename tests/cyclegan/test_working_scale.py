"""The "sites" working scale: the nearest column spacing of the unit-cell average sets how much a multi-site cell
is magnified before the network sees it (cyclegan.infer.site_spacing_factor)."""
from __future__ import annotations

import numpy as np
import pytest

from cyclegan.infer import SITE_FACTOR_MIN, denoise_array, site_spacing_factor
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
