"""Reliability, second pass: what a run must do with the user's files when things are not simply wrong.

No input is ever deleted (``--overwrite`` removes only what prepare_data wrote; linked output folders stay links);
a given period is checked against the measured lattice; a full disk is one ``error:`` line and the batch goes on;
absurd metadata is ignored with one warning and never written back; one bad file in a batch is reported by name
and skipped; a failed run leaves no folder it created; two runs on one batch share the work; instrument formats
(DM3, Velox EMD) are read with their pixel size. The cases that only have to fail cleanly are in
``tests/test_bad_input_corpus.py``; these check what is left behind and what still gets done.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import corpus as C
from tests.real_frames import REAL

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> Path:
    return C.tiny_generator_export(tmp_path_factory.mktemp("gen") / "generator.pt")


def _denoise(inputs, out, gen, *extra) -> list[str]:
    return [*map(str, inputs), "--checkpoint", str(gen), "--out", str(out), "--quiet", "--device", "cpu",
            *map(str, extra)]


def _errors(res: C.Result) -> list[str]:
    return [ln for ln in res.err.splitlines() if ln.startswith("error:")]


# ------------------------------------------------------------------------------------ inputs are never deleted


def _prepare(micro, syn, out, *extra) -> list[str]:
    return ["--micrographs", str(micro), "--synthetic", str(syn), "--out", str(out), "--per-image", *map(str, extra),
            "--quiet", "--no-preview", "--test-frac", "0"]


@pytest.fixture(scope="module")
def prep_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    micro = root / "micro"
    C.write_lattice_tiff(micro, "m0.tif", shape=(128, 128))
    return micro, C.write_synthetic(root)


def test_overwrite_replaces_only_the_datasets_own_files_and_follows_a_linked_folder(prep_inputs, tmp_path, capsys):
    micro, syn = prep_inputs
    real = tmp_path / "disk" / "DATA"
    real.parent.mkdir()
    link = tmp_path / "DATA"
    link.symlink_to(real, target_is_directory=True)
    assert C.run_inprocess("prepare_data", _prepare(micro, syn, link, 4), capsys).code == 0
    assert link.is_symlink() and (real / "manifest.json").is_file()
    first = json.loads((real / "manifest.json").read_text())
    assert set(first["files"]) == {r["file"] for r in first["patches"]} | {"manifest.json"}
    notes = real / "notes.txt"
    notes.write_text("my notes, not prepare_data's")
    mine = real / "trainA" / "my_favourite_patch.tif"
    mine.write_bytes(b"a file the user put there")

    res = C.run_inprocess("prepare_data", _prepare(micro, syn, link, 2, "--overwrite"), capsys)
    assert res.code == 0, res.describe()
    assert link.is_symlink() and os.path.realpath(link) == str(real), "the linked folder was replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA", "disk"], "something was left beside the link"
    assert sorted(p.name for p in real.parent.iterdir()) == ["DATA"]
    assert notes.read_text() == "my notes, not prepare_data's" and mine.read_bytes() == b"a file the user put there"
    second = json.loads((real / "manifest.json").read_text())
    on_disk = {str(p.relative_to(real)) for p in real.rglob("*") if p.is_file()}
    # exactly the new dataset's files plus the user's two: the first run's extra patches are gone
    assert on_disk == set(second["files"]) | {"notes.txt", "trainA/my_favourite_patch.tif"}
    assert len(second["patches"]) < len(first["patches"])
    assert not [p for p in real.iterdir() if p.name.startswith(".")]


def test_a_concurrent_dataset_is_never_swapped_out(prep_inputs, tmp_path, capsys, monkeypatch):
    """Two prepare_data runs into one new folder: the one that finishes second keeps its hands off the first's."""
    from data_prep import patches

    micro, syn = prep_inputs
    out = tmp_path / "DATA"
    real_finalise = patches._finalise

    def other_run_finishes_first(staging, real, old_files, existed):
        real.mkdir()
        (real / "manifest.json").write_text('{"kind": "stem-denoise-patches", "by": "the other run"}')
        return real_finalise(staging, real, old_files, existed)

    monkeypatch.setattr(patches, "_finalise", other_run_finishes_first)
    res = C.run_inprocess("prepare_data", _prepare(micro, syn, out, 2), capsys)
    C.assert_clean_failure(res, match="another run")
    assert "--overwrite" not in res.err
    assert json.loads((out / "manifest.json").read_text())["by"] == "the other run"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA"]


def test_a_failed_run_leaves_no_folder_it_created(prep_inputs, tmp_path, gen, capsys):
    micro, syn = prep_inputs
    noise = tmp_path / "in"
    noise.mkdir()
    from data_prep.io import write_micrograph

    write_micrograph(noise / "noise.tif", np.random.default_rng(0).normal(100, 10, (96, 96)).astype(np.float32))
    before = sorted(p.name for p in tmp_path.iterdir())
    res = C.run_inprocess("denoise", _denoise([noise], tmp_path / "new" / "out", gen), capsys)
    C.assert_clean_failure(res, match=("noise.tif", "lattice"))
    res = C.run_inprocess("dip_denoise", [str(C.nan_float64_tiff(tmp_path / "bad")), "--out",
                                          str(tmp_path / "new2" / "dip"), "--steps", "2", "--quiet"], capsys)
    C.assert_clean_failure(res, match="nan")
    res = C.run_inprocess("prepare_data", _prepare(noise, syn, tmp_path / "new3" / "DATA", 2), capsys)
    C.assert_clean_failure(res, match="lattice")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "bad"])


# ------------------------------------------------------------------------------------ periods


def test_a_period_that_disagrees_is_refused_naming_both_values_and_force_overrides_it(tmp_path, gen, capsys):
    inp = C.write_lattice_tiff(tmp_path / "in", shape=(256, 256))  # period 12.8 px
    res = C.run_inprocess("denoise", _denoise([inp], tmp_path / "out", gen, "--period", "25"), capsys)
    line = C.assert_clean_failure(res, match="disagrees")
    assert "25 px" in line and "12.8" in line and "lattice.tif" in line and "--force-period" in line
    assert not (tmp_path / "out").exists()
    res = C.run_inprocess("denoise", _denoise([inp], tmp_path / "out", gen, "--period", "13.5"), capsys)
    assert res.code == 0, res.describe()  # 5 % off: within the tolerance
    res = C.run_inprocess("denoise", _denoise([inp], tmp_path / "out2", gen, "--period", "25", "--force-period"),
                          capsys)
    assert res.code == 0 and (tmp_path / "out2" / "lattice.tif").exists(), res.describe()
    assert "used as given (--force-period)" in res.out
    res = C.run_inprocess("denoise", _denoise([inp], tmp_path / "out3", gen, "--force-period"), capsys)
    C.assert_clean_failure(res, match="--period")


def test_a_period_is_used_as_given_where_no_lattice_can_be_measured(tmp_path, gen, capsys):
    from data_prep.io import write_micrograph

    inp = tmp_path / "in"
    inp.mkdir()
    write_micrograph(inp / "noise.tif", np.random.default_rng(0).normal(100, 10, (96, 96)).astype(np.float32))
    res = C.run_inprocess("denoise", _denoise([inp], tmp_path / "out", gen, "--period", "12.8"), capsys)
    assert res.code == 0 and (tmp_path / "out" / "noise.tif").exists(), res.describe()
    assert "could not be measured" in res.out and "using the given period 12.8 px" in res.out


def test_a_manifest_period_that_disagrees_with_the_patches_is_refused(tmp_path, capsys):
    from cyclegan.data import write_toy_patches

    data = tmp_path / "data"
    write_toy_patches(data, n_a=4, n_b=4, patch_px=64, atoms_per_patch=8.0)  # patches hold period 8 px
    m = json.loads((data / "manifest.json").read_text())
    m.update(period_px=12.8, atoms_per_patch=5)
    (data / "manifest.json").write_text(json.dumps(m))
    cfg = C.write_json(tmp_path / "cfg.json", C.tiny_train_config())
    argv = ["--data", str(data), "--out", str(tmp_path / "run"), "--config", str(cfg), "--no-dashboard",
            "--no-progress"]
    line = C.assert_clean_failure(C.run_inprocess("train_cyclegan", argv, capsys), match="disagrees")
    assert "12.8 px" in line and "8.0" in line and "--force-period" in line
    assert not (tmp_path / "run").exists()
    res = C.run_inprocess("train_cyclegan", [*argv, "--force-period"], capsys)
    assert res.code == 0 and (tmp_path / "run" / "generator.pt").exists(), res.describe()


# ------------------------------------------------------------------------------------ batches


def test_one_bad_file_in_a_batch_is_named_and_skipped(tmp_path, gen, capsys):
    inp = tmp_path / "in"
    C.write_lattice_tiff(inp, "a_good.tif", shape=(96, 96))
    C.text_as_tiff(inp).rename(inp / "b_bad.tif")
    C.write_lattice_tiff(inp, "c_good.tif", shape=(96, 96), seed=2)
    res = C.run_inprocess("denoise", _denoise([inp], tmp_path / "out", gen), capsys)
    assert res.code == 2 and res.escaped is None, res.describe()
    assert len(_errors(res)) == 1 and "b_bad.tif" in _errors(res)[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good.tif", "c_good.tif"]
    assert "2 denoised, 0 skipped, 1 failed" in res.out

    res = C.run_inprocess("lattice", [str(inp)], capsys)
    assert res.code == 2 and len(_errors(res)) == 1 and "b_bad.tif" in _errors(res)[0], res.describe()
    assert [json.loads(ln)["file"].endswith(("a_good.tif", "c_good.tif")) for ln in res.out.splitlines()] == [True] * 2

    res = C.run_inprocess("dip_denoise", [str(inp), "--out", str(tmp_path / "dip"), "--steps", "2", "--quiet"],
                          capsys)
    assert res.code == 2 and len(_errors(res)) == 1 and "b_bad.tif" in _errors(res)[0], res.describe()
    assert sorted(p.name for p in (tmp_path / "dip").iterdir()) == [
        "a_good_dip.json", "a_good_dip.tif", "c_good_dip.json", "c_good_dip.tif"]


def test_a_lattice_error_in_a_batch_names_the_file(tmp_path, gen, capsys):
    from data_prep.io import write_micrograph

    inp = tmp_path / "in"
    C.write_lattice_tiff(inp, "good.tif", shape=(96, 96))
    write_micrograph(inp / "vacuum.tif", np.random.default_rng(0).normal(100, 10, (96, 96)).astype(np.float32))
    res = C.run_inprocess("denoise", _denoise([inp], tmp_path / "out", gen), capsys)
    assert res.code == 2 and len(_errors(res)) == 1, res.describe()
    assert "vacuum.tif" in _errors(res)[0] and "lattice" in _errors(res)[0]
    assert (tmp_path / "out" / "good.tif").exists()


def test_two_runs_on_one_batch_share_the_work(tmp_path, gen, capsys, monkeypatch):
    """An output another live run is writing is left to it; one that another run finished meanwhile is skipped,
    not reported as an error advising --overwrite; a temp file left by a killed run is cleared."""
    import cyclegan.infer as infer
    from stem_denoise.common.atomic import atomic_path

    inp = tmp_path / "in"
    for name in ("a.tif", "b.tif", "c.tif", "d.tif"):
        C.write_lattice_tiff(inp, name, shape=(96, 96))
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".d.tif.k1ll3d00.tmp"
    stale.write_bytes(b"left by a killed run")
    real_denoise_array = infer.denoise_array

    with atomic_path(out / "a.tif") as busy:  # the other run is writing a.tif right now
        busy.write_bytes(b"half")
        calls = []

        def watch(image, *a, **k):
            calls.append(1)
            if len(calls) == 1:  # while this run works on b.tif, the other one finishes it
                (out / "b.tif").write_bytes(b"written by the other run")
            return real_denoise_array(image, *a, **k)

        monkeypatch.setattr(infer, "denoise_array", watch)
        res = C.run_inprocess("denoise", _denoise([inp], out, gen, "--period", "12.8"), capsys)
        assert res.code == 0 and not _errors(res), res.describe()
        assert "2 denoised, 2 skipped, 0 failed" in res.out
        assert "another run is writing" in res.out and "written meanwhile by another run" in res.out
    assert (out / "a.tif").read_bytes() == b"half" and (out / "b.tif").read_bytes() == b"written by the other run"
    assert not stale.exists() and C.temp_files(out) == []


# ------------------------------------------------------------------------------------ full disk


FULL_DISK_DRIVER = """
import sys
import data_prep.io.write as io_write
io_write._STREAM_BYTES = 1 << 20  # outputs above 1 MiB go through a memory-mapped file, as 64 MiB ones do
from stem_denoise.commands import denoise
from stem_denoise.common.cli import run_main
run_main(denoise.main, sys.argv[1:])
"""


def _small_tmpfs(folder: Path, size: str = "4m") -> None:
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk needs a small tmpfs, which only root can mount")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")


def test_a_full_disk_is_one_error_line_and_the_batch_goes_on(tmp_path, gen):
    inp = tmp_path / "in"
    C.write_lattice_tiff(inp, "a_big.tif", shape=(1100, 1100))  # 4.8 MB of float32: more than the disk holds
    C.write_lattice_tiff(inp, "b_small.tif", shape=(96, 96))
    disk = tmp_path / "disk"
    _small_tmpfs(disk)
    try:
        cmd = [sys.executable, "-c", FULL_DISK_DRIVER, *_denoise([inp], disk / "out", gen, "--period", "12.8")]
        proc = subprocess.run(cmd, env=C.script_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2, f"{proc.returncode} (-7 is SIGBUS)\n{proc.stderr[-3000:]}"
        assert len(errors) == 1 and "a_big.tif" in errors[0] and "disk space" in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert "1 denoised, 0 skipped, 1 failed" in proc.stdout
        assert sorted(p.name for p in (disk / "out").iterdir()) == ["b_small.tif"], "temp file left on the disk"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_while_writing_a_small_output_names_it(tmp_path):
    from data_prep.io import write_micrograph
    from stem_denoise.common.errors import InputError

    disk = tmp_path / "disk"
    _small_tmpfs(disk, "1m")
    try:
        with pytest.raises(InputError, match=r"big\.tif: not enough disk space: it needs"):
            write_micrograph(disk / "big.tif", np.ones((700, 700), np.float32))
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_reserving_space_refuses_a_file_larger_than_the_disk(tmp_path, monkeypatch):
    """Without a tmpfs: the reservation itself, with the file system saying it is full."""
    from stem_denoise.common import atomic
    from stem_denoise.common.errors import InputError

    f = tmp_path / "x.bin"
    f.write_bytes(b"")
    atomic.reserve_space(f, 4096)
    assert f.stat().st_blocks * 512 >= 4096

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "posix_fallocate", full)
    with pytest.raises(InputError, match=r"out\.tif: not enough disk space: it needs 1\.0 GiB"):
        atomic.reserve_space(f, 2**30, name="out.tif")


# ------------------------------------------------------------------------------------ metadata


def test_an_absurd_pixel_size_is_ignored_with_one_warning_and_never_written(tmp_path, gen, capsys):
    from data_prep.io import read_micrograph

    inp = tmp_path / "in"
    C.pixel_size_tiff(inp, "huge.tif", 1e300, "nm")
    C.pixel_size_tiff(inp, "tiny.tif", 1e-30, "nm")
    res = C.run_inprocess("lattice", [str(inp)], capsys)
    assert res.code == 0, res.describe()
    records = [json.loads(ln) for ln in res.out.splitlines()]  # strict JSON: no Infinity, no NaN
    assert len(records) == 2 and not any("period_pm" in r for r in records)
    warnings = [ln for ln in res.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and all("ignored" in w for w in warnings), res.err
    res = C.run_inprocess("denoise", _denoise([inp], tmp_path / "out", gen), capsys)
    assert res.code == 0, res.describe()
    for name in ("huge.tif", "tiny.tif"):
        _, meta = read_micrograph(tmp_path / "out" / name)
        assert meta.pixel_size is None and "print_resolution" not in meta.extra


def test_a_bad_pixel_height_is_dropped_before_the_work_and_not_written_as_zero(tmp_path, capsys):
    import tifffile

    from data_prep.io import read_micrograph

    inp = tmp_path / "in"
    C.pixel_size_tiff(inp, "neg_y.tif", 0.0125, "nm", pixel_size_y=-0.0125)
    C.pixel_size_tiff(inp, "tiny_y.tif", 0.0125, "nm", pixel_size_y=1e-30)
    res = C.run_inprocess("dip_denoise", [str(inp), "--out", str(tmp_path / "dip"), "--steps", "2", "--quiet"],
                          capsys)
    assert res.code == 0, res.describe()
    assert len([ln for ln in res.err.splitlines() if ln.startswith("warning:") and "pixel height" in ln]) == 2
    for name in ("neg_y_dip.tif", "tiny_y_dip.tif"):
        _, meta = read_micrograph(tmp_path / "dip" / name)
        assert meta.pixel_size == pytest.approx(0.0125) and "pixel_size_y" not in meta.extra
        with tifffile.TiffFile(tmp_path / "dip" / name) as tif:
            xres = tif.pages[0].tags["XResolution"].value
            yres = tif.pages[0].tags["YResolution"].value
        assert yres[0] > 0 and yres[1] > 0 and xres == yres  # never 0/1


def test_the_rgb_error_names_no_python_argument(tmp_path, gen, capsys):
    res = C.run_inprocess("denoise", _denoise([C.rgb_tiff(tmp_path / "in")], tmp_path / "out", gen), capsys)
    line = C.assert_clean_failure(res, match="rgb")
    assert "convert_rgb" not in line and "greyscale" in line
    line = C.assert_clean_failure(C.run_inprocess("lattice", [str(tmp_path / "in" / "rgb.tif")], capsys))
    assert "--rgb" in line and "convert_rgb" not in line


# ------------------------------------------------------------------------------------ training leftovers


def test_a_training_run_that_fails_before_its_first_checkpoint_can_simply_be_rerun(tmp_path, monkeypatch, capsys):
    import cyclegan.checkpoint as ckpt_mod

    data = C.tiny_patch_folder(tmp_path / "data")
    cfg = C.write_json(tmp_path / "cfg.json", C.tiny_train_config())
    argv = ["--data", str(data), "--out", str(tmp_path / "runs" / "run"), "--config", str(cfg), "--no-dashboard",
            "--no-progress"]

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(ckpt_mod.torch, "save", full)
        res = C.run_inprocess("train_cyclegan", argv, capsys)
    assert res.code == 2 and res.escaped is None and "Traceback" not in res.err, res.describe()
    assert len(_errors(res)) == 1 and "No space left" in _errors(res)[0], res.describe()
    assert not (tmp_path / "runs").exists(), "the failed run left its folder (config.json, log.jsonl) behind"
    res = C.run_inprocess("train_cyclegan", argv, capsys)
    assert res.code == 0 and (tmp_path / "runs" / "run" / "last.pt").exists(), res.describe()


# ------------------------------------------------------------------------------------ instrument formats


def _needs_dm_extra():
    pytest.importorskip("rsciio", reason="the dm extra (RosettaSciIO) is not installed: pip install 'stem-denoise[dm]'")
    pytest.importorskip("h5py", reason="the dm extra's h5py is not installed: pip install 'stem-denoise[dm]'")
    if not (REAL / "formats").is_dir():
        pytest.skip(f"instrument files not found at {REAL / 'formats'}")


@pytest.mark.parametrize("name, shape, dtype, pixel_nm", [
    ("REBCO-ROI_raw.dm3", (128, 128), "uint16", 0.05408),
    ("EMDReader_Image_FEI.emd", (512, 512), "uint16", 5.3024),
])
def test_instrument_formats_are_read_with_their_pixel_size(name, shape, dtype, pixel_nm):
    from data_prep.io import read_micrograph

    _needs_dm_extra()
    image, meta = read_micrograph(REAL / "formats" / name)
    assert image.shape == shape and image.dtype == np.float32 and meta.source_dtype == dtype
    assert meta.pixel_size_in("nm") == pytest.approx(pixel_nm, rel=1e-3)
    assert np.isfinite(image).all() and image.std() > 0


def test_a_missing_piece_of_the_dm_extra_is_named(monkeypatch):
    from data_prep.io import read_micrograph
    from stem_denoise.common.errors import InputError

    _needs_dm_extra()
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    for mod in [m for m in sys.modules if m.startswith("rsciio.emd") or m.startswith("rsciio._hierarchical")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(InputError, match=r"needs h5py .* not installed .*pip install \"stem-denoise\[dm\]\""):
        read_micrograph(REAL / "formats" / "EMDReader_Image_FEI.emd")
