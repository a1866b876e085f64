"""A corpus of bad inputs across the command-line scripts.

Every case builds its bad input in ``tmp_path`` (helpers in ``tests/corpus.py``), runs a script the way
``python scripts/<name>.py`` does (``main(argv)`` through ``stem_denoise.common.cli.run_main``, in this process, so
torch is imported once), and checks what a user would see: exit status 2, exactly one clear line on stderr naming the
problem, no traceback, no partial output, and no existing file touched. argparse rejects some values itself:
those cases accept argparse's usage block followed by its one ``error:`` line.

A handful of cases run again as real subprocesses, to prove that nothing reaches the terminal but that line.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests import corpus as C


@dataclass
class Case:
    script: str
    argv: list[str]
    match: str | tuple[str, ...] | None = None
    usage: bool = False  # an argparse usage error
    keep: list[Path] = field(default_factory=list)  # existing files that must survive byte for byte


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Valid and damaged checkpoints, made once: a tiny generator export, a real one-step training run."""
    root = tmp_path_factory.mktemp("corpus_assets")
    gen = C.tiny_generator_export(root / "generator.pt")
    run = C.shared_training_run(tmp_path_factory)
    data = run.parent / "data"
    return {
        "root": root,
        "shared": run.parent,
        "generator": gen,
        "other_arch": C.other_architecture_export(gen, root / "other_arch.pt"),
        "truncated": C.truncated_copy(gen, root / "truncated.pt"),
        "data": data,
        "run": run,
        "train_ckpt": run / "last.pt",
        "synthetic": C.write_synthetic(root),
        "lattice": C.write_lattice_tiff(root, "lattice.tif", shape=(96, 96)),
    }


def _copy_run(assets, dst: Path) -> Path:
    shutil.copytree(assets["run"], dst)
    return dst


# ----------------------------------------------------------------------------------------------------- the corpus
# Each builder gets (tmp_path, assets) and returns a Case. Names say what is wrong.


def _lattice(*args) -> list[str]:
    return [str(a) for a in args]


def _denoise(inp, tmp, assets, *extra, ckpt=None) -> list[str]:
    return [str(inp), "--checkpoint", str(ckpt or assets["generator"]), "--out", str(tmp / "out"), "--quiet",
            "--device", "cpu", *map(str, extra)]


def _train(tmp, assets, *extra, out=None) -> list[str]:
    return ["--data", str(assets["data"]), "--out", str(out or tmp / "run"), "--no-dashboard", "--no-progress",
            *map(str, extra)]


def _tiny_config(tmp, **changes) -> Path:
    cfg = C.tiny_train_config()
    cfg.update(changes)
    return C.write_json(tmp / "cfg.json", cfg)


def _prepare(tmp, micrographs, synthetic, *extra, out=None) -> list[str]:
    return ["--micrographs", str(micrographs), "--synthetic", str(synthetic), "--out", str(out or tmp / "data"),
            "--per-image", "4", "--quiet", "--no-preview", *map(str, extra)]


def _simulate(tmp, *extra, out=None) -> list[str]:
    return ["--out", str(out or tmp / "sims"), "--n", "1", "--size", "64", "--periods", "12.8", "--doses", "20",
            "--dents", "none", *map(str, extra)]


def _dip(inp, tmp, *extra) -> list[str]:
    return [str(inp), "--out", str(tmp / "dip"), "--steps", "2", *map(str, extra)]


def _existing(path: Path, text: str = "precious result of an earlier run\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CASES: dict[str, Callable[[Path, dict], Case]] = {
    # --- input images
    "missing_file": lambda t, a: Case("lattice", _lattice(C.missing_file(t / "in")), ("no such file", "not exist")),
    "empty_file": lambda t, a: Case("lattice", _lattice(C.empty_file(t / "in")), "empty"),
    "text_named_tif": lambda t, a: Case("lattice", _lattice(C.text_as_tiff(t / "in")), ("text", "not a tiff")),
    "truncated_tiff": lambda t, a: Case("denoise", _denoise(C.truncated_tiff(t / "in"), t, a),
                                        ("truncated", "corrupt")),
    "zero_width_tiff": lambda t, a: Case("lattice", _lattice(C.zero_width_tiff(t / "in")), "zero"),
    "rgb_tiff": lambda t, a: Case("lattice", _lattice(C.rgb_tiff(t / "in")), "rgb"),
    "rgba_tiff": lambda t, a: Case("denoise", _denoise(C.rgba_tiff(t / "in"), t, a), "rgb"),
    "multi_frame_stack": lambda t, a: Case("lattice", _lattice(C.stack_tiff(t / "in")), ("stack", "frame")),
    "float64_nan": lambda t, a: Case("denoise", _denoise(C.nan_float64_tiff(t / "in"), t, a), "nan"),
    "inf_pixel": lambda t, a: Case("lattice", _lattice(C.inf_tiff(t / "in")), "inf"),
    "constant_image": lambda t, a: Case("denoise", _denoise(C.constant_tiff(t / "in"), t, a), "constant"),
    "one_by_one": lambda t, a: Case("lattice", _lattice(C.one_pixel_tiff(t / "in")), "too small"),
    "smaller_than_a_patch": lambda t, a: Case("prepare_data", _prepare(t, C.small_lattice_tiff(t / "in"),
                                                                       a["synthetic"]),
                                              ("small", "patch")),
    "huge_header_little_data": lambda t, a: Case("lattice", _lattice(C.huge_header_tiff(t / "in")),
                                                 ("truncated", "declares", "memory")),
    "folder_without_images": lambda t, a: Case("denoise", _denoise(C.empty_folder(t), t, a), "no micrographs"),
    "folder_without_images_prepare": lambda t, a: Case("prepare_data", _prepare(t, C.empty_folder(t),
                                                                                a["synthetic"]),
                                                       "no micrographs"),
    "synthetic_missing": lambda t, a: Case("prepare_data", _prepare(t, a["lattice"], C.missing_file(t / "s")),
                                           ("not found", "no such", "not exist")),
    "image_without_lattice": lambda t, a: Case(
        "lattice", _lattice(_noise_tiff(t / "in")), "lattice"),
    # --- output folders and existing files
    "output_parent_is_a_file_denoise": lambda t, a: Case(
        "denoise", [str(a["lattice"]), "--checkpoint", str(a["generator"]), "--out",
                    str(C.file_as_folder_parent(t)), "--quiet", "--period", "12.8"],
        ("output folder", "cannot create", "not a folder", "not a directory")),
    "output_parent_is_a_file_simulate": lambda t, a: Case(
        "simulate", _simulate(t, out=C.file_as_folder_parent(t)),
        ("output folder", "cannot create", "not a folder", "not a directory")),
    "output_parent_is_a_file_prepare": lambda t, a: Case(
        "prepare_data", _prepare(t, a["lattice"], a["synthetic"], out=C.file_as_folder_parent(t)),
        ("cannot create", "not a folder", "not a directory", "exists", "in the way")),
    "output_parent_is_a_file_train": lambda t, a: Case(
        "train_cyclegan", _train(t, a, "--config", _tiny_config(t), out=C.file_as_folder_parent(t)),
        ("cannot create", "not a folder", "not a directory")),
    "output_parent_is_a_file_dip": lambda t, a: Case(
        "dip_denoise", [str(a["lattice"]), "--out", str(C.file_as_folder_parent(t)), "--steps", "2"],
        ("output folder", "cannot create", "not a folder", "not a directory")),
    "output_parent_is_a_file_benchmark": lambda t, a: Case(
        "benchmark", ["--out", str(C.file_as_folder_parent(t)), "--quick", "--no-dip", "--methods", "median",
                      "--no-progress"],
        ("output folder", "cannot create", "not a folder", "not a directory")),
    "output_exists_simulate": lambda t, a: _keep(Case("simulate", _simulate(t), "exists"),
                                                 _existing(t / "sims" / "sim_0000.tif")),
    "output_exists_prepare": lambda t, a: _keep(Case("prepare_data", _prepare(t, a["lattice"], a["synthetic"]),
                                                     ("exists", "not empty")),
                                                _existing(t / "data" / "manifest.json", "{}")),
    "output_exists_train": lambda t, a: _existing_run(t, a),
    "output_exists_benchmark": lambda t, a: _keep(Case(
        "benchmark", ["--out", str(t / "bench"), "--quick", "--no-dip", "--methods", "median", "--no-progress"],
        "exists"), _existing(t / "bench" / "results.csv", "method,psnr\n")),
    "output_exists_benchmark_report": lambda t, a: _keep(Case(
        "benchmark", ["--out", str(t / "bench"), "--quick", "--no-dip", "--methods", "median", "--no-progress",
                      "--size", "64", "--doses", "20", "--lattices", "square"], "exists"),
        _existing(t / "bench" / "results.md", "# my notes on an earlier benchmark\n")),
    "output_exists_train_config": lambda t, a: _keep(Case(
        "train_cyclegan", _train(t, a, "--config", _tiny_config(t), out=t / "run"), ("exists", "--resume")),
        _existing(t / "run" / "config.json", '{"note": "a config.json of something else"}\n')),
    "output_exists_dip": lambda t, a: _keep(Case("dip_denoise", _dip(a["lattice"], t), "exists"),
                                            _existing(t / "dip" / "lattice_dip.tif")),
    # --- checkpoints
    "missing_checkpoint": lambda t, a: Case("denoise", _denoise(a["lattice"], t, a, ckpt=t / "nope.pt"),
                                            ("does not exist", "no such")),
    "empty_checkpoint": lambda t, a: Case("denoise", _denoise(a["lattice"], t, a, ckpt=C.empty_file(t / "c")),
                                          ("truncated", "not a checkpoint", "empty")),
    "truncated_checkpoint": lambda t, a: Case("denoise", _denoise(a["lattice"], t, a, ckpt=a["truncated"]),
                                              ("truncated", "not a checkpoint")),
    "checkpoint_other_architecture": lambda t, a: Case(
        "denoise", _denoise(a["lattice"], t, a, ckpt=a["other_arch"]), "architecture"),
    "resume_with_other_architecture": lambda t, a: Case(
        "train_cyclegan", _train(t, a, "--resume", "--config",
                                 _tiny_config(t, steps=2, generator={"width": 8, "n_blocks": 1}),
                                 out=_copy_run(a, t / "run")),
        "architecture"),
    "generator_export_given_to_resume": lambda t, a: _generator_as_last(t, a),
    "train_checkpoint_given_to_denoise": lambda t, a: Case(
        "denoise", _denoise(a["lattice"], t, a, ckpt=a["train_ckpt"]), "training checkpoint"),
    "train_checkpoint_given_to_benchmark": lambda t, a: Case(
        "benchmark", ["--out", str(t / "bench"), "--quick", "--no-dip", "--methods", "cyclegan", "--checkpoint",
                      str(a["train_ckpt"]), "--no-progress"], "training checkpoint"),
    # --- config files and option values
    "config_unknown_key": lambda t, a: Case("train_cyclegan", _train(t, a, "--config", _tiny_config(t, stepz=3)),
                                            "unknown key"),
    "config_unknown_nested_key": lambda t, a: Case(
        "train_cyclegan", _train(t, a, "--config", _tiny_config(t, generator={"widht": 8})), "unknown key"),
    "config_wrong_type": lambda t, a: Case("train_cyclegan", _train(t, a, "--config", _tiny_config(t, steps="ten")),
                                           "integer"),
    "config_not_json": lambda t, a: Case("train_cyclegan",
                                         _train(t, a, "--config", _existing(t / "cfg.json", "{steps: 3,")),
                                         "json"),
    "config_missing": lambda t, a: Case("train_cyclegan", _train(t, a, "--config", t / "nope.json"),
                                        ("cannot read", "no such", "not exist")),
    "train_data_missing": lambda t, a: Case("train_cyclegan",
                                            ["--data", str(t / "nodata"), "--out", str(t / "run"), "--no-dashboard",
                                             "--no-progress", "--config", str(_tiny_config(t))],
                                            ("does not exist", "no manifest", "not exist")),
    "zero_period_denoise": lambda t, a: Case("denoise", _denoise(a["lattice"], t, a, "--period", "0"), "positive",
                                             usage=True),
    "negative_period_denoise": lambda t, a: Case("denoise", _denoise(a["lattice"], t, a, "--period=-12.8"),
                                                 "positive", usage=True),
    "zero_period_simulate": lambda t, a: Case("simulate", _simulate(t, "--periods", "0", out=t / "sims2"),
                                              "positive"),
    "negative_period_simulate": lambda t, a: Case("simulate", _simulate(t, "--periods=8,-3", out=t / "sims2"),
                                                  "positive"),
    "zero_atoms_prepare": lambda t, a: Case("prepare_data", _prepare(t, a["lattice"], a["synthetic"], "--atoms", "0"),
                                            "atoms"),
    "tiny_fft_crop_lattice": lambda t, a: Case("lattice", [str(a["lattice"]), "--max-size", "8"], "max-size"),
    "dashboard_bad_port": lambda t, a: Case("dashboard", ["--port", "eighty"], "port", usage=True),
    # --- Deep Image Prior
    "dip_mask_wrong_shape": lambda t, a: Case("dip_denoise", _dip(a["lattice"], t, "--task", "inpaint", "--mask",
                                                                  _mask(t / "m", (50, 60))),
                                              ("shape", "mask is")),
    "dip_sr_scale_3": lambda t, a: Case("dip_denoise", _dip(a["lattice"], t, "--task", "sr", "--scale", "3"),
                                        ("2 or 4", "scale"), usage=True),
    "dip_nan_input": lambda t, a: Case("dip_denoise", _dip(C.nan_float64_tiff(t / "in"), t), "nan"),
    # --- second pass: inputs never deleted, periods checked, metadata, odd files (issue 14)
    "prepare_overwrite_out_holds_micrographs": lambda t, a: _out_holds_inputs(t, a, "raw"),
    "prepare_overwrite_out_holds_synthetic": lambda t, a: _out_holds_inputs(t, a, "synthetic"),
    "prepare_overwrite_out_is_the_micrograph_folder": lambda t, a: _out_holds_inputs(t, a, "itself"),
    "prepare_overwrite_foreign_manifest": lambda t, a: _keep(Case(
        "prepare_data", _prepare(t, a["lattice"], a["synthetic"], "--overwrite", out=t / "home"), "did not write"),
        _existing(t / "home" / "manifest.json", '{"my": "own notes"}'), _existing(t / "home" / "notes.txt")),
    "denoise_out_is_input_folder": lambda t, a: Case(
        "denoise", _denoise(a["root"], t, a)[:3] + ["--out", str(a["root"]), "--quiet", "--device", "cpu"],
        "apart from the inputs"),
    "denoise_period_ten_times_off": lambda t, a: Case(
        "denoise", _denoise(C.write_lattice_tiff(t / "in", shape=(256, 256)), t, a, "--period", "128"),
        ("128 px", "disagrees")),
    "denoise_period_wrong_unit": lambda t, a: Case(
        "denoise", _denoise(C.write_lattice_tiff(t / "in", shape=(256, 256)), t, a, "--period", "1.28"),
        ("disagrees", "1.28")),
    "denoise_period_absurd": lambda t, a: Case("denoise", _denoise(a["lattice"], t, a, "--period", "1e300"),
                                               "does not fit"),
    "train_manifest_negative_period": lambda t, a: Case(
        "train_cyclegan", ["--data", str(C.patch_folder_variant(t / "d", manifest={"period_px": -12.8})),
                           "--out", str(t / "run"), "--no-dashboard", "--no-progress",
                           "--config", str(_tiny_config(t))],
        "positive"),
    "train_manifest_nan_period": lambda t, a: Case(
        "train_cyclegan", ["--data", str(C.patch_folder_variant(t / "d", manifest={"period_px": float("nan")})),
                           "--out", str(t / "run"), "--no-dashboard", "--no-progress",
                           "--config", str(_tiny_config(t))],
        "positive"),
    "train_patch_smaller_than_crop": lambda t, a: Case(
        "train_cyclegan", ["--data", str(C.patch_folder_variant(t / "d", small_patch=True)), "--out", str(t / "run"),
                           "--no-dashboard", "--no-progress", "--config", str(_tiny_config(t, crop_px=32))],
        ("a999.tif", "smaller than crop")),
    "train_out_inside_data": lambda t, a: Case(
        "train_cyclegan", _train(t, a, "--config", _tiny_config(t), out=a["data"] / "run"), "inside"),
    "tiff_pages_of_two_sizes": lambda t, a: Case("lattice", _lattice(C.two_size_tiff(t / "in")),
                                                 ("2 separate images", "dropped")),
    "float64_beyond_float32": lambda t, a: Case("denoise", _denoise(C.float64_overflow_tiff(t / "in"), t, a),
                                                "beyond the range"),
}


def _out_holds_inputs(t: Path, a: dict, where: str) -> Case:
    """prepare_data --overwrite with --out a folder that looks like a dataset (it has a manifest) but holds the
    user's micrographs or synthetic image: refused before any work, nothing deleted."""
    out = t / "DATA"
    raw, syn = C.dataset_holding_inputs(out, synthetic=None if where == "synthetic" else a["synthetic"])
    if where == "itself":  # a micrograph folder that happens to hold a manifest.json, given as --out
        (raw / "manifest.json").write_text('{"kind": "stem-denoise-patches", "patches": []}')
        out = raw
    files = [p for p in t.rglob("*") if p.is_file()]
    return _keep(Case("prepare_data", _prepare(t, raw, syn, "--overwrite", out=out),
                      ("holds the input", "is the input")), *files)


def _keep(case: Case, *paths: Path) -> Case:
    case.keep.extend(paths)
    return case


def _noise_tiff(folder: Path) -> Path:
    """Pure noise: a valid image with no lattice to measure."""
    from data_prep.io import write_micrograph

    folder.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(3).normal(100, 10, (96, 96)).astype(np.float32)
    return write_micrograph(folder / "noise.tif", img, overwrite=True)


def _mask(folder: Path, shape) -> Path:
    from data_prep.io import write_micrograph

    folder.mkdir(parents=True, exist_ok=True)
    m = np.ones(shape, np.uint8)
    m[10:20, 10:20] = 0
    return write_micrograph(folder / "mask.tif", m, overwrite=True)


def _existing_run(t: Path, a: dict) -> Case:
    run = _copy_run(a, t / "run")
    return _keep(Case("train_cyclegan", _train(t, a, "--config", _tiny_config(t), out=run), ("--resume", "already")),
                 run / "last.pt", run / "generator.pt")


def _generator_as_last(t: Path, a: dict) -> Case:
    run = t / "run"
    run.mkdir()
    shutil.copy2(a["generator"], run / "last.pt")
    return Case("train_cyclegan", _train(t, a, "--resume", "--config", _tiny_config(t), out=run),
                ("generator export", "expected kind"))


REQUIRED_KINDS = {
    # the list -> corpus cases that cover it
    "missing file": ["missing_file"],
    "empty file": ["empty_file"],
    "text file named .tif": ["text_named_tif"],
    "truncated TIFF": ["truncated_tiff"],
    "zero width": ["zero_width_tiff"],
    "RGB and RGBA": ["rgb_tiff", "rgba_tiff"],
    "multi-frame stack": ["multi_frame_stack"],
    "float64 NaN": ["float64_nan"],
    "Inf": ["inf_pixel"],
    "constant": ["constant_image"],
    "1 x 1": ["one_by_one"],
    "smaller than a patch": ["smaller_than_a_patch"],
    "huge header": ["huge_header_little_data"],
    "folder with no images": ["folder_without_images"],
    "output exists without --overwrite": ["output_exists_simulate", "output_exists_prepare"],
    "missing checkpoint": ["missing_checkpoint"],
    "truncated checkpoint": ["truncated_checkpoint"],
    "checkpoint of another architecture": ["checkpoint_other_architecture", "resume_with_other_architecture"],
    "generator checkpoint where training checkpoint needed": ["generator_export_given_to_resume"],
    "training checkpoint where generator needed": ["train_checkpoint_given_to_denoise"],
    "config unknown key / wrong type": ["config_unknown_key", "config_wrong_type"],
    "negative or zero period": ["zero_period_denoise", "negative_period_simulate"],
    "DIP mask of the wrong shape": ["dip_mask_wrong_shape"],
    "SR scale not 2 or 4": ["dip_sr_scale_3"],
    # issue 14
    "--overwrite onto a folder holding the inputs": ["prepare_overwrite_out_holds_micrographs",
                                                     "prepare_overwrite_out_holds_synthetic",
                                                     "prepare_overwrite_out_is_the_micrograph_folder"],
    "--period far from the measured lattice": ["denoise_period_ten_times_off", "denoise_period_wrong_unit",
                                               "denoise_period_absurd"],
    "negative or NaN period_px in a manifest": ["train_manifest_negative_period", "train_manifest_nan_period"],
    "training patch smaller than the crop": ["train_patch_smaller_than_crop"],
    "TIFF pages of different sizes": ["tiff_pages_of_two_sizes"],
    "float64 beyond float32": ["float64_beyond_float32"],
    # the unwritable output folder is in test_unwritable_output_folder below (it needs a real permission check)
}


def test_corpus_covers_the_required_kinds():
    assert len(CASES) >= 25
    for kind, names in REQUIRED_KINDS.items():
        assert all(n in CASES for n in names), kind


def _check_case(case: Case, before: dict, after: dict, res: C.Result, kept: dict) -> None:
    C.assert_clean_failure(res, match=case.match, usage_ok=case.usage)
    diff = C.snapshot_diff(before, after)
    assert not diff["added"], f"partial output left behind: {diff['added']}\n{res.describe()}"
    assert not diff["changed"] and not diff["removed"], f"existing files touched: {diff}\n{res.describe()}"
    for path, digest in kept.items():
        assert path.exists() and C.file_digest(path) == digest, f"{path} was overwritten"


# Cases that fail today because of a bug in a script, reported to its owner. strict=True: once the bug is fixed
# the case passes, the xfail turns into a failure, and the entry must be deleted here.
KNOWN_BUGS: dict[str, str] = {
}


def _params(names, known=KNOWN_BUGS):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=known[n])) if n in known else n
            for n in names]


def _state(tmp_path: Path, assets: dict) -> dict:
    """Snapshot of the case's folder and of the shared assets (which no case may change)."""
    state = dict(C.snapshot(tmp_path))
    for key in ("root", "shared"):
        state.update({f"{key}/{k}": v for k, v in C.snapshot(assets[key]).items()})
    return state


@pytest.mark.parametrize("name", _params(sorted(CASES)))
def test_bad_input(name, tmp_path, assets, capsys):
    case = CASES[name](tmp_path, assets)
    if not C.script_path(case.script).exists():
        pytest.fail(f"scripts/{case.script}.py does not exist")
    kept = {p: C.file_digest(p) for p in case.keep}
    before = _state(tmp_path, assets)
    res = C.run_inprocess(case.script, case.argv, capsys)
    after = _state(tmp_path, assets)
    _check_case(case, before, after, res, kept)


# Real processes: what reaches the terminal is exactly one line (no traceback from any import, thread or logger).
SUBPROCESS_CASES = ["text_named_tif", "zero_period_simulate", "config_unknown_key"]  # + denoise in test_security


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(name, tmp_path, assets):
    case = CASES[name](tmp_path, assets)
    before = C.snapshot(tmp_path)
    res = C.run_subprocess(case.script, case.argv, cwd=tmp_path)
    _check_case(case, before, C.snapshot(tmp_path), res, {})


# ----------------------------------------------------------------------------------- unwritable output folders

WRITERS = ["simulate", "prepare_data", "train_cyclegan", "denoise", "dip_denoise", "benchmark"]
# "ro": --out is an existing folder with mode r-x; "ro/sub": --out would have to be made inside it.
# prepare_data stages the dataset inside an existing --out (so a linked --out stays a link): a read-only one is
# refused before any work, like every other script's.
UNWRITABLE = [(s, "ro") for s in WRITERS] + [(s, "ro/sub") for s in WRITERS]
UNWRITABLE_BUGS = {
}


@pytest.fixture(scope="module")
def unwritable_runs(tmp_path_factory, assets):
    """Every writing script pointed at an unwritable --out, all run in ONE fresh process for which the folder is
    really unwritable (as root: with the permission-bypass capability dropped). Returns (results, root)."""
    prefix = C.privilege_drop_prefix()
    if prefix is None:
        pytest.skip("cannot make a folder unwritable here (root without setpriv)")
    root = tmp_path_factory.mktemp("unwritable")
    ro = C.readonly_folder(root)
    data = C.tiny_patch_folder(root / "data")
    cfg = _tiny_config(root)
    lat, gen, syn = assets["lattice"], assets["generator"], assets["synthetic"]

    def argv(script: str, out: Path) -> list[str]:
        return {
            "simulate": _simulate(root, out=out),
            "prepare_data": _prepare(root, lat, syn, out=out),
            "train_cyclegan": ["--data", str(data), "--out", str(out), "--config", str(cfg), "--no-dashboard",
                               "--no-progress"],
            "denoise": [str(lat), "--checkpoint", str(gen), "--out", str(out), "--quiet", "--period", "12.8",
                        "--device", "cpu"],
            "dip_denoise": [str(lat), "--out", str(out), "--steps", "2", "--quiet", "--device", "cpu"],
            "benchmark": ["--out", str(out), "--quick", "--no-dip", "--methods", "median", "--no-progress",
                          "--size", "64", "--doses", "20", "--lattices", "square"],
        }[script]

    cases = [(s, argv(s, ro if where == "ro" else ro / "sub")) for s, where in UNWRITABLE]
    try:
        before = C.snapshot(root)
        results = C.run_batch_subprocess(cases, prefix=prefix, cwd=root)
        written = C.snapshot_diff(before, C.snapshot(root))
        state = (sorted(p.name for p in ro.iterdir()), ro.stat().st_mode & 0o777)
    finally:
        ro.chmod(0o755)
    yield {f"{s}-{where}": r for (s, where), r in zip(UNWRITABLE, results)}, written, state


@pytest.mark.parametrize("key", _params([f"{s}-{w}" for s, w in UNWRITABLE], UNWRITABLE_BUGS))
def test_unwritable_output_folder(key, unwritable_runs):
    """exit 2, one line naming the problem, nothing written anywhere, the folder left as it was."""
    results, written, (listing, mode) = unwritable_runs
    C.assert_clean_failure(results[key], match=("writable", "permission", "cannot", "denied"))
    assert listing == [] and mode == 0o555, "the read-only folder was changed"
    assert not any(written.values()), f"files written or changed by the batch: {written}"
