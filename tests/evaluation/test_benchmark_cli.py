"""scripts/benchmark.py end to end on a tiny quick set, and its handling of bad input."""
from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stem_denoise.common.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[2]
bench_script = importlib.import_module("stem_denoise.commands.benchmark")


def test_quick_benchmark_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["--out", str(out), "--quick", "--size", "96", "--doses", "5,20", "--lattices", "square", "--no-dip",
            "--methods", "noisy,gaussian_oracle,bragg,cyclegan,dip", "--save-outputs", "--no-progress"]
    assert bench_script.main(args) == 0
    text = capsys.readouterr().out
    # the learned methods are skipped, and it says so
    assert "skipped cyclegan: no --checkpoint given" in text
    assert "skipped dip: disabled (--no-dip)" in text
    assert "Bragg filter" in text and "wrote" in text
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3
    assert {r["method"] for r in rows} == {"noisy", "gaussian_oracle", "bragg"}
    # the Bragg filter fills every vacancy: the sanity check of the hallucination metric
    bragg = [r for r in rows if r["method"] == "bragg"]
    assert sum(int(r["hallucinations"]) for r in bragg) == sum(int(r["n_vacancies"]) for r in bragg) > 0
    md = (out / "results.md").read_text()
    assert "## Dose 5 counts" in md and "## Dose 20 counts" in md and "**[oracle]**" in md
    assert "cyclegan: no --checkpoint given" in md
    pngs = sorted((out / "figures").glob("*.png")) + [out / "psnr_vs_dose.png", out / "hallucinations_vs_dose.png"]
    assert len(pngs) == 4
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "outputs" / "square_d5_96" / "bragg.tif").exists()
    with pytest.raises(InputError):  # results exist: no silent overwrite
        bench_script.main(args)
    with pytest.raises(ConfigError):
        bench_script.main(["--out", str(tmp_path / "o"), "--lattices", "cubic"])


def test_bad_input_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--out", str(tmp_path / "o"),
                           "--quick", "--checkpoint", "no_such_generator.pt"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no such file" in lines[0]
