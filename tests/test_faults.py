"""Faults: batch inference killed outright (SIGKILL) in the middle of a run, then started again.

What a user must find afterwards: every output that was finished before the kill is still there, unchanged
(same inode, mtime and bytes); the rerun does the rest and skips the finished ones; no partial file is visible
at any point (every visible TIFF decodes in full) and no temporary file is left once the rerun is over, even
one that a kill during writing left behind; and the outputs equal those of a run that was never interrupted.

(SIGKILL during training and a full disk while saving a checkpoint are tested with the training loop in
tests/cyclegan/.)
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import corpus as C

N_FILES = 4
SHAPE = (384, 384)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _slowish_generator(path: Path) -> Path:
    """A generator wide enough that one 384 px micrograph takes a few tenths of a second on one CPU thread,
    so the kill lands while later files are still to do."""
    from cyclegan.checkpoint import export_generator
    from cyclegan.models import GeneratorConfig, build_generator

    torch.manual_seed(0)
    cfg = GeneratorConfig(width=16, n_blocks=3)
    net = build_generator(cfg)
    torch.nn.init.normal_(net.head.weight, 0.0, 0.05)  # not the identity: outputs differ from inputs
    export_generator(path, net, cfg, dict(C.GEN_INFO))
    return path


def _decodes(path: Path) -> bool:
    from data_prep.io import read_micrograph

    try:
        img, _ = read_micrograph(path, validate=False)
    except Exception:  # noqa: BLE001
        return False
    return img.shape == SHAPE and bool(np.isfinite(img).all())


def test_denoise_killed_midway_resumes_and_leaves_no_partial_file(tmp_path, capsys):
    from data_prep.io import read_micrograph

    inp, out, ref = tmp_path / "in", tmp_path / "out", tmp_path / "reference"
    for i in range(N_FILES):
        C.write_lattice_tiff(inp, f"m{i}.tif", shape=SHAPE, seed=i)
    ckpt = _slowish_generator(tmp_path / "generator.pt")
    argv = [str(inp), "--checkpoint", str(ckpt), "--out", str(out), "--quiet", "--period", "12.8", "--device", "cpu"]
    names = [f"m{i}.tif" for i in range(N_FILES)]

    # 1. start, wait for the first finished output, kill outright
    proc = subprocess.Popen([sys.executable, str(C.script_path("denoise")), *argv], env=C.script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    seen_partial = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            visible = [n for n in names if (out / n).exists()]
            if visible:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(n for n in names if (out / n).exists())
    assert finished and len(finished) < N_FILES, f"kill did not land mid-run: {finished}"
    for n in finished:  # whatever is visible is complete
        if not _decodes(out / n):
            seen_partial.append(n)
    assert not seen_partial, f"partial outputs visible after the kill: {seen_partial}"
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == finished, f"unexpected visible files: {visible}"

    # a kill in the middle of writing leaves at most a hidden temp file; plant one for an unfinished output
    unfinished = [n for n in names if n not in finished]
    stale = out / f".{unfinished[-1]}.k1ll3d00.tmp"
    stale.write_bytes(b"II*\x00" + bytes(1000))
    stamps = {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns, C.file_digest(out / n)) for n in finished}

    # 2. rerun: finishes the rest, skips the finished ones
    res = C.run_inprocess("denoise", argv, capsys)
    assert res.code == 0 and res.escaped is None, res.describe()
    assert f"{len(unfinished)} denoised, {len(finished)} skipped, 0 failed" in res.out, res.describe()
    for n in finished:
        st = (out / n).stat()
        assert (st.st_ino, st.st_mtime_ns, C.file_digest(out / n)) == stamps[n], f"{n} was rewritten"
    assert sorted(p.name for p in out.iterdir()) == names, "temporary or extra files left in the output folder"
    assert C.temp_files(out) == []

    # 3. the same as a run that was never interrupted, bit for bit
    res = C.run_inprocess("denoise", [*argv[:4], str(ref), *argv[5:]], capsys)
    assert res.code == 0, res.describe()
    for n in names:
        a, ma = read_micrograph(out / n)
        b, mb = read_micrograph(ref / n)
        np.testing.assert_array_equal(a, b, err_msg=n)
        assert ma.source_dtype == mb.source_dtype
        x, _ = read_micrograph(inp / n)
        assert not np.array_equal(a, x)  # it really went through the network


def test_training_fault_tests_exist():
    """The SIGKILL-during-training resume test and the full-disk checkpoint test belong to the training loop's
    tests (tests/cyclegan/); make sure they are there rather than duplicating them here."""
    folder = C.ROOT / "tests" / "cyclegan"
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("test_*.py")))
    assert "SIGKILL" in text, "no SIGKILL-during-training resume test in tests/cyclegan/"
    assert any(k in text for k in ("ENOSPC", "No space left", "full disk", "disk full", "CheckpointWriteError")), \
        "no full-disk checkpoint save test in tests/cyclegan/"
