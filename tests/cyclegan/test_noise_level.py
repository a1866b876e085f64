"""The generator's optional noise-level input: the network, its training, the level measured at inference."""
import math

import numpy as np
import pytest
import torch

from cyclegan.checkpoint import export_generator, load_generator
from cyclegan.config import config_from_dict
from cyclegan.infer import DEFAULT_NOISE_LEVEL_FACTOR, denoise_array, level_at_model_scale, model_noise_level
from cyclegan.models import GeneratorConfig, build_generator
from cyclegan.train import train
from stem_denoise.common.errors import ConfigError
from stem_denoise.common.resample import resample_operator
from tests.cyclegan.test_train_stochastic import tiny


def _net(seed=0):
    torch.manual_seed(seed)
    net = build_generator(GeneratorConfig(width=4, n_blocks=1, n_down=1, noise_input=True))
    with torch.no_grad():  # a non-identity head, so that the level can show in the output
        net.head.weight.normal_(0, 0.1)
    return net.eval()


def test_the_level_is_an_input_channel_given_per_call_or_set():
    net = _net()
    x = torch.rand(3, 1, 20, 20)
    with pytest.raises(ValueError, match="noise level"):
        net(x)
    with torch.no_grad():
        a, b = net(x, 0.0), net(x, 0.3)
        per = net(x, torch.tensor([0.0, 0.3, 0.0]))
        net.set_noise_level(0.3)
        c = net(x)
    assert not torch.allclose(a, b)
    assert torch.equal(c, b)
    assert torch.allclose(per[0], a[0]) and torch.allclose(per[1], b[1]) and torch.allclose(per[2], a[2])
    with pytest.raises(ValueError, match="2 noise levels"):
        net(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError):
        net.set_noise_level(float("nan"))
    assert net.stem[0].in_channels == 2
    assert build_generator(GeneratorConfig(width=4, n_blocks=1)).stem[0].in_channels == 1


def test_an_export_keeps_the_level_input(tmp_path):
    net = _net()
    export_generator(tmp_path / "g.pt", net, net.cfg, {"period_px": 8.0, "patch_px": 32, "atoms_per_patch": 4.0,
                                                        "direction": "A2B"})
    g, _ = load_generator(tmp_path / "g.pt")
    x = torch.rand(2, 1, 16, 16)
    assert g.cfg.noise_input
    with torch.no_grad():
        assert torch.equal(g(x, 0.2), net(x, 0.2))


def test_training_gives_each_pair_its_own_level_and_the_classic_objective_refuses_it(tmp_path, one_torch_thread,
                                                                                      monkeypatch):
    seen = []
    from cyclegan import models

    orig = models.Generator.forward

    def spy(self, x, level=None):
        if self.training and level is not None:
            seen.append(torch.as_tensor(level).detach().clone())
        return orig(self, x, level)

    monkeypatch.setattr(models.Generator, "forward", spy)
    cfg = tiny(steps=3, batch_size=4, generator={"width": 4, "n_blocks": 1, "n_down": 1, "noise_input": True},
               noise={"dose": [2.0, 50.0], "clean_frac": 0.5})
    summary = train(cfg, None, tmp_path / "run", progress=False)
    assert summary["step"] == 3 and len(seen) == 3
    levels = torch.cat(seen)
    assert (levels == 0).any() and (levels > 0.01).any()  # the noise-free pairs get 0, the noisy ones their std
    g, _ = load_generator(tmp_path / "run" / "generator.pt")
    assert g.cfg.noise_input
    with pytest.raises(ConfigError, match="noise_input"):
        config_from_dict({"objective": "classic", "generator": {"noise_input": True}})


def test_level_at_model_scale_follows_the_resampler():
    assert level_at_model_scale(4.0, 0.0, 0.0, 0.0, 1.0) == pytest.approx(2.0, rel=0.03)
    half = level_at_model_scale(4.0, 0.0, 0.0, 0.0, 0.5)  # averaging about 2 x 2 px halves a white noise
    assert 0.7 < half < 1.3
    assert level_at_model_scale(4.0, 0.4, 0.0, 0.0, 0.5) > half  # correlated noise averages away less
    assert level_at_model_scale(4.0, 0.0, 0.0, 0.0, 2.0) < 2.0  # interpolation smooths too


def _true_level(noisy, truth, period, model_period=12.8):
    from cyclegan.infer import _robust_range

    lo, hi = _robust_range(noisy)
    h, w = noisy.shape
    s = model_period / period
    r, c = resample_operator(h, round(h * s)), resample_operator(w, round(w * s))
    d = np.asarray(noisy - truth, np.float64)
    d = d if r.matrix is None else r.matrix @ d
    d = d if c.matrix is None else (c.matrix @ d.T).T
    m = max(1, d.shape[0] // 10)
    return float(d[m:-m, m:-m].std()) / (hi - lo)


@pytest.mark.parametrize("lattice,period,dose", [("square", 7.0, 3.0), ("perovskite", 14.0, 20.0),
                                                  ("square", 30.0, 200.0)])
def test_the_measured_level_matches_the_true_one_on_simulated_micrographs(lattice, period, dose):
    from cyclegan.infer import _robust_range
    from stem_denoise.api import simulate

    r = simulate(lattice=lattice, shape=(320, 320), period_px=period, dose=dose, seed=4)
    lo, hi = _robust_range(r.noisy)
    level, rec = model_noise_level(r.noisy, period, 12.8, lo, hi)
    assert rec["source"] == "noise model"
    assert level == pytest.approx(_true_level(r.noisy, r.truth, period), rel=0.1)


def test_denoise_array_measures_the_level_or_takes_it(tmp_path):
    from stem_denoise.api import simulate

    r = simulate(lattice="square", shape=(160, 160), period_px=12.8, dose=10, seed=1)
    net = _net()
    info = {"period_px": 12.8}
    stats = {}
    out = denoise_array(r.noisy, net, info, period_px=12.8, stats=stats, device="cpu", precision="fp32")
    assert stats["noise_level"]["source"] == "noise model" and 0.01 < stats["noise_level"]["noise_level"] < 0.5
    assert net.noise_level is None  # the level goes with each tile; the generator is not changed
    told = DEFAULT_NOISE_LEVEL_FACTOR * stats["noise_level"]["noise_level"]
    from cyclegan.tiles import make_tile_fn

    x = ((r.noisy[:64, :64] - stats["lo"]) / (stats["hi"] - stats["lo"]))[None].astype(np.float32)
    direct = make_tile_fn(net, torch.device("cpu"), precision="fp32", noise_level=told)(x)
    other = make_tile_fn(net, torch.device("cpu"), precision="fp32", noise_level=3 * told)(x)
    assert not np.allclose(direct, other)  # the tile function hands the level it was given to the network
    whole = denoise_array(r.noisy, net, info, period_px=12.8, whole=True, device="cpu", precision="fp32")
    assert np.abs(out - whole).max() <= 1e-4 * float(np.ptp(r.noisy))  # tiles still agree with the whole image
    given = denoise_array(r.noisy, net, info, period_px=12.8, noise_level=0.4, stats=stats, device="cpu",
                          precision="fp32")
    assert stats["noise_level"] == {"noise_level": 0.4, "source": "given"} and net.noise_level is None
    assert not np.allclose(given, out)
    assert math.isfinite(float(given.mean()))


def test_the_level_factor_scales_the_measured_level_and_bad_factors_are_refused():
    from stem_denoise.api import simulate
    from stem_denoise.common.errors import InputError

    r = simulate(lattice="square", shape=(128, 128), period_px=12.8, dose=10, seed=2)
    net = _net()
    info = {"period_px": 12.8}
    s1, s2 = {}, {}
    a = denoise_array(r.noisy, net, info, period_px=12.8, stats=s1, device="cpu", precision="fp32")
    b = denoise_array(r.noisy, net, info, period_px=12.8, stats=s2, device="cpu", precision="fp32",
                      noise_level_factor=0.5)
    assert s2["noise_level"]["factor"] == 0.5 and s1["noise_level"]["factor"] == DEFAULT_NOISE_LEVEL_FACTOR
    assert s2["noise_level"]["noise_level"] == pytest.approx(s1["noise_level"]["noise_level"])  # the measured one
    given = denoise_array(r.noisy, net, info, period_px=12.8, device="cpu", precision="fp32",
                          noise_level=0.5 * s1["noise_level"]["noise_level"])
    np.testing.assert_allclose(b, given, rtol=0, atol=1e-6 * float(np.ptp(r.noisy)))  # factor 0.5 = half the level
    assert not np.allclose(a, b)
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="noise level factor"):
            denoise_array(r.noisy, net, info, period_px=12.8, device="cpu", noise_level_factor=bad)


def test_training_on_micrographs_gives_their_patches_the_batch_median_level(tmp_path, one_torch_thread,
                                                                            monkeypatch):
    from cyclegan import models
    from cyclegan.data import write_toy_patches

    data = tmp_path / "data"
    write_toy_patches(data, n_a=8, n_b=8, patch_px=32, atoms_per_patch=4, noise=0.3, dent_frac=0.5, seed=0)
    seen = []
    orig = models.Generator.forward

    def spy(self, x, level=None):
        if self.training:
            seen.append((x.shape[0], torch.as_tensor(level).detach().clone()))
        return orig(self, x, level)

    monkeypatch.setattr(models.Generator, "forward", spy)
    cfg = tiny(steps=2, batch_size=4, clean_source="trainB",
               generator={"width": 4, "n_blocks": 1, "n_down": 1, "noise_input": True})
    summary = train(cfg, data, tmp_path / "run", progress=False)
    assert summary["step"] == 2
    # per step: the pairs, then the micrograph patches (or both in one batch of 8): the patches get the pairs' median
    levels = torch.cat([lv.reshape(-1) for _, lv in seen])
    assert sum(n for n, _ in seen) == levels.numel() == 16
    for step in levels.reshape(2, 8):
        pairs, patches = step[:4], step[4:]
        assert torch.allclose(patches, pairs.median().expand(4)) and (pairs != pairs[0]).any()
