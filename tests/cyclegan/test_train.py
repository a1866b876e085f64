"""Training loop end to end with tiny networks: losses, logging, the low-frequency term, failures, config checks."""
import errno
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cyclegan import checkpoint as ckpt_mod
from cyclegan import losses
from cyclegan.checkpoint import CheckpointWriteError, load_generator, safe_torch_load
from cyclegan.config import config_from_dict, config_to_dict, load_config, profile_config
from cyclegan.data import UnpairedPatches, write_toy_patches
from cyclegan.losses import LowPass
from cyclegan.train import LOSS_NAMES, TrainingDiverged, lr_factor, train
from stem_denoise.common.cli import run_main
from stem_denoise.common.errors import CheckpointError, ConfigError, InputError
from tests.cyclegan.helpers import StubDashboard

torch.set_num_threads(1)

TINY = {"steps": 8, "batch_size": 2, "crop_px": 16, "num_workers": 0, "log_every": 2, "image_every": 4,
        "checkpoint_every": 4, "pool_size": 3, "device": "cpu", "generator": {"width": 4, "n_blocks": 1},
        "discriminator": {"width": 4, "n_layers": 2}, "dashboard": {"enabled": False}}


def tiny(**over):
    cfg = config_from_dict(TINY)
    return config_from_dict(over, base=cfg) if over else cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_toy_patches(root, n_a=12, n_b=12, patch_px=24, atoms_per_patch=3, noise=0.3, dent_frac=0.5, seed=0)
    return root


def test_losses_finite_cycle_loss_falls_and_everything_logged(data, tmp_path):
    # A generator without the residual output starts far from the identity: its cycle loss must fall.
    cfg = tiny(steps=30, lr=2e-3, log_every=1, decay_start=1.0, generator={"width": 8, "residual_output": False})
    dash = StubDashboard()
    summary = train(cfg, data, tmp_path / "run", dashboard=dash, progress=False)
    assert summary["step"] == 30
    steps = [s for s, _ in dash.scalars_log]
    assert steps == list(range(1, 31))
    for _, values in dash.scalars_log:
        assert set(LOSS_NAMES) | {"lr", "images_per_s"} <= set(values)
        assert all(np.isfinite(v) for v in values.values())
    cyc = np.array([v["cycle_A"] + v["cycle_B"] for _, v in dash.scalars_log])
    assert cyc[-5:].mean() < 0.5 * cyc[:5].mean()
    # image panels every image_every steps, the six CycleGAN views at crop size
    assert [s for s, _ in dash.images_log] == [4, 8, 12, 16, 20, 24, 28]
    panels = dash.images_log[0][1]
    assert list(panels) == ["A", "G(A)", "F(G(A))", "B", "F(B)", "G(F(B))"]
    assert all(p.shape == (16, 16) and p.dtype == np.float32 for p in panels.values())
    # run folder: resolved config, checkpoint, generator export with the atom scale
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text()) == config_to_dict(cfg)
    assert set(json.loads((run / "config.schema.json").read_text())["properties"]) == set(config_to_dict(cfg))
    assert safe_torch_load(run / "last.pt")["step"] == 30
    g, info = load_generator(run / "generator.pt")
    assert info["period_px"] == pytest.approx(8.0) and info["patch_px"] == 24 and info["direction"] == "A2B"
    assert not g.training


def test_lr_schedule_constant_then_linear():
    assert [lr_factor(s, 10, 0.5) for s in (0, 4, 5, 6, 9)] == [1.0, 1.0, 1.0, 0.8, pytest.approx(0.2)]
    assert lr_factor(0, 10, 0.0) == 1.0 and lr_factor(9, 10, 1.0) == 1.0


def test_lowfreq_term_keeps_dents(tmp_path):
    """After a short training on dented micrographs against undented clean patches, the low-pass of G(A) stays
    much closer to that of A with the low-frequency term than without it."""
    write_toy_patches(tmp_path / "data", n_a=48, n_b=48, patch_px=32, atoms_per_patch=4, noise=0.3,
                      dent_frac=1.0, dent_depth=0.6, seed=0)
    write_toy_patches(tmp_path / "test", n_a=16, n_b=1, patch_px=32, atoms_per_patch=4, noise=0.3,
                      dent_frac=1.0, dent_depth=0.6, seed=99)
    ds = UnpairedPatches(tmp_path / "test/trainA", tmp_path / "test/trainB", augment=False)
    test = torch.stack([ds[(i, 0, 0, 0)]["A"] for i in range(16)])
    lp = LowPass(8.0)
    errors = {}
    for lam in (0.0, 5.0):
        cfg = tiny(steps=40, batch_size=4, crop_px=24, lr=1e-3, decay_start=1.0, checkpoint_every=1000,
                   lambda_lowfreq=lam, generator={"width": 8}, discriminator={"width": 8})
        train(cfg, tmp_path / "data", tmp_path / f"run{lam}", progress=False)
        g, _ = load_generator(tmp_path / f"run{lam}" / "generator.pt")
        with torch.no_grad():
            out = g(test)
        errors[lam] = (lp(out) - lp(test)).abs().mean().item()
    assert errors[5.0] < 0.5 * errors[0.0], errors


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = losses.cycle_l1

    def poisoned(a, b):
        calls["n"] += 1
        out = real(a, b)
        return out * float("nan") if calls["n"] > 2 * 5 else out  # two calls per step: NaN from step 6

    monkeypatch.setattr(losses, "cycle_l1", poisoned)
    with pytest.raises(TrainingDiverged) as info:
        train(tiny(), data, tmp_path / "run", progress=False)
    msg = str(info.value)
    assert "non-finite loss at step 6" in msg and "step 4" in msg and "intact" in msg and "\n" not in msg
    ckpt = safe_torch_load(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["models"]["G"].values())


def test_full_disk_during_save_keeps_previous_checkpoint(data, tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] <= 2:  # first checkpoint (last.pt + generator.pt) goes through
            return real_save(obj, f, *a, **k)
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    with pytest.raises(CheckpointWriteError, match="left intact") as info:
        train(tiny(), data, tmp_path / "run", progress=False)
    assert "No space left" in str(info.value)
    run = tmp_path / "run"
    assert safe_torch_load(run / "last.pt")["step"] == 4
    load_generator(run / "generator.pt")
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_refuses_to_overwrite_a_run_without_resume(data, tmp_path):
    train(tiny(steps=4), data, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny(steps=4), data, tmp_path / "run", progress=False)


def test_resume_with_other_settings_is_refused(data, tmp_path):
    train(tiny(steps=4), data, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="architecture.*generator.width"):
        train(tiny(steps=8, generator={"width": 8}), data, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train(tiny(steps=8, lr=1e-3), data, tmp_path / "run", resume=True, progress=False)
    summary = train(tiny(steps=6, log_every=3), data, tmp_path / "run", resume=True, progress=False)
    assert (summary["start_step"], summary["step"]) == (4, 6)
    # a generator export where the training checkpoint should be
    run = tmp_path / "run"
    for name in ("last.pt", "previous.pt"):
        (run / name).write_bytes((run / "generator.pt").read_bytes())
    with pytest.raises(CheckpointError, match="generator export"):
        train(tiny(steps=8), data, run, resume=True, progress=False)


@pytest.mark.parametrize("bad,match", [
    ({"stepz": 3}, "unknown key 'stepz'"),
    ({"steps": "10"}, "steps: expected an integer"),
    ({"steps": 1.5}, "steps: expected an integer"),
    ({"lr": -1.0}, "lr must be"),
    ({"generator": {"width": True}}, "generator.width: expected an integer"),
    ({"generator": {"depth": 3}}, "generator: unknown key 'depth'"),
    ({"precision": "fp8"}, "precision: expected one of"),
    ({"crop_px": None, "dashboard": {"port": 0}}, "port"),
    ({"generator": 3}, "generator: expected an object"),
])
def test_config_validation(bad, match, tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_config_profiles_and_round_trip(tmp_path):
    quick = profile_config("quick")
    assert quick.generator.width < profile_config("default").generator.width
    assert config_from_dict(config_to_dict(quick)) == quick
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"lr": 1e-3, "generator": {"n_blocks": 2}}))
    cfg = load_config(path, "classic-quick", steps=7)
    assert (cfg.lr, cfg.generator.n_blocks, cfg.generator.width, cfg.steps) == (1e-3, 2, 16, 7)
    for name in ("default", "classic", "classic-quick"):
        assert config_from_dict(config_to_dict(profile_config(name))) == profile_config(name)
    with pytest.raises(ConfigError, match="profile"):
        profile_config("huge")
    path.write_text("{bad json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)


def test_script_trains_and_reports_config_errors_in_one_line(data, tmp_path, capsys):
    from stem_denoise.commands.train_cyclegan import main

    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(json.dumps({**TINY, "steps": 4}))
    with pytest.raises(SystemExit) as code:
        run_main(main, ["--data", str(data), "--out", str(tmp_path / "run"), "--config", str(cfg_path),
                        "--no-progress"])
    assert code.value.code == 0
    assert "trained to step 4" in capsys.readouterr().out
    # --resume picks the run's own config (from last.pt when config.json is gone); --steps extends it
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(SystemExit) as code:
        run_main(main, ["--data", str(data), "--out", str(tmp_path / "run"), "--resume", "--steps", "6",
                        "--no-progress", "--profile", "quick"])
    assert code.value.code == 0
    assert safe_torch_load(tmp_path / "run" / "last.pt")["step"] == 6
    assert json.loads((tmp_path / "run" / "config.json").read_text())["generator"]["width"] == 4  # not quick's
    capsys.readouterr()
    cfg_path.write_text(json.dumps({"steps": 4, "batch": 2}))
    with pytest.raises(SystemExit) as code:
        run_main(main, ["--data", str(data), "--out", str(tmp_path / "run2"), "--config", str(cfg_path)])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown key 'batch'" in err and err.count("\n") == 1


def test_bench_script_prints_both_loops(capsys):
    from stem_denoise.commands.bench_train import main

    assert main(["--device", "cpu", "--profile", "quick", "--patch-px", "32", "--steps", "1", "--warmup", "0",
                 "--seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "ours" in out and "reference" in out and "images/s" in out
    speedup = float(out.split("speed-up  :")[1].split("x")[0])
    assert speedup > 0


def test_mixed_precision_path_runs(data, tmp_path):
    """The autocast branch (bf16 on CUDA by default) exercised with CPU bf16: finite losses, float32 weights."""
    dash = StubDashboard()
    train(tiny(steps=2, log_every=1, precision="bf16"), data, tmp_path / "run", dashboard=dash, progress=False)
    assert all(np.isfinite(v) for _, values in dash.scalars_log for v in values.values())
    g, _ = load_generator(tmp_path / "run" / "generator.pt")
    assert all(p.dtype == torch.float32 for p in g.parameters())
    with pytest.raises(ConfigError, match="fp16"):
        train(tiny(steps=2, precision="fp16"), data, tmp_path / "run16", progress=False)


def test_bad_patch_in_a_worker_is_one_clean_line(tmp_path):
    write_toy_patches(tmp_path / "data", n_a=6, n_b=6, patch_px=24, atoms_per_patch=3, seed=0)
    bad = sorted((tmp_path / "data" / "trainA").iterdir())[-1]
    tifffile.imwrite(bad, np.full((24, 24), np.nan, np.float32))  # not the first file: found while training
    with pytest.raises(InputError) as info:
        train(tiny(steps=6, batch_size=3, num_workers=1), tmp_path / "data", tmp_path / "run", progress=False)
    msg = str(info.value)
    assert bad.name in msg and "NaN" in msg and "\n" not in msg and "Traceback" not in msg
