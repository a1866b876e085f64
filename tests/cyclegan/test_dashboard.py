"""Dashboard: JSONL file log always; live plots on a real visdom server started the offline way."""
from __future__ import annotations

import base64
import importlib
import io
import json
import logging
import math
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cyclegan.dashboard import (
    FRONTEND_ASSETS,
    IMAGE_WINDOW,
    LOSS_WINDOW,
    LR_WINDOW,
    SPEED_WINDOW,
    Dashboard,
    exposure_warning,
    fetch_frontend_assets,
    missing_frontend_assets,
    panel_grid,
    read_log,
    window_for,
)
from stem_denoise.common.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "dashboard.py"
LOGGER = "cyclegan.dashboard"


# ------------------------------------------------------------------------------------------------------------------
# helpers: a real visdom server in a subprocess, read back over visdom's HTTP API
# ------------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline_env() -> dict[str, str]:
    """Environment in which any download attempt (Python or npm) goes to a dead proxy and fails."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", npm_config_offline="true", NO_PROXY="", no_proxy="")
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[key] = "http://127.0.0.1:9"
    return env


def _start_server(folder: Path, port: int, script: Path = SCRIPT, pythonpath: Path | None = None) -> subprocess.Popen:
    """``pythonpath``: a source tree imported before the installed (editable) packages."""
    out = open(folder / "server.log", "w")
    env = _offline_env()
    env["STEM_DENOISE_CACHE"] = str(folder / "cache")  # the page's files go to a cache folder, never into visdom
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--env-path", str(folder / "envs"), "--no-assets"],
        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder,
    )
    out.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dashboard server exited: {(folder / 'server.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("dashboard server did not start listening")


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _http():
    import requests

    session = requests.Session()
    session.trust_env = False  # talk to 127.0.0.1 directly whatever proxies the environment sets
    return session


def _win_data(port: int, win: str, env: str) -> dict:
    """What visdom's ``Visdom.get_window_data(win, env)`` returns, fetched from the server's /win_data endpoint."""
    with _http() as http:
        resp = http.post(f"http://127.0.0.1:{port}/win_data", data=json.dumps({"win": win, "eid": env}), timeout=10)
    resp.raise_for_status()
    return json.loads(resp.text)


def _traces(port: int, env: str, win: str = LOSS_WINDOW) -> dict[str, dict]:
    return {t["name"]: t for t in _win_data(port, win, env)["content"]["data"]}


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def _visdom_package_files() -> dict[str, tuple[int, int]]:
    from cyclegan.dashboard import visdom_static_dir

    root = visdom_static_dir().parent
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("visdom")
    port = _free_port()
    before = _visdom_package_files()
    proc = _start_server(folder, port)
    yield port
    _stop_server(proc)
    assert _visdom_package_files() == before  # nothing written into the installed visdom package


# ------------------------------------------------------------------------------------------------------------------
# live server
# ------------------------------------------------------------------------------------------------------------------


def test_server_started_offline_serves_the_page(server):
    """The page renders its template (tornado >= 6.5 used to answer 403 for visdom's ../user/style.css link)."""
    with _http() as http:
        resp = http.get(f"http://127.0.0.1:{server}/", timeout=10)
    assert resp.status_code == 200
    assert "plotly-plotly.min.js" in resp.text and "main.js" in resp.text
    with _http() as http:
        bundle = http.get(f"http://127.0.0.1:{server}/static/js/main.js", timeout=10)
    assert bundle.status_code == 200 and len(bundle.content) > 100_000  # served from the cache folder's copy


def test_page_files_live_in_the_user_cache(tmp_path, monkeypatch):
    from cyclegan.dashboard import cache_root, frontend_dir, sync_shipped_static, visdom_static_dir

    monkeypatch.delenv("STEM_DENOISE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "stem-denoise"
    monkeypatch.setenv("STEM_DENOISE_CACHE", str(tmp_path / "mine"))
    root = frontend_dir()
    assert root.parent.parent == tmp_path / "mine" and root.parent.name.startswith("visdom-0.")
    shipped = sorted(p.relative_to(visdom_static_dir()) for p in visdom_static_dir().rglob("*") if p.is_file())
    assert sync_shipped_static() == len(shipped) > 3
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == shipped
    assert sync_shipped_static() == 0  # up to date: nothing copied again
    assert missing_frontend_assets() == [a.dest for a in FRONTEND_ASSETS]  # default folder: the cache one


def test_scalars_and_images_reach_the_server_and_the_file(server, tmp_path, caplog):
    env = "t_scalars"
    log_path = tmp_path / "run" / "log.jsonl"  # folder does not exist yet
    steps = [0, 10, 20, 30, 40]
    sent = []
    rng = np.random.default_rng(3)
    panels = {"A": rng.normal(0.5, 0.2, (24, 24)), "G(A)": np.full((24, 24), 0.5), "B": np.eye(24)}
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with Dashboard(log_path, port=server, env=env) as dash:
            assert dash.connected
            for i, step in enumerate(steps):
                values = {"loss_G": np.float32(1.0 / (i + 1)), "loss_D": 0.25 + 0.01 * i, "lr": 2e-4,
                          "images_per_s": 100.0 + i}
                if i == 2:
                    values["loss_D"] = float("nan")
                if i >= 3:
                    values["cycle"] = 0.5 - 0.1 * i  # a loss that only appears later: the window is redrawn
                dash.scalars(step, values)
                sent.append(values)
            dash.images(40, panels)
    assert not _warnings(caplog)

    traces = _traces(server, env)
    assert set(traces) == {"loss_G", "loss_D", "cycle"}
    for name in traces:
        assert traces[name]["x"] == steps
    assert traces["loss_G"]["y"] == pytest.approx([float(np.float32(1.0 / (i + 1))) for i in range(5)])
    assert traces["loss_D"]["y"][2] is None
    assert [traces["loss_D"]["y"][i] for i in (0, 1, 3, 4)] == pytest.approx([0.25, 0.26, 0.28, 0.29])
    assert traces["cycle"]["y"][:3] == [None, None, None]
    assert traces["cycle"]["y"][3:] == pytest.approx([0.2, 0.1])
    lr = _traces(server, env, LR_WINDOW)  # other kinds of numbers get windows with their own scale
    assert set(lr) == {"lr"} and lr["lr"]["y"] == pytest.approx([2e-4] * 5)
    speed = _traces(server, env, SPEED_WINDOW)
    assert set(speed) == {"images_per_s"} and speed["images_per_s"]["x"] == steps

    image = _win_data(server, IMAGE_WINDOW, env)
    src = image["content"]["src"]
    assert src.startswith("data:image/png;base64,")
    from PIL import Image

    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    np.testing.assert_array_equal(shown[..., 0], panel_grid(panels))

    records = read_log(log_path)
    assert [r["step"] for r in records] == steps
    assert [r["loss_G"] for r in records] == pytest.approx([float(v["loss_G"]) for v in sent])
    assert math.isnan(records[2]["loss_D"]) and "cycle" not in records[2] and records[4]["cycle"] == pytest.approx(0.1)
    raw = log_path.read_text().splitlines()
    assert len(raw) == 5 and json.loads(raw[2])["loss_D"] is None  # strict JSON: NaN is written as null
    assert all(abs(json.loads(line)["time"] - time.time()) < 600 for line in raw)


def test_resumed_run_replots_history_and_replaces_rewound_steps(server, tmp_path):
    env = "t_resume"
    log_path = tmp_path / "log.jsonl"
    with Dashboard(log_path, enabled=False) as dash:  # first run: file only, killed after step 5
        for step in range(6):
            dash.scalars(step, {"loss": float(step)})
    with Dashboard(log_path, port=server, env=env) as dash:  # resumed from the checkpoint at step 3
        dash.scalars(3, {"loss": 30.0})
        dash.scalars(4, {"loss": 40.0})
    trace = _traces(server, env)["loss"]
    assert trace["x"] == [0, 1, 2, 3, 4]
    assert trace["y"] == pytest.approx([0.0, 1.0, 2.0, 30.0, 40.0])
    assert len(log_path.read_text().splitlines()) == 8  # the file keeps everything ...
    assert [(r["step"], r["loss"]) for r in read_log(log_path)] == [(0, 0), (1, 1), (2, 2), (3, 30), (4, 40)]
    assert len(read_log(log_path, resolve_restarts=False)) == 8  # ... and read_log resolves the restart


def test_server_keeps_running_when_sources_change(tmp_path):
    """visdom puts tornado in debug mode, whose autoreload restarts the server (dropping every plot) when an
    imported source file changes; the dashboard server must not. Runs from a copy of the sources."""
    import shutil

    tree = tmp_path / "tree"
    for rel in ("scripts/dashboard.py", "cyclegan/dashboard.py", "cyclegan/__init__.py", "stem_denoise/__init__.py",
                "stem_denoise/commands/__init__.py", "stem_denoise/commands/dashboard.py",
                "stem_denoise/common/__init__.py", "stem_denoise/common/atomic.py", "stem_denoise/common/cli.py",
                "stem_denoise/common/errors.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tree / rel)
    port = _free_port()
    proc = _start_server(tmp_path, port, script=tree / "scripts" / "dashboard.py", pythonpath=tree)
    try:
        with Dashboard(tmp_path / "log.jsonl", port=port, env="t_reload") as dash:
            dash.scalars(0, {"loss": 1.0})
        assert _traces(port, "t_reload")["loss"]["y"] == [1.0]
        edited = tree / "cyclegan" / "dashboard.py"
        edited.write_text(edited.read_text() + "\n")
        time.sleep(1.5)  # tornado's autoreload polls every 0.5 s
        assert proc.poll() is None
        assert _traces(port, "t_reload")["loss"]["y"] == [1.0]
        assert "restarting" not in (tmp_path / "server.log").read_text()
    finally:
        _stop_server(proc)


def test_server_url_may_carry_the_port(server, tmp_path):
    with Dashboard(tmp_path / "log.jsonl", server=f"127.0.0.1:{server}", port=1, env="t_url") as dash:
        assert dash.connected and dash.port == server
        dash.scalars(0, {"loss": 1.0})
    assert _traces(server, "t_url")["loss"]["y"] == [1.0]


def test_server_lost_then_back(tmp_path, caplog):
    """Killing the server mid-run costs one warning; a server that comes back gets the whole history."""
    port = _free_port()
    proc = _start_server(tmp_path, port)
    log_path = tmp_path / "log.jsonl"
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            dash = Dashboard(log_path, port=port, env="t_lost", retry_s=0.0, timeout_s=0.5, read_timeout_s=2.0)
            assert dash.connected
            dash.scalars(0, {"loss": 1.0})
            dash.scalars(1, {"loss": 0.5})
            assert dash.flush()
            _stop_server(proc)
            for step in range(2, 6):
                dash.scalars(step, {"loss": 1.0 / (step + 1)})
            assert dash.flush()
            assert not dash.connected
            assert len(_warnings(caplog)) == 1 and "lost" in _warnings(caplog)[0].getMessage()
            proc = _start_server(tmp_path, port)
            dash.scalars(6, {"loss": 0.1})
            assert dash.flush()
            assert dash.connected
            dash.close()
        assert len(_warnings(caplog)) == 1
        trace = _traces(port, "t_lost")["loss"]
        assert trace["x"] == list(range(7))
        assert trace["y"] == pytest.approx([1.0, 0.5, 1 / 3, 1 / 4, 1 / 5, 1 / 6, 0.1])
        assert [r["step"] for r in read_log(log_path)] == list(range(7))
    finally:
        _stop_server(proc)


def test_scalars_never_wait_for_a_slow_server(server, tmp_path):
    """The training loop only pays for the file write; values queued meanwhile go out in one request."""
    with Dashboard(tmp_path / "log.jsonl", port=server, env="t_slow") as dash:
        assert dash.connected
        calls = []
        real_line = dash._viz.line

        def slow_line(*args, **kwargs):
            calls.append(kwargs.get("Y").shape[0])
            time.sleep(1.0)
            return real_line(*args, **kwargs)

        dash._viz.line = slow_line
        t0 = time.monotonic()
        dash.scalars(0, {"loss": 0.0})
        time.sleep(0.2)  # the sender is now inside the slow request
        for step in range(1, 6):
            dash.scalars(step, {"loss": float(step)})
        assert time.monotonic() - t0 < 0.2 + 0.5
        assert dash.flush()
    assert calls == [1, 5]
    trace = _traces(server, "t_slow")["loss"]
    assert trace["x"] == list(range(6)) and trace["y"] == pytest.approx(list(range(6)))


def test_sends_are_paced(server, tmp_path):
    """Values logged within min_interval_s of the last send wait and go out together, without any flush."""
    with Dashboard(tmp_path / "log.jsonl", port=server, env="t_paced", min_interval_s=1.0) as dash:
        calls = []
        real_line = dash._viz.line

        def counting_line(*args, **kwargs):
            calls.append(kwargs.get("Y").shape[0])
            return real_line(*args, **kwargs)

        dash._viz.line = counting_line
        dash.scalars(0, {"loss": 0.0})
        for step in range(1, 11):  # spread over 0.4 s: unpaced, these would go out one or a few at a time
            time.sleep(0.04)
            dash.scalars(step, {"loss": float(step)})
        deadline = time.monotonic() + 5.0
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls == [1, 10]
    assert _traces(server, "t_paced")["loss"]["x"] == list(range(11))


@pytest.mark.slow
def test_training_loop_plots_live(server, tmp_path):
    """The real training loop, a few CPU steps of tiny networks, opens its Dashboard from the config."""
    import tifffile

    from cyclegan.config import DashboardConfig, TrainConfig
    from cyclegan.models import DiscriminatorConfig, GeneratorConfig
    from cyclegan.train import train

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:24]
    lattice = ((1 + np.cos(2 * np.pi * xx / 6.0)) * (1 + np.cos(2 * np.pi * yy / 6.0)) / 4).astype(np.float32)
    for domain, noise in (("trainA", 0.3), ("trainB", 0.0)):
        (tmp_path / "data" / domain).mkdir(parents=True)
        for i in range(3):
            patch = lattice + noise * rng.standard_normal(lattice.shape).astype(np.float32)
            tifffile.imwrite(tmp_path / "data" / domain / f"p{i}.tif", patch.astype(np.float32))
    cfg = TrainConfig(
        steps=2, batch_size=2, num_workers=0, device="cpu", log_every=1, image_every=2, checkpoint_every=2,
        period_px=6.0, generator=GeneratorConfig(width=4, n_blocks=1), discriminator=DiscriminatorConfig(width=4),
        dashboard=DashboardConfig(port=server, env="t_train"),
    )
    # 24 px patches hold 4 periods: too few for the period check to measure, which is not what this test is about
    train(cfg, tmp_path / "data", tmp_path / "run", progress=False, force_period=True)

    records = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    traces = _traces(server, "t_train")
    assert "loss_G" in traces and traces["loss_G"]["x"] == [1, 2] and "lr" not in traces
    assert traces["loss_G"]["y"] == pytest.approx([r["loss_G"] for r in records])
    image = _win_data(server, IMAGE_WINDOW, "t_train")
    assert image["content"]["src"].startswith("data:image/png;base64,") and "step 2" in image["title"]


# ------------------------------------------------------------------------------------------------------------------
# no server / unresponsive server / other ranks
# ------------------------------------------------------------------------------------------------------------------


def test_no_server_warns_once_and_keeps_logging(tmp_path, caplog):
    port = _free_port()  # nothing listens there
    log_path = tmp_path / "log.jsonl"
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with Dashboard(log_path, port=port, retry_s=0.0) as dash:  # retry at every call: still one warning
            for step in range(20):
                dash.scalars(step, {"loss_G": 1.0 / (step + 1)})
                dash.images(step, {"A": np.zeros((8, 8))})
            assert not dash.connected
    elapsed = time.monotonic() - t0
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert str(log_path) in warnings[0].getMessage() and str(port) in warnings[0].getMessage()
    assert [r["step"] for r in read_log(log_path)] == list(range(20))
    assert elapsed < 10.0


def test_unresponsive_server_does_not_block(tmp_path, caplog):
    """A port that accepts connections but never answers: each wait is bounded by the timeouts, one warning."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # the kernel completes handshakes; nobody ever reads or replies
        port = hung.getsockname()[1]
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            with Dashboard(tmp_path / "log.jsonl", port=port, timeout_s=0.3, read_timeout_s=0.3) as dash:
                for step in range(10):
                    dash.scalars(step, {"loss": 1.0})
        elapsed = time.monotonic() - t0
    assert len(_warnings(caplog)) == 1
    assert len(read_log(tmp_path / "log.jsonl")) == 10
    assert elapsed < 5.0


def test_disabled_and_other_ranks(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with Dashboard(tmp_path / "off.jsonl", enabled=False, port=_free_port()) as dash:
            dash.scalars(1, {"loss": 2.0})
            dash.images(1, {"A": np.ones((4, 4))})
            assert not dash.connected
        rank1 = Dashboard(tmp_path / "sub" / "rank1.jsonl", rank=1, port=_free_port())
        rank1.scalars(1, {"loss": 2.0})
        rank1.images(1, {"A": np.ones((4, 4))})
        rank1.close()
    assert not caplog.records
    assert read_log(tmp_path / "off.jsonl")[0]["loss"] == 2.0
    assert not (tmp_path / "sub").exists()


def test_bad_values_are_refused(tmp_path):
    with Dashboard(tmp_path / "log.jsonl", enabled=False) as dash:
        for bad in ({"step": 1.0}, {"time": 1.0}, {"": 1.0}, {"loss": "high"}, {"loss": np.ones(3)}):
            with pytest.raises(ValueError):
                dash.scalars(0, bad)
        with pytest.raises(ValueError):
            dash.images(0, {"A": np.ones((2, 3, 4))})
        dash.scalars(0, {"a": np.array([1.5]), "b": np.int64(2), "c": float("inf")})
    (rec,) = read_log(tmp_path / "log.jsonl")
    assert rec["a"] == 1.5 and rec["b"] == 2.0 and math.isnan(rec["c"])
    with pytest.raises(ValueError):
        dash.scalars(1, {"a": 1.0})  # closed


def test_log_survives_a_record_cut_short(tmp_path):
    log_path = tmp_path / "log.jsonl"
    log_path.write_text('{"step": 0, "time": 1.0, "loss": 1.0}\n{"step": 1, "time": 2.0, "lo')  # crash mid-write
    assert [r["step"] for r in read_log(log_path)] == [0]
    with Dashboard(log_path, enabled=False) as dash:
        dash.scalars(1, {"loss": 0.5})
    assert [(r["step"], r["loss"]) for r in read_log(log_path)] == [(0, 1.0), (1, 0.5)]
    with pytest.raises(InputError):
        read_log(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------------------------------
# display grid
# ------------------------------------------------------------------------------------------------------------------


def test_panel_grid_layout_and_shared_scale():
    dark, bright = np.zeros((16, 16)), np.ones((16, 16))
    bright[0, 0] = np.nan
    grid = panel_grid({"dark": dark, "bright": bright}, ncols=3, min_size=128, pad=4, label_px=16)
    assert grid.dtype == np.uint8
    assert grid.shape == (4 + 16 + 128 + 4, 4 + 128 + 4 + 128 + 4)  # one row of two 8x enlarged panels
    top = 4 + 16
    np.testing.assert_array_equal(grid[top:top + 128, 4:4 + 128], 0)  # shared scale: 0 -> black ...
    right = grid[top:top + 128, 136:136 + 128]
    assert (right[8:, :] == 255).all() and (right[:8, :8] == 0).all()  # ... 1 -> white, NaN -> black
    assert grid[4:4 + 16, 4:4 + 128].max() == 255  # the label strip carries text

    stacked = panel_grid({f"p{i}": np.full((8, 12), float(i)) for i in range(4)}, ncols=2, min_size=24, label_px=0)
    assert stacked.shape == (3 * 4 + 2 * 16, 3 * 4 + 2 * 24)
    assert stacked[4, 4] < stacked[4, 4 + 24 + 4] < stacked[4 + 16 + 4, 4] < stacked[4 + 16 + 4, 4 + 24 + 4]
    with pytest.raises(ValueError):
        panel_grid({})


# ------------------------------------------------------------------------------------------------------------------
# front-end files via npm
# ------------------------------------------------------------------------------------------------------------------

FAKE_NPM = r'''
import io, json, os, sys, tarfile
args = [a for a in sys.argv[1:] if not a.startswith("--")]
with open(os.environ["FAKE_NPM_CALLS"], "a") as fh:
    fh.write(json.dumps(args) + "\n")
if os.environ.get("FAKE_NPM_FAIL"):
    sys.stderr.write("npm warn config something\nnpm error code ENOTFOUND\nnpm error network request failed\n")
    sys.exit(1)
members = json.load(open(os.environ["FAKE_NPM_MEMBERS"]))
assert args[0] == "pack"
for spec in args[1:]:
    name, version = spec.rsplit("@", 1)
    with tarfile.open(name.replace("/", "-") + "-" + version + ".tgz", "w:gz") as tf:
        files = {"package.json": json.dumps({"name": name, "version": version})}
        files.update({m: spec + "/" + m for m in members[spec]})
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo("package/" + path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
'''


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    members: dict[str, list[str]] = {}
    for asset in FRONTEND_ASSETS:
        members.setdefault(asset.spec, []).append(asset.member)
    (tmp_path / "members.json").write_text(json.dumps(members))
    exe = tmp_path / "bin" / "npm"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n{FAKE_NPM}")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_NPM_MEMBERS", str(tmp_path / "members.json"))
    monkeypatch.setenv("FAKE_NPM_CALLS", str(calls))
    return exe, calls


def test_fetch_installs_every_file_under_visdoms_names(tmp_path, fake_npm):
    exe, calls = fake_npm
    static = tmp_path / "visdom" / "static"
    static.mkdir(parents=True)
    assert len(missing_frontend_assets(static)) == len(FRONTEND_ASSETS)
    written = fetch_frontend_assets(static, npm=str(exe))
    assert len(written) == len(FRONTEND_ASSETS) and missing_frontend_assets(static) == []
    for asset in FRONTEND_ASSETS:
        path = static / asset.dest
        assert path.read_text() == f"{asset.spec}/{asset.member}"
    assert (static / "js" / "plotly-plotly.min.js").is_file()
    assert (static / "js" / "mathjax" / "2.7.5" / "MathJax.js").is_file()

    assert fetch_frontend_assets(static, npm=str(exe)) == []  # complete: npm is not run again
    (static / "js" / "d3.v3.min.js").unlink()
    assert fetch_frontend_assets(static, npm=str(exe)) == [static / "js" / "d3.v3.min.js"]
    runs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(runs) == 2 and runs[1] == ["pack", "d3@3.5.17"]


def test_after_fetch_visdoms_own_start_up_downloads_nothing(tmp_path, fake_npm, monkeypatch):
    """Our file list matches visdom's download list exactly: its own download step then finds every file."""
    import urllib.request

    import requests
    import visdom
    from visdom.server.build import download_scripts

    static = tmp_path / "visdom" / "static"
    static.mkdir(parents=True)
    (static.parent / "VERSION").write_text(visdom.__version__)
    fetch_frontend_assets(static, npm=str(fake_npm[0]))
    (static / "version.built").write_text(visdom.__version__)  # what visdom's own downloader leaves behind

    def no_network(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[1:]!r}")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_network)
    monkeypatch.setattr(requests, "get", no_network)
    download_scripts(install_dir=str(tmp_path / "visdom"))
    (static / "js" / "sjcl.js").unlink()
    with pytest.raises(AssertionError, match="download attempted"):
        download_scripts(install_dir=str(tmp_path / "visdom"))


def test_every_file_the_page_loads_is_shipped_or_fetched():
    """Each static_url(...) in visdom's page template is either part of the visdom package or one of ours."""
    import re

    from cyclegan.dashboard import visdom_static_dir

    static = visdom_static_dir()
    template = (static / "index.html").read_text()
    wanted = set(re.findall(r"static_url\(\s*['\"]([^'\"]+)['\"]\s*\)", template))
    assert "js/plotly-plotly.min.js" in wanted and len(wanted) > 10
    ours = {asset.dest for asset in FRONTEND_ASSETS}
    shipped = {"js/main.js", "css/style.css", "css/network.css"}  # in visdom's wheel/sdist
    assert all((static / name).is_file() for name in shipped)
    assert wanted - ours - shipped == {"../user/style.css"}  # served by visdom's /user/ handler


def test_fetch_without_npm_or_network_says_what_to_do(tmp_path, fake_npm, monkeypatch):
    static = tmp_path / "static"
    static.mkdir()
    with pytest.raises(InputError, match="npm"):
        fetch_frontend_assets(static, npm=str(tmp_path / "no-such-npm"))
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    with pytest.raises(InputError, match="ENOTFOUND|network"):
        fetch_frontend_assets(static, npm=str(fake_npm[0]))
    assert not any(static.iterdir())


# ------------------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------------------


def _load_script():
    return importlib.import_module("stem_denoise.commands.dashboard")


def test_script_port_in_use_is_a_clear_error(tmp_path):
    script = _load_script()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match="already running"):
            script.main(["--port", str(port), "--env-path", str(tmp_path / "envs"), "--no-assets"])


def test_window_for_groups_numbers_by_kind():
    assert [window_for(n) for n in ("loss_G", "cycle_A", "lowfreq", "loss_D_A")] == [LOSS_WINDOW] * 4
    assert [window_for(n) for n in ("lr", "lr_D", "gen_lr", "learning_rate")] == [LR_WINDOW] * 4
    assert window_for("images_per_s") == SPEED_WINDOW and window_for("lrelu_slope") == LOSS_WINDOW


def test_exposure_warning_only_off_loopback():
    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert exposure_warning("::1") is None
    message = exposure_warning("0.0.0.0")
    assert message and "ssh -L" in message
