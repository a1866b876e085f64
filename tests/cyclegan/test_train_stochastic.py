"""The stochastic objective end to end with tiny networks: clean cycle from synthetic scenes or from trainB,
adversarial and low-pass terms on micrographs, exact resume, export."""
import json

import pytest
import torch

from cyclegan.checkpoint import load_generator, safe_torch_load
from cyclegan.config import config_from_dict, profile_config
from cyclegan.data import write_toy_patches
from cyclegan.train import STOCHASTIC_LOSS_NAMES, train
from stem_denoise.common.errors import ConfigError
from tests.cyclegan.helpers import StubDashboard

TINY = {"objective": "stochastic", "steps": 6, "batch_size": 2, "crop_px": 24, "num_workers": 0, "log_every": 1,
        "image_every": 3, "checkpoint_every": 3, "pool_size": 3, "device": "cpu", "bank_size": 4,
        "period_range": [8.0, 16.0], "period_px": 8.0, "patch_px": 32, "atoms_per_patch": 4.0,
        "generator": {"width": 4, "n_blocks": 1, "n_down": 1}, "discriminator": {"width": 4, "n_layers": 2},
        "dashboard": {"enabled": False}}


def tiny(**over):
    return config_from_dict(over, base=config_from_dict(TINY))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_toy_patches(root, n_a=8, n_b=8, patch_px=32, atoms_per_patch=4, noise=0.3, dent_frac=0.5, seed=0)
    return root


def test_default_profiles_use_the_stochastic_objective_and_classic_stays():
    assert profile_config("default").objective == "stochastic"
    assert profile_config("quick").objective == "stochastic"
    assert profile_config("classic").objective == "classic"
    assert profile_config("classic-quick").objective == "classic"


def test_synthetic_clean_cycle_learns_without_data(tmp_path, one_torch_thread):
    cfg = tiny(steps=60, batch_size=4, lr=3e-3, decay_start=1.0, noise={"dose": [5.0, 20.0], "clean_frac": 0.0})
    dash = StubDashboard()
    summary = train(cfg, None, tmp_path / "run", dashboard=dash, progress=False)
    assert summary["step"] == 60
    assert all(set(STOCHASTIC_LOSS_NAMES) <= set(v) for _, v in dash.scalars_log)
    # on held-out pairs (another step's draw), G is closer to the clean scene than the noisy input is
    from cyclegan.pairs import NoiseRanges, SyntheticPairs, step_generator
    from cyclegan.synth import SceneBank

    bank = SceneBank(4, seed=0, period_range=(8.0, 16.0))
    noisy, clean = SyntheticPairs(bank, model_period=8.0, crop_px=24, ranges=NoiseRanges(dose=(5.0, 20.0),
                                  clean_frac=0.0)).batch(16, step_generator(123, 0, 0))
    g, info = load_generator(tmp_path / "run" / "generator.pt")
    with torch.no_grad():
        err_g = (g(noisy) - clean).abs().mean().item()
    err_in = (noisy - clean).abs().mean().item()
    assert err_g < 0.85 * err_in
    # without micrographs there is no adversarial term and no discriminator
    assert all(v["gan_G"] == 0 and v["loss_D_B"] == 0 for _, v in dash.scalars_log)
    ck = safe_torch_load(tmp_path / "run" / "last.pt")
    assert set(ck["models"]) == {"G"}
    assert info["objective"] == "stochastic" and info["period_px"] == pytest.approx(8.0)
    panels = dash.images_log[0][1]
    assert list(panels) == ["F(B)", "G(F(B))", "B"]


def test_stochastic_resume_is_exact(tmp_path, one_torch_thread):
    # (a constant LR, so that stopping at step 3 by a lower --steps leaves the schedule unchanged)
    straight = train(tiny(decay_start=1.0), None, tmp_path / "straight", progress=False)["digests"]
    train(tiny(steps=3, decay_start=1.0), None, tmp_path / "resumed", progress=False)
    resumed = train(tiny(decay_start=1.0), None, tmp_path / "resumed", resume=True, progress=False)["digests"]
    assert straight == resumed


def test_trainB_source_with_micrographs_adds_adversarial_and_lowpass_terms(data, tmp_path, one_torch_thread):
    cfg = tiny(clean_source="trainB", period_range=[6.0, 12.0])
    dash = StubDashboard()
    train(cfg, data, tmp_path / "run", dashboard=dash, progress=False)
    vals = [v for _, v in dash.scalars_log]
    assert all(v["gan_G"] > 0 and v["loss_D_B"] > 0 for v in vals)
    # G starts as the identity (zero head), so the low-pass term is exactly 0 at step 1 and positive after
    assert vals[0]["lowfreq"] == 0 and all(v["lowfreq"] > 0 for v in vals[1:])
    assert list(dash.images_log[0][1]) == ["A", "G(A)", "F(B)", "G(F(B))", "B"]
    ck = safe_torch_load(tmp_path / "run" / "last.pt")
    assert set(ck["models"]) == {"G", "D_B"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["clean_source"] == "trainB"


def test_training_without_data_needs_the_synthetic_source(tmp_path):
    with pytest.raises(ConfigError, match="without --data"):
        train(config_from_dict({**TINY, "objective": "classic"}), None, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="without --data"):
        train(tiny(clean_source="trainB"), None, tmp_path / "run2", progress=False)


def test_noise_ranges_are_validated():
    with pytest.raises(ConfigError, match="noise.corr_row"):
        tiny(noise={"corr_row": [-0.6, 0.2]})
    with pytest.raises(ConfigError, match="period_range"):
        tiny(period_range=[40.0, 6.0])
    assert torch.get_num_threads() >= 1


def test_init_from_a_generator_export_fine_tunes_it(data, tmp_path, one_torch_thread):
    from cyclegan.models import build_generator
    from cyclegan.train import load_init_generator

    train(tiny(steps=2), None, tmp_path / "base", progress=False)
    export = tmp_path / "base" / "generator.pt"
    g0, _ = load_generator(export)
    fresh = build_generator(tiny().generator)
    load_init_generator(fresh, export, tiny())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), g0.state_dict().values()))
    with pytest.raises(Exception, match="another generator"):
        load_init_generator(build_generator(tiny(generator={"width": 6}).generator), export,
                            tiny(generator={"width": 6}))
    # the script takes the export's architecture over and trains on a data folder from it
    from stem_denoise.commands.train_cyclegan import main
    from stem_denoise.common.cli import run_main

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps({**TINY, "generator": {"width": 8, "n_blocks": 2, "n_down": 2},
                                    "clean_source": "trainB", "steps": 2}))
    with pytest.raises(SystemExit) as code:
        run_main(main, ["--data", str(data), "--out", str(tmp_path / "ft"), "--config", str(cfg_path),
                        "--init", str(export), "--no-progress"])
    assert code.value.code == 0
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["generator"]["width"] == 4 and saved["generator"]["n_blocks"] == 1


def test_grad_clip_limits_each_update_and_logs_the_norm(tmp_path, one_torch_thread):
    # The same run with and without a gradient-norm limit. Off: nothing logged and the run as before. On, with a
    # limit every step exceeds: the unclipped norm is logged at every step and the weights take another path.
    base = dict(steps=6, decay_start=1.0, lr=1e-2)
    dash_off, dash_on = StubDashboard(), StubDashboard()
    off = train(tiny(**base), None, tmp_path / "off", dashboard=dash_off, progress=False)
    on = train(tiny(**base, grad_clip=1e-6), None, tmp_path / "on", dashboard=dash_on, progress=False)
    assert all("grad_norm_G" not in v for _, v in dash_off.scalars_log)
    norms = [v["grad_norm_G"] for _, v in dash_on.scalars_log]
    assert len(norms) == 6 and all(n > 1e-6 for n in norms)
    assert off["digests"] != on["digests"]
    with pytest.raises(ConfigError):
        tiny(grad_clip=0.0)
