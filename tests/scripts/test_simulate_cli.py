"""scripts/simulate.py: a small dataset end to end, reproducibility, overwrite protection, bad options."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.io import read_micrograph
from data_prep.lattice import measure_lattice
from data_prep.simulate import load_simulation
from stem_denoise.common.cli import run_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "simulate.py"


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("simulate_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(*args, cwd=None):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def test_dataset_end_to_end(tmp_path, capsys):
    mod = _load_script()
    out = tmp_path / "sims"
    args = ["--n", "4", "--size", "160x192", "--doses", "5,50", "--periods", "10,16", "--lattices", "square,hex",
            "--dents", "none,gaussian,ramp", "--out", str(out), "--seed", "3"]
    assert mod.main(args) == 0
    printed = capsys.readouterr().out
    assert "simulated in" in printed and "per 160x192 micrograph" in printed
    doc = json.loads((out / "dataset.json").read_text())
    assert len(doc["micrographs"]) == 4 and doc["size"] == [160, 192]
    for entry in doc["micrographs"]:
        assert entry["lattice"] in ("square", "hex") and entry["period_px"] in (10.0, 16.0)
        assert entry["dose"] in (5.0, 50.0) and entry["dent"] in ("none", "gaussian", "ramp")
        sim = load_simulation(out / entry["files"]["json"])
        assert sim.noisy.shape == (160, 192) and sim.lattice == entry["lattice"]
        assert (sim.thickness.min() < 0.99) == (entry["dent"] != "none")
        m = measure_lattice(sim.noisy)
        assert abs(m.period_px / entry["period_px"] - 1) < 0.01
    # every value of every list is used equally often (to within one)
    for key, values in (("lattice", ["square", "hex"]), ("period_px", [10.0, 16.0]), ("dose", [5.0, 50.0]),
                        ("dent", ["none", "gaussian", "ramp"])):
        counts = [sum(e[key] == v for e in doc["micrographs"]) for v in values]
        assert max(counts) - min(counts) <= 1, (key, counts)
    synth, meta = read_micrograph(out / "synthetic_lattice.tif")
    assert synth.max() == pytest.approx(1.0, abs=0.01)
    assert measure_lattice(synth).lattice == "square"
    assert measure_lattice(read_micrograph(out / "synthetic_lattice_hex.tif")[0]).lattice == "hex"

    # same seed, same dataset
    out2 = tmp_path / "again"
    assert mod.main([*args[:-4], "--out", str(out2), "--seed", "3"]) == 0
    for entry in doc["micrographs"]:
        a = read_micrograph(out / entry["files"]["noisy"])[0]
        b = read_micrograph(out2 / entry["files"]["noisy"])[0]
        np.testing.assert_array_equal(a, b)


def test_refuses_to_overwrite_and_rejects_bad_options(tmp_path):
    out = tmp_path / "sims"
    r = _run("--n", "1", "--size", "64", "--out", str(out))
    assert r.returncode == 0, r.stderr
    before = (out / "sim_0000.tif").read_bytes()
    r = _run("--n", "1", "--size", "64", "--out", str(out), "--seed", "5")
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1 and "--overwrite" in r.stderr
    assert (out / "sim_0000.tif").read_bytes() == before
    r = _run("--n", "1", "--size", "64", "--out", str(out), "--seed", "5", "--overwrite")
    assert r.returncode == 0 and (out / "sim_0000.tif").read_bytes() != before


@pytest.mark.parametrize("bad", [["--doses", "5,abc"], ["--lattices", "cubic"], ["--size", "10"],
                                 ["--dents", "hole"], ["--vacancy-frac", "2"], ["--n", "0"]])
def test_bad_options_give_one_error_line_and_exit_2(tmp_path, capsys, bad):
    mod = _load_script()
    with pytest.raises(SystemExit) as exc:
        run_main(mod.main, ["--n", "1", "--size", "64", "--out", str(tmp_path / "x"), *bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing written for a bad option
