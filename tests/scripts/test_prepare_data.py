"""scripts/prepare_data.py end to end on small simulated micrographs: layout, manifest, atomicity, bad input."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from data_prep.io import write_micrograph
from data_prep.simulate import Dent, save_simulation, simulate, synthetic_lattice
from stem_denoise.common.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prepare_data.py"
prepare_data = importlib.import_module("stem_denoise.commands.prepare_data")

PER_IMAGE = 12


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three micrographs at different zooms and orientations (one uint16, one with a dent), and a synthetic image."""
    root = tmp_path_factory.mktemp("inputs")
    micro = root / "micrographs"
    micro.mkdir()
    specs = [(9.0, 12.0, None), (12.5, 40.0, Dent("elliptic", (130.0, 150.0), 80.0, 0.4, 0.8)), (15.0, 71.0, None)]
    for i, (period, angle, dent) in enumerate(specs):
        r = simulate(shape=(256, 288), period_px=period, angle_deg=angle, dose=30.0, seed=i,
                     dents=[dent] if dent else 0)
        if i == 0:
            write_micrograph(micro / f"m{i}.tif", np.clip(r.noisy, 0, 65535).astype(np.uint16))
        else:
            write_micrograph(micro / f"m{i}.tif", r.noisy, dtype="float32")
    syn = root / "synthetic.tif"
    tifffile.imwrite(syn, synthetic_lattice("square", period_px=24.0, n_cells=8))
    return micro, syn


def _run(argv):
    return prepare_data.main([str(a) for a in argv])


def _args(inputs, out, *extra):
    micro, syn = inputs
    return ["--micrographs", micro, "--synthetic", syn, "--out", out, "--per-image", PER_IMAGE,
            "--test-frac", 0.34, "--quiet", *extra]


def _leftovers(parent: Path):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_end_to_end_layout_and_manifest(inputs, tmp_path, capsys):
    out = tmp_path / "DATA"
    assert _run(_args(inputs, out)) == 0
    printed = capsys.readouterr().out
    assert "elapsed" in printed and "trainA 24" in printed
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "preview.png", "testA", "trainA", "trainB"]
    counts = {d: len(list((out / d).glob("*.tif"))) for d in ("trainA", "trainB", "testA")}
    assert counts == {"trainA": 2 * PER_IMAGE, "trainB": 2 * PER_IMAGE, "testA": PER_IMAGE}
    for d in ("trainA", "trainB", "testA"):
        for f in sorted((out / d).glob("*.tif"))[:3]:
            x = tifffile.imread(f)
            assert x.shape == (64, 64) and x.dtype == np.float32
            assert -0.5 < float(x.mean()) < 1.0  # normalised per whole micrograph, roughly [0, 1]

    man = json.loads((out / "manifest.json").read_text())
    assert man["patch_px"] == 64 and man["atoms_per_patch"] == 5 and man["period_px"] == pytest.approx(12.8)
    assert man["counts"] == counts
    files = {r["file"] for r in man["patches"]}
    on_disk = {f"{d}/{p.name}" for d in ("trainA", "trainB", "testA") for p in (out / d).glob("*.tif")}
    assert files == on_disk
    micros = {m["source"]: m for m in man["micrographs"]}
    assert len(micros) == 3
    test_sources = {m["source"] for m in man["micrographs"] if m["split"] == "test"}
    train_a_sources = {r["source"] for r in man["patches"] if r["file"].startswith("trainA/")}
    assert len(test_sources) == 1 and not (test_sources & train_a_sources)  # whole micrographs held out
    for r in man["patches"]:
        if r["domain"] == "A":
            m = micros[r["source"]]
            h, w = m["shape"]
            (y, x), (wh, ww) = r["position"], r["window_px"]
            assert 0 <= y and y + wh <= h + 1e-6 and 0 <= x and x + ww <= w + 1e-6
            # a window of 5 periods of that micrograph, whatever its zoom
            assert wh == pytest.approx(5 * m["lattice"]["period_px"], rel=0.02)
            assert r["period_px"] == m["lattice"]["period_px"] and "angle_deg" in r and len(r["scale"]) == 2
        else:
            assert r["matched_to"] in micros and r["source"].endswith("synthetic.tif")
            assert micros[r["matched_to"]]["split"] == "train"
    for m in man["micrographs"]:
        assert m["norm"]["hi"] > m["norm"]["lo"]
        if m["split"] == "train":
            # the synthetic is turned to the micrograph's orientation (square lattice: modulo 90 degrees)
            turned = (man["synthetic"]["angle_deg"] + m["rotation_deg"]) % 90.0
            d = abs(turned - m["lattice"]["angle_deg"] % 90.0)
            assert min(d, 90.0 - d) < 0.5
    dented = [m for m in man["micrographs"] if m["source"].endswith("m1.tif")][0]
    assert dented["split"] == "train"  # with seed 0 the held-out micrograph is m2
    assert dented["dent"]["applied"] and dented["dent"]["amplitude"] < 0 and dented["dent"]["r"] < -0.8
    b_dent = [r["dent"]["mean_mask"] for r in man["patches"] if r.get("matched_to") == dented["source"]]
    assert max(b_dent) > 50  # some B patches of that micrograph lie on its dent

    preview = cv2.imread(str(out / "preview.png"), cv2.IMREAD_UNCHANGED)
    assert preview is not None and preview.dtype == np.uint8 and preview.ndim == 2 and preview.std() > 10
    assert _leftovers(tmp_path) == []


def test_explicit_angle_and_no_dents(inputs, tmp_path):
    out = tmp_path / "D"
    assert _run(_args(inputs, out, "--angle", 90, "--dents", 0, "--no-preview")) == 0
    man = json.loads((out / "manifest.json").read_text())
    b = [r for r in man["patches"] if r["domain"] == "B"]
    assert b and all(r["rotation_deg"] == 90.0 and "dent" not in r for r in b)
    assert not any(m.get("dent", {}).get("applied") for m in man["micrographs"])
    assert not (out / "preview.png").exists()


def test_synthetic_scale_kept_without_intensity_matching(inputs, tmp_path):
    out = tmp_path / "D"
    assert _run(_args(inputs, out, "--no-match-intensity", "--no-preview", "--dent-mode", "add")) == 0
    man = json.loads((out / "manifest.json").read_text())
    micro = [m for m in man["micrographs"] if m["source"].endswith("m1.tif")][0]
    amp = micro["dent"]["amplitude_B"]
    assert amp < 0
    b = [r for r in man["patches"] if r.get("matched_to") == micro["source"]]
    means = np.array([tifffile.imread(out / r["file"]).mean() for r in b])
    weights = np.array([r["dent"]["mean_mask"] for r in b])
    assert weights.max() > 50 and weights.min() < 1  # some patches on the dent, some off it
    # B = synthetic (normalised, mean ~0.08) + amplitude * mask / 255, patch by patch
    np.testing.assert_allclose(means - amp * weights / 255.0, 0.08, atol=0.015)


def test_refuses_to_overwrite_without_flag(inputs, tmp_path):
    out = tmp_path / "DATA"
    assert _run(_args(inputs, out, "--no-preview")) == 0
    before = (out / "manifest.json").read_bytes()
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, _args(inputs, out, "--no-preview"))],
                          capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--overwrite" in lines[0] and "Traceback" not in proc.stderr
    assert (out / "manifest.json").read_bytes() == before
    assert _run(_args(inputs, out, "--no-preview", "--overwrite", "--seed", 7)) == 0
    assert (out / "manifest.json").read_bytes() != before
    assert _leftovers(tmp_path) == []
    # --overwrite never replaces a folder prepare_data did not write
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="did not write"):
        _run(_args(inputs, foreign, "--overwrite"))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_failure_leaves_no_partial_output(inputs, tmp_path):
    micro, syn = inputs
    bad = tmp_path / "micro"
    bad.mkdir()
    for f in sorted(micro.glob("*.tif"))[:2]:
        (bad / f.name).write_bytes(f.read_bytes())
    r = simulate(shape=(48, 48), period_px=12.0, dose=30.0, seed=9)  # 4 periods: smaller than a 5-atom patch
    write_micrograph(bad / "z_small.tif", r.noisy, dtype="float32")
    out = tmp_path / "DATA"
    with pytest.raises(InputError, match="a patch needs 5 x 5"):
        _run(["--micrographs", bad, "--synthetic", syn, "--out", out, "--quiet", "--test-frac", 0,
              "--per-image", PER_IMAGE])
    assert not out.exists() and _leftovers(tmp_path) == []
    # an existing dataset survives a failed --overwrite run untouched
    assert _run(_args(inputs, out, "--no-preview")) == 0
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(InputError):
        _run(["--micrographs", bad, "--synthetic", syn, "--out", out, "--quiet", "--overwrite",
              "--per-image", PER_IMAGE])
    assert (out / "manifest.json").read_bytes() == before and _leftovers(tmp_path) == []


def test_bad_inputs_are_one_line_errors(inputs, tmp_path):
    micro, syn = inputs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no micrographs"):
        _run(["--micrographs", empty, "--synthetic", syn, "--out", tmp_path / "a", "--quiet"])
    with pytest.raises(InputError, match="not found"):
        _run(["--micrographs", micro, "--synthetic", tmp_path / "nope.tif", "--out", tmp_path / "b", "--quiet"])
    noise = tmp_path / "noise.tif"
    tifffile.imwrite(noise, np.random.default_rng(0).random((128, 128)).astype(np.float32))
    with pytest.raises(InputError, match="synthetic"):
        _run(["--micrographs", micro, "--synthetic", noise, "--out", tmp_path / "c", "--quiet"])
    with pytest.raises(InputError, match="atoms"):
        _run(["--micrographs", micro, "--synthetic", syn, "--out", tmp_path / "d", "--atoms", "0"])
    assert not any((tmp_path / n).exists() for n in "abcd") and _leftovers(tmp_path) == []


def test_simulation_folders_skip_truth_maps(tmp_path):
    sims = tmp_path / "sims"
    sims.mkdir()
    for i, period in enumerate((10.0, 14.0)):
        save_simulation(simulate(shape=(200, 200), period_px=period, dose=40.0, seed=i), sims, f"s{i}")
    syn = tmp_path / "syn.tif"
    tifffile.imwrite(syn, synthetic_lattice("square", period_px=20.0, n_cells=8))
    out = tmp_path / "DATA"
    assert _run(["--micrographs", sims, "--synthetic", syn, "--out", out, "--per-image", 4, "--test-frac", 0,
                 "--quiet", "--no-preview"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(m["source"]).name for m in man["micrographs"]) == ["s0.tif", "s1.tif"]


def test_simulator_output_folder_skips_its_synthetic_lattices(tmp_path):
    """A folder written by scripts/simulate.py holds synthetic_lattice*.tif beside the micrographs: they are the
    clean domain, never domain-A micrographs."""
    simulate_script = importlib.import_module("stem_denoise.commands.simulate")
    sims = tmp_path / "sims"
    assert simulate_script.main(["--out", str(sims), "--n", "2", "--size", "200", "--periods", "10,14",
                                 "--doses", "40", "--lattices", "square", "--dents", "none"]) in (0, None)
    assert (sims / "synthetic_lattice.tif").exists()
    out = tmp_path / "DATA"
    assert _run(["--micrographs", sims, "--synthetic", sims / "synthetic_lattice.tif", "--out", out,
                 "--per-image", 4, "--test-frac", 0, "--quiet", "--no-preview"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    names = sorted(Path(m["source"]).name for m in man["micrographs"])
    assert names == ["sim_0000.tif", "sim_0001.tif"]
