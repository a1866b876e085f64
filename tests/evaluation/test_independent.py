"""The independent validation set (evaluation.independent): its noise model, its column truth, the nanoparticle's
vacuum, determinism, the test-set specs, and the benchmark run on it end to end."""
from __future__ import annotations

import csv
import importlib
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from stem_denoise.common.columns import find_columns, match_columns
from stem_denoise.common.errors import ConfigError
from stem_denoise.evaluation import benchmark as B
from stem_denoise.evaluation import independent as ind
from stem_denoise.evaluation.metrics import evaluate

ROOT = Path(__file__).resolve().parents[2]


def _interior(points, shape, margin):
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return ((p[:, 0] >= margin) & (p[:, 0] <= shape[0] - 1 - margin)
            & (p[:, 1] >= margin) & (p[:, 1] <= shape[1] - 1 - margin))


@pytest.fixture(scope="module")
def images():
    """Every kind at a moderate period (14 px), dose 10, 256 px."""
    return {k: ind.render_independent(k, 10.0, period_px=14.0, seed=3) for k in ind.INDEPENDENT_KINDS}


# ------------------------------------------------------------------------------------------------ noise model

@pytest.mark.parametrize("kind", ind.INDEPENDENT_KINDS)
def test_noise_is_white_poisson_plus_read(images, kind):
    img = images[kind]
    assert img.noisy.shape == img.truth.shape == (256, 256)
    assert img.noisy.dtype == np.float32 and img.truth.dtype == np.float32
    # the truth is the noise-free expectation, in detector units
    np.testing.assert_allclose(img.truth, img.offset + img.gain * img.expected_counts, rtol=1e-5)
    resid = img.noisy.astype(np.float64) - img.truth
    level = img.truth.astype(np.float64) - img.offset  # gain x expected counts
    # mean-variance: var = gain * (truth - offset) + read^2, checked in five bins of the truth level
    edges = np.quantile(level, np.linspace(0, 1, 6))
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (level >= lo) & (level <= hi)
        predicted = float(np.mean(img.gain * level[sel] + img.read_sigma ** 2))
        assert np.var(resid[sel]) == pytest.approx(predicted, rel=0.1)
        assert abs(np.mean(resid[sel])) < 4 * np.sqrt(predicted / sel.sum())
    # white: no lag-1 correlation along the rows or down the columns, no row offsets
    power = np.mean(resid * resid)
    assert abs(np.mean(resid[:, 1:] * resid[:, :-1]) / power) < 0.03
    assert abs(np.mean(resid[1:, :] * resid[:-1, :]) / power) < 0.03
    row_means = resid.mean(axis=1)
    assert np.var(row_means) < 1.5 * power / resid.shape[1]


def test_dose_is_the_counts_at_a_nominal_column_peak(images):
    img = images["square"]
    dose = img.params["dose"]
    spec = img.params["specimen"]
    normal = np.setdiff1d(np.arange(len(img.columns)), np.concatenate([img.heavy, img.light]))
    # recorded heights: dose x local thickness for a plain column
    rc = np.rint(img.columns[normal]).astype(int)
    thick = img.thickness[rc[:, 0], rc[:, 1]]
    assert np.median(img.column_height[normal] / (dose * thick)) == pytest.approx(1.0, abs=0.05)
    # and the expected counts show it: peak minus the lowest point of the surrounding cell
    lam = img.expected_counts
    period = img.period_px
    half = int(period // 2)
    inside = _interior(img.columns[normal], lam.shape, period)
    ratios = []
    for (y, x), h in zip(rc[inside], img.column_height[normal][inside]):
        window = lam[y - half:y + half + 1, x - half:x + half + 1]
        ratios.append((lam[y, x] - window.min()) / h)
    assert 0.9 < np.median(ratios) < 1.2
    assert len(spec["dents"]) >= 1 and img.thickness.min() < 0.85  # a dent (or the ramp) thins the specimen


# ------------------------------------------------------------------------------------------------ column truth

@pytest.mark.parametrize("kind", ind.INDEPENDENT_KINDS)
def test_true_columns_sit_on_the_truth_peaks(images, kind):
    img = images[kind]
    period = img.period_px
    found = find_columns(img.truth, period)
    fi, ti, dist = match_columns(found, img.columns, period / 3)
    shape = img.truth.shape
    inner = _interior(img.columns, shape, period / 2)
    matched = np.zeros(len(img.columns), dtype=bool)
    matched[ti] = True
    plain = np.ones(len(img.columns), dtype=bool)
    plain[img.light] = False  # a light column of a weak sublattice may fall under the finder's threshold
    assert matched[inner & plain].mean() > 0.99
    assert matched[inner].mean() > 0.97
    # one to one, close, and nothing found where there is no column
    assert len(np.unique(fi)) == len(fi) and len(np.unique(ti)) == len(ti)
    assert np.median(dist) < 0.05 * period
    extra = np.setdiff1d(np.arange(len(found)), fi)
    assert _interior(found[extra], shape, period / 2).sum() <= 0.01 * inner.sum()
    if kind in ("honeycomb", "perovskite"):  # the weak sublattice is there and found
        weak = np.zeros(len(img.columns), dtype=bool)
        weak[img.weak] = True
        assert 0.4 < weak.mean() < 0.6
        ratio = img.params["cell"]["weak_ratio"]
        assert 0.3 <= ratio <= 0.5
        assert matched[weak & inner & plain].mean() > 0.99
    if kind == "dumbbell":  # both columns of every dumbbell
        sep = img.params["cell"]["dumbbell_sep_px"]
        assert 0.35 * period <= sep <= 0.45 * period
        d, j = cKDTree(img.columns).query(img.columns, k=2)
        partner = j[:, 1]
        paired = np.abs(d[:, 1] - sep) < 1e-6  # the partner is present (not a vacancy)
        assert paired.mean() > 0.9
        pair_inner = paired & inner & inner[partner] & plain & plain[partner]
        both = matched & matched[partner]
        assert both[pair_inner].mean() > 0.99


def test_case_scores_a_perfect_output_perfectly():
    case = ind.independent_case("honeycomb", 5.0, period_px=12.0, seed=1)
    assert case.source == "independent" and case.lattice == "honeycomb" and case.name == "ind_honeycomb_d5_p12"
    assert case.gain is None and case.read_sigma is None  # the detector model is not handed to the methods
    assert case.hidden_columns <= 0.02 * len(case.columns.columns)
    m = evaluate(case.truth, case.truth, case.columns)
    assert m["f1"] == 1.0 and m["fp"] == 0 and m["lost"] == 0 and m["hallucinations"] == 0
    assert m["n_vacancies"] > 0


# ------------------------------------------------------------------------------------------------ nanoparticle

def test_nanoparticle_vacuum_is_vacancies_without_peaks(images):
    img = images["nanoparticle"]
    period = img.period_px
    particle = img.params["specimen"]["particle"]
    shape = img.truth.shape
    inside = ind._particle_mask(particle, img.columns[:, 0], img.columns[:, 1])
    assert np.all(inside == 1.0)  # columns only in the particle
    vac_in = ind._particle_mask(particle, img.vacancies[:, 0], img.vacancies[:, 1]) == 1.0
    vacuum_sites = img.vacancies[~vac_in]
    # every lattice site of the vacuum is a vacancy: their density is the lattice's
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    vacuum_area = float(np.sum(ind._particle_mask(particle, yy.astype(float), xx.astype(float)) == 0.0))
    cell_area = period * period * (np.sqrt(3) / 2 if img.params["lattice"] == "hex" else 1.0)
    assert len(vacuum_sites) == pytest.approx(vacuum_area / cell_area, rel=0.1)
    assert len(vacuum_sites) > 10 * max(1, int(vac_in.sum()))
    # the truth holds no column peak in the vacuum: far from the particle it is exactly flat ...
    dist_to_col, _ = cKDTree(img.columns).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    far = dist_to_col.reshape(shape) > 2 * period
    assert far.sum() > 0.2 * far.size
    flat = img.truth[far]
    assert float(flat.max() - flat.min()) <= 1e-5 * float(img.truth.max() - img.truth.min())
    # ... and the finder sees nothing there
    found = find_columns(img.truth, period)
    d_found, _ = cKDTree(img.columns).query(found)
    stray = found[(d_found > period / 3) & _interior(found, shape, period / 2)]
    assert len(stray) == 0


def test_nanoparticle_columns_painted_into_vacuum_count_as_filled_vacancies():
    case = ind.independent_case("nanoparticle", 10.0, period_px=14.0, seed=3)
    cols = case.columns
    particle_img = ind.render_independent("nanoparticle", 10.0, period_px=14.0, seed=3)
    particle = particle_img.params["specimen"]["particle"]
    vac = cols.vacancies
    vacuum = ind._particle_mask(particle, vac[:, 0], vac[:, 1]) == 0.0
    # paint a column of the typical height at every vacuum site (what a lattice-prior denoiser might do)
    height = float(np.median(particle_img.column_height)) * particle_img.gain
    sigma = particle_img.params["probe"]["sigma_px"] * 1.2
    yy, xx = np.mgrid[0:case.shape[0], 0:case.shape[1]]
    painted = case.truth.astype(np.float64).copy()
    for y, x in vac[vacuum]:
        painted += height * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma * sigma))
    m = evaluate(painted, case.truth, cols)
    near = cKDTree(cols.columns).query(vac[vacuum])[0] <= 1.5 * cols.period_px
    near_inner = near & _interior(vac[vacuum], case.shape, cols.period_px / 2)
    assert m["hallucinations"] >= 0.8 * near_inner.sum() > 0  # near the particle: filled vacancies
    assert m["fp"] >= 0.8 * _interior(vac[vacuum], case.shape, cols.period_px / 2).sum()  # and invented columns
    clean = evaluate(case.truth, case.truth, cols)
    assert clean["hallucinations"] == 0 and clean["fp"] == 0


# ------------------------------------------------------------------------------------------------ determinism, specs

def test_deterministic_for_a_seed():
    a = ind.render_independent("perovskite", 5.0, size=96, period_px=9.0, seed=11)
    b = ind.render_independent("perovskite", 5.0, size=96, period_px=9.0, seed=11)
    c = ind.render_independent("perovskite", 5.0, size=96, period_px=9.0, seed=12)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    np.testing.assert_array_equal(a.truth, b.truth)
    np.testing.assert_array_equal(a.columns, b.columns)
    assert a.params == b.params
    assert not np.array_equal(a.noisy, c.noisy) and not np.array_equal(a.truth, c.truth)
    ca = ind.independent_case("dumbbell", 2.0, size=96, seed=5)
    cb = ind.independent_case("dumbbell", 2.0, size=96, seed=5)
    assert ca.name == cb.name and ca.period_px == cb.period_px
    np.testing.assert_array_equal(ca.noisy, cb.noisy)
    np.testing.assert_array_equal(ca.columns.vacancies, cb.columns.vacancies)


def test_specs_cover_kinds_doses_and_periods():
    specs = ind.independent_specs()
    assert len(specs) == len(ind.INDEPENDENT_KINDS) * 4 == len({s.name for s in specs})
    assert {(s.kind, s.dose) for s in specs} == {(k, d) for k in ind.INDEPENDENT_KINDS for d in (2.0, 5.0, 10.0,
                                                                                                   20.0)}
    periods = np.array([s.period_px for s in specs])
    assert periods.min() == pytest.approx(6.0) and periods.max() == pytest.approx(40.0)
    for kind in ind.INDEPENDENT_KINDS:  # every kind meets small and large periods
        p = [s.period_px for s in specs if s.kind == kind]
        assert min(p) < 10 and max(p) > 20
    for dose in (2.0, 5.0, 10.0, 20.0):
        p = [s.period_px for s in specs if s.dose == dose]
        assert max(p) / min(p) > 2
    for s in specs:
        assert s.size == min(512, max(256, int(np.ceil(8 * s.period_px))))
        assert s.name == ind.case_name(s.kind, s.dose, s.period_px) and s.name.startswith(f"ind_{s.kind}_d")
    quick = ind.independent_specs(quick=True, doses=(5, 20))
    assert len(quick) == 12 and all(s.size == 128 and s.period_px <= 16 for s in quick)
    assert ind.case_name("honeycomb", 5, 9.5) == "ind_honeycomb_d5_p9.5"
    with pytest.raises(ConfigError):
        ind.independent_specs(kinds=("cubic",))
    with pytest.raises(ConfigError):
        ind.independent_case("square", 0.0)
    with pytest.raises(ConfigError):
        ind.independent_case("kagome", 5.0)


def test_large_period_fits_eight_cells():
    img = ind.render_independent("square", 5.0, size=96, period_px=30.0, seed=0)
    assert img.truth.shape == (240, 240)
    assert ind.resolved_size(256, 64.0) == 512


# ------------------------------------------------------------------------------------------------ benchmark

bench_script = importlib.import_module("stem_denoise.commands.benchmark")


def test_benchmark_runs_on_the_independent_set(tmp_path, capsys):
    out = tmp_path / "ind"
    args = ["--out", str(out), "--cases", "independent", "--quick", "--kinds", "nanoparticle", "--doses",
            "5", "--size", "64", "--methods", "noisy,gaussian_oracle,bragg", "--no-dip", "--no-progress"]
    assert bench_script.main(args) == 0
    text = capsys.readouterr().out
    assert "independent validation set" in text
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {r["set"] for r in rows} == {"independent"}
    assert {r["lattice"] for r in rows} == {"nanoparticle"}
    assert int(rows[0]["n_vacancies"]) > 0  # the vacuum's lattice sites
    assert all(r["case"].startswith("ind_") and r["hidden_columns"] != "" for r in rows)
    md = (out / "results.md").read_text()
    assert "## Independent validation set, dose 5 counts per column peak" in md
    assert "## Dose 5 counts" not in md  # no simulated-set table
    assert (out / "psnr_vs_dose_independent.png").exists() and not (out / "psnr_vs_dose.png").exists()
    assert len(list((out / "figures").glob("ind_nanoparticle_d5_*.png"))) == 1


def test_benchmark_keeps_the_two_sets_apart(tmp_path):
    out = tmp_path / "both"
    cfg = B.BenchConfig(out_dir=out, quick=True, cases="both", lattices=("square",), independent_kinds=("square",),
                        doses=(20.0,), size=64, methods=("noisy", "gaussian_oracle"), dip=False, progress=False)
    result = B.run_benchmark(cfg, log=lambda *a: None)
    sets = {r["case"]: r["set"] for r in result.rows}
    assert sorted(set(sets.values())) == ["independent", "simulated"]
    md = (out / "results.md").read_text()
    main_part, ind_part = md.split("## Independent validation set\n")
    assert "## Dose 20 counts per column peak" in main_part and "ind_square" not in main_part.split("## Every")[0]
    assert "## Independent validation set, dose 20 counts per column peak" in ind_part
    assert "Cases: ind_square_d20_" in ind_part
    for key in ("psnr_plot", "hallucination_plot", "psnr_plot_independent", "hallucination_plot_independent"):
        assert Path(result.paths[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_rejects_bad_case_options(tmp_path):
    with pytest.raises(ConfigError):
        B.BenchConfig(out_dir=tmp_path, cases="real").validate()
    with pytest.raises(ConfigError):
        B.BenchConfig(out_dir=tmp_path, cases="independent", data_dir=tmp_path).validate()
    with pytest.raises(ConfigError):
        B.BenchConfig(out_dir=tmp_path, cases="independent", independent_kinds=("kagome",)).validate()
    with pytest.raises(SystemExit):  # argparse: not a choice
        bench_script.build_parser().parse_args(["--out", str(tmp_path), "--cases", "real"])
