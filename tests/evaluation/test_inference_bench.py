"""stem_denoise.evaluation.inference: the test image, the naive baseline loop, the reference recipe's stitching,
the stand-in trainer and the speed run (the logic behind ``stem-denoise bench-infer``)."""
from __future__ import annotations

import numpy as np
import pytest

from stem_denoise.evaluation import inference as ib

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _identity():
    from cyclegan.models import GeneratorConfig, build_generator

    return build_generator(GeneratorConfig(width=4, n_blocks=1)).eval()  # zero head: the identity


def test_test_image_has_the_asked_period(tmp_path):
    from data_prep.io import read_micrograph
    from data_prep.lattice import measure_lattice

    img = ib.lattice_rows(0, 200, 200, 14.0)
    assert img.shape == (200, 200) and img.dtype == np.float32
    assert measure_lattice(img).period_px == pytest.approx(14.0, rel=0.02)
    ib.write_test_tiff(tmp_path / "t.tif", 96, 12.0)
    back, meta = read_micrograph(tmp_path / "t.tif")
    assert back.shape == (96, 96) and meta.source_dtype == "float32"
    assert np.array_equal(back[:10], ib.lattice_rows(0, 10, 96, 12.0))  # first strip, same generator


def test_baselines_with_the_identity_network_return_the_input():
    img = ib.lattice_rows(0, 150, 170, ib.MODEL_PERIOD)
    g = _identity()
    for fn in (ib.naive_denoise, ib.reference_recipe_stitch):
        out = fn(img, g, ib.INFO, ib.MODEL_PERIOD)
        assert out.shape == img.shape
        np.testing.assert_allclose(out, img, rtol=1e-4, atol=1e-3)


def test_reference_recipe_shows_seams_where_the_pipeline_does_not():
    from cyclegan.infer import denoise_array

    g, _ = ib.build_model("tiny")
    img = ib.lattice_rows(0, 256, 256, ib.MODEL_PERIOD)
    whole = denoise_array(img, g, ib.INFO, period_px=ib.MODEL_PERIOD, whole=True, device="cpu")
    ours = denoise_array(img, g, ib.INFO, period_px=ib.MODEL_PERIOD, tile=128, device="cpu")
    recipe = ib.reference_recipe_stitch(img, g, ib.INFO, ib.MODEL_PERIOD)
    span = float(np.ptp(whole))
    assert np.abs(ours - whole).max() < 1e-4 * span
    assert np.abs(recipe - whole).max() > 1e-2 * span


def test_speed_run_reports_both_loops(capsys):
    res = ib.run_speed(ib.InferBench(size=128, period=16.0, model="tiny", device="cpu"))
    assert res["ours_psnr_vs_whole"] > 80 and res["naive_psnr_vs_whole"] < res["ours_psnr_vs_whole"]
    assert res["ours_mpps"] > 0 and res["speedup"] > 0
    out = capsys.readouterr().out
    assert "speed-up over the naive loop" in out


def test_standin_export_loads(tmp_path):
    from cyclegan.checkpoint import load_generator

    ib.train_standin(tmp_path / "g.pt", steps=3)
    g, info = load_generator(tmp_path / "g.pt")
    assert info["period_px"] == ib.MODEL_PERIOD and "stand-in" in info["note"]
