"""The package installs: a wheel built from the tracked sources, installed into a fresh venv (its dependencies
taken from the project's venv, no network), runs its console command and the README's first Python example from
outside the repository."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs git to list the tracked sources")
    return [f for f in out.decode().split("\0") if f]


def readme_first_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)
    assert len(section) == 2, "README has no '## Python API' section"
    block = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert block, "the Python API section has no python example"
    return block.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for rel in _tracked_files():
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, env=env, cwd=tmp, capture_output=True)
    wheel = next((tmp / "dist").glob("stem_denoise-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"stem_denoise", "data_prep", "cyclegan", "dip_baseline"}
    assert "stem_denoise/models/default.pt" in names and "stem_denoise/evaluation/metrics.py" in names
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, env=env, cwd=tmp, capture_output=True)
    # the dependencies (torch, numpy, ...) come from the project's venv, after the fresh venv's own packages
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", purelib], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _run(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STEM_DENOISE_MODEL")}
    env.update(OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_packages_come_from_the_wheel_not_the_checkout(installed, tmp_path):
    proc = _run(installed, [str(installed / "bin" / "python"), "-c",
                            "import stem_denoise, cyclegan, data_prep, dip_baseline, stem_denoise.evaluation as e;"
                            "from cyclegan.checkpoint import default_model_path as d;"
                            "print(stem_denoise.__file__); print(e.__file__); print(d())"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.split():
        assert str(installed) in line and str(ROOT) not in line
    assert Path(proc.stdout.split()[-1]).is_file()


def test_console_command_runs_a_job(installed, tmp_path):
    exe = installed / "bin" / "stem-denoise"
    proc = _run(installed, [str(exe)], tmp_path)
    assert proc.returncode == 2 and "denoise" in proc.stdout and "benchmark" in proc.stdout
    proc = _run(installed, [str(exe), "simulate", "--out", "sims", "--n", "1", "--size", "96", "--periods", "10",
                            "--doses", "20"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    noisy = sorted(p for p in (tmp_path / "sims").glob("sim_*.tif") if not p.stem.endswith(("_truth", "_thickness")))
    assert noisy, proc.stdout
    proc = _run(installed, [str(exe), "lattice", str(noisy[0])], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"period_px"' in proc.stdout
    proc = _run(installed, [str(exe), "nonsense"], tmp_path)
    assert proc.returncode == 2 and "unknown job" in proc.stderr


def test_readme_python_example_runs_from_outside_the_repository(installed, tmp_path):
    (tmp_path / "example.py").write_text(readme_first_python_example(), encoding="utf-8")
    proc = _run(installed, [str(installed / "bin" / "python"), "example.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"PSNR ([\d.]+) -> ([\d.]+) dB", proc.stdout)
    assert m and float(m.group(2)) > float(m.group(1)) + 6, proc.stdout
