"""The shipped model's recipe: what scripts/train_default.py trains."""
import json

from stem_denoise.commands.train_default import shipped_config


def test_shipped_config_lays_the_recipe_over_the_default_profile(tmp_path):
    cfg = shipped_config()
    assert cfg.objective == "stochastic" and cfg.clean_source == "synthetic" and cfg.period_px == 12.8
    assert cfg.scene_family == "rich" and cfg.steps == 12000
    assert tuple(cfg.noise.dose) == (1.0, 1000.0) and cfg.noise.clean_frac == 0.3
    assert cfg.generator.width == 24 and cfg.generator.n_down == 2  # wider than the default profile's 16
    assert cfg.generator.noise_input
    assert not cfg.dashboard.enabled
    # an ablation's JSON and --steps go over the recipe, keeping what they do not name
    p = tmp_path / "abl.json"
    p.write_text(json.dumps({"scene_family": "full", "noise": {"clean_frac": 0.05}}))
    abl = shipped_config(p, 600)
    assert abl.scene_family == "full" and abl.noise.clean_frac == 0.05 and abl.steps == 600
    assert tuple(abl.noise.dose) == (1.0, 1000.0)
