"""scripts/model_card.py: the model card's numbers come from a script, measured on the benchmark sets and real
frames."""
import json

import numpy as np
import pytest

from cyclegan.checkpoint import export_generator
from cyclegan.models import GeneratorConfig, build_generator
from stem_denoise.common.cli import run_main


@pytest.fixture
def tiny_export(tmp_path):
    cfg = GeneratorConfig(width=4, n_blocks=1, n_down=1)
    path = tmp_path / "tiny.pt"
    export_generator(path, build_generator(cfg), cfg, {"patch_px": 64, "atoms_per_patch": 5, "period_px": 12.8,
                                                      "direction": "A2B", "step": 0})
    return path


def test_model_card_measures_and_writes_the_card(tiny_export, tmp_path, capsys, one_torch_thread):
    from data_prep.io import MicrographMeta, write_micrograph
    from data_prep.simulate import simulate
    from stem_denoise.commands.model_card import main

    real = tmp_path / "real"
    real.mkdir()
    sim = simulate(lattice="perovskite", shape=(160, 160), period_px=14.0, dose=30, seed=3)
    write_micrograph(real / "frame.tif", sim.noisy, MicrographMeta("float32", 10.0, "pm", "", sim.noisy.shape),
                     dtype="float32")
    out = tmp_path / "card"
    with pytest.raises(SystemExit) as code:
        run_main(main, ["--model", str(tiny_export), "--out", str(out), "--quick", "--real", str(real)])
    assert code.value.code == 0
    card = json.loads((out / "card.json").read_text())
    sim_set = card["benchmark"]["simulated"]
    assert set(sim_set) == {"5.0", "20.0"} and "cyclegan" in sim_set["5.0"] and "independent" in card["benchmark"]
    assert card["benchmark_lattices"] == ["square", "hex"]  # the card names the lattices it was measured on
    assert "simulated test set (square, hex; 128 px" in (out / "README.md").read_text()
    # the card's numbers are the benchmark's: the mean over the cases of results.csv
    import csv

    rows = [r for r in csv.DictReader(open(out / "bench" / "results.csv"))
            if r["method"] == "cyclegan" and r["set"] == "simulated" and float(r["dose"]) == 5.0]
    assert len(rows) == 2
    assert sim_set["5.0"]["cyclegan"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), abs=1e-3)
    assert sim_set["5.0"]["cyclegan"]["in_vacuum"] == sum(int(r["in_vacuum"]) for r in rows)  # a count: summed
    # a freshly initialised generator is the identity at the model's scale: only the resampling round trip
    # touches the noise, so most of the noise realisation is left
    assert sim_set["5.0"]["cyclegan"]["noise_left"] > 0.5
    assert [r["method"] for r in card["real"]][-1] == "cyclegan" and card["real"][-1]["pass"]
    text = (out / "README.md").read_text()
    assert "| 5 |" in text and "model - oracle Gaussian" in text and "frame" in text and "| in vacuum |" in text
    assert np.isfinite(sim_set["20.0"]["gaussian_oracle"]["psnr"])
