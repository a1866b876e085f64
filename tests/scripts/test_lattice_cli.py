"""scripts/lattice.py: one JSON line per image, folders, and one error line with exit 2 for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.io import write_micrograph
from data_prep.simulate import save_simulation, simulate
from stem_denoise.common.cli import run_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lattice.py"


def _run(*args):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_prints_one_json_line_per_image_and_fails_cleanly(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    sims = {}
    for name, kw in {"a": dict(period_px=9.0, angle_deg=20.0), "b": dict(lattice="hex", period_px=15.0,
                                                                          angle_deg=100.0)}.items():
        r = simulate(shape=(256, 256), dose=20.0, seed=1, pixel_size_pm=8.0, **kw)
        save_simulation(r, folder, name)
        sims[name] = r
    for p in folder.glob("*_t*.tif"):  # keep only the noisy micrographs in the folder
        p.unlink()

    res = _run(folder)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        rec = json.loads(line)
        r = sims[Path(rec["file"]).stem]
        assert {"file", "period_px", "angle_deg", "period2_px", "angle2_deg", "lattice"} <= set(rec)
        assert rec["lattice"] == r.lattice
        assert abs(rec["period_px"] / r.period_px - 1) < 0.01
        assert abs(rec["angle_deg"] - r.angle_deg) < 0.5
        assert abs(rec["period_pm"] - 8.0 * r.period_px) < 0.01 * 8.0 * r.period_px

    # an image without a lattice: results for the good one, one error line, exit 2
    write_micrograph(tmp_path / "noise.tif", np.random.default_rng(0).poisson(9.0, (128, 128)).astype(np.float32))
    res = _run(folder / "a.tif", tmp_path / "noise.tif")
    assert res.returncode == 2
    assert len(res.stdout.strip().splitlines()) == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "noise.tif" in err[0] and "no lattice" in err[0]



def test_missing_file_and_bad_option_in_process(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("lattice_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for args in ([str(tmp_path / "missing.tif")], ["--max-size", "8", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            run_main(mod.main, args)
        assert exc.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
        assert captured.err.startswith("error:")
