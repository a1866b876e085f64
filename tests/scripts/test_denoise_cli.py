"""scripts/denoise.py: outputs in the input's dtype and pixel size, reruns skip, kill + rerun, ranks, bad input."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cyclegan.checkpoint import export_generator
from cyclegan.models import GeneratorConfig, build_generator
from data_prep.io import MicrographMeta, read_micrograph, write_micrograph
from data_prep.simulate import simulate
from stem_denoise.common.cli import run_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "denoise.py"
TINY = GeneratorConfig(width=8, n_blocks=1)
INFO = dict(patch_px=64, atoms_per_patch=5, period_px=12.8, direction="A2B")


def _load_script():
    spec = importlib.util.spec_from_file_location("denoise_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


denoise_script = _load_script()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(1)
    g = build_generator(TINY)
    torch.nn.init.normal_(g.head.weight, 0.0, 0.02)  # not the identity
    path = tmp_path / "generator.pt"
    export_generator(path, g, TINY, INFO)
    return path


def _micrographs(folder: Path, n: int = 3, shape=(160, 200)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        r = simulate(shape=shape, period_px=16.0, angle_deg=10.0 * i, dose=20, seed=i)
        if i % 2 == 0:
            meta = MicrographMeta(source_dtype="uint16", pixel_size=9.5, unit="pm", path="", shape=shape)
            data = r.noisy * 40.0
        else:
            meta = MicrographMeta(source_dtype="float32", pixel_size=0.0125, unit="nm", path="", shape=shape)
            data = r.noisy
        paths.append(write_micrograph(folder / f"m{i}.tif", data, meta))
    return paths


def _run(argv, capsys):
    """run_main as the script would; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        run_main(denoise_script.main, argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_denoises_folder_keeps_dtype_and_pixel_size_and_skips_on_rerun(tmp_path, checkpoint, capsys):
    inputs = _micrographs(tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, _ = _run([str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out", str(out), "--quiet",
                            "--period", "16", "--tile", "64"], capsys)
    assert code == 0 and "3 denoised, 0 skipped, 0 failed" in stdout
    for src in inputs:
        x, mx = read_micrograph(src)
        y, my = read_micrograph(out / src.name)
        assert y.shape == x.shape and my.source_dtype == mx.source_dtype
        assert my.unit == mx.unit and my.pixel_size == pytest.approx(mx.pixel_size)
        assert np.abs(y - x).mean() > 0  # it went through the network
        assert abs(float(y.mean()) / float(x.mean()) - 1) < 0.5  # and stayed in the input's units
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, _ = _run([str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out", str(out), "--quiet"],
                           capsys)
    assert code == 0 and "0 denoised, 3 skipped" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    code, stdout, _ = _run([str(inputs[0]), "--checkpoint", str(checkpoint), "--out", str(out), "--quiet",
                            "--overwrite", "--float32", "--tta"], capsys)
    assert code == 0 and "1 denoised" in stdout
    assert read_micrograph(out / inputs[0].name)[1].source_dtype == "float32"


def test_killed_run_resumes_and_leaves_no_partial_file(tmp_path, checkpoint, capsys):
    _micrographs(tmp_path / "in", n=4, shape=(600, 640))
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out", str(out),
           "--quiet", "--period", "16", "--device", "cpu", "--tta"]  # --tta: 8x slower, time to kill it
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (out / "m0.tif").exists():
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = sorted(p.name for p in out.glob("*.tif"))
    assert "m0.tif" in finished and len(finished) < 4
    for name in finished:  # whatever is visible is complete
        y, _ = read_micrograph(out / name)
        assert y.shape == (600, 640)
    before = (out / "m0.tif").stat()
    code, stdout, _ = _run([str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out", str(out), "--quiet",
                            "--period", "16"], capsys)
    assert code == 0
    assert f"{4 - len(finished)} denoised, {len(finished)} skipped" in stdout
    after = (out / "m0.tif").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in out.iterdir()) == ["m0.tif", "m1.tif", "m2.tif", "m3.tif"]  # no temp files


def test_ranks_take_their_share(tmp_path, checkpoint, capsys, monkeypatch):
    inputs = _micrographs(tmp_path / "in", n=5, shape=(96, 96))
    out = tmp_path / "out"
    argv = [str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out", str(out), "--quiet", "--period", "16"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and "rank 1/2: 2 denoised" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in inputs[1::2])
    monkeypatch.setenv("RANK", "0")
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and "rank 0/2: 3 denoised" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in inputs)


def test_one_bad_file_is_reported_and_the_others_are_done(tmp_path, checkpoint, capsys):
    _micrographs(tmp_path / "in", n=2, shape=(96, 96))
    (tmp_path / "in" / "broken.tif").write_text("not a tiff")
    code, stdout, err = _run([str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                              "--quiet", "--period", "16"], capsys)
    assert code == 2
    assert "2 denoised, 0 skipped, 1 failed" in stdout
    assert "broken.tif" in stdout + err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m0.tif", "m1.tif"]


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty_folder", "no"),
        ("missing_checkpoint", "does not exist"),
        ("train_checkpoint", "training checkpoint"),
        ("small_overlap", "receptive field"),
        ("into_itself", "apart from the inputs"),
        ("no_lattice", "lattice"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, checkpoint, capsys, case, match):
    inp = tmp_path / "in"
    ckpt = checkpoint
    extra: list[str] = []
    out = tmp_path / "out"
    if case == "empty_folder":
        inp.mkdir()
    else:
        _micrographs(inp, n=1, shape=(96, 96))
    if case == "missing_checkpoint":
        ckpt = tmp_path / "nope.pt"
    if case == "train_checkpoint":
        ckpt = tmp_path / "last.pt"
        torch.save({"kind": "stem-denoise-train-checkpoint", "version": 1}, ckpt)
    if case == "small_overlap":
        extra = ["--overlap", "8"]
    if case == "into_itself":
        out = inp
    if case == "no_lattice":
        write_micrograph(inp / "m0.tif", np.random.default_rng(0).normal(100, 10, (96, 96)).astype(np.float32),
                         overwrite=True)
    code, stdout, err = _run([str(inp), "--checkpoint", str(ckpt), "--out", str(out), "--quiet", *extra], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()] or [ln for ln in stdout.splitlines() if "error" in ln]
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1
    assert match in (err + stdout)
    assert "Traceback" not in err


def test_bad_option_values_are_usage_errors(tmp_path, checkpoint, capsys):
    for bad in (["--tile", "0"], ["--batch-size", "-3"], ["--period", "nan"]):
        code, _, err = _run([str(tmp_path), "--checkpoint", str(checkpoint), "--out", str(tmp_path), *bad], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "--help" in err


# ----------------------------------------------------------------------------------------------- precision


def test_precision_fp32_is_the_plain_float32_network(tmp_path, checkpoint, capsys):
    """--precision fp32 gives exactly the float32 network's output (what the script computed before it had a
    precision option), and so does the default on a CPU without native bf16; bf16 gives a close one."""
    from cyclegan.checkpoint import load_generator
    from data_prep.normalize import robust_range
    from stem_denoise.common.precision import cpu_has_native_bf16

    r = simulate(shape=(96, 120), period_px=12.8, angle_deg=14.0, dose=20, seed=5)
    (tmp_path / "in").mkdir()
    src = write_micrograph(tmp_path / "in" / "m.tif", r.noisy, MicrographMeta(
        source_dtype="float32", pixel_size=0.01, unit="nm", path="", shape=(96, 120)))
    outs = {}
    for name in ("fp32", "auto", "bf16"):
        flag = [] if name == "auto" else ["--precision", name]
        code, stdout, err = _run([str(src), "--checkpoint", str(checkpoint), "--out", str(tmp_path / name),
                                  "--quiet", "--period", "12.8", "--float32", *flag], capsys)
        assert code == 0, err
        resolved = name if name != "auto" else ("bf16" if cpu_has_native_bf16() else "fp32")
        assert f"(device cpu, {resolved}," in stdout
        outs[name] = read_micrograph(tmp_path / name / "m.tif")[0]
    # the reference: whole-image normalisation, the network in float32 (one tile covers this image), back to units
    g, _ = load_generator(checkpoint)
    lo, hi = (np.float32(v) for v in robust_range(r.noisy))
    x = (r.noisy.astype(np.float32) - lo) / (hi - lo)
    g = g.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = g(torch.from_numpy(x)[None, None].contiguous(memory_format=torch.channels_last))[0, 0].numpy()
    ref = y * (hi - lo) + lo
    np.testing.assert_array_equal(outs["fp32"], ref)
    if not cpu_has_native_bf16():
        np.testing.assert_array_equal(outs["auto"], ref)
    assert not np.array_equal(outs["bf16"], ref)
    err = np.sqrt(np.mean((outs["bf16"].astype(np.float64) - ref) ** 2))
    assert 20 * np.log10(np.ptp(ref) / err) >= 45.0


def test_bad_precision_is_a_usage_error(tmp_path, checkpoint, capsys):
    code, _, err = _run([str(tmp_path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                         "--precision", "fp16"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "--precision" in err and "fp16" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------- default model


def test_no_checkpoint_uses_the_model_named_by_the_environment(tmp_path, checkpoint, capsys, monkeypatch):
    inputs = _micrographs(tmp_path / "in", n=1, shape=(96, 96))
    monkeypatch.setenv("STEM_DENOISE_MODEL", str(checkpoint))
    code, stdout, err = _run([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet", "--period", "16"],
                             capsys)
    assert code == 0, err
    lines = [ln for ln in stdout.splitlines() if "default model" in ln]
    assert len(lines) == 1 and str(checkpoint) in lines[0] and "STEM_DENOISE_MODEL" in lines[0]
    assert "1 denoised" in stdout
    x, _ = read_micrograph(inputs[0])
    y, _ = read_micrograph(tmp_path / "out" / inputs[0].name)
    assert y.shape == x.shape and np.abs(y - x).mean() > 0


def test_no_checkpoint_uses_the_shipped_model(tmp_path, checkpoint, capsys, monkeypatch):
    import cyclegan.checkpoint as ck

    _micrographs(tmp_path / "in", n=1, shape=(96, 96))
    monkeypatch.delenv("STEM_DENOISE_MODEL", raising=False)
    monkeypatch.setattr(ck, "default_model_path", lambda: checkpoint)
    code, stdout, err = _run([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet", "--period", "16"],
                             capsys)
    assert code == 0, err
    lines = [ln for ln in stdout.splitlines() if "default model" in ln]
    assert len(lines) == 1 and lines[0].startswith("using the shipped default model ")
    assert "stem_denoise/models/README.md" in lines[0] and "1 denoised" in stdout


@pytest.mark.parametrize("from_env", [True, False])
def test_missing_default_model_is_one_error_line(tmp_path, capsys, monkeypatch, from_env):
    import cyclegan.checkpoint as ck

    _micrographs(tmp_path / "in", n=1, shape=(96, 96))
    missing = tmp_path / "nowhere" / "default.pt"
    if from_env:
        monkeypatch.setenv("STEM_DENOISE_MODEL", str(missing))
    else:
        monkeypatch.delenv("STEM_DENOISE_MODEL", raising=False)
        monkeypatch.setattr(ck, "default_model_path", lambda: missing)
    code, stdout, err = _run([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(missing) in err and "--checkpoint" in err
    assert ("STEM_DENOISE_MODEL" in err) == from_env
    assert not (tmp_path / "out").exists()


def test_noise_level_factor_reaches_a_model_with_a_noise_level_input(tmp_path, capsys):
    """--noise-level-factor: the default is DEFAULT_NOISE_LEVEL_FACTOR, and another factor changes what a
    noise-level model outputs."""
    from cyclegan.infer import DEFAULT_NOISE_LEVEL_FACTOR

    cfg = TINY.model_copy(update={"noise_input": True})
    torch.manual_seed(1)
    g = build_generator(cfg)
    torch.nn.init.normal_(g.head.weight, 0.0, 0.02)
    ck = tmp_path / "lvl.pt"
    export_generator(ck, g, cfg, INFO)
    src = _micrographs(tmp_path / "in", n=1)[0]
    outs = {}
    for f in (str(DEFAULT_NOISE_LEVEL_FACTOR), "0.3"):
        code, _, err = _run([str(src), "--checkpoint", str(ck), "--out", str(tmp_path / f), "--quiet",
                             "--float32", "--precision", "fp32", "--noise-level-factor", f], capsys)
        assert code == 0, err
        outs[f] = read_micrograph(tmp_path / f / src.name)[0]
    code, stdout, err = _run([str(src), "--checkpoint", str(ck), "--out", str(tmp_path / "d"), "--float32",
                              "--precision", "fp32"], capsys)
    assert code == 0, err
    assert f" x {DEFAULT_NOISE_LEVEL_FACTOR:g}, " in stdout and "noise level 0." in stdout  # the line says what it used
    default = outs[str(DEFAULT_NOISE_LEVEL_FACTOR)]
    np.testing.assert_array_equal(read_micrograph(tmp_path / "d" / src.name)[0], default)
    assert not np.array_equal(default, outs["0.3"])
