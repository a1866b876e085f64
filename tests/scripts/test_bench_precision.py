"""The precision benchmarks: scripts/bench_infer.py --mode precision and scripts/bench_train.py --precisions time
every listed precision in one run (tiny sizes here; bf16 is emulated, only slower, on CPUs without it)."""
from __future__ import annotations

import json

import pytest
import torch

from cyclegan.checkpoint import export_generator
from cyclegan.models import GeneratorConfig, build_generator
from stem_denoise.common.cli import run_main
from stem_denoise.common.precision import cpu_has_native_bf16

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INFO = dict(patch_px=64, atoms_per_patch=5, period_px=12.8, direction="A2B")


def test_bench_infer_precision_mode_times_each_precision_end_to_end(tmp_path, capsys):
    from stem_denoise.commands.bench_infer import main

    cfg = GeneratorConfig(width=4, n_blocks=1)
    torch.manual_seed(0)
    g = build_generator(cfg)
    torch.nn.init.normal_(g.head.weight, 0.0, 0.05)
    export_generator(tmp_path / "g.pt", g, cfg, INFO)
    work = tmp_path / "work"
    assert main(["--mode", "precision", "--size", "96", "--checkpoint", str(tmp_path / "g.pt"), "--threads", "1",
                 "--precisions", "auto,fp32,bf16", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    assert res["cpu_native_bf16"] == cpu_has_native_bf16()
    runs = res["runs"]
    assert runs["auto"]["ran_as"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert runs["fp32"]["ran_as"] == "fp32" and runs["bf16"]["ran_as"] == "bf16"
    assert all(r["seconds"] > 0 and r["mp_per_s"] > 0 for r in runs.values())
    assert runs["fp32"]["speedup_vs_fp32"] == 1.0
    assert runs["bf16"]["psnr_vs_fp32"] is not None and runs["bf16"]["psnr_vs_fp32"] > 40.0
    if not cpu_has_native_bf16():
        assert runs["auto"]["psnr_vs_fp32"] is None  # bit-identical: the same float32 arithmetic
    assert f'"auto" resolves to {runs["auto"]["ran_as"]}' in out
    assert list(work.iterdir()) == []  # the test TIFFs are removed


def test_bench_infer_bad_precision_is_one_line(capsys):
    from stem_denoise.commands import bench_infer

    with pytest.raises(SystemExit) as exc:
        run_main(bench_infer.main, ["--mode", "precision", "--size", "32", "--precisions", "fp32,fp8"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_bench_train_times_the_profile_in_each_precision(capsys):
    from stem_denoise.commands.bench_train import main

    assert main(["--device", "cpu", "--profile", "quick", "--patch-px", "32", "--steps", "1", "--warmup", "0",
                 "--seconds", "0", "--precisions", "fp32,bf16"]) == 0
    out = capsys.readouterr().out
    fp32 = next(ln for ln in out.splitlines() if ln.startswith("ours fp32"))
    bf16 = next(ln for ln in out.splitlines() if ln.startswith("ours bf16"))
    assert "stochastic objective" in fp32 and ", fp32," in fp32 and "bfloat16, channels_last True" in bf16
    assert "reference" not in out
    ratio = float(out.split("bf16 / fp32:")[1].split("x")[0])
    assert ratio > 0
    with pytest.raises(SystemExit) as exc:
        run_main(main, ["--precisions", "fp32,fp32"])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: ")
