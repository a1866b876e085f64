"""Atomic writes: complete file or nothing, no temporary files left, overwrite protection."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import stem_denoise.common.atomic as atomic
from stem_denoise.common.atomic import atomic_path, atomic_write_bytes, atomic_write_with
from stem_denoise.common.errors import InputError


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_bytes_and_replace(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert leftovers(tmp_path) == []


def test_temporary_file_is_hidden_next_to_the_target(tmp_path):
    seen = {}
    with atomic_path(tmp_path / "out.tif") as tmp:
        seen["tmp"] = tmp
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tif.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"data")
        assert not (tmp_path / "out.tif").exists()
    assert (tmp_path / "out.tif").read_bytes() == b"data"
    assert not seen["tmp"].exists()


def test_failure_inside_the_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_with(target, writer)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert not (tmp_path / "b.bin").exists() and leftovers(tmp_path) == []


def test_overwrite_false_refuses_before_writing(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    called = []
    with pytest.raises(InputError, match=r"a\.bin exists"):
        atomic_write_with(target, lambda tmp: called.append(tmp), overwrite=False)
    assert called == [] and target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_overwrite_false_never_clobbers_a_file_that_appears_meanwhile(tmp_path):
    target = tmp_path / "a.bin"
    with pytest.raises(InputError, match="exists"):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")  # another process finished first
    assert target.read_bytes() == b"theirs"
    assert leftovers(tmp_path) == []


def test_overwrite_false_without_hard_links_still_publishes(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    atomic_write_bytes(tmp_path / "a.bin", b"x", overwrite=False)
    assert (tmp_path / "a.bin").read_bytes() == b"x" and leftovers(tmp_path) == []


def test_new_files_get_ordinary_permissions_and_replacements_keep_theirs(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "new.bin", b"x")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    keep = tmp_path / "keep.bin"
    keep.write_bytes(b"x")
    os.chmod(keep, 0o604)
    atomic_write_bytes(keep, b"y")
    assert stat.S_IMODE(keep.stat().st_mode) == 0o604 and keep.read_bytes() == b"y"


def test_missing_or_unwritable_folder(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "a.bin", b"x")
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="is not writable"):
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert not (tmp_path / "a.bin").exists()


def test_relative_path_in_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_bytes("rel.bin", b"z")
    assert (tmp_path / "rel.bin").read_bytes() == b"z"
