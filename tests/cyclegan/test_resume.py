"""Exact resume: a run interrupted anywhere and resumed ends with the same weights, bit for bit, as one that never
stopped -- after a real SIGKILL of the training script, and at seven interruption points in process."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cyclegan import checkpoint as ckpt_mod
from cyclegan import train as train_mod
from cyclegan.checkpoint import safe_torch_load
from cyclegan.config import config_from_dict
from cyclegan.data import UnpairedPatches, write_toy_patches
from cyclegan.train import NETS, state_digest, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]

CFG = {"seed": 5, "steps": 12, "batch_size": 2, "crop_px": 16, "num_workers": 0, "log_every": 1,
       "image_every": 1000, "checkpoint_every": 3, "pool_size": 3, "decay_start": 0.5, "device": "cpu",
       "generator": {"width": 4, "n_blocks": 1}, "discriminator": {"width": 4, "n_layers": 2},
       "dashboard": {"enabled": False}}


class Killed(BaseException):
    """Stands for the process dying: nothing in the training code catches it."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    # 5 A patches and batch 2: epoch boundaries fall inside steps
    write_toy_patches(root, n_a=5, n_b=4, patch_px=20, atoms_per_patch=2.5, noise=0.3, seed=1)
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    return train(config_from_dict(CFG), data, run, progress=False)["digests"]


def _digests_of(path: Path) -> dict:
    models = safe_torch_load(path)["models"]
    return {n: state_digest(models[n]) for n in NETS}


def _kill_in_step(at):
    real = train_mod.CycleGAN.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            raise Killed()
        return real(self, *a, **k)
    return train_mod.CycleGAN, "step", step


def _kill_in_save(at):
    real = ckpt_mod.torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise Killed()
        return real(obj, f, *a, **k)
    return ckpt_mod.torch, "save", save


def _kill_in(module, name, at):
    real = getattr(module, name)
    calls = {"n": 0}

    def fn(*a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            raise Killed()
        return real(*a, **k)
    return module, name, fn


class _KillingDashboard:
    def __init__(self, at):
        self.at = at

    def scalars(self, step, values):
        if step == self.at:
            raise Killed()  # after the optimiser step of `step`, before its checkpoint

    def images(self, step, panels):
        pass


KILL_POINTS = {
    "before the first checkpoint": lambda: _kill_in_step(2),
    "mid-step between checkpoints": lambda: _kill_in_step(5),
    "after an update, before its checkpoint": lambda: "dashboard:6",
    "while torch.save writes the temp file": lambda: _kill_in_save(3),  # 2nd last.pt (step 6)
    "after the temp file, before the rename": lambda: _kill_in(ckpt_mod, "_keep_previous", 2),
    "between last.pt and generator.pt": lambda: _kill_in(train_mod, "export_generator", 3),
    "while the loader reads a patch": lambda: _kill_in(UnpairedPatches, "_load", 17),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_interrupted_anywhere_then_resumed_is_bit_identical(point, data, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    patch = KILL_POINTS[point]()
    dashboard = None
    with monkeypatch.context() as m:
        if isinstance(patch, str):
            dashboard = _KillingDashboard(int(patch.split(":")[1]))
        else:
            m.setattr(*patch)
        with pytest.raises(Killed):
            train(config_from_dict(CFG), data, run, dashboard=dashboard, progress=False)
    summary = train(config_from_dict(CFG), data, run, resume=True, progress=False)
    assert summary["step"] == 12
    assert summary["digests"] == reference
    assert _digests_of(run / "last.pt") == reference


def test_sigkill_of_the_training_script_then_resume(data, reference, tmp_path):
    cfg = {**CFG, "steps": 24, "checkpoint_every": 5}
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "train_cyclegan.py"), "--data", str(data), "--out", str(run),
           "--config", str(cfg_path), "--profile", "classic", "--no-progress"]  # CFG lies over TrainConfig()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = run / "log.jsonl"
    deadline = time.monotonic() + 120
    killed_after = None
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists():
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            if lines and json.loads(lines[-1])["step"] >= 7:
                proc.send_signal(signal.SIGKILL)
                killed_after = json.loads(lines[-1])["step"]
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_after is not None, proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    assert safe_torch_load(run / "last.pt")["step"] < 24  # it really stopped early
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # the uninterrupted run, in this process
    expected = train(config_from_dict(cfg), data, tmp_path / "straight", progress=False)["digests"]
    assert safe_torch_load(run / "last.pt")["step"] == 24
    assert _digests_of(run / "last.pt") == expected
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # stale temp files cleared on resume
