"""Scripts turn user errors into one line on stderr and exit 2, with no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stem_denoise.common.cli import fail, run_main
from stem_denoise.common.errors import CheckpointError, ConfigError, InputError

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from stem_denoise.common.cli import run_main
    from data_prep.io import read_micrograph

    def main(argv=None):
        image, meta = read_micrograph(sys.argv[1])
        print(image.shape)
        return 0

    if __name__ == "__main__":
        run_main(main)
    """
)


def run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "read_one.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_script_with_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image\n")
    proc = run_script(tmp_path, str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "notes.tif" in lines[0] and "text file" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_script_success_exits_0(tmp_path):
    import numpy as np

    from data_prep.io import write_micrograph

    write_micrograph(tmp_path / "ok.tif", np.arange(20, dtype=np.uint16).reshape(4, 5))
    proc = run_script(tmp_path, str(tmp_path / "ok.tif"))
    assert proc.returncode == 0 and proc.stdout.strip() == "(4, 5)" and proc.stderr == ""


@pytest.mark.parametrize("exc", [InputError("bad\nfile\tname"), ConfigError("bad key"), CheckpointError("bad ckpt")])
def test_run_main_maps_user_errors_to_exit_2(capsys, exc):
    def main(argv):
        raise exc

    with pytest.raises(SystemExit) as info:
        run_main(main, [])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert err.strip() == "error: " + " ".join(str(exc).split())


def test_run_main_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        run_main(lambda argv: None, [])
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        run_main(lambda argv: 3, [])
    assert info.value.code == 3

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_main(interrupted, [])
    assert info.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"


def test_run_main_passes_argv_and_keeps_bugs_loud():
    seen = []
    with pytest.raises(SystemExit):
        run_main(lambda argv: seen.append(argv), ["--x", "1"])
    assert seen == [["--x", "1"]]

    def bug(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_main(bug, [])


def test_fail_prints_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        fail("two\nlines", 5)
    assert info.value.code == 5 and capsys.readouterr().err == "error: two lines\n"


def test_argument_parser_usage_error_is_one_line(capsys):
    from stem_denoise.common.cli import ArgumentParser

    ap = ArgumentParser(prog="tool.py")
    ap.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as exc:
        ap.parse_args(["--n", "three"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--n" in err and "tool.py --help" in err
