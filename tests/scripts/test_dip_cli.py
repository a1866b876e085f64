"""scripts/dip_denoise.py: writes the result in the input's dtype with its pixel size, plus a JSON record;
bad input ends with exit status 2 and one line on stderr."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.io import MicrographMeta, read_micrograph, write_micrograph
from stem_denoise.common.cli import run_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "dip_denoise.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("dip_denoise_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lattice(shape, period=8.0):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return 0.2 + 0.5 * (np.cos(2 * np.pi * yy / period) + 1) * 0.5 * (np.cos(2 * np.pi * xx / period) + 1)


def _write(path: Path, image: np.ndarray, pixel_size=0.012) -> Path:
    meta = MicrographMeta(source_dtype=np.dtype(image.dtype).name, pixel_size=pixel_size, unit="nm",
                          path=str(path), shape=image.shape, extra={})
    write_micrograph(path, image, meta, dtype="source")
    return path


def _run(cli, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(cli.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_denoise_writes_input_dtype_pixel_size_and_record(cli, tmp_path, capsys):
    truth = _lattice((40, 36)) * 1000
    noisy = np.random.default_rng(0).poisson(truth).astype(np.uint16)
    inp = _write(tmp_path / "scan.tif", noisy)
    truth_path = _write(tmp_path / "truth.tif", truth.astype(np.float32))
    code, out, err = _run(cli, [inp, "--out", tmp_path / "res", "--steps", "8", "--stop", "fixed",
                                "--truth", truth_path, "--device", "cpu", "--seed", "3"], capsys)
    assert code == 0, err
    img, meta = read_micrograph(tmp_path / "res" / "scan_dip.tif")
    assert img.shape == (40, 36) and meta.source_dtype == "uint16"
    assert meta.pixel_size == pytest.approx(0.012) and meta.unit == "nm"
    rec = json.loads((tmp_path / "res" / "scan_dip.json").read_text())
    assert rec["steps_run"] == 8 and rec["stop_step"] == 7 and rec["seed"] == 3
    assert rec["settings"]["stop"] == "fixed" and rec["preset"] == "light"
    assert rec["time_s"] > 0 and "psnr_of_result" in rec and "oracle_best_psnr" in rec
    assert "scan_dip.tif" in out
    # a second run without --overwrite refuses before doing any work; with it, it replaces the files
    code, _, err = _run(cli, [inp, "--out", tmp_path / "res", "--steps", "2"], capsys)
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(cli, [inp, "--out", tmp_path / "res", "--steps", "2", "--overwrite", "--quiet"], capsys)
    assert code == 0, err


def test_inpaint_and_super_resolution(cli, tmp_path, capsys):
    image = (_lattice((32, 32)) * 100).astype(np.float32)
    inp = _write(tmp_path / "a.tif", image)
    scar = np.zeros((32, 32), np.uint8)
    scar[10:13, :] = 255  # a line scar, marked as the missing pixels
    mask = _write(tmp_path / "scar.tif", scar)
    code, _, err = _run(cli, [inp, "--out", tmp_path / "o", "--task", "inpaint", "--mask", mask,
                              "--mask-marks", "missing", "--steps", "4", "--quiet"], capsys)
    assert code == 0, err
    code, _, err = _run(cli, [inp, "--out", tmp_path / "o2", "--task", "sr", "--scale", "2", "--steps", "4",
                              "--quiet", "--float32"], capsys)
    assert code == 0, err
    img, meta = read_micrograph(tmp_path / "o2" / "a_dip.tif")
    assert img.shape == (64, 64) and meta.pixel_size == pytest.approx(0.006)


@pytest.mark.parametrize("extra,match", [
    (["--task", "inpaint"], "needs --mask"),
    (["--task", "inpaint", "--mask", "{small}"], "mask"),
    (["--task", "sr"], "--scale"),
    (["--scale", "2"], "only applies"),
    (["--stop", "oracle"], "--truth"),
    (["--truth", "{small}"], "truth"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "npu"], "device"),
])
def test_bad_input_exits_2_with_one_line(cli, tmp_path, capsys, extra, match):
    inp = _write(tmp_path / "a.tif", (_lattice((32, 32)) * 100).astype(np.float32))
    small = _write(tmp_path / "small.tif", np.ones((8, 8), np.float32) + np.eye(8, dtype=np.float32))
    argv = [inp, "--out", tmp_path / "o", "--steps", "2"] + [e.format(small=small) for e in extra]
    code, _, err = _run(cli, argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert not (tmp_path / "o" / "a_dip.tif").exists()


def test_bad_scale_is_an_argparse_error(cli, tmp_path, capsys):
    inp = _write(tmp_path / "a.tif", (_lattice((32, 32)) * 100).astype(np.float32))
    code, _, err = _run(cli, [inp, "--out", tmp_path / "o", "--task", "sr", "--scale", "3"], capsys)
    assert code == 2 and "2 or 4" in err.strip().splitlines()[-1]


def test_subprocess_shows_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_output_folder_that_cannot_be_made_is_one_line(cli, tmp_path, capsys):
    inp = _write(tmp_path / "a.tif", (_lattice((32, 32)) * 100).astype(np.float32))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = _run(cli, [inp, "--out", blocker / "sub", "--steps", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "output folder" in err
    code, _, err = _run(cli, [inp, "--out", blocker, "--steps", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a folder" in err


def test_precision_is_passed_through_and_recorded(cli, tmp_path, capsys):
    image = (_lattice((32, 32)) * 100).astype(np.float32)
    inp = _write(tmp_path / "a.tif", image)
    recs = {}
    for precision in ("fp32", "bf16"):
        code, _, err = _run(cli, [inp, "--out", tmp_path / precision, "--steps", "4", "--stop", "fixed", "--quiet",
                                  "--device", "cpu", "--float32", "--precision", precision], capsys)
        assert code == 0, err
        recs[precision] = json.loads((tmp_path / precision / "a_dip.json").read_text())
    assert recs["fp32"]["precision"] == "fp32" and recs["bf16"]["precision"] == "bf16"
    a = read_micrograph(tmp_path / "fp32" / "a_dip.tif")[0]
    b = read_micrograph(tmp_path / "bf16" / "a_dip.tif")[0]
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.2 * np.ptp(image)
    code, _, err = _run(cli, [inp, "--out", tmp_path / "o", "--precision", "half"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "--precision" in err
    assert not (tmp_path / "o").exists()
