"""Classical filters: variance stabilisation, noise-model estimates, oracle Gaussian, NLM, optional BM3D wiring and
the Bragg filter, which must fill vacancies (the sanity check of the hallucination metric)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from scipy import ndimage

from data_prep.simulate import simulate
from stem_denoise.common.errors import InputError
from stem_denoise.evaluation import filters as F
from stem_denoise.evaluation.metrics import ColumnTruth, column_metrics, dent_fidelity, psnr


@pytest.fixture(scope="module")
def lattice_sim():
    return simulate(lattice="hex", shape=(192, 192), dose=20, vacancy_frac=0.05, dents=2, seed=4, angle_deg=8.0)


@pytest.mark.parametrize("lam", [2.0, 5.0, 20.0, 100.0])
def test_inverse_anscombe_is_unbiased(lam):
    x = np.random.default_rng(0).poisson(lam, size=400_000)
    d = F.anscombe(x).mean()
    assert F.inverse_anscombe(np.array(d)) == pytest.approx(lam, rel=0.02)
    # the plain algebraic inverse is biased at low counts; the unbiased one is the point
    if lam <= 2:
        assert abs((d / 2) ** 2 - 0.375 - lam) > 0.1 * lam


def test_anscombe_stabilises_variance():
    rng = np.random.default_rng(1)
    stds = [F.anscombe(rng.poisson(lam, 200_000)).std() for lam in (10, 40, 200)]
    np.testing.assert_allclose(stds, 1.0, atol=0.03)
    g, s = 2.5, 3.0  # gain and Gaussian read noise
    x = g * rng.poisson(30, 200_000) + rng.normal(0, s, 200_000)
    assert F.anscombe(x, gain=g, read_sigma=s).std() == pytest.approx(1.0, abs=0.03)


def test_estimate_sigma_of_white_noise():
    rng = np.random.default_rng(2)
    smooth = ndimage.gaussian_filter(rng.normal(size=(256, 256)), 8) * 50
    assert F.estimate_sigma(smooth + rng.normal(0, 2.0, smooth.shape)) == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("gain,offset", [(1.0, 0.0), (3.0, 0.0), (0.5, 100.0)])
def test_noise_model_recovers_gain_and_offset(gain, offset):
    res = simulate(lattice="square", shape=(256, 256), dose=40, noise=False, seed=3)
    lam = res.truth.astype(np.float64)
    x = gain * np.random.default_rng(3).poisson(lam) + offset
    g, var0 = F.estimate_noise_model(x)
    assert g == pytest.approx(gain, rel=0.15)
    # var = g * (x - offset)  ->  var0 = -g * offset
    assert -var0 / g == pytest.approx(offset, abs=0.1 * float(lam.mean()) * gain + 1.0)


def test_gaussian_oracle_is_best_gaussian(lattice_sim):
    out, sigma = F.gaussian_oracle(lattice_sim.noisy, lattice_sim.truth)
    best = psnr(out, lattice_sim.truth)
    for s in (0.5 * sigma, 2.0 * sigma):
        assert psnr(F.gaussian_denoise(lattice_sim.noisy, s), lattice_sim.truth) < best
    assert best > psnr(lattice_sim.noisy, lattice_sim.truth) + 3
    assert out.dtype == np.float32 and out.shape == lattice_sim.noisy.shape


def test_median_size_follows_period():
    assert F.median_size(None) == 3
    assert F.median_size(12.8) == 3
    assert F.median_size(24.0) == 5
    assert F.median_size(40.0) == 9
    with pytest.raises(InputError):
        F.median_denoise(np.ones((8, 8)), 0)


def test_nlm_improves_and_keeps_units(lattice_sim):
    out = F.nlm_denoise(lattice_sim.noisy, lattice_sim.period_px, gain=1.0, read_sigma=0.5)
    assert out.dtype == np.float32 and out.shape == lattice_sim.noisy.shape
    assert psnr(out, lattice_sim.truth) > psnr(lattice_sim.noisy, lattice_sim.truth) + 3
    assert abs(out.mean() - lattice_sim.truth.mean()) < 0.03 * lattice_sim.truth.mean()
    estimated = F.nlm_denoise(lattice_sim.noisy, lattice_sim.period_px)  # gain estimated from the image
    assert psnr(estimated, lattice_sim.truth) > psnr(lattice_sim.noisy, lattice_sim.truth) + 3


def test_bm3d_optional(monkeypatch, lattice_sim):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # import bm3d -> ImportError
    assert not F.bm3d_available()
    with pytest.raises(F.FilterUnavailable):
        F.bm3d_denoise(lattice_sim.noisy)
    calls = {}

    def fake_bm3d(z, sigma_psd):
        calls["sigma"] = sigma_psd
        return ndimage.gaussian_filter(z, 1.0)

    monkeypatch.setitem(sys.modules, "bm3d", types.SimpleNamespace(bm3d=fake_bm3d))
    assert F.bm3d_available()
    out = F.bm3d_denoise(lattice_sim.noisy, gain=1.0)
    assert calls["sigma"] == pytest.approx(1.0, abs=0.25)  # unit noise in the Anscombe domain
    expected = F.inverse_anscombe(ndimage.gaussian_filter(F.anscombe(lattice_sim.noisy.astype(np.float64)), 1.0))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_periodic_smooth_decomposition_removes_the_border_cross():
    ramp = np.linspace(0, 10, 50)[None, :] + np.linspace(0, 5, 37)[:, None]
    p, s = F._periodic_smooth(ramp)
    np.testing.assert_allclose(p + s, ramp, atol=1e-9)
    assert p.std() < 0.05 * ramp.std()  # a ramp is all "smooth part"

    def cross(a):  # share of spectral energy on the two frequency axes
        power = np.abs(np.fft.fft2(a - a.mean())) ** 2
        return (power[0, 1:].sum() + power[1:, 0].sum()) / power.sum()

    u = np.random.default_rng(0).normal(size=(64, 64)) + np.linspace(0, 20, 64)[None, :]
    p, _ = F._periodic_smooth(u)
    assert cross(u) > 0.5 and cross(p) < 0.1


def test_bragg_peaks_of_a_square_lattice(lattice_sim):
    res = simulate(lattice="square", shape=(256, 256), dose=20, period_px=12.8, angle_deg=0.0, seed=5,
                   scan_jitter_px=0.0, tear_rate=0.0)
    peaks = F.find_bragg_peaks(res.noisy, res.period_px)
    assert len(peaks) >= 8
    radius = np.hypot(peaks[:, 0], peaks[:, 1])
    first = np.sort(radius)[:4]
    np.testing.assert_allclose(first, 1 / 12.8, rtol=0.03)  # the four first-order peaks at 1/period
    # symmetric: -g is found with every g
    for py, px in peaks:
        assert np.min(np.hypot(peaks[:, 0] + py, peaks[:, 1] + px)) < 1e-9


@pytest.mark.parametrize("lattice", ["square", "hex"])
def test_bragg_filter_fills_vacancies(lattice):
    res = simulate(lattice=lattice, shape=(192, 192), dose=20, vacancy_frac=0.05, dents=1, seed=6, angle_deg=31)
    cols = ColumnTruth(res.columns, res.vacancies, res.period_px)
    out = F.bragg_filter(res.noisy, res.period_px)
    m = column_metrics(out, cols, truth_image=res.truth)
    assert m["n_vacancies"] >= 3
    assert m["hallucinations"] == m["n_vacancies"]  # every vacancy shows a column: the sanity check
    assert m["lost"] == 0
    # while the truth and a plain Gaussian blur fill none
    assert column_metrics(res.truth, cols, truth_image=res.truth)["hallucinations"] == 0
    blurred = F.gaussian_denoise(res.noisy, 1.0)
    assert column_metrics(blurred, cols, truth_image=res.truth)["hallucinations"] == 0
    # slow intensity (the dent) survives the DC low-pass
    assert dent_fidelity(out, res.truth, res.period_px) > 0.9


def test_bragg_filter_without_lattice_keeps_only_slow_intensity():
    rng = np.random.default_rng(0)
    img = 100 + 10 * np.linspace(-1, 1, 128)[None, :] + rng.normal(0, 1, (128, 128))
    out = F.bragg_filter(img, 12.8)
    assert len(F.find_bragg_peaks(img, 12.8)) == 0
    assert np.std(out - (100 + 10 * np.linspace(-1, 1, 128)[None, :])) < 0.3
