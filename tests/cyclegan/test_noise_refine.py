"""Noise drawn around the micrographs' own estimates, and their adversarial refinement (cyclegan.pairs.NoiseRefiner,
D_A in the stochastic objective): statistics, gradient paths, units of the trainB pairs, logging, exact resume, and
a wrong starting dose pulled towards the true one."""
import json
import math

import numpy as np
import pytest
import tifffile
import torch

from cyclegan.checkpoint import safe_torch_load
from cyclegan.config import config_from_dict
from cyclegan.data import DataInfo, toy_lattice
from cyclegan.pairs import (
    CORR_LIMIT,
    EstimatedNoise,
    NoiseRefiner,
    SoftSample,
    draw_estimated_noise,
    read_noise_estimates,
    stem_noise,
)
from cyclegan.train import STOCHASTIC_LOSS_NAMES, CycleGAN, DistContext, _pair_source, train
from stem_denoise.common.errors import ConfigError
from tests.cyclegan.helpers import StubDashboard

TINY = {"objective": "stochastic", "clean_source": "trainB", "refine_noise": True, "steps": 6, "batch_size": 2,
        "crop_px": 24,
        "num_workers": 0, "log_every": 1, "image_every": 3, "checkpoint_every": 3, "pool_size": 3, "device": "cpu",
        "period_px": 8.0, "patch_px": 32, "atoms_per_patch": 4.0,
        "generator": {"width": 4, "n_blocks": 1, "n_down": 1}, "discriminator": {"width": 4, "n_layers": 2},
        "dashboard": {"enabled": False}}
REFINED = ("noise_dose_scale", "noise_read_scale", "noise_row_offset_scale", "noise_corr_row", "noise_corr_col")


def tiny(**over):
    return config_from_dict(over, base=config_from_dict(TINY))


def _lag1(r: np.ndarray, axis: int) -> float:
    a = np.moveaxis(r, axis, -1)
    return float(np.corrcoef(a[..., 1:].ravel(), a[..., :-1].ravel())[0, 1])


def noise_record(dose: float, *, corr_row=0.0, corr_col=0.0, read=0.0, row_offset=0.0, offset=0.0,
                 period=8.0) -> dict:
    """A manifest ``noise`` record (as data_prep.patches writes it) of ``dose`` counts per normalised unit."""
    return {"normalised": {"gain": 1.0 / dose, "offset": offset, "read_noise": read / dose, "row_offset": row_offset,
                           "corr_row": corr_row, "corr_col": corr_col, "dose": dose, "reliable": True},
            "raw": {}, "period_px": period, "scale": [1.0, 1.0]}


def write_noisy_toy(root, *, dose: float, estimated_dose: float, n: int = 16, patch: int = 32, period: float = 8.0,
                    level: float = 0.5, seed: int = 0) -> None:
    """trainA: clean toy lattices (``level`` + lattice, normalised units) through the noise layer at ``dose``;
    trainB: other clean toy lattices; manifest: one training micrograph whose estimate says ``estimated_dose``."""
    (root / "trainA").mkdir(parents=True)
    (root / "trainB").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        a = level + (1.0 - level) * toy_lattice((patch, patch), period, rng=rng)
        tifffile.imwrite(root / "trainA" / f"a_{i:04d}.tif", stem_noise(torch.from_numpy(a), {"dose": dose}, g).numpy())
        b = level + (1.0 - level) * toy_lattice((patch, patch), period, rng=rng)
        tifffile.imwrite(root / "trainB" / f"b_{i:04d}.tif", b.astype(np.float32))
    (root / "manifest.json").write_text(json.dumps({
        "patch_px": patch, "atoms_per_patch": patch / period, "period_px": period, "patches": [],
        "micrographs": [{"split": "train", "source": "toy", "noise": noise_record(estimated_dose, period=period)}]}))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy") / "data"
    write_noisy_toy(root, dose=40.0, estimated_dose=30.0, n=8)
    return root


# ---------------------------------------------------------------------------------------------------------------
# the refiner
# ---------------------------------------------------------------------------------------------------------------
def test_refiner_starts_as_the_identity_with_the_estimated_statistics():
    params = {"dose": 30.0, "offset": 0.05, "read_noise": 1.5, "corr_row": 0.3, "corr_col": -0.1,
              "row_offset_abs": 0.0}
    ref = NoiseRefiner()
    refined = ref.refine(params)
    assert set(refined) == set(params) and all(refined[k] == pytest.approx(v, abs=1e-6) for k, v in params.items())
    assert ref.summary()["noise_dose_scale"] == 1.0
    # a flat clean crop at the model's scale (no resampling): the forward's noise has the estimate's statistics
    level, n = 0.6, 264
    clean = torch.full((n, n), level)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = ref([SoftSample.draw(clean, params, n - 8, g) for _ in range(2)])
    assert out.shape == (2, 1, n - 8, n - 8)
    r = (out[:, 0] - level).numpy() * params["dose"]  # counts
    assert r.var() == pytest.approx(params["dose"] * (level - params["offset"]) + params["read_noise"] ** 2,
                                    rel=0.04)
    assert abs(r.mean()) < 0.1
    assert _lag1(r, 2) == pytest.approx(0.3, abs=0.03) and _lag1(r, 1) == pytest.approx(-0.1, abs=0.03)
    # row offsets in the clean image's units, as the Poisson layer makes them
    rows = {**params, "corr_row": 0.0, "corr_col": 0.0, "row_offset_abs": 0.05}
    with torch.no_grad():
        soft = ref([SoftSample.draw(clean, rows, n - 8, g)])[0, 0] - level
    poisson = stem_noise(clean, rows, g)[4:-4, 4:-4] - level
    expected = math.sqrt(0.05 ** 2 + r.var() / params["dose"] ** 2 / (n - 8))
    for noise in (soft, poisson):
        assert float(noise.mean(dim=1).std()) == pytest.approx(expected, rel=0.15)


def test_corrections_change_the_noise_and_keep_the_correlations_bounded():
    ref = NoiseRefiner()
    with torch.no_grad():
        ref.log_dose.fill_(math.log(2.0))
        ref.corr_row_shift.fill_(50.0)
        ref.corr_col_shift.fill_(-50.0)
        ref.log_read_noise.fill_(math.log(3.0))
    p = ref.refine({"dose": 10.0, "read_noise": 1.0, "corr_row": 0.2, "corr_col": 0.2, "clean": False})
    assert p["dose"] == pytest.approx(20.0) and p["read_noise"] == pytest.approx(3.0) and p["clean"] is False
    assert 0.44 < p["corr_row"] <= CORR_LIMIT and -CORR_LIMIT <= p["corr_col"] < -0.44


def test_gradient_reaches_the_refiner_from_its_noise_and_never_from_gs_clean_loss(data):
    # a loss on the differentiable noise reaches every correction
    ref = NoiseRefiner()
    g = torch.Generator().manual_seed(1)
    params = {"dose": 20.0, "offset": 0.0, "read_noise": 1.0, "corr_row": 0.2, "corr_col": -0.1,
              "row_offset_abs": 0.02}
    soft = [SoftSample.draw(torch.rand(40, 40), params, 24, g) for _ in range(2)]
    (ref(soft) ** 2).mean().backward()
    assert all(p.grad is not None and float(p.grad.abs()) > 0 for p in ref.parameters())

    # one training step: the refiner's gradient is the same whatever the weight of G's clean loss
    estimates = read_noise_estimates(data)
    grads, g_grads = [], []
    for lam in (10.0, 0.0):
        cfg = tiny(lambda_clean=lam)
        info = DataInfo(patch_px=32, atoms_per_patch=4.0, period_px=8.0)
        model = CycleGAN(cfg, info, torch.device("cpu"), has_a=True, noise_estimates=estimates)
        assert model.refine and set(model.net_names) == {"G", "D_B", "D_A", "noise"}
        real_B = torch.from_numpy(np.stack([tifffile.imread(p) for p in sorted((data / "trainB").glob("*"))[:2]]))
        real_A = torch.from_numpy(np.stack([tifffile.imread(p) for p in sorted((data / "trainA").glob("*"))[:2]]))
        real_B, real_A = real_B[:, None, 4:28, 4:28], real_A[:, None, 4:28, 4:28]
        pairs = _pair_source(cfg, info, object(), data, DistContext(), estimates=estimates,
                             refiner=model.raw("noise"))
        noisy, clean, soft = pairs(0, real_B)
        assert not noisy.requires_grad and len(soft) == 2
        values, _ = model.step_stochastic(noisy, clean, real_A, real_B, soft=soft)
        assert values["gan_noise"] > 0 and values["loss_D_A"] > 0 and set(REFINED) <= set(values)
        grads.append([p.grad.clone() for p in model.raw("noise").parameters()])
        g_grads.append(torch.cat([p.grad.flatten() for p in model.raw("G").parameters() if p.grad is not None]))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert any(float(a.abs()) > 0 for a in grads[0])
    assert not torch.equal(g_grads[0], g_grads[1])  # (while G's own gradient does depend on it)


# ---------------------------------------------------------------------------------------------------------------
# pairs drawn around the estimates
# ---------------------------------------------------------------------------------------------------------------
def test_manifest_estimates_are_read_in_the_patches_units(tmp_path):
    man = {"micrographs": [
        {"split": "train", "source": "a", "noise": noise_record(25.0, read=2.0, row_offset=0.01, offset=-0.1,
                                                                period=11.0)},
        {"split": "train", "source": "b", "noise": None},
        {"split": "test", "source": "c", "noise": noise_record(5.0)},
        {"split": "train", "source": "d", "noise": {**noise_record(7.0), "normalised": {
            **noise_record(7.0)["normalised"], "reliable": False}}},
    ]}
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    (est,) = read_noise_estimates(tmp_path)  # only reliable training micrographs
    assert est.source == "a" and est.dose == pytest.approx(25.0) and est.read_noise == pytest.approx(2.0)
    assert est.offset == -0.1 and est.row_offset_abs == 0.01 and est.period_px == 11.0
    assert read_noise_estimates(tmp_path / "nowhere") == []
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p, e = draw_estimated_noise(g, [est], 0.3)
        assert e is est and math.exp(-0.3) <= p["dose"] / 25.0 <= math.exp(0.3)
        assert abs(p["corr_row"] - est.corr_row) <= 0.05 + 1e-9 and p["offset"] == -0.1
    assert draw_estimated_noise(g, [est], 0.0)[0]["dose"] == 25.0


@pytest.mark.parametrize("source", ["estimated", "ranges"])
def test_trainB_pairs_keep_the_patches_units_and_the_estimates_dose(tmp_path, source):
    """Patches normalised per micrograph stay in those units (no renormalisation by the noisy crop), and the noise
    has the estimate's dose at the micrograph's own period."""
    info = DataInfo(patch_px=48, atoms_per_patch=6.0, period_px=8.0)
    level = 5.0
    b = level + torch.from_numpy(toy_lattice((48, 48), 8.0, rng=np.random.default_rng(0)))[None, None]
    real_B = b.repeat(4, 1, 1, 1)

    def residual_var(period):
        est = EstimatedNoise(dose=25.0, offset=0.0, read_noise=0.0, corr_row=0.0, corr_col=0.0, row_offset_abs=0.0,
                             period_px=period, peak_dose=25.0, reliable=True, source="m")
        cfg = tiny(crop_px=48, scale_jitter=0.0, noise_spread=0.0, noise={"clean_frac": 0.0}, noise_source=source,
                   period_range=[period, period])
        pairs = _pair_source(cfg, info, object(), tmp_path, DistContext(), estimates=[est] if source == "estimated"
                             else None)
        x, y, soft = pairs(0, real_B)
        assert soft is None and x.shape == (4, 1, 40, 40)
        assert float(y.min()) >= level - 0.05 and float(y.max()) <= level + 1.05  # the patch's own units
        return float((x - y).var()), float(y.mean())

    var, mean = residual_var(8.0)  # native = model scale: no resampling
    if source == "estimated":
        assert var == pytest.approx(mean / 25.0, rel=0.1)
    var2, _ = residual_var(16.0)  # a micrograph at twice the model's zoom: shrinking averages its noise
    assert var2 < 0.5 * var


def test_scan_aligned_a_patches_keep_rows_as_rows(tmp_path):
    """A discriminator that judges the noise must see the micrographs' scan rows as rows: A patches are only flipped
    (B patches still take all eight flips and turns)."""
    from cyclegan.data import UnpairedPatches

    stripes = np.repeat(np.arange(16, dtype=np.float32)[:, None], 16, axis=1)  # constant along every row
    for d in ("trainA", "trainB"):
        (tmp_path / d).mkdir()
        tifffile.imwrite(tmp_path / d / "p.tif", stripes)
    ds = UnpairedPatches(tmp_path / "trainA", tmp_path / "trainB", crop_px=12, scan_aligned_a=True)
    a_rows, b_rows = [], []
    for seed in range(40):
        item = ds[(0, 0, seed, seed)]
        a_rows.append(bool((item["A"][0].std(dim=1) == 0).all()))
        b_rows.append(bool((item["B"][0].std(dim=1) == 0).all()))
    assert all(a_rows) and not all(b_rows)


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def test_refining_run_logs_the_corrections_and_resumes_exactly(data, tmp_path, one_torch_thread):
    dash = StubDashboard()
    cfg = tiny(decay_start=1.0)
    straight = train(cfg, data, tmp_path / "straight", dashboard=dash, progress=False)["digests"]
    assert set(straight) == {"G", "D_B", "D_A", "noise"}
    vals = [v for _, v in dash.scalars_log]
    assert len(vals) == 6 and all(set(STOCHASTIC_LOSS_NAMES) | {"gan_noise", "loss_D_A"} | set(REFINED) <= set(v)
                                  for v in vals)
    assert vals[0]["noise_dose_scale"] != vals[-1]["noise_dose_scale"]  # the corrections move
    assert "F~(B)" in dash.images_log[0][1]
    train(tiny(steps=3, decay_start=1.0), data, tmp_path / "resumed", progress=False)
    resumed = train(cfg, data, tmp_path / "resumed", resume=True, progress=False)["digests"]
    assert resumed == straight
    ck = safe_torch_load(tmp_path / "resumed" / "last.pt")
    assert set(ck["models"]["noise"]) == {"log_dose", "corr_row_shift", "corr_col_shift", "log_row_offset",
                                          "log_read_noise"}
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert all("noise_dose_scale" in rec and "noise_corr_row" in rec for rec in log)


def test_ranges_or_no_refinement_keep_the_plain_model_set(data, tmp_path, one_torch_thread):
    for name, over in (("ranges", {"noise_source": "ranges"}), ("off", {"refine_noise": False})):
        summary = train(tiny(steps=2, **over), data, tmp_path / name, progress=False)
        assert set(summary["digests"]) == {"G", "D_B"}


def test_noise_source_settings_are_checked(tmp_path, one_torch_thread):
    with pytest.raises(ConfigError, match="noise_source 'estimated' needs clean_source 'trainB'"):
        tiny(clean_source="synthetic", noise_source="estimated")
    with pytest.raises(ConfigError, match="noise_spread"):
        tiny(noise_spread=1.5)
    with pytest.raises(ConfigError, match="noise_source"):
        tiny(noise_source="measured")
    from cyclegan.data import write_toy_patches

    write_toy_patches(tmp_path / "plain", n_a=4, n_b=4, patch_px=32, atoms_per_patch=4)  # no estimates
    with pytest.raises(ConfigError, match="needs noise estimates"):
        train(tiny(steps=1, noise_source="estimated"), tmp_path / "plain", tmp_path / "run", progress=False)


def test_refinement_pulls_a_wrong_dose_towards_the_true_one(tmp_path, one_torch_thread):
    """Micrograph patches with noise of dose 80, an estimate that says 40: the dose scale moves from 1 towards 2."""
    write_noisy_toy(tmp_path / "data", dose=80.0, estimated_dose=40.0, n=32, seed=3)
    cfg = tiny(steps=180, batch_size=8, crop_px=32, lr=4e-3, noise_lr_factor=2.0, decay_start=1.0, log_every=10,
               image_every=10_000, checkpoint_every=10_000, pool_size=0, seed=3, scale_jitter=0.0, noise_spread=0.0,
               noise={"clean_frac": 0.0}, discriminator={"width": 16, "n_layers": 2})
    dash = StubDashboard()
    train(cfg, tmp_path / "data", tmp_path / "run", dashboard=dash, progress=False)
    scale = [v["noise_dose_scale"] for _, v in dash.scalars_log]
    assert 1.4 < np.mean(scale[-3:]) < 3.0, scale
