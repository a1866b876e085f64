"""Checkpoint safety: generator export round trip, kinds, truncation, crafted pickles, rotation."""
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from cyclegan.checkpoint import (
    GENERATOR_KIND,
    TRAIN_KIND,
    export_generator,
    load_generator,
    safe_torch_load,
    save_checkpoint,
)
from cyclegan.models import GeneratorConfig, build_generator
from stem_denoise.common.errors import CheckpointError

torch.set_num_threads(1)

INFO = {"patch_px": 64, "atoms_per_patch": 5, "period_px": 12.8, "direction": "A2B"}


@pytest.fixture()
def exported(tmp_path):
    cfg = GeneratorConfig(width=4, n_blocks=1)
    torch.manual_seed(0)
    g = build_generator(cfg)
    torch.nn.init.normal_(g.head.weight, 0, 0.1)  # not the identity
    path = tmp_path / "generator.pt"
    export_generator(path, g, cfg, {**INFO, "step": 7})
    return g, cfg, path


def test_generator_export_round_trip(exported):
    g, cfg, path = exported
    loaded, info = load_generator(path)
    assert info == {**INFO, "step": 7}
    assert not loaded.training and loaded.cfg == cfg
    x = torch.rand(2, 1, 21, 30)
    with torch.no_grad():
        assert torch.equal(loaded(x), g.eval()(x))
    obj = safe_torch_load(path, kind=GENERATOR_KIND)
    assert obj["version"] == 1 and obj["generator_config"]["width"] == 4
    assert os.path.getsize(path) < 100_000  # small: weights and config only


def test_kinds_are_checked(exported, tmp_path):
    _, _, path = exported
    with pytest.raises(CheckpointError, match="generator export"):
        safe_torch_load(path, kind=TRAIN_KIND)
    train_like = tmp_path / "last.pt"
    torch.save({"kind": TRAIN_KIND, "version": 1, "step": 3}, train_like)
    with pytest.raises(CheckpointError, match="training checkpoint"):
        load_generator(train_like)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'kind'"):
        safe_torch_load(tmp_path / "other.pt")
    torch.save({"kind": GENERATOR_KIND, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version"):
        safe_torch_load(tmp_path / "future.pt")


def test_missing_truncated_and_garbage_files(exported, tmp_path):
    _, _, path = exported
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_torch_load(tmp_path / "nope.pt")
    data = path.read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 20):
        cut = tmp_path / f"cut{n}.pt"
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError):
            load_generator(cut)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        safe_torch_load(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        safe_torch_load(tmp_path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"kind": GENERATOR_KIND, "version": 1, "payload": _Exploit(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_generator(evil)
    assert not marker.exists()
    # a bare pickle (not a torch zip file) with the same payload
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit(str(marker)), protocol=2))
    with pytest.raises(CheckpointError):
        safe_torch_load(raw)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_architecture(exported, tmp_path):
    _, _, path = exported
    obj = torch.load(path, weights_only=True)
    obj["generator_config"]["width"] = 8
    torch.save(obj, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(tmp_path / "mismatch.pt")
    obj["generator_config"] = {"width": 4, "wings": 2}
    torch.save(obj, tmp_path / "badcfg.pt")
    with pytest.raises(CheckpointError, match="unknown key 'wings'"):
        load_generator(tmp_path / "badcfg.pt")


def test_save_checkpoint_atomic_with_previous(tmp_path):
    last, prev = tmp_path / "last.pt", tmp_path / "previous.pt"
    save_checkpoint(last, {"kind": TRAIN_KIND, "version": 1, "step": 1}, previous=prev)
    assert not prev.exists()
    save_checkpoint(last, {"kind": TRAIN_KIND, "version": 1, "step": 2}, previous=prev)
    save_checkpoint(last, {"kind": TRAIN_KIND, "version": 1, "step": 3}, previous=prev)
    assert safe_torch_load(last)["step"] == 3 and safe_torch_load(prev)["step"] == 2
    assert zipfile.is_zipfile(last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_export_requires_the_atom_scale(tmp_path):
    cfg = GeneratorConfig(width=4, n_blocks=1)
    with pytest.raises(ValueError, match="period_px"):
        export_generator(tmp_path / "g.pt", build_generator(cfg), cfg, {"patch_px": 64, "direction": "A2B"})


def test_default_model_path_is_the_repository_file_unless_the_environment_names_another(monkeypatch, tmp_path):
    from cyclegan.checkpoint import default_model_path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.delenv("STEM_DENOISE_MODEL", raising=False)
    assert default_model_path() == root / "stem_denoise" / "models" / "default.pt"
    monkeypatch.setenv("STEM_DENOISE_MODEL", "  ")  # blank counts as unset
    assert default_model_path() == root / "stem_denoise" / "models" / "default.pt"
    monkeypatch.setenv("STEM_DENOISE_MODEL", str(tmp_path / "mine.pt"))
    assert default_model_path() == tmp_path / "mine.pt"
