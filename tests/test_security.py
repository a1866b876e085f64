"""Security: safe checkpoint loading, architecture checks, and scripts that write only where they are told.

* Every ``torch.load`` in the code passes ``weights_only=True``; nothing unpickles with plain pickle (static scan).
* A crafted checkpoint whose unpickling would run a shell command is refused by every script that reads
  checkpoints (exit 2, one line) and the command never runs (its marker file is not created). The same file
  loaded with plain pickle does run it, so the test would notice a regression.
* Checkpoints carry their architecture; it is checked before weights are loaded.
* The whole pipeline, script by script, writes nothing outside the ``--out`` folder it was given: not in the
  working directory, not in the home folder, not in the temp folder, not in the repository.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import corpus as C

PACKAGES = ("stem_denoise", "data_prep", "cyclegan", "dip_baseline", "scripts")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real (tiny) training run, shared with the corpus tests; read-only."""
    return C.shared_training_run(tmp_path_factory)


# ------------------------------------------------------------------------------------------------ static scan


def _source_files() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        files += sorted((C.ROOT / pkg).rglob("*.py"))
    return files


def _call_name(node: ast.Call) -> str:
    parts = []
    f = node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def scan_unsafe_loading(files, root: Path = C.ROOT) -> list[str]:
    """Every call that could unpickle untrusted data: torch.load without weights_only=True, pickle/dill/joblib/
    marshal/shelve loads, np.load with allow_pickle=True, yaml.load, and widening torch's safe-globals list."""
    problems = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        torch_load_aliases = set()
        calls = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                calls.append(node)
            elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
                torch_load_aliases |= {a.asname or a.name for a in node.names if a.name == "load"}
        for node in calls:
            name = _call_name(node)
            where = f"{path.relative_to(root)}:{node.lineno}: {name}"
            last = name.rsplit(".", 1)[-1]
            if name in ("torch.load", "torch.serialization.load") or name in torch_load_aliases:
                if not _is_true(_kw(node, "weights_only")):
                    problems.append(f"{where} without weights_only=True")
            elif name.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal",
                                        "shelve") and last in ("load", "loads", "open", "Unpickler"):
                problems.append(f"{where} unpickles untrusted data")
            elif name in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
                problems.append(f"{where} with allow_pickle=True")
            elif name == "yaml.load" and _kw(node, "Loader") is None:
                problems.append(f"{where} without a safe Loader")
            elif last in ("add_safe_globals", "safe_globals"):
                problems.append(f"{where} widens what weights_only loading accepts")
            elif _kw(node, "weights_only") is not None and not _is_true(_kw(node, "weights_only")):
                problems.append(f"{where} with weights_only not True")
    return problems


def test_scanner_finds_unsafe_loading(tmp_path):
    """The scan itself can fail: it flags each unsafe pattern in a sample file."""
    bad = tmp_path / "common" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "import torch, pickle, numpy as np\nfrom torch import load as tl\n"
        "torch.load('a')\ntorch.load('a', weights_only=False)\ntl('a')\npickle.loads(b'')\n"
        "np.load('x.npy', allow_pickle=True)\ntorch.serialization.add_safe_globals([object])\n"
        "torch.load('ok', weights_only=True)\nnp.load('ok.npy')\n")
    problems = scan_unsafe_loading([bad], root=tmp_path)
    assert len(problems) == 6, problems


def test_every_checkpoint_load_is_weights_only():
    files = _source_files()
    assert any("checkpoint" in f.name for f in files), "cyclegan/checkpoint.py not found"
    assert not scan_unsafe_loading(files)
    # and there is at least one real torch.load, in the checkpoint module, with weights_only=True
    text = (C.ROOT / "cyclegan" / "checkpoint.py").read_text()
    assert "weights_only=True" in text


# ------------------------------------------------------------------------------------------------ crafted pickles


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_crafted_checkpoint_really_runs_code_when_unpickled(tmp_path, fmt):
    """Sanity check of the attack file: plain unpickling runs its command (so the refusals below mean something)."""
    marker = tmp_path / "pwned"
    path = C.malicious_checkpoint(tmp_path / "evil.pt", marker, fmt=fmt)
    if fmt == "torch":
        torch.load(path, weights_only=False)  # the unsafe call the project must never make
    else:
        with open(path, "rb") as fh:
            pickle.load(fh)
    assert marker.exists()


def _refused(res: C.Result, marker: Path) -> None:
    assert not marker.exists(), "the crafted checkpoint ran its command"
    C.assert_clean_failure(res, match=("refused", "safe", "not allow", "code"))


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_denoise_refuses_crafted_checkpoint(tmp_path, capsys, fmt):
    marker = tmp_path / "pwned"
    evil = C.malicious_checkpoint(tmp_path / "generator.pt", marker, fmt=fmt)
    img = C.write_lattice_tiff(tmp_path / "in")
    before = C.snapshot(tmp_path)
    res = C.run_inprocess("denoise", [str(img), "--checkpoint", str(evil), "--out", str(tmp_path / "out"),
                                      "--quiet", "--device", "cpu"], capsys)
    _refused(res, marker)
    assert C.snapshot(tmp_path) == before, "output written"


def test_resume_refuses_crafted_training_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    data = C.tiny_patch_folder(tmp_path / "data")
    run = tmp_path / "run"
    C.malicious_checkpoint(run / "last.pt", marker, fmt="pickle")
    cfg = C.write_json(tmp_path / "cfg.json", C.tiny_train_config())
    before = C.snapshot(tmp_path)
    res = C.run_inprocess("train_cyclegan", ["--data", str(data), "--out", str(run), "--resume", "--config", str(cfg),
                                             "--no-dashboard", "--no-progress"], capsys)
    _refused(res, marker)
    assert C.snapshot(tmp_path) == before


def test_benchmark_refuses_crafted_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = C.malicious_checkpoint(tmp_path / "g.pt", marker, fmt="torch")
    before = C.snapshot(tmp_path)
    res = C.run_inprocess("benchmark", ["--out", str(tmp_path / "bench"), "--quick", "--no-dip", "--methods",
                                        "cyclegan", "--checkpoint", str(evil), "--no-progress"], capsys)
    _refused(res, marker)
    assert C.snapshot(tmp_path) == before, "output written"


def test_crafted_checkpoint_in_a_real_process(tmp_path):
    """The same refusal seen from a terminal: one line on stderr, exit 2, no traceback, no marker."""
    marker = tmp_path / "pwned"
    evil = C.malicious_checkpoint(tmp_path / "generator.pt", marker, fmt="torch")
    img = C.write_lattice_tiff(tmp_path / "in")
    res = C.run_subprocess("denoise", [img, "--checkpoint", evil, "--out", tmp_path / "out", "--quiet",
                                       "--device", "cpu"], cwd=tmp_path)
    _refused(res, marker)


def test_pickled_npy_micrograph_is_refused(tmp_path, capsys):
    """An .npy 'micrograph' holding pickled objects is refused without unpickling; plain np.load would run it."""
    marker, sanity = tmp_path / "pwned", tmp_path / "sanity"
    np.load(C.malicious_npy(tmp_path / "check.npy", sanity), allow_pickle=True)
    assert sanity.exists()
    evil = C.malicious_npy(tmp_path / "in" / "frame.npy", marker)
    res = C.run_inprocess("lattice", [str(evil)], capsys)
    assert not marker.exists()
    C.assert_clean_failure(res, match=("python objects", "pickle", "safely"))


# ------------------------------------------------------------------------------------------------ architecture


def test_checkpoints_carry_their_architecture(tmp_path, run_dir):
    from cyclegan.checkpoint import load_generator
    from cyclegan.models import GeneratorConfig, build_generator

    gen = torch.load(run_dir / "generator.pt", map_location="cpu", weights_only=True)
    assert gen["kind"] == "stem-denoise-generator" and isinstance(gen["version"], int)
    assert gen["generator_config"]["width"] == C.TINY_GEN["width"]
    for key in ("patch_px", "atoms_per_patch", "period_px", "direction"):
        assert key in gen["info"]
    train = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert train["kind"] == "stem-denoise-train-checkpoint"
    assert train["config"]["generator"]["width"] == C.TINY_GEN["width"]
    assert train["config"]["discriminator"]["width"] == C.TINY_DIS["width"]
    # the network is rebuilt from the stored architecture, not from the defaults
    net, _ = load_generator(run_dir / "generator.pt")
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    stored = build_generator(GeneratorConfig(**gen["generator_config"])).state_dict()
    assert shapes == {k: tuple(v.shape) for k, v in stored.items()}
    assert shapes != {k: tuple(v.shape) for k, v in build_generator(GeneratorConfig()).state_dict().items()}


def test_architecture_is_checked_before_weights_are_loaded(tmp_path, run_dir, capsys, monkeypatch):
    """Resuming with another architecture fails on the stored config, before any load_state_dict."""
    run = shutil.copytree(run_dir, tmp_path / "run")
    cfg = C.tiny_train_config()
    cfg["generator"] = dict(C.TINY_GEN, width=8)
    cfg_path = C.write_json(tmp_path / "cfg.json", cfg)
    calls = []
    real = torch.nn.Module.load_state_dict

    def spy(self, *a, **k):
        calls.append(type(self).__name__)
        return real(self, *a, **k)

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", spy)
    before = C.snapshot(run)
    res = C.run_inprocess("train_cyclegan", ["--data", str(run_dir.parent / "data"), "--out", str(run), "--resume",
                                             "--config", str(cfg_path), "--no-dashboard", "--no-progress"], capsys)
    C.assert_clean_failure(res, match="architecture")
    assert calls == []
    assert C.snapshot(run) == before


@pytest.mark.parametrize("change", ["unknown_key", "wrong_type", "missing_info"])
def test_generator_export_with_bad_architecture_record_is_refused(tmp_path, run_dir, change):
    from cyclegan.checkpoint import load_generator
    from stem_denoise.common.errors import CheckpointError

    obj = torch.load(run_dir / "generator.pt", map_location="cpu", weights_only=True)
    if change == "unknown_key":
        obj["generator_config"]["exec"] = "import os"
    elif change == "wrong_type":
        obj["generator_config"]["width"] = "4"
    else:
        del obj["info"]["period_px"]
    path = tmp_path / "g.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError):
        load_generator(path)


# ------------------------------------------------------------------------------------------------ write containment

# Writes outside --out that are declared: matplotlib's font-list cache, made once per user on its first import
# (a library cache, not output of the project).
DECLARED = ("home/.cache/matplotlib/", "home/.config/matplotlib/")
REPO_SKIP = (".git", ".venv", "__pycache__", ".hypothesis", ".pytest_cache", "node_modules")


def _repo_files() -> set[str]:
    return {k for k in C.snapshot(C.ROOT, skip=REPO_SKIP, content=False) if not k.endswith(".py")}


def test_scripts_write_only_inside_their_out_folder(tmp_path, capsys, monkeypatch):
    """Run the whole pipeline script by script; after each, the only new or changed files are under its --out.

    The working directory, HOME (and XDG folders) and the temp folder are moved into ``tmp_path`` so that a
    write there is seen too; the repository's file list is compared as well (new non-.py files).
    """
    if not C.script_path("dip_denoise").exists():
        pytest.fail("scripts/dip_denoise.py does not exist")
    work, home, tmpdir, cwd = (tmp_path / d for d in ("work", "home", "tmp", "cwd"))
    for d in (work, home, tmpdir, cwd):
        d.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    cfg = C.write_json(work / "cfg.json", dict(C.tiny_train_config(), steps=2))
    sims, data, run, den, dip, bench = (work / d for d in ("sims", "data", "run", "den", "dip", "bench"))
    m0, m1 = sims / "sim_0000.tif", sims / "sim_0001.tif"
    steps = [
        ("simulate", ["--out", sims, "--n", "2", "--size", "128", "--periods", "12.8", "--doses", "50",
                      "--dents", "none,gaussian"], sims),
        ("lattice", [m0], None),
        ("prepare_data", ["--micrographs", m0, m1, "--synthetic", sims / "synthetic_lattice.tif", "--out", data,
                          "--per-image", "4", "--dents", "1", "--test-frac", "0", "--quiet"], data),
        ("train_cyclegan", ["--data", data, "--out", run, "--config", cfg, "--no-dashboard", "--no-progress"], run),
        ("denoise", [m0, m1, "--checkpoint", run / "generator.pt", "--out", den, "--quiet", "--device", "cpu"], den),
        ("dip_denoise", [m0, "--out", dip, "--steps", "3"], dip),
        ("benchmark", ["--out", bench, "--quick", "--no-dip", "--methods", "median", "--no-progress", "--size", "64",
                       "--doses", "20", "--lattices", "square"], bench),
    ]
    repo_before = _repo_files()
    for script, argv, out in steps:
        before = C.snapshot(tmp_path)
        res = C.run_inprocess(script, [str(a) for a in argv], capsys)
        assert res.escaped is None and res.code == 0, f"{script} failed\n{res.describe()}"
        diff = C.snapshot_diff(before, C.snapshot(tmp_path))
        out_rel = None if out is None else str(out.relative_to(tmp_path)) + os.sep
        outside = [p for kind in ("added", "changed", "removed") for p in diff[kind]
                   if not (out_rel is not None and p.startswith(out_rel)) and not p.startswith(DECLARED)]
        assert not outside, f"{script} wrote outside its --out: {outside}"
        if out is not None:
            assert diff["added"], f"{script} wrote nothing into {out}"
            assert not C.temp_files(out), f"{script} left temporary files: {C.temp_files(out)}"
    assert sorted(_repo_files() - repo_before) == [], "a script wrote into the repository"
    assert json.loads((data / "manifest.json").read_text())["patch_px"] == 64
