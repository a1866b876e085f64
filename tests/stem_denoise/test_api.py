"""The Python API (stem_denoise.api): the shipped model on arrays and files, DIP, simulation, lattice, metrics."""
from __future__ import annotations

import numpy as np
import pytest

import stem_denoise
from stem_denoise import Denoiser, evaluate, measure_lattice, psnr, simulate
from stem_denoise.common.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sim():
    return simulate(lattice="square", shape=(160, 160), period_px=12.0, dose=8.0, seed=3)


@pytest.fixture(scope="module")
def denoiser():
    return Denoiser.load()


def test_shipped_model_denoises_an_array_in_its_own_units(denoiser, sim):
    noisy = sim.noisy * 7.0 + 100.0  # other units: the output follows them
    out = denoiser.denoise(noisy, period_px=sim.period_px)
    assert out.shape == noisy.shape and out.dtype == np.float32
    truth = sim.truth * 7.0 + 100.0
    assert psnr(out, truth) > psnr(noisy, truth) + 6.0
    assert denoiser.last_stats["period_px"] == pytest.approx(sim.period_px)
    assert "Denoiser(default.pt" in repr(denoiser)


def test_a_given_period_far_from_the_lattice_is_refused_unless_forced(denoiser, sim):
    with pytest.raises(InputError, match="disagree|apart|%"):
        denoiser.denoise(sim.noisy, period_px=sim.period_px * 3)
    out = denoiser.denoise(sim.noisy, period_px=sim.period_px * 1.3, force_period=True)
    assert out.shape == sim.noisy.shape and denoiser.last_stats["period_px"] == pytest.approx(sim.period_px * 1.3)


def test_period_is_measured_when_not_given(denoiser, sim):
    out = denoiser.denoise(sim.noisy)
    assert denoiser.last_stats["period_px"] == pytest.approx(sim.period_px, rel=0.05)
    assert psnr(out, sim.truth) > psnr(sim.noisy, sim.truth) + 6.0


def test_integer_input_and_bad_input(denoiser, sim):
    counts = np.clip(np.round(sim.noisy), 0, 65535).astype(np.uint16)
    out = denoiser.denoise(counts, period_px=sim.period_px)
    assert out.dtype == np.float32 and out.shape == counts.shape
    with pytest.raises(InputError, match="2-D"):
        denoiser.denoise(np.zeros((2, 32, 32)), period_px=10)
    with pytest.raises(InputError, match="numeric"):
        denoiser.denoise(np.array([["a"] * 40] * 40), period_px=10)


def test_denoise_file_keeps_dtype_and_pixel_size(denoiser, sim, tmp_path):
    from data_prep.io import MicrographMeta, read_micrograph, write_micrograph

    src = tmp_path / "in.tif"
    counts = np.clip(np.round(sim.noisy), 0, 65535).astype(np.uint16)
    meta = MicrographMeta(source_dtype="uint16", pixel_size=21.0, unit="pm", path=str(src), shape=counts.shape)
    write_micrograph(src, counts, meta)
    stats = denoiser.denoise_file(src, tmp_path / "out.tif", period_px=sim.period_px)
    out, out_meta = read_micrograph(tmp_path / "out.tif")
    assert stats["dtype"] == "uint16" and out_meta.source_dtype == "uint16" and out.shape == counts.shape
    assert out_meta.pixel_size_in("pm") == pytest.approx(21.0)
    assert psnr(out, sim.truth) > psnr(counts, sim.truth) + 6.0
    with pytest.raises(InputError, match="exists"):
        denoiser.denoise_file(src, tmp_path / "out.tif", period_px=sim.period_px)


def test_load_names_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="no generator export"):
        Denoiser.load(tmp_path / "nope.pt")


def test_lattice_and_metrics(sim):
    info = measure_lattice(sim.noisy)
    assert info.period_px == pytest.approx(sim.period_px, rel=0.03)
    m = evaluate(sim.truth, sim)
    assert m["psnr"] > 80 and m["f1"] > 0.99 and m["hallucinations"] == 0 and m["lost"] <= 1
    m_noisy = evaluate(sim.noisy, sim.truth, noisy=sim.noisy)
    assert set(m_noisy) == {"psnr", "ssim", "noise_left"} and m_noisy["noise_left"] == pytest.approx(1.0)


def test_dip_denoise_returns_an_array_and_optionally_its_record(sim):
    crop = sim.noisy[:64, :64]
    out, record = stem_denoise.dip_denoise(crop, steps=30, stop="fixed", return_record=True)
    assert out.shape == crop.shape and out.dtype == crop.dtype
    assert record["steps_run"] == 30
    assert not np.allclose(out, crop)


def test_lazy_package_attributes():
    assert stem_denoise.Denoiser is Denoiser
    with pytest.raises(AttributeError):
        stem_denoise.no_such_thing  # noqa: B018
