"""docs/python_api.ipynb runs top to bottom as a user would (its code cells in order, one fresh interpreter)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "docs" / "python_api.ipynb"


def test_notebook_runs_and_the_gan_beats_the_noisy_input_and_a_gaussian(tmp_path):
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(cells) >= 5
    script = tmp_path / "notebook.py"
    script.write_text("\n\n".join(cells) + "\nplt.savefig('figure.png')\n", encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(" PSNR")[0].strip(): line for line in proc.stdout.splitlines() if " PSNR " in line}
    psnr = {k: float(v.split("PSNR")[1].split("dB")[0]) for k, v in lines.items()}
    assert set(psnr) == {"noisy", "gaussian 1.5 px", "CycleGAN (shipped)"}
    assert psnr["CycleGAN (shipped)"] > psnr["noisy"] + 8
    assert psnr["CycleGAN (shipped)"] > psnr["gaussian 1.5 px"]
    assert (tmp_path / "figure.png").stat().st_size > 10_000
