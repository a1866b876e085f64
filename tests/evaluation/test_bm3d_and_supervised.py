"""BM3D with a measured noise spectrum (the bm3d package faked, or real where the extra is installed), the
supervised-on-simulation baseline (a two-step training on a tiny scene bank, its reuse) and the report's PSNR-by-dose,
seconds-per-megapixel and CycleGAN-versus tables."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from stem_denoise.common.errors import InputError
from stem_denoise.evaluation import benchmark as B
from stem_denoise.evaluation import filters
from stem_denoise.evaluation import report as R
from stem_denoise.evaluation import supervised as S

# ------------------------------------------------------------------------------------------------ BM3D

def test_correlated_psd_has_the_asked_variance_and_lag1_correlations():
    psd = filters.correlated_psd((32, 48), 2.0, corr_row=0.3, corr_col=-0.1)
    acov = np.real(np.fft.ifft2(psd)) / psd.size  # autocovariance of the noise with that spectrum
    assert acov[0, 0] == pytest.approx(4.0)
    assert acov[0, 1] / acov[0, 0] == pytest.approx(0.3) and acov[1, 0] / acov[0, 0] == pytest.approx(-0.1)
    assert acov[0, 2] == pytest.approx(0.0, abs=1e-9)
    white = filters.correlated_psd((8, 8), 1.5)
    np.testing.assert_allclose(white, 1.5 ** 2 * 64)  # bm3d's convention for a white std


def test_bm3d_gets_a_spectrum_for_correlated_noise_and_a_level_for_white(monkeypatch):
    seen = []

    def fake_bm3d(z, sigma_psd):
        seen.append((np.shape(sigma_psd), hasattr(np, "trapz")))
        return z

    monkeypatch.setitem(sys.modules, "bm3d", types.SimpleNamespace(bm3d=fake_bm3d))
    rng = np.random.default_rng(0)
    img = rng.poisson(20.0, size=(40, 36)).astype(np.float32)
    had_trapz = hasattr(np, "trapz")
    out = filters.bm3d_denoise(img, gain=1.0, read_sigma=0.0, corr_row=0.3, corr_col=-0.1)
    white = filters.bm3d_denoise(img, gain=1.0, read_sigma=0.0)
    assert seen[0] == ((40, 36), True) and seen[1][0] == ()  # a full spectrum, then a scalar level
    assert hasattr(np, "trapz") == had_trapz  # numpy is left as it was
    # identity in the Anscombe domain: back to the input up to the unbiased inverse's small offset
    assert np.abs(out - img).mean() < 0.5 and np.abs(white - img).mean() < 0.5


def test_missing_bm3d_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)
    with pytest.raises(filters.FilterUnavailable, match=r"\.\[bench\]"):
        filters.bm3d_denoise(np.ones((8, 8), np.float32))


def test_real_bm3d_uses_the_measured_correlation():
    pytest.importorskip("bm3d", reason="bm3d is an optional extra (pip install '.[bench]', non-commercial licence)")
    case = B.simulate_case(B.CaseSpec("sq", "square", 5.0, 64, seed=4, vacancy_frac=0.0))
    ctx = B.MethodContext("sq", 12.8, gain=case.gain, read_sigma=case.read_sigma)
    out = B.classical_methods()["bm3d"].fn(case.noisy, ctx)
    assert ctx.notes["corr_row"] > 0.1  # the simulator's fast-scan correlation, measured without the truth
    white = filters.bm3d_denoise(case.noisy, gain=case.gain, read_sigma=case.read_sigma)

    def mse(a):
        return float(np.mean((a - case.truth) ** 2))
    assert mse(out) < mse(white)


# ------------------------------------------------------------------------------------------------ supervised

class _Scene:
    def __init__(self, seed: int):
        from data_prep.simulate import simulate

        self.period_px = 12.8
        self.image = simulate(lattice="square", shape=(96, 96), period_px=12.8, dose=20.0, seed=seed).truth


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("sup") / "generator.pt"
        settings = S.SupervisedSettings(steps=2, batch_size=2, crop_px=32, bank_size=2)
        info = S.train_supervised(path, settings, log=lambda *a: None, bank=[_Scene(1), _Scene(2)])
    finally:
        torch.set_num_threads(before)
    return path, settings, info


def test_lr_factor_holds_then_decays_to_zero():
    assert S.lr_factor(0, 100) == 1.0 and S.lr_factor(49, 100) == 1.0
    assert S.lr_factor(75, 100) == pytest.approx(0.5) and S.lr_factor(100, 100) == 0.0


def test_supervised_export_is_a_generator_at_the_shipped_scale(trained):
    from cyclegan.checkpoint import load_generator
    from cyclegan.config import profile_config

    path, settings, info = trained
    net, loaded = load_generator(path)
    assert loaded["objective"] == "supervised" and loaded["step"] == 2 and loaded["period_px"] == 12.8
    assert loaded["supervised_settings"]["steps"] == 2 and info["train_s"] >= 0
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in __import__("cyclegan.models", fromlist=["x"]).build_generator(
            profile_config("default").generator).parameters())


def test_supervised_weights_are_reused_not_retrained(trained, monkeypatch, tmp_path):
    path, settings, _ = trained
    monkeypatch.setattr(S, "train_supervised", lambda *a, **k: pytest.fail("trained again"))
    p, info, how = S.ensure_supervised(path, settings, log=lambda *a: None)
    assert how == "reused" and p == path
    other = S.SupervisedSettings(steps=3, batch_size=2, crop_px=32, bank_size=2)
    assert S.ensure_supervised(path, other, reuse_any=True, log=lambda *a: None)[2] == "reused"
    # a generator export that is not the supervised baseline is refused, never overwritten
    with pytest.raises(InputError, match="not the supervised baseline"):
        S.ensure_supervised(Path(__file__).resolve().parents[2] / "stem_denoise" / "models" / "default.pt",
                            settings, log=lambda *a: None)


def test_supervised_method_runs_through_the_benchmark(trained, tmp_path):
    path, _, _ = trained
    cfg = B.BenchConfig(out_dir=tmp_path, methods=("noisy", "supervised"), supervised_model=path)
    methods, skipped = B.build_methods(cfg, log=lambda *a: None)
    assert [m.name for m in methods] == ["noisy", "supervised"] and not skipped
    assert "supervised on simulation" in methods[1].label
    case = B.simulate_case(B.CaseSpec("sq", "square", 20.0, 64, seed=2))
    rows, outputs, *_ , errors = B.run_case(case, methods)
    assert not errors and outputs["supervised"].shape == case.noisy.shape


# ------------------------------------------------------------------------------------------------ report

def _rows():
    rows = []
    for case, dose in (("a", 5.0), ("b", 5.0), ("c", 20.0)):
        for method, label, psnr, t in (("noisy", "noisy input", 10.0, 0.0), ("cyclegan", "CycleGAN", 25.0, 0.1),
                                       ("n2v2", "N2V2", 24.0 if case != "b" else 26.0, 2.0)):
            rows.append({"case": case, "dose": dose, "method": method, "label": label, "psnr": psnr,
                         "height": 100, "width": 100, "time_s": t})
    return rows


def test_psnr_by_dose_table_has_seconds_per_megapixel_and_bold_best():
    rows = _rows()
    agg = R.aggregate(rows)
    assert agg["n2v2"]["s_per_mp"] == pytest.approx(6.0 / 0.03)
    lines = R.psnr_by_dose_table(rows)
    assert lines[0] == "| method | dose 5 | dose 20 | s/MP |"
    n2v = next(x for x in lines if x.startswith("| N2V2 |"))
    gan = next(x for x in lines if x.startswith("| CycleGAN |"))
    assert n2v == "| N2V2 | **25.00** | 24.00 | 200 |"  # tie at dose 5: both bold
    assert gan == "| CycleGAN | **25.00** | **25.00** | **10** |"
    assert "**" not in next(x for x in lines if x.startswith("| noisy"))


def test_versus_table_says_where_the_cyclegan_stands():
    lines = R.versus_table(_rows())
    row = next(x for x in lines if x.startswith("| N2V2 |"))
    assert row == "| N2V2 | +0.00 | +1.00 | 2/3 |"  # +1 and -1 at dose 5, +1 at dose 20
    assert R.versus_table([r for r in _rows() if r["method"] != "cyclegan"]) == []


def test_markdown_and_csv_carry_the_new_columns(tmp_path):
    rows = _rows()
    R.write_markdown(rows, tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text()
    assert "PSNR dB by dose (mean over cases) and seconds per megapixel" in md
    assert "where the CycleGAN stands" in md and "| s/MP |" in md
    R.write_csv([dict(r, s_per_mp=1.5) for r in rows], tmp_path / "r.csv")
    assert "s_per_mp" in (tmp_path / "r.csv").read_text().splitlines()[0]


def test_dose_plot_with_many_methods(tmp_path):
    rows = []
    for i in range(12):
        for dose in (5.0, 20.0):
            rows.append({"case": f"c{dose}", "dose": dose, "method": f"m{i}", "label": f"method {i}",
                         "psnr": 20.0 + i + dose / 10, "height": 10, "width": 10, "time_s": 1.0})
    R.dose_plot(rows, "psnr", tmp_path / "p.png", ylabel="PSNR (dB)")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
