"""Helpers for the reliability tests: bad input files, tiny checkpoints, script runners, folder snapshots.

Every builder writes into a folder the caller gives (a pytest ``tmp_path``) and returns the path it made, so a
test never touches anything outside its own temporary folder. Scripts are run either in-process (their
``main(argv)`` through :func:`stem_denoise.common.cli.run_main`, exactly what ``python scripts/x.py`` does, at no
start-up cost) or as real subprocesses (to prove that no traceback reaches the terminal).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

# Tiny networks: the corpus tests need valid checkpoints, not useful ones.
TINY_GEN = {"width": 4, "n_blocks": 1}
TINY_DIS = {"width": 4, "n_layers": 1}
GEN_INFO = {"patch_px": 32, "atoms_per_patch": 2.5, "period_px": 12.8, "direction": "A2B"}


# --------------------------------------------------------------------------------------------- running scripts


@dataclass
class Result:
    """What one script run left behind: exit code, stdout, stderr, and an exception that escaped (a bug)."""

    code: int | None
    out: str
    err: str
    escaped: str | None = None  # formatted traceback of an exception run_main let through

    def describe(self) -> str:
        text = f"exit code {self.code!r}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"
        if self.escaped:
            text += f"\n--- escaped exception (a traceback on the terminal) ---\n{self.escaped}"
        return text




def script_path(name: str) -> Path:
    return SCRIPTS / f"{name}.py"


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (scripts are not a package), once per test session."""
    if not script_path(name).is_file():
        raise FileNotFoundError(script_path(name))
    return importlib.import_module(f"stem_denoise.commands.{name}")


def run_inprocess(name: str, argv: Sequence[str], capsys=None) -> Result:
    """Run ``scripts/<name>.py`` with ``argv`` the way its ``__main__`` block does, inside this process.

    stdout/stderr are captured (``capsys``, pytest's fixture, is emptied first when given). An exception other
    than SystemExit is a bug (the user would see a traceback): it is caught and returned in ``Result.escaped``.
    """
    if capsys is not None:
        capsys.readouterr()
    return _run_captured(name, argv)


def _run_captured(name: str, argv: Sequence[str]) -> Result:
    """``run_main(main, argv)`` of ``scripts/<name>.py`` with stdout/stderr captured in memory (no pytest)."""
    from stem_denoise.common.cli import run_main

    mod = load_script(name)
    out, err = io.StringIO(), io.StringIO()
    code: int | None = 0
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(mod.main, list(map(str, argv)))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001
            escaped = traceback.format_exc()
            code = 1
    return Result(code, out.getvalue(), err.getvalue(), escaped)


def run_batch_subprocess(cases: Sequence[tuple[str, Sequence[str]]], *, prefix: Sequence[str] = (),
                         cwd: Path | None = None, timeout: float = 300) -> list[Result]:
    """Run several scripts' ``main`` one after the other in ONE fresh process (e.g. under a privilege-dropping
    ``prefix``), each as ``python scripts/<name>.py`` would; torch is imported once for all of them."""
    import json

    payload = json.dumps([[name, [str(a) for a in argv]] for name, argv in cases])
    cmd = [*prefix, sys.executable, str(Path(__file__).resolve()), "run-batch"]
    proc = subprocess.run(cmd, input=payload, cwd=cwd, env=script_env(), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"batch driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return [Result(**r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def _batch_main() -> None:
    import json

    cases = json.loads(sys.stdin.read())
    results = [_run_captured(name, argv).__dict__ for name, argv in cases]
    sys.stdout.write("\n" + json.dumps(results) + "\n")


def script_env(**extra: str) -> dict:
    """Environment for a script subprocess: one thread, no albumentations update check."""
    env = dict(os.environ)
    env.update(NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def run_subprocess(name: str, argv: Sequence[str], *, cwd: Path | None = None, env: dict | None = None,
                   prefix: Sequence[str] = (), timeout: float = 120) -> Result:
    """Run ``python scripts/<name>.py argv`` as a real process (``prefix`` e.g. a privilege-dropping wrapper)."""
    cmd = [*prefix, sys.executable, str(script_path(name)), *map(str, argv)]
    proc = subprocess.run(cmd, cwd=cwd, env=env or script_env(), capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_failure(res: Result, *, code: int = 2, match: str | Iterable[str] | None = None,
                         usage_ok: bool = False) -> str:
    """Assert a run failed the way a user should see it; return its error line.

    Exit status ``code``; no traceback; stderr holds exactly one line that says what is wrong (``error: ...``
    from :func:`stem_denoise.common.cli.fail`, or argparse's ``prog: error: ...``). With ``usage_ok`` (argparse usage
    errors) the error line may follow argparse's usage block. ``match``: text(s) of which at least one must appear in
    the error line (case-insensitive).
    """
    detail = res.describe()
    assert res.escaped is None, f"an exception escaped run_main (the user would see a traceback)\n{detail}"
    assert "Traceback (most recent call last)" not in res.err + res.out, f"traceback printed\n{detail}"
    assert res.code == code, f"expected exit status {code}\n{detail}"
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if "error:" in ln]
    assert len(error_lines) == 1, f"expected exactly one error line on stderr\n{detail}"
    line = error_lines[0]
    if usage_ok and not line.startswith("error:"):
        # argparse: "usage: ..." (possibly wrapped over indented lines), then "prog: error: ..."
        others = [ln for ln in lines if ln is not line]
        assert others and others[0].startswith("usage:"), f"unexpected stderr\n{detail}"
        assert all(ln.startswith("usage:") or ln.startswith(" ") for ln in others), f"unexpected stderr\n{detail}"
    else:
        assert lines == [line], f"stderr must be one line\n{detail}"
        assert line.startswith("error: ") and len(line) > len("error: ") + 5, f"unclear error line\n{detail}"
    if match is not None:
        options = [match] if isinstance(match, str) else list(match)
        assert any(m.lower() in line.lower() for m in options), f"error line should mention one of {options}\n{detail}"
    return line


# --------------------------------------------------------------------------------------------- folder snapshots


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path, *, skip: Sequence[str] = (), content: bool = True) -> dict[str, tuple]:
    """Every file under ``root`` (relative path -> (size, mtime_ns, sha256 or None)); ``skip``: top-level names
    and any path component equal to one of them are left out."""
    root = Path(root)
    skip_set = set(skip)
    result: dict[str, tuple] = {}
    if not root.exists():
        return result
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip_set]
        for f in filenames:
            if f in skip_set:
                continue
            p = Path(dirpath) / f
            try:
                st = p.lstat()
                digest = file_digest(p) if content and p.is_file() and not p.is_symlink() else None
            except OSError:
                continue
            result[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return result


def snapshot_diff(before: dict, after: dict) -> dict[str, list[str]]:
    """Files added, removed and changed between two snapshots."""
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


def temp_files(root: Path) -> list[str]:
    """Leftover temporary files (``*.tmp``, ``*.part``, ``.~*``) anywhere under ``root``."""
    out = []
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            if f.endswith((".tmp", ".part", ".partial")) or f.startswith(".~"):
                out.append(str(Path(dirpath, f).relative_to(root)))
    return sorted(out)


# --------------------------------------------------------------------------------------------- good inputs


def lattice_image(shape=(96, 96), period_px: float = 12.8, dose: float = 50.0, seed: int = 0) -> np.ndarray:
    """A small noisy simulated square lattice (float32 counts)."""
    from data_prep.simulate import simulate

    return simulate(shape=tuple(shape), period_px=period_px, dose=dose, angle_deg=7.0, seed=seed).noisy


def write_lattice_tiff(folder: Path, name: str = "lattice.tif", **kw) -> Path:
    from data_prep.io import write_micrograph

    folder.mkdir(parents=True, exist_ok=True)
    return write_micrograph(folder / name, lattice_image(**kw), dtype="float32", overwrite=True)


def write_synthetic(folder: Path, name: str = "synthetic.tif") -> Path:
    """A clean synthetic lattice image as a physicist hands it over."""
    from data_prep.io import write_micrograph
    from data_prep.simulate import synthetic_lattice

    folder.mkdir(parents=True, exist_ok=True)
    return write_micrograph(folder / name, synthetic_lattice("square", period_px=20.0, n_cells=8), dtype="float32",
                            overwrite=True)


# --------------------------------------------------------------------------------------------- bad image files


def _tiff(path: Path, data: np.ndarray, **kw) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, **kw)
    return path


def missing_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "does_not_exist.tif"


def empty_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "empty.tif"
    p.write_bytes(b"")
    return p


def text_as_tiff(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "notes.tif"
    p.write_text("These are my notes about the session, not an image.\n" * 20)
    return p


def truncated_tiff(folder: Path) -> Path:
    """A valid 16-bit lattice TIFF with the second half of its pixel data cut off."""
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "_full.tif"
    img = np.clip(lattice_image((128, 128)) * 100, 0, 65535).astype(np.uint16)
    _tiff(full, img)
    data = full.read_bytes()
    full.unlink()
    p = folder / "truncated.tif"
    p.write_bytes(data[: len(data) // 2])
    return p


def raw_tiff(path: Path, *, width: int, height: int, bits: int = 16, data: bytes = b"",
             declared_bytes: int | None = None) -> Path:
    """A hand-made little-endian, uncompressed, single-strip grey TIFF with whatever header values are given
    (tifffile refuses to write the broken ones the corpus needs)."""
    entries = []  # (tag, type, count, value) ; type 3 = SHORT, 4 = LONG
    n_tags = 9
    data_offset = 8 + 2 + n_tags * 12 + 4
    if declared_bytes is None:
        declared_bytes = len(data)
    entries += [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1),  # min-is-black
        (273, 4, 1, data_offset),
        (277, 3, 1, 1),
        (278, 4, 1, max(height, 1)),
        (279, 4, 1, declared_bytes & 0xFFFFFFFF),
    ]
    assert len(entries) == n_tags
    buf = io.BytesIO()
    buf.write(b"II" + struct.pack("<HI", 42, 8))
    buf.write(struct.pack("<H", n_tags))
    for tag, typ, count, value in entries:
        if typ == 3:
            buf.write(struct.pack("<HHIHH", tag, typ, count, value, 0))
        else:
            buf.write(struct.pack("<HHII", tag, typ, count, value))
    buf.write(struct.pack("<I", 0))
    buf.write(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def zero_width_tiff(folder: Path) -> Path:
    return raw_tiff(folder / "zero_width.tif", width=0, height=64, data=b"")


def huge_header_tiff(folder: Path) -> Path:
    """Declares 60000 x 60000 16-bit pixels (6.7 GiB) but holds 4 KiB."""
    return raw_tiff(folder / "huge.tif", width=60000, height=60000, data=bytes(4096),
                    declared_bytes=60000 * 60000 * 2)


def rgb_tiff(folder: Path) -> Path:
    g = np.clip(lattice_image() * 4, 0, 255).astype(np.uint8)
    return _tiff(folder / "rgb.tif", np.stack([g, g, g], axis=-1), photometric="rgb")


def rgba_tiff(folder: Path) -> Path:
    g = np.clip(lattice_image() * 4, 0, 255).astype(np.uint8)
    a = np.full_like(g, 255)
    return _tiff(folder / "rgba.tif", np.stack([g, g, g, a], axis=-1), photometric="rgb", extrasamples=["unassalpha"])


def stack_tiff(folder: Path) -> Path:
    frames = np.stack([lattice_image(seed=s) for s in range(3)]).astype(np.float32)
    return _tiff(folder / "stack.tif", frames, photometric="minisblack")


def nan_float64_tiff(folder: Path) -> Path:
    img = lattice_image().astype(np.float64)
    img[10:14, 20:30] = np.nan
    return _tiff(folder / "nan64.tif", img, photometric="minisblack")


def inf_tiff(folder: Path) -> Path:
    img = lattice_image()
    img[40, 40] = np.inf
    return _tiff(folder / "inf.tif", img, photometric="minisblack")


def constant_tiff(folder: Path) -> Path:
    return _tiff(folder / "constant.tif", np.full((96, 96), 1234, np.uint16), photometric="minisblack")


def one_pixel_tiff(folder: Path) -> Path:
    return _tiff(folder / "one_pixel.tif", np.array([[7.0]], np.float32), photometric="minisblack")


def small_lattice_tiff(folder: Path) -> Path:
    """A real lattice, but only 40 x 40 px at 12.8 px per period: smaller than a 5 x 5-atom patch (64 px)."""
    return _tiff(folder / "small.tif", lattice_image((40, 40)), photometric="minisblack")


def two_size_tiff(folder: Path) -> Path:
    """One TIFF holding two images of different sizes (two pages): neither may be dropped silently."""
    import tifffile

    p = _tiff(folder / "two_sizes.tif", lattice_image((96, 96)), photometric="minisblack")
    tifffile.imwrite(p, lattice_image((64, 80), seed=1), photometric="minisblack", append=True)
    return p


def float64_overflow_tiff(folder: Path) -> Path:
    """Finite float64 values far beyond float32's range (they would turn into Inf)."""
    return _tiff(folder / "overflow64.tif", lattice_image().astype(np.float64) * 1e300, photometric="minisblack")


def pixel_size_tiff(folder: Path, name: str, pixel_size, unit: str = "nm", pixel_size_y=None,
                    shape=(96, 96)) -> Path:
    """A float32 lattice TIFF whose JSON description (the project's own format) states any pixel size, absurd
    ones included (tifffile writes what it is given)."""
    md = {"unit": unit, "pixel_size": pixel_size}
    if pixel_size_y is not None:
        md["pixel_size_y"] = pixel_size_y
    return _tiff(folder / name, lattice_image(shape), photometric="minisblack", metadata=md)


def dataset_holding_inputs(out: Path, synthetic: Path | None = None) -> tuple[Path, Path]:
    """A folder that looks like an earlier prepare_data dataset (its manifest) but also holds the user's raw
    micrographs in ``out/raw`` (and, given, the synthetic image inside ``out``). Returns (raw folder, synthetic)."""
    import json

    raw = out / "raw"
    write_lattice_tiff(raw, "m0.tif", shape=(128, 128))
    write_lattice_tiff(raw, "m1.tif", shape=(128, 128), seed=1)
    (out / "manifest.json").write_text(json.dumps({"kind": "stem-denoise-patches", "version": 1, "patches": []}))
    syn = write_synthetic(out) if synthetic is None else synthetic
    return raw, syn


def patch_folder_variant(folder: Path, *, manifest: dict | None = None, small_patch: bool = False) -> Path:
    """:func:`tiny_patch_folder` with manifest values replaced (e.g. a NaN or negative period_px) or one trainA
    patch smaller than the others."""
    import json

    import tifffile

    tiny_patch_folder(folder)
    if manifest:
        m = json.loads((folder / "manifest.json").read_text())
        m.update(manifest)
        (folder / "manifest.json").write_text(json.dumps(m))  # NaN is written as NaN, as a careless writer would
    if small_patch:
        tifffile.imwrite(folder / "trainA" / "a999.tif", np.zeros((16, 16), np.float32) + 0.5)
    return folder


def empty_folder(folder: Path) -> Path:
    p = folder / "no_images"
    p.mkdir(parents=True, exist_ok=True)
    (p / "README.txt").write_text("nothing to see")
    return p


def file_as_folder_parent(folder: Path) -> Path:
    """An output path whose parent is a regular file: no folder can be made there."""
    folder.mkdir(parents=True, exist_ok=True)
    blocker = folder / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


def readonly_folder(folder: Path) -> Path:
    """A folder with mode r-x (unwritable for its owner unless the process bypasses permissions)."""
    p = folder / "readonly"
    p.mkdir(parents=True, exist_ok=True)
    p.chmod(0o555)
    return p


def privilege_drop_prefix() -> list[str] | None:
    """How to run a subprocess for which a r-x folder is really unwritable.

    An ordinary user needs nothing (``[]``). Root bypasses file modes (CAP_DAC_OVERRIDE); ``setpriv`` can drop
    that capability from the child's bounding set while it stays uid 0 (so it can still read the virtualenv).
    None when neither works.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner,-linux_immutable"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return prefix if probe.returncode == 0 else None


# --------------------------------------------------------------------------------------------- checkpoints and configs


def tiny_generator_export(path: Path, seed: int = 0) -> Path:
    """A valid generator export (cyclegan.checkpoint.export_generator) of a tiny generator."""
    import torch

    from cyclegan.checkpoint import export_generator
    from cyclegan.models import GeneratorConfig, build_generator

    torch.manual_seed(seed)
    cfg = GeneratorConfig(**TINY_GEN)
    net = build_generator(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_generator(path, net, cfg, dict(GEN_INFO))
    return path


def other_architecture_export(good: Path, path: Path) -> Path:
    """A generator export whose stored architecture (width 8) does not fit its weights (width 4)."""
    import torch

    obj = torch.load(good, map_location="cpu", weights_only=True)
    obj["generator_config"] = dict(obj["generator_config"], width=obj["generator_config"]["width"] * 2)
    torch.save(obj, path)
    return path


def truncated_copy(src: Path, path: Path, keep: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def tiny_patch_folder(folder: Path, n: int = 4, patch_px: int = 32) -> Path:
    """A patch folder in prepare_data's format (trainA/trainB float32 TIFFs + manifest.json), numpy-made."""
    import json

    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:patch_px, 0:patch_px].astype(np.float32)
    period = GEN_INFO["period_px"]
    clean = (0.5 + 0.5 * np.cos(2 * np.pi * yy / period) * np.cos(2 * np.pi * xx / period)).astype(np.float32)
    for sub in ("trainA", "trainB", "testA"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noisy = clean + rng.normal(0, 0.2, clean.shape).astype(np.float32)
        tifffile.imwrite(folder / "trainA" / f"a{i:03d}.tif", noisy.astype(np.float32))
        tifffile.imwrite(folder / "trainB" / f"b{i:03d}.tif", np.roll(clean, i, axis=1))
        tifffile.imwrite(folder / "testA" / f"t{i:03d}.tif", noisy.astype(np.float32))
    manifest = {"patch_px": patch_px, "atoms_per_patch": patch_px / period, "period_px": period, "patches": []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def tiny_train_config() -> dict:
    """Config-file content for a tiny, fast training run."""
    return {
        "steps": 1, "batch_size": 2, "crop_px": None, "num_workers": 0, "log_every": 1, "image_every": 1000,
        "checkpoint_every": 1, "device": "cpu", "precision": "fp32",
        "generator": dict(TINY_GEN), "discriminator": dict(TINY_DIS), "dashboard": {"enabled": False},
    }


def tiny_training_run(data_dir: Path, run_dir: Path) -> Path:
    """Train the tiny config for one step with the CycleGAN engineer's API; returns the run folder
    (``last.pt`` is a real training checkpoint, ``generator.pt`` its export)."""
    from cyclegan.config import config_from_dict
    from cyclegan.train import train

    cfg = config_from_dict(tiny_train_config())

    class _Silent:
        def scalars(self, step, values):
            pass

        def images(self, step, panels):
            pass

        def close(self):
            pass

    train(cfg, data_dir, run_dir, dashboard=_Silent(), progress=False)
    return run_dir


_SHARED_RUNS: dict[str, Path] = {}


def shared_training_run(tmp_path_factory) -> Path:
    """One tiny training run per test session (``RUN/last.pt``, ``RUN/generator.pt``; patches in ``RUN/../data``),
    shared by the test modules that need real checkpoints. Treat it as read-only: copy it to change it."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _SHARED_RUNS:
        root = tmp_path_factory.mktemp("shared_run")
        _SHARED_RUNS[key] = tiny_training_run(tiny_patch_folder(root / "data"), root / "run")
    return _SHARED_RUNS[key]


def write_json(path: Path, obj) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


# --------------------------------------------------------------------------------------------- malicious pickles


class _RunsCommand:
    """Unpickling this runs a shell command (the classic pickle attack); pickling it runs nothing."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def touch_command(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def malicious_checkpoint(path: Path, marker: Path, *, fmt: str = "torch") -> Path:
    """A checkpoint-looking file whose loading with plain pickle would create ``marker``.

    ``fmt="torch"``: torch.save's zip format, the payload hidden inside an otherwise plausible generator export;
    ``fmt="pickle"``: a bare pickle stream (the legacy format torch.load also accepts).
    """
    import torch

    payload = _RunsCommand(touch_command(marker))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch":
        obj = {"kind": "stem-denoise-generator", "version": 1, "generator_config": dict(TINY_GEN),
               "state_dict": {"head.weight": payload}, "info": dict(GEN_INFO)}
        torch.save(obj, path)
    elif fmt == "pickle":
        with open(path, "wb") as fh:
            pickle.dump({"kind": "stem-denoise-train-checkpoint", "version": 1, "step": payload}, fh, protocol=2)
    else:
        raise ValueError(fmt)
    return path


def malicious_npy(path: Path, marker: Path) -> Path:
    """A ``.npy`` micrograph whose object array would run a command if loaded with ``allow_pickle=True``."""
    arr = np.empty(2, dtype=object)
    arr[0] = _RunsCommand(touch_command(marker))
    arr[1] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr, allow_pickle=True)
    return path


@contextlib.contextmanager
def chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "run-batch":
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        _batch_main()
    else:
        sys.exit("usage: python tests/corpus.py run-batch < cases.json")
