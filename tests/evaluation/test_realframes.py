"""No-truth checks on real frames (evaluation/realframes.py, scripts/realcheck.py): known answers on simulated
frames, the four shared real frames, and the command line."""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from data_prep.simulate import simulate
from stem_denoise.common.errors import InputError
from stem_denoise.evaluation.realframes import (
    THRESHOLDS,
    CellGeometry,
    cell_average,
    cell_sites,
    check_real_frame,
    real_frame_metrics,
    tiled_cell_average,
)

ROOT = Path(__file__).resolve().parents[2]
from tests.real_frames import REAL_FRAMES, needs_real, read_real  # noqa: E402

# a perovskite with a weak B sublattice (0.4 of A), a realistic probe (2 px), moderate dose
PEROVSKITE = dict(lattice="perovskite", shape=(320, 320), period_px=14.0, angle_deg=12.0, b_weight=0.4,
                  probe_sigma_px=2.0, dose=50.0, seed=3)


@pytest.fixture(scope="module")
def perovskite():
    res = simulate(**PEROVSKITE)
    no_b = simulate(**{**PEROVSKITE, "b_weight": 0.0, "noise": False})
    raw = res.noisy.astype(np.float64)
    avg = cell_average(raw)
    return res, no_b, raw, avg


def _metrics(raw, out, geom):
    m = real_frame_metrics(raw, out, lattice=geom)
    json.dumps(m, allow_nan=False)  # plain JSON: no numpy types, no NaN
    return m


# ------------------------------------------------------------------------------------------------ known answers

def test_identity_passes_with_an_exactly_zero_residual(perovskite):
    _, _, raw, avg = perovskite
    m = _metrics(raw, raw.copy(), avg.geometry)
    assert m["cell_r"] == 1.0 and m["bragg_power_frac"] == 0.0 and m["site_height_max_rel_err"] == 0.0
    assert m["n_columns_raw"] == m["n_columns_out"] > 0 and m["count_rel_diff"] == 0.0
    by_smoothing = dict(item.split(":") for item in m["counts_by_smoothing"].split(";"))
    assert list(by_smoothing) == ["0.07", "0.13", "0.16", "0.2"]
    assert all(raw_n == out_n and int(raw_n) > 0 for raw_n, out_n in (v.split("/") for v in by_smoothing.values()))
    assert m["resid_corr_row"] is None and m["resid_corr_col"] is None  # nothing to correlate
    assert m["n_sites"] == 2  # the A and the weak B column of the perovskite cell
    assert check_real_frame(m) == {"pass": True, "failures": []}


def test_noise_free_truth_as_output_passes_and_its_residual_looks_like_raw_noise(perovskite):
    res, _, raw, avg = perovskite
    m = _metrics(raw, res.truth, avg.geometry)
    assert check_real_frame(m)["pass"], check_real_frame(m)["failures"]
    assert m["cell_r"] >= 0.999
    assert m["site_height_max_rel_err"] < 0.03
    assert m["bragg_power_frac"] < 0.01
    assert m["count_rel_diff"] <= 0.005
    # the residual is the noise (simulated lag-1 correlations 0.28 along rows, -0.1 down columns) and the raw-noise
    # estimate without truth sees about the same
    assert abs(m["resid_corr_row"] - 0.28) < 0.03 and abs(m["resid_corr_col"] + 0.1) < 0.03
    assert abs(m["raw_hp_corr_row"] - m["resid_corr_row"]) < 0.1
    assert abs(m["raw_hp_corr_col"] - m["resid_corr_col"]) < 0.1


def test_at_low_dose_the_raw_count_holds_noise_detections_that_the_smoothing_diagnostic_shows():
    # The count check compares with the lightly smoothed raw frame. At 5 counts per column peak that frame shows
    # noise bumps as columns, so even the noise-free truth "loses" columns by more than 1 %; counted at more
    # smoothing the raw count falls onto the truth's while the truth's own count stays.
    res = simulate(**{**PEROVSKITE, "dose": 5.0})
    raw = res.noisy.astype(np.float64)
    m = _metrics(raw, res.truth, cell_average(raw).geometry)
    assert m["count_rel_diff"] > 0.01
    counts = {k: tuple(int(n) for n in v.split("/")) for k, v in
              (item.split(":") for item in m["counts_by_smoothing"].split(";"))}
    assert counts["0.07"][0] - counts["0.13"][0] > 3 * abs(counts["0.07"][1] - counts["0.13"][1])
    assert abs(counts["0.13"][0] - counts["0.13"][1]) <= 0.005 * counts["0.13"][1]


def test_deleting_the_weak_sublattice_fails_the_site_check(perovskite):
    res, no_b, raw, avg = perovskite
    b_sites = res.truth.astype(np.float64) - no_b.truth  # an exact reconstruction of the B columns
    out = raw - b_sites
    m = _metrics(raw, out, avg.geometry)
    verdict = check_real_frame(m)
    assert not verdict["pass"]
    assert m["site_height_max_rel_err"] > 0.5
    assert any(f.startswith("site_height_max_rel_err") for f in verdict["failures"])
    weak = min(m["sites"], key=lambda s: s["h_raw"])
    assert 0.2 < weak["h_raw"] < 0.6 and weak["h_out"] < 0.5 * weak["h_raw"]
    assert m["n_columns_out"] < 0.6 * m["n_columns_raw"]  # and the count check sees the lost columns


def test_tiled_cell_average_is_the_noise_free_lattice_with_every_site(perovskite):
    res, no_b, raw, avg = perovskite
    tiled = tiled_cell_average(raw)
    assert tiled.shape == raw.shape and tiled.dtype == raw.dtype
    truth = res.truth.astype(np.float64)
    # the simulated truth has a slow background and vacancies the average cannot hold; the lattice itself is there
    assert np.corrcoef(tiled.ravel(), truth.ravel())[0, 1] > 0.95
    assert (tiled - truth).std() < 0.35 * (raw - truth).std()  # the noise averaged away
    # both sites at their raw-frame heights, on the tiled frame's own cells
    sites = cell_sites(avg.average)
    t_avg = cell_average(tiled)
    t_sites = cell_sites(t_avg.average)
    assert len(t_sites) == len(sites) == 2
    from stem_denoise.evaluation.realframes import relative_heights

    assert np.allclose(np.sort(relative_heights(t_avg.average, t_sites)),
                       np.sort(relative_heights(avg.average, sites)), atol=0.05)
    # a filter that deletes the weak sublattice fails the site check on the noise-free frame too
    b_only = ndimage.gaussian_filter(truth - no_b.truth, 0.5)
    m = _metrics(tiled, tiled - b_only * (tiled.max() - tiled.min()) / (truth.max() - truth.min()), t_avg.geometry)
    assert not check_real_frame(m)["pass"] and m["site_height_max_rel_err"] > 0.4


def test_realcheck_noise_free_runs_on_the_tiled_average(tmp_path, capsys):
    folder = _real_folder(tmp_path, "small", 160, seed=1, lattice="perovskite")
    script = _load_script()
    assert script.main(["--real", str(folder), "--out", str(tmp_path / "nf"), "--methods", "noisy,gaussian_2px",
                        "--noise-free"]) == 0
    assert "noise-free: tiled cell average" in capsys.readouterr().out
    with open(tmp_path / "nf" / "real_results.csv") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["noisy"]["pass"] == "1"
    # the tiled frame holds the frame's columns (the same count within 5 %) and no noise: its residual after a
    # Gaussian is lattice only, so the residual's row correlation is far above the noisy frame's
    assert script.main(["--real", str(folder), "--out", str(tmp_path / "raw"), "--methods", "noisy,gaussian_2px"]) == 0
    with open(tmp_path / "raw" / "real_results.csv") as fh:
        raw_rows = {r["method"]: r for r in csv.DictReader(fh)}
    n_nf, n_raw = int(rows["noisy"]["n_columns_raw"]), int(raw_rows["noisy"]["n_columns_raw"])
    assert abs(n_nf - n_raw) <= 0.05 * n_raw
    assert float(rows["gaussian_2px"]["resid_corr_row"]) > float(raw_rows["gaussian_2px"]["resid_corr_row"]) + 0.15


def test_heavy_blur_leaves_lattice_power_in_the_residual(perovskite):
    _, _, raw, avg = perovskite
    m = _metrics(raw, ndimage.gaussian_filter(raw, PEROVSKITE["period_px"] / 2), avg.geometry)
    verdict = check_real_frame(m)
    assert m["bragg_power_frac"] > 0.5
    assert any(f.startswith("bragg_power_frac") for f in verdict["failures"])
    # its residual is smooth lattice, nothing like the raw noise
    assert m["resid_corr_row"] > m["raw_hp_corr_row"] + 0.3


def test_mild_gaussian_passes_the_cell_average_check(perovskite):
    _, _, raw, avg = perovskite
    m = _metrics(raw, ndimage.gaussian_filter(raw, 1.0), avg.geometry)
    assert m["cell_r"] >= THRESHOLDS["cell_r"]
    assert m["site_height_max_rel_err"] <= THRESHOLDS["site_height_max_rel_err"]
    assert check_real_frame(m, {"cell_r": 0.98, "site_height_max_rel_err": 0.15})["pass"]


def test_raw_and_output_are_averaged_on_the_raw_frames_cells(perovskite):
    _, _, raw, avg = perovskite
    geom = avg.geometry
    assert isinstance(geom, CellGeometry) and geom.local and geom.n_cells > 300
    again = cell_average(raw + 5.0, geom)
    assert again.geometry is geom and np.allclose(again.average, avg.average + 5.0)
    # an output without any lattice cannot be measured, but it is averaged on the raw frame's cells and fails
    blank = np.full_like(raw, raw.mean()) + np.random.default_rng(0).normal(0, 1e-3, raw.shape)
    with pytest.raises(InputError):
        cell_average(blank)
    m = real_frame_metrics(raw, blank)
    assert m["lattice"] == geom.describe()
    assert m["cell_r"] < 0.5 and not check_real_frame(m)["pass"]
    # an output whose columns moved by half an A-B distance: the averages on the same cells no longer agree
    moved = np.roll(raw, (3, 4), axis=(0, 1))
    assert real_frame_metrics(raw, moved, lattice=geom)["cell_r"] < 0.9
    with pytest.raises(InputError, match="made for"):
        cell_average(raw[:200, :200], geom)


def test_local_refinement_keeps_a_drifting_lattice_sharp():
    common = dict(lattice="perovskite", shape=(384, 384), period_px=12.8, angle_deg=7.0, b_weight=0.4, dose=200.0,
                  seed=5)
    still = simulate(**common, scan_jitter_px=0.0, tear_rate=0.0)
    drift = simulate(**common, drift_px=(3.0, 10.0), scan_sine_px=1.5, scan_sine_rows=128.0)
    ref = np.ptp(cell_average(still.truth, local=False).average)
    raw_avg = cell_average(drift.noisy)
    assert raw_avg.geometry.local and raw_avg.geometry.describe()["max_shift_px"] > 1.0
    truth_avg = cell_average(drift.truth, raw_avg.geometry)
    assert np.corrcoef(raw_avg.average.ravel(), truth_avg.average.ravel())[0, 1] >= 0.98
    assert np.ptp(truth_avg.average) > 0.9 * ref  # as sharp as the undistorted lattice
    flat = cell_average(drift.truth, raw_avg.geometry.lattice, local=False)
    assert np.ptp(flat.average) < 0.8 * ref  # one global lattice blurs it


def test_sites_are_found_across_the_periodic_boundary():
    n = 32
    yy, xx = np.mgrid[0:n, 0:n]

    def bump(y, x, s=2.0):
        dy = (yy - y + n / 2) % n - n / 2
        dx = (xx - x + n / 2) % n - n / 2
        return np.exp(-(dy ** 2 + dx ** 2) / (2 * s * s))

    a = bump(0, 0) + 0.3 * bump(16, 16) + 0.03 * bump(8, 24)  # a peak split by the wrap, a weak site, a ripple
    sites = cell_sites(a)
    assert sites.tolist() == [[0, 0], [16, 16]]


def test_check_and_metrics_reject_bad_input(perovskite):
    _, _, raw, avg = perovskite
    with pytest.raises(InputError, match="differ in shape"):
        real_frame_metrics(raw, raw[:-1])
    bad = raw.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError):
        real_frame_metrics(raw, bad, lattice=avg.geometry)
    with pytest.raises(InputError, match="unknown threshold"):
        check_real_frame({"cell_r": 1.0}, {"psnr": 30})
    verdict = check_real_frame({"cell_r": 0.99, "site_height_max_rel_err": None, "count_rel_diff": 0.0,
                                "bragg_power_frac": 0.01})
    assert not verdict["pass"] and len(verdict["failures"]) == 1 and "undefined" in verdict["failures"][0]


# ------------------------------------------------------------------------------------------------ real frames

@needs_real
@pytest.mark.parametrize("name", REAL_FRAMES)
def test_real_frames_gaussian_1px_keeps_the_cell_and_identity_leaves_no_residual(name):
    raw, meta = read_real(name)
    raw = raw.astype(np.float64)
    geom = cell_average(raw).geometry
    ident = real_frame_metrics(raw, raw.copy(), lattice=geom)
    assert ident["bragg_power_frac"] == 0.0 and ident["cell_r"] == 1.0 and check_real_frame(ident)["pass"]
    m = real_frame_metrics(raw, ndimage.gaussian_filter(raw, 1.0), lattice=geom,
                           pixel_size_pm=meta.pixel_size_in("pm"))
    verdict = check_real_frame(m, {k: THRESHOLDS[k] for k in ("cell_r", "site_height_max_rel_err")})
    assert verdict["pass"], f"{name}: {verdict['failures']}"
    assert m["n_sites"] >= 1 and m["n_columns_raw"] > 100


# ------------------------------------------------------------------------------------------------ command line

def _load_script():
    return importlib.import_module("stem_denoise.commands.realcheck")


def _tiny_export(path, **info):
    """A tiny untrained generator export (period 14 model px; ``info`` adds to its info) at ``path``."""
    import torch

    from cyclegan.checkpoint import export_generator
    from cyclegan.models import GeneratorConfig, build_generator

    cfg = GeneratorConfig(width=4, n_blocks=1)
    torch.manual_seed(0)
    export_generator(path, build_generator(cfg), cfg,
                     {"patch_px": 64, "atoms_per_patch": 5, "period_px": 14.0, "direction": "A2B", **info})
    return path


def _real_folder(tmp_path, name: str, size: int, seed: int, lattice: str = "rect"):
    """``tmp_path/real`` holding one simulated frame ``name.tif`` (float32, period 14 px), as a real-frame folder."""
    from data_prep.io import write_micrograph

    folder = tmp_path / "real"
    folder.mkdir()
    res = simulate(lattice=lattice, shape=(size, size), period_px=14.0, probe_sigma_px=2.0, dose=30.0, seed=seed)
    write_micrograph(folder / f"{name}.tif", res.noisy, dtype="float32")
    return folder


def test_realcheck_cli_writes_one_row_per_method(tmp_path, capsys):
    from stem_denoise.evaluation.realframes import real_methods

    folder = _real_folder(tmp_path, "small", 160, seed=1)
    out = tmp_path / "out"
    script = _load_script()
    assert script.main(["--real", str(folder), "--out", str(out)]) == 0
    methods, _ = real_methods()
    with open(out / "real_results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == [m.name for m in methods]
    assert {"gaussian_1px", "gaussian_2px", "median", "nlm", "bragg"} <= {r["method"] for r in rows}
    ident = next(r for r in rows if r["method"] == "noisy")
    assert ident["pass"] == "1" and float(ident["bragg_power_frac"]) == 0.0 and float(ident["cell_r"]) == 1.0
    md = (out / "real_results.md").read_text()
    assert "## small" in md and md.count("| Gaussian (fixed sigma") == 2
    assert (out / "real_small.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(InputError, match="--overwrite"):  # results exist: no silent overwrite
        script.main(["--real", str(folder), "--out", str(out), "--methods", "noisy"])
    with pytest.raises(InputError, match="no such file"):
        script.main(["--real", str(folder), "--out", str(out), "--overwrite", "--checkpoint", str(tmp_path / "g.pt")])


def test_realcheck_bad_folder_exits_2_with_one_line(tmp_path, capsys):
    from stem_denoise.common.cli import run_main

    script = _load_script()
    with pytest.raises(SystemExit) as exc:
        run_main(script.main, ["--real", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]
    assert not (tmp_path / "o").exists()


def test_realcheck_cli_runs_labelled_cyclegan_checkpoints(tmp_path, one_torch_thread):
    ckpt = _tiny_export(tmp_path / "g.pt")
    folder = _real_folder(tmp_path, "tiny", 128, seed=2, lattice="square")
    out = tmp_path / "out"
    args = ["--real", str(folder), "--out", str(out), "--methods", "noisy", "--checkpoint", str(ckpt),
            "--label", "model A", "--checkpoint", str(ckpt), "--device", "cpu"]
    assert _load_script().main(args) == 0
    with open(out / "real_results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["label"]) for r in rows] == [("noisy", "noisy input (identity)"),
                                                         ("cyclegan1", "model A"), ("cyclegan2", "CycleGAN (g)")]
    for r in rows[1:]:  # an untrained generator is scored like any other output
        assert 0.0 <= float(r["bragg_power_frac"]) and r["pass"] in ("0", "1")
    with pytest.raises(InputError, match="--label"):
        _load_script().main(args + ["--overwrite", "--label", "b", "--label", "c"])


# ------------------------------------------------------------------------------------------------ the peers, and the
# benchmark's real-frame run

def test_real_methods_take_the_peers_by_name(tmp_path, monkeypatch):
    import sys

    from stem_denoise.evaluation import peers
    from stem_denoise.evaluation.realframes import PEER_NAMES, real_methods

    monkeypatch.setitem(sys.modules, "careamics", None)
    assert not peers.careamics_available()
    with pytest.raises(InputError, match="--supervised-model"):  # the supervised baseline needs its weights
        real_methods(("noisy", "supervised"))
    ckpt = _tiny_export(tmp_path / "sup.pt", objective="supervised")
    methods, skipped = real_methods(("noisy",) + PEER_NAMES, supervised_model=ckpt, device="cpu")
    assert [m.name for m in methods] == ["noisy", "supervised"]
    assert len(skipped) == 2 and all(s.startswith(("n2v2:", "structn2v:")) and "[bench]" in s for s in skipped)
    with pytest.raises(InputError, match="unknown method"):
        real_methods(("noisy", "n2v3"))


def test_n2v_runs_on_a_real_frame_through_the_adapter(tmp_path, monkeypatch):
    """With a fake CAREamics backend: the peer gets the raw frame, its row is scored like every other."""
    from stem_denoise.evaluation import benchmark as B
    from stem_denoise.evaluation.realframes import run_realcheck

    class Identity:
        calls = 0

        def fit_predict(self, stack, image, plan, workdir):
            Identity.calls += 1
            return image

    frame = _real_folder(tmp_path, "frame", 128, seed=3) / "frame.tif"
    m = B.n2v_method("n2v2", steps=3, backend=Identity())
    small = dataclasses.replace(B.n2v_method("structn2v", steps=3, backend=Identity()), max_pixels=64 * 64)
    result = run_realcheck([frame], [m, small], tmp_path / "out", log=lambda *a: None)
    assert Identity.calls == 1 and [r["method"] for r in result["rows"]] == ["n2v2"]
    row = result["rows"][0]
    assert row["pass"] and row["bragg_power_frac"] == 0.0
    assert "steps=3" in row["notes"] and "trained_on=this image" in row["notes"]
    assert any(s.startswith("structn2v on frame") and "size limit" in s for s in result["skipped"])


def test_real_methods_from_replace_the_oracle_by_fixed_gaussians():
    from stem_denoise.evaluation import benchmark as B
    from stem_denoise.evaluation.realframes import real_methods_from

    classical = B.classical_methods()
    names = [m.name for m in real_methods_from([classical["noisy"], classical["gaussian_oracle"],
                                                classical["median"]])]
    assert names == ["noisy", "gaussian_1px", "gaussian_2px", "median"]


def test_benchmark_scores_its_methods_on_real_frames(tmp_path, capsys):
    bench = importlib.import_module("stem_denoise.commands.benchmark")
    folder = _real_folder(tmp_path, "small", 160, seed=1)
    ckpt = _tiny_export(tmp_path / "g.pt", objective="supervised")
    out = tmp_path / "bench"
    args = ["--out", str(out), "--quick", "--size", "64", "--doses", "20", "--lattices", "square", "--no-progress",
            "--methods", "noisy,gaussian_oracle,median,supervised", "--supervised-model", str(ckpt),
            "--real", str(folder)]
    assert bench.main(args) == 0
    with open(out / "real" / "real_results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["noisy", "gaussian_1px", "gaussian_2px", "median", "supervised"]
    assert rows[0]["pass"] == "1" and float(rows[0]["bragg_power_frac"]) == 0.0
    assert (out / "real" / "real_small.png").is_file()
    text = capsys.readouterr().out
    assert "real frames (no truth)" in text and "small" in text
    for p in out.iterdir():  # the real results are results too: no silent overwrite
        if p.name != "real":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(InputError, match=r"bench/real exists"):
        bench.main(args)
    quick = tmp_path / "quick"  # --quick leaves the shared frames out unless asked
    assert bench.main(["--out", str(quick)] + args[2:-2]) == 0
    assert not (quick / "real").exists()
    with pytest.raises(InputError, match="no such file"):
        bench.main(["--out", str(tmp_path / "x"), "--quick", "--real", str(tmp_path / "missing")])


def test_realcheck_cli_peers_flag(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "careamics", None)  # N2V is skipped with the reason, the rest runs
    folder = _real_folder(tmp_path, "f", 128, seed=4)
    ckpt = _tiny_export(tmp_path / "sup.pt", objective="supervised")
    out = tmp_path / "out"
    assert _load_script().main(["--real", str(folder), "--out", str(out), "--methods", "noisy", "--peers",
                                "--supervised-model", str(ckpt), "--device", "cpu"]) == 0
    with open(out / "real_results.csv") as fh:
        assert [r["method"] for r in csv.DictReader(fh)] == ["noisy", "supervised"]
    text = capsys.readouterr().out
    assert "skipped n2v2:" in text and "skipped structn2v:" in text and "[bench]" in text
    with pytest.raises(InputError, match="--n2v-steps"):
        _load_script().main(["--real", str(folder), "--out", str(tmp_path / "o2"), "--peers", "--n2v-steps", "0"])
