"""Benchmark engine: test-set specs, pluggable methods, adapters (DIP faked, CycleGAN with a tiny export), loading
cases from a folder, and the report files."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from data_prep.simulate import save_simulation, simulate
from stem_denoise.common.errors import ConfigError, InputError
from stem_denoise.evaluation import benchmark as B
from stem_denoise.evaluation.report import aggregate


@pytest.fixture(scope="module")
def case():
    return B.simulate_case(B.CaseSpec("sq", "square", 10.0, 96, period_px=12.8, angle_deg=10.0, seed=1,
                                      vacancy_frac=0.06))


def test_default_specs_cover_doses_lattices_and_large():
    full = B.default_specs()
    regular = [s for s in full if s.size == 384]
    assert {s.dose for s in regular} == {2.0, 5.0, 10.0, 20.0}
    assert {s.lattice for s in regular} == {"square", "hex", "perovskite", "honeycomb", "nanoparticle"}
    assert len(regular) == 20
    large = [s for s in full if s.size >= 2048]
    assert len(large) == 2 and len({s.lattice for s in large}) == 2
    assert all(s.vacancy_frac > 0 and s.heavy_frac > 0 and s.dents > 0 for s in full)
    assert len({s.name for s in full}) == len(full)
    quick = B.default_specs(quick=True)
    assert len(quick) == 4 and all(s.size <= 256 for s in quick)
    assert len({s.period_px for s in quick}) > 1  # more than one zoom


def test_nanoparticle_case_counts_columns_painted_into_the_vacuum():
    from stem_denoise.evaluation.metrics import column_metrics

    spec = B.CaseSpec("np", "nanoparticle", 20.0, 160, period_px=12.8, angle_deg=20.0, seed=3)
    c = B.simulate_case(spec)
    assert c.lattice == "nanoparticle"
    centre = (np.array(c.shape) - 1) / 2.0
    radius = B.PARTICLE_RADIUS_FRAC * 0.5 * min(c.shape)
    in_vacuum = np.hypot(*(c.columns.vacancies - centre).T) > radius
    assert in_vacuum.sum() > 30 and np.hypot(*(c.columns.columns - centre).T).max() < radius + 1
    # an output that paints the crystal over the whole frame: the same simulation without the particle
    painted = simulate(lattice="square", shape=c.shape, period_px=12.8, angle_deg=20.0, dose=20.0, seed=3,
                       vacancy_frac=spec.vacancy_frac, heavy_frac=spec.heavy_frac, light_frac=spec.light_frac,
                       dents=spec.dents, noise=False)
    m_paint = column_metrics(painted.truth, c.columns, truth_image=c.truth)
    m_truth = column_metrics(c.truth, c.columns, truth_image=c.truth)
    assert m_truth["hallucinations"] == 0
    # every vacuum site away from the border shows a column, and counts even far from any true column (the real
    # vacancies inside the crystal stay empty in the painted image too)
    assert m_paint["hallucinations"] >= m_paint["n_vacancies"] - len(painted.vacancies) > 0.5 * in_vacuum.sum()
    honey = B.simulate_case(B.CaseSpec("hc", "honeycomb", 20.0, 128, period_px=16.0, seed=4))
    assert honey.lattice == "honeycomb" and len(honey.columns.columns) > 100


def test_pluggable_method_and_oracle_gating(case):
    seen = {}

    def perfect(noisy, ctx):
        seen["truth_for_plain"] = ctx.truth
        seen["period"] = ctx.period_px
        return case.truth

    def oracle(noisy, ctx):
        seen["truth_for_oracle"] = ctx.truth
        ctx.notes["used"] = "truth"
        return ctx.truth

    def broken(noisy, ctx):
        raise RuntimeError("boom")

    methods = [B.Method("perfect", perfect, "perfect"), B.Method("oracle", oracle, "oracle", oracle=True),
               B.Method("broken", broken, "broken"), B.Method("small", lambda x, c: x[:10], "wrong shape")]
    rows, outputs, matches, skipped, errors = B.run_case(case, methods)
    assert seen["truth_for_plain"] is None and seen["truth_for_oracle"] is case.truth
    assert seen["period"] == pytest.approx(case.period_px, rel=0.02)  # measured on the noisy image
    assert [r["method"] for r in rows] == ["perfect", "oracle"]
    assert len(errors) == 2 and "boom" in errors[0] and "shape" in errors[1]
    r = rows[0]
    assert r["psnr"] == 100.0 and r["f1"] == 1.0 and r["hallucinations"] == 0 and r["n_vacancies"] > 0
    assert r["time_s"] >= 0 and r["mpix_per_s"] > 0
    assert rows[1]["oracle"] is True and '"used": "truth"' in rows[1]["notes"]
    assert set(outputs) == {"perfect", "oracle"} and "perfect" in matches


def test_size_limit_skips_a_method(case):
    m = B.Method("tiny_only", lambda x, c: x, "tiny only", max_pixels=50 * 50)
    rows, _, _, skipped, errors = B.run_case(case, [m])
    assert rows == [] and errors == [] and "size limit" in skipped[0]


def test_dip_adapter_calls_the_contract(monkeypatch, case):
    calls = {}

    def dip_denoise(image, **kwargs):
        calls.update(kwargs)
        return image * 0 + case.truth, {"preset": "light", "stop_step": 123, "steps_run": 150, "junk": [1]}

    monkeypatch.setitem(sys.modules, "dip_baseline.api", types.SimpleNamespace(dip_denoise=dip_denoise))
    m = B.dip_method(max_steps=200, max_pixels=1024 ** 2)
    rows, *_ = B.run_case(case, [m], seed=7)
    assert calls["stop"] == "auto" and calls["max_steps"] == 200 and calls["seed"] == 7 and "truth" not in calls
    assert rows[0]["psnr"] == 100.0
    assert '"stop_step": 123' in rows[0]["notes"] and "junk" not in rows[0]["notes"]


def test_build_methods_says_what_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)
    methods, skipped = B.build_methods(B.BenchConfig(out_dir=tmp_path, dip=False))
    names = [m.name for m in methods]
    assert names == ["noisy", "gaussian_oracle", "median", "nlm", "bragg"]
    text = " ".join(skipped)
    assert "cyclegan: no --checkpoint" in text and "dip: disabled" in text and "bm3d" in text


def test_cyclegan_adapter_runs_stitched_inference(tmp_path, case):
    torch = pytest.importorskip("torch")
    from cyclegan.checkpoint import export_generator
    from cyclegan.models import GeneratorConfig, build_generator

    cfg = GeneratorConfig(width=4, n_blocks=1)
    gen = build_generator(cfg)
    with torch.no_grad():  # the residual branch off: an identity generator
        for p in gen.parameters():
            p.zero_()
    path = tmp_path / "g.pt"
    export_generator(path, gen, cfg, {"patch_px": 64, "atoms_per_patch": 5, "period_px": 12.8, "direction": "A2B"})
    m = B.cyclegan_method(path, device="cpu")
    rows, outputs, *_ = B.run_case(case, [m, B.classical_methods()["noisy"]])
    assert [r["method"] for r in rows] == ["cyclegan", "noisy"]
    # an identity network gives back the input (up to the resampling to the model's scale)
    assert abs(rows[0]["psnr"] - rows[1]["psnr"]) < 1.0


def test_noise_level_factors_add_a_method_each(tmp_path, case):
    torch = pytest.importorskip("torch")
    from cyclegan.checkpoint import export_generator
    from cyclegan.models import GeneratorConfig, build_generator

    cfg = GeneratorConfig(width=4, n_blocks=1, noise_input=True)
    torch.manual_seed(0)
    gen = build_generator(cfg)
    torch.nn.init.normal_(gen.head.weight, 0.0, 0.05)
    path = tmp_path / "g.pt"
    export_generator(path, gen, cfg, {"patch_px": 64, "atoms_per_patch": 5, "period_px": 12.8, "direction": "A2B"})
    bc = B.BenchConfig(out_dir=tmp_path / "b", dip=False, checkpoint=path, methods=("cyclegan",),
                       level_factors=(0.5,), device="cpu")
    methods, _ = B.build_methods(bc, log=lambda *a: None)
    assert [m.name for m in methods] == ["cyclegan", "cyclegan_level0p5"]
    rows, *_ = B.run_case(case, methods)
    assert rows[0]["psnr"] != rows[1]["psnr"]  # the level reached the network


def test_load_cases_from_a_folder(tmp_path):
    res = simulate(lattice="hex", shape=(96, 96), dose=20, vacancy_frac=0.05, seed=3)
    save_simulation(res, tmp_path, "hexcase")
    (tmp_path / "manifest.json").write_text('{"kind": "something else"}')
    # an image with only a truth image beside it
    other = simulate(lattice="square", shape=(96, 96), dose=20, seed=4)
    save_simulation(other, tmp_path, "plain")
    (tmp_path / "plain.json").unlink()
    (tmp_path / "plain_thickness.tif").unlink()
    cases = B.load_cases(tmp_path)
    by_name = {c.name: c for c in cases}
    assert set(by_name) == {"hexcase", "plain"}
    sim_case = by_name["hexcase"]
    np.testing.assert_allclose(sim_case.columns.columns, res.columns, atol=1e-3)
    assert sim_case.dose == 20 and sim_case.gain == 1.0 and sim_case.pixel_size_pm == pytest.approx(10.0)
    plain = by_name["plain"]
    assert len(plain.columns.vacancies) == 0 and len(plain.columns.columns) > 20
    assert plain.period_px == pytest.approx(other.period_px, rel=0.02)
    rows, *_ = B.run_case(plain, [B.classical_methods()["noisy"]])
    assert np.isnan(rows[0]["hallucinations"])  # vacancies unknown: not scored
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError):
        B.load_cases(empty)


def test_config_validation(tmp_path):
    """Types and ranges fail when the config is made, one line naming the key; missing files at validate()."""
    cases = [(dict(doses=(0.0,)), "doses"), (dict(lattices=("cubic",)), "lattices"), (dict(methods=("magic",)),
             "magic"), (dict(size=8), "size"), (dict(compare=(("a b", tmp_path),)), "label"), (dict(bogus=1), "bogus"),
             (dict(cases="independent", data_dir=tmp_path), "--data")]
    for kw, word in cases:
        with pytest.raises(ConfigError, match=word) as err:
            B.BenchConfig(out_dir=tmp_path, **kw)
        assert "\n" not in str(err.value)
    cfg = B.BenchConfig(out_dir=tmp_path, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(InputError, match="missing.pt"):
        cfg.validate()
    assert B.BenchConfig.model_json_schema()["properties"]["doses"]


def test_aggregate_and_bold_best():
    from stem_denoise.evaluation.report import _format_table

    rows = [
        {"method": "noisy", "label": "noisy input", "psnr": 10, "f1": 0.5, "hallucinations": 0, "n_vacancies": 4,
         "height": 10, "width": 10, "time_s": 0.0},
        {"method": "a", "label": "A", "psnr": 20, "f1": 0.9, "hallucinations": 1, "n_vacancies": 4, "height": 10,
         "width": 10, "time_s": 1.0, "lost": 2},
        {"method": "b", "label": "B", "psnr": 25, "f1": 0.8, "hallucinations": 4, "n_vacancies": 4, "height": 10,
         "width": 10, "time_s": 2.0, "lost": 0},
    ]
    agg = aggregate(rows)
    assert agg["b"]["halluc_frac"] == 100.0 and agg["a"]["mpix_per_s"] == pytest.approx(1e-4)
    table = "\n".join(_format_table(agg))
    assert "**25.00**" in table and "**0.900**" in table and "**1/4**" in table
    assert "**0/4**" not in table  # the noisy input is a reference, never bold


def test_compared_models_run_with_or_without_the_cyclegan_method(tmp_path):
    from cyclegan.checkpoint import export_generator
    from cyclegan.models import GeneratorConfig, build_generator

    gcfg = GeneratorConfig(width=4, n_blocks=1)
    path = tmp_path / "other.pt"
    export_generator(path, build_generator(gcfg), gcfg, {"patch_px": 64, "atoms_per_patch": 5, "period_px": 12.8,
                                                          "direction": "A2B"})
    alone, skipped = B.build_methods(B.BenchConfig(out_dir=tmp_path, methods=("noisy",), compare=(("x", path),)))
    assert [m.name for m in alone] == ["noisy", "cyclegan_x"] and skipped == []  # was silently dropped before
    both, skipped = B.build_methods(B.BenchConfig(out_dir=tmp_path, methods=("noisy", "cyclegan"), checkpoint=path,
                                                  compare=(("x", path),)))
    assert [m.name for m in both] == ["noisy", "cyclegan", "cyclegan_x"]  # once, after the main model
    no_ckpt, skipped = B.build_methods(B.BenchConfig(out_dir=tmp_path, methods=("cyclegan",), compare=(("x", path),)))
    assert [m.name for m in no_ckpt] == ["cyclegan_x"] and skipped == ["cyclegan: no --checkpoint given"]
