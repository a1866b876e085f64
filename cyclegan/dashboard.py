"""Live training dashboard on visdom, with a JSON-lines file log as the source of truth.

Two halves live here.

**Client** (:class:`Dashboard`, used by the training loop on rank 0). Every call to :meth:`Dashboard.scalars`
appends one line ``{"step": ..., "time": ..., "loss_G": ..., ...}`` to a JSONL file and flushes it; that file is
what counts (read it back with :func:`read_log`). When a visdom server answers, the same numbers are plotted live in
one window (``"losses"``, one line per loss, x = training step; learning rates and throughputs get windows of
their own, see :func:`window_for`) and :meth:`Dashboard.images` shows a grid of sample
panels (``"samples"``). The server is optional: reachability is probed once with a short socket timeout (1 s); if
nothing answers, one warning line is logged and training goes on with the file log only. The probe is repeated
quietly every ``retry_s`` seconds, so a dashboard started after training began picks the run up, history included.
All traffic to the server happens in a background thread, so the training loop never waits on the network; every
HTTP request carries a timeout, any failure switches live plotting off (one warning, then silent retries), and no
exception from visdom ever reaches the training loop. Ranks other than 0 do nothing at all.

**Server** (:func:`serve`, :func:`ensure_frontend_assets`; command line: ``stem-denoise dashboard``). visdom 0.2.4
starts its server through ``download_scripts()``, which fetches the web page's JavaScript/CSS/fonts from CDNs at
every start and crashes without internet. :func:`serve` builds visdom's tornado ``Application`` directly and never
downloads anything. The page still needs those front-end files (React, Plotly, jQuery, Bootstrap, d3, MathJax ...).
They are not vendored in this repository (Plotly alone is 3.7 MB, MathJax ships as a 21 MB package):
:func:`fetch_frontend_assets` gets the exact versions visdom asks for with ``npm pack`` (the npm client and its
cache, so a machine that fetched them once can refetch offline) into a **user cache folder**
(:func:`frontend_dir`: ``$STEM_DENOISE_CACHE`` or ``$XDG_CACHE_HOME/stem-denoise`` or ``~/.cache/stem-denoise``,
one subfolder per visdom version), beside a copy of the files visdom itself ships; the server serves the page from
there. Nothing is ever written into the installed visdom package, so a read-only or shared environment works.
``stem-denoise dashboard`` fetches the files when missing; without npm it stops with a message that says what to
install. :func:`serve` also mends two clashes between visdom 0.2.4 and current tornado (>= 6.5): the page itself
answered HTTP 403 (see :func:`_static_handler_class`), and tornado's debug-mode autoreload restarted the server,
dropping every plot, whenever an imported source file changed.

The server binds to 127.0.0.1 by default. visdom has no authentication in this set-up: anyone who can reach the
port can read and change the dashboard. To watch a run on a remote machine, keep the default and tunnel:
``ssh -L 8097:127.0.0.1:8097 user@cluster``, then open http://127.0.0.1:8097 locally. ``--host 0.0.0.0`` binds all
interfaces and prints a warning.
"""
from __future__ import annotations

import errno
import importlib.util
import ipaddress
import json
import logging
import math
import os
import queue
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import numpy as np

from stem_denoise.common.atomic import atomic_write_bytes
from stem_denoise.common.errors import InputError

log = logging.getLogger(__name__)

LOSS_WINDOW = "losses"
LR_WINDOW = "lr"
SPEED_WINDOW = "speed"
IMAGE_WINDOW = "samples"
_WINDOW_LOOK = {  # title, width, height (px)
    LOSS_WINDOW: ("losses", 560, 380),
    LR_WINDOW: ("learning rate", 380, 300),
    SPEED_WINDOW: ("throughput", 380, 300),
}
DEFAULT_PORT = 8097
DEFAULT_HOST = "127.0.0.1"
_RESERVED_KEYS = ("step", "time")


# --------------------------------------------------------------------------------------------------------------
# File log
# --------------------------------------------------------------------------------------------------------------


def read_log(path: str | os.PathLike, *, resolve_restarts: bool = True) -> list[dict[str, Any]]:
    """Read a JSONL scalar log written by :class:`Dashboard` and return its records in file order.

    Each record is a dict with ``step`` (int), ``time`` (UNIX seconds) and one float per logged value; values that
    were NaN or infinite are stored as JSON ``null`` and come back as ``float('nan')``. Lines that are not valid
    JSON objects (a record cut short by a crash) are skipped. With ``resolve_restarts`` (default), a record whose
    step is not larger than the previous one marks a resumed run: earlier records with a step at or after it are
    dropped, so the result reads as one run with increasing steps. Raises :class:`InputError` if the file is missing.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"log file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read log file {path}: {exc.strerror or exc}") from None
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            continue
        rec = {k: (float("nan") if v is None else v) for k, v in rec.items()}
        if resolve_restarts:
            while records and records[-1]["step"] >= rec["step"]:
                records.pop()
        records.append(rec)
    return records


def window_for(name: str) -> str:
    """The dashboard window that plots scalar ``name``, so that numbers of different kinds keep readable scales:
    learning rates (``lr``, ``lr_*``, ``*_lr``, ``*learning_rate*``) go to ``"lr"``, throughputs (``*per_s``,
    e.g. ``images_per_s``) to ``"speed"``, everything else to ``"losses"``."""
    low = name.lower()
    if low == "lr" or low.startswith("lr_") or low.endswith("_lr") or "learning_rate" in low:
        return LR_WINDOW
    if low.endswith("per_s"):
        return SPEED_WINDOW
    return LOSS_WINDOW


def _as_float(name: str, value: Any) -> float:
    """A loss value as a Python float: accepts floats, ints, numpy scalars and one-element arrays/tensors."""
    try:
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"scalar {name!r} is not a single number: {value!r}") from None


def _clean_values(values: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a mapping of name -> number, not {type(values).__name__}")
    out: dict[str, float] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"scalar names must be non-empty strings, got {name!r}")
        if name in _RESERVED_KEYS:
            raise ValueError(f"scalar name {name!r} is reserved for the log record itself")
        out[name] = _as_float(name, value)
    return out


# --------------------------------------------------------------------------------------------------------------
# Display of image panels
# --------------------------------------------------------------------------------------------------------------


def panel_grid(
    panels: Mapping[str, Any],
    *,
    ncols: int = 3,
    min_size: int = 128,
    pad: int = 4,
    label_px: int = 16,
    pct: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Tile named 2-D image panels into one 8-bit grey image for display.

    Panels (any units; numpy arrays or anything ``np.asarray`` accepts, leading singleton axes are dropped) are
    placed row by row, ``ncols`` per row, in the mapping's order, each under a strip with its name. All panels share
    ONE intensity scale, the ``pct`` percentiles of all finite pixels of all panels, so that brightness can be
    compared between panels (a denoised patch that lost its dent looks different from its input); the scaling is
    for display only. Non-finite pixels are shown black. Small panels are enlarged by an integer nearest-neighbour
    factor so that the largest is at least ``min_size`` px. Returns a uint8 array (H, W).
    """
    if not panels:
        raise ValueError("panel_grid needs at least one panel")
    if ncols < 1 or min_size < 1 or pad < 0 or label_px < 0:
        raise ValueError("ncols and min_size must be >= 1, pad and label_px >= 0")
    names = list(panels)
    arrays = []
    for name in names:
        value = panels[name]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().float().cpu().numpy()
        arr = np.asarray(value, dtype=np.float64)
        while arr.ndim > 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"panel {name!r} must be a 2-D image, got shape {np.shape(value)}")
        arrays.append(arr)
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if finite.size:
        lo, hi = (float(v) for v in np.percentile(finite, pct))
    else:
        lo, hi = 0.0, 1.0
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    max_h = max(a.shape[0] for a in arrays)
    max_w = max(a.shape[1] for a in arrays)
    up = max(1, math.ceil(min_size / max(max_h, max_w)))
    cell_h, cell_w = max_h * up, max_w * up
    ncols = min(ncols, len(arrays))
    nrows = math.ceil(len(arrays) / ncols)
    height = nrows * (label_px + cell_h) + (nrows + 1) * pad
    width = ncols * cell_w + (ncols + 1) * pad
    grid = np.full((height, width), 40, dtype=np.uint8)
    for i, (name, arr) in enumerate(zip(names, arrays)):
        r, c = divmod(i, ncols)
        y0 = pad + r * (label_px + cell_h + pad)
        x0 = pad + c * (cell_w + pad)
        scaled = np.where(np.isfinite(arr), (arr - lo) / (hi - lo), 0.0)
        img = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
        img = np.repeat(np.repeat(img, up, axis=0), up, axis=1)
        grid[y0:y0 + label_px, x0:x0 + cell_w] = 0
        if label_px >= 8:
            _put_label(grid, name, x0 + 2, y0 + label_px - 4, max_width=cell_w - 4)
        grid[y0 + label_px:y0 + label_px + img.shape[0], x0:x0 + img.shape[1]] = img
    return grid


def _put_label(grid: np.ndarray, text: str, x: int, y: int, *, max_width: int) -> None:
    import cv2

    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1
    while text and cv2.getTextSize(text, font, scale, thick)[0][0] > max_width:
        text = text[:-1]
    if text:
        cv2.putText(grid, text, (x, y), font, scale, 255, thick, cv2.LINE_AA)


# --------------------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to host:port succeeds within timeout_s, else the reason it did not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.timeout:
        return f"no answer within {timeout_s:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003
        return False


def _make_client(server: str, port: int, env: str, *, connect_timeout_s: float, read_timeout_s: float):
    """A visdom.Visdom client whose requests time out, raise instead of printing, and skip the event socket."""
    import requests
    import visdom

    session = requests.Session()
    # A proxy from the environment must not swallow requests to a dashboard on this machine.
    session.trust_env = not _is_loopback(urlparse(server).hostname or "")

    class _Client(visdom.Visdom):
        def _handle_post(self, url, data=None):
            resp = session.post(url, data=data or {}, timeout=(connect_timeout_s, read_timeout_s))
            resp.raise_for_status()  # a RequestException: visdom turns it into ConnectionError
            return resp.text

        def win_exists(self, win, env=None):
            answer = self._win_exists_wrap(win, env)
            if answer not in ("true", "false"):
                raise ConnectionError(f"the server at {self.server}:{self.port} does not answer like visdom")
            return answer == "true"

    vlog = logging.getLogger("visdom")
    quiet = _DropRecords()
    vlog.addFilter(quiet)  # visdom warns that the event socket is off; that is deliberate here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # visdom's own logger.warn call
            client = _Client(
                server=server, port=port, env=env, raise_exceptions=True, use_incoming_socket=False
            )
    finally:
        vlog.removeFilter(quiet)
    client.win_exists(LOSS_WINDOW, env)  # raises ConnectionError if this is not a visdom server
    return client, session


class Dashboard:
    """Training-time logger: JSONL file always, live visdom plots when a server answers.

    ``log_path``: the JSONL file (appended to; its folder is created). ``enabled=False``: file log only, no
    server contact. ``server``/``port``/``env``: where to plot (visdom URL, e.g. ``http://127.0.0.1``; a port in
    the URL overrides ``port``; visdom environment name).
    ``rank``: only rank 0 does anything; other ranks of a distributed run get a no-op object. ``timeout_s``: the
    socket probe and connect timeout in seconds; ``read_timeout_s``: how long one plot request may take;
    ``retry_s``: how often (seconds) to look again for a server that was not there or went away (None: never).
    ``min_interval_s``: the shortest time between two sends; values logged in between go out together (the
    interval also stretches to four times the duration of the last send, so a busy server is not flooded).
    If the log file already holds records (a resumed run), they are replotted once a server answers.

    The first reachability check runs in the constructor (at most ``timeout_s`` when nothing answers, plus the
    ``read_timeout_s`` of one request when something answers but not like visdom). After that, everything that
    talks to the server runs in a background thread: :meth:`scalars` costs the training loop one flushed line of
    file I/O, never a network round trip. Values queued while the thread waits or is busy are sent together.
    """

    def __init__(
        self,
        log_path: str | os.PathLike,
        *,
        enabled: bool = True,
        server: str = "http://127.0.0.1",
        port: int = DEFAULT_PORT,
        env: str = "cyclegan",
        rank: int = 0,
        timeout_s: float = 1.0,
        read_timeout_s: float = 5.0,
        retry_s: float | None = 60.0,
        min_interval_s: float = 1.0,
    ) -> None:
        self.log_path = Path(log_path)
        self.rank = int(rank)
        self.active = self.rank == 0
        self.enabled = bool(enabled) and self.active
        if not server:
            raise InputError("visdom server URL is empty")
        parsed = urlparse(server if "://" in server else f"http://{server}")
        self.host = parsed.hostname or DEFAULT_HOST
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.server = f"{parsed.scheme}://{netloc}"
        try:
            self.port = int(parsed.port or port)  # a port inside the URL wins
        except ValueError:
            raise InputError(f"bad visdom server URL {server!r}") from None
        self.env = str(env)
        self.timeout_s = float(timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.retry_s = None if retry_s is None else float(retry_s)
        self.min_interval_s = float(min_interval_s)
        self.connected = False
        # State below "_viz" belongs to the sender thread once it runs.
        self._viz = None
        self._session = None
        self._warned = False
        self._next_probe = 0.0
        self._next_send = 0.0
        self._synced: set[str] = set()  # windows known to hold our whole history on the server
        self._steps: list[int] = []
        self._series: dict[str, list[float]] = {}
        self._fh = None
        self._closed = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if not self.active:
            return
        self._open_log()
        if self.enabled:
            self._connect(first=True)
            self._thread = threading.Thread(target=self._sender, name="dashboard-sender", daemon=True)
            self._thread.start()

    # -- file log -------------------------------------------------------------------------------------------------

    def _open_log(self) -> None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if self.log_path.exists() and self.log_path.stat().st_size:
                for rec in read_log(self.log_path):
                    self._remember(rec["step"], {k: v for k, v in rec.items() if k not in _RESERVED_KEYS
                                                 and isinstance(v, (int, float))})
                with open(self.log_path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    needs_newline = fh.read(1) != b"\n"
            else:
                needs_newline = False
            self._fh = open(self.log_path, "a", encoding="utf-8")
            if needs_newline:  # the previous run died mid-line: start a fresh line
                self._fh.write("\n")
                self._fh.flush()
        except OSError as exc:
            raise InputError(f"cannot write the training log {self.log_path}: {exc.strerror or exc}") from None

    def _remember(self, step: int, values: Mapping[str, float]) -> None:
        """Keep the plotted history; a step that does not increase means a resumed run: drop what it replaces."""
        if self._steps and step <= self._steps[-1]:
            keep = int(np.searchsorted(np.asarray(self._steps), step, side="left"))
            del self._steps[keep:]
            for series in self._series.values():
                del series[keep:]
            self._synced.clear()
        n = len(self._steps)
        for name in values:
            if name not in self._series:
                self._series[name] = [math.nan] * n
                self._synced.discard(window_for(name))
        self._steps.append(int(step))
        for name, series in self._series.items():
            series.append(float(values.get(name, math.nan)))

    # -- connection (constructor, then the sender thread only) ----------------------------------------------------

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)
        else:
            log.debug(message)

    def _go_offline(self, reason: str, *, lost: bool) -> None:
        self.connected = False
        self._viz = None
        if self._session is not None:
            self._session.close()
            self._session = None
        self._next_probe = math.inf if self.retry_s is None else time.monotonic() + self.retry_s
        what = "lost the visdom server" if lost else "no visdom server"
        self._warn_once(
            f"dashboard: {what} at {self.server}:{self.port} ({reason}); training goes on, "
            f"numbers are logged to {self.log_path} (start a server with `make dashboard`)"
        )

    def _connect(self, *, first: bool = False) -> bool:
        reason = _probe(self.host, self.port, self.timeout_s)
        if reason is None:
            try:
                self._viz, self._session = _make_client(
                    self.server, self.port, self.env,
                    connect_timeout_s=self.timeout_s, read_timeout_s=self.read_timeout_s,
                )
            except Exception as exc:  # noqa: BLE001 -- the dashboard must never stop training
                reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            self._go_offline(reason, lost=False)
            return False
        self.connected = True
        self._synced.clear()
        if first:
            log.info("dashboard: live plots at %s:%s (env %r)", self.server, self.port, self.env)
        else:
            log.info("dashboard: visdom server at %s:%s answers again; live plots resume", self.server, self.port)
        return True

    def _ready(self) -> bool:
        if self.connected:
            return True
        if time.monotonic() < self._next_probe:
            return False
        return self._connect()

    def _sender(self) -> None:
        """Background thread: take queued work in batches, keep the history, talk to the server."""
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:  # collect until the next send is due; flush and stop cut the wait short
                urgent = any(kind in ("flush", "stop") for kind, _ in batch)
                wait = 0.0 if urgent else self._next_send - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
                except queue.Empty:
                    if wait <= 0:
                        break
            rows: list[tuple[int, dict[str, float]]] = []
            image = None
            flushed: list[threading.Event] = []
            for kind, payload in batch:
                if kind == "scalars":
                    self._remember(*payload)
                    rows.append(payload)
                elif kind == "images":
                    image = payload  # only the newest grid matters
                elif kind == "flush":
                    flushed.append(payload)
                elif kind == "stop":
                    stop = True
            try:
                if (rows or image is not None) and self._ready():
                    started = time.monotonic()
                    if rows:
                        self._plot_scalars(rows)
                    if image is not None:
                        step, grid = image
                        opts = {"title": f"samples, step {step}", "height": grid.shape[0] + 8}
                        self._viz.image(grid, win=IMAGE_WINDOW, env=self.env, opts=opts)
                    # visdom's server re-diffs a whole window on every append (cost grows with the points
                    # plotted): pace the sends so that the server stays idle most of the time.
                    now = time.monotonic()
                    self._next_send = now + max(self.min_interval_s, 4.0 * (now - started))
                if stop and self.connected:
                    self._viz.save([self.env])  # the server writes the env to its env folder
            except Exception as exc:  # noqa: BLE001 -- the dashboard must never stop training
                self._go_offline(f"{type(exc).__name__}: {exc}", lost=True)
            for event in flushed:
                event.set()
        if self._session is not None:
            self._session.close()
            self._session = None

    def _plot_scalars(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        windows: dict[str, list[str]] = {}
        for name in self._series:
            windows.setdefault(window_for(name), []).append(name)
        for win, names in windows.items():
            fresh = [(step, values) for step, values in rows if any(n in values for n in names)]
            if not fresh:
                continue
            if win in self._synced and self._viz.win_exists(win, self.env):
                y = np.array([[values.get(n, math.nan) for n in names] for _, values in fresh], dtype=np.float64)
                x = np.repeat(np.array([step for step, _ in fresh], dtype=np.float64)[:, None], len(names), axis=1)
                self._viz.line(Y=y, X=x, win=win, env=self.env, update="append")
                continue
            # First plot, a new name, a resumed run or a server that lost the window: send the whole history.
            y = np.stack([np.asarray(self._series[n], dtype=np.float64) for n in names], axis=1)
            keep = ~np.isnan(y).all(axis=1)  # steps at which none of this window's values were logged
            if not keep.any():
                continue
            y = y[keep]
            x = np.repeat(np.asarray(self._steps, dtype=np.float64)[keep][:, None], len(names), axis=1)
            title, width, height = _WINDOW_LOOK[win]
            opts = {"title": title, "legend": names, "xlabel": "step", "showlegend": True,
                    "width": width, "height": height}
            self._viz.line(Y=y, X=x, win=win, env=self.env, opts=opts)
            self._synced.add(win)

    # -- public API -----------------------------------------------------------------------------------------------

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Append ``{"step", "time", **values}`` to the log file (flushed) and queue the values for plotting.

        ``values`` maps a name to one number (float, int, numpy or torch scalar). NaN/inf are written as ``null``.
        """
        if not self.active:
            return
        if self._closed:
            raise ValueError("scalars() on a closed Dashboard")
        step = int(step)
        clean = _clean_values(values)
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()
        if self._thread is not None:
            self._queue.put(("scalars", (step, clean)))

    def images(self, step: int, panels: Mapping[str, Any]) -> None:
        """Show named 2-D panels (e.g. A, G(A), F(G(A)), B, F(B), G(F(B))) as one grid; see :func:`panel_grid`.

        Images are display only: nothing is written to the file log, and nothing is sent without a server. The
        panels are checked in every case, so a malformed call fails at once rather than when a server appears.
        """
        if not self.active:
            return
        if self._closed:
            raise ValueError("images() on a closed Dashboard")
        grid = panel_grid(panels)
        if self._thread is not None:
            self._queue.put(("images", (int(step), grid)))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far has been sent (or dropped for want of a server).

        Returns False if that took longer than ``timeout_s`` (default: long enough for one probe and a few
        requests). Not needed in a training loop; :meth:`close` flushes.
        """
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(("flush", done))
        return done.wait(self._default_wait() if timeout_s is None else timeout_s)

    def _default_wait(self) -> float:
        # One probe, one request that may hang until its timeout, then a last quick one.
        return 2.0 * self.timeout_s + 2.0 * self.read_timeout_s + 1.0

    def close(self) -> None:
        """Send what is queued, ask the server to save the env to its env folder, close the file. Idempotent.

        Waits at most a few request timeouts for an unresponsive server; the sender thread is a daemon and
        never keeps the process alive.
        """
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(("stop", None))
            self._thread.join(self._default_wait())
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "Dashboard":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------
# Server: front-end files and start-up without downloads
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontendAsset:
    """One front-end file of visdom's web page: ``member`` of npm package ``package@version``, installed at
    ``dest`` (relative to visdom's ``static/`` folder, the same name visdom's own download step uses)."""

    package: str
    version: str
    member: str
    dest: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


_BS = ("bootstrap", "3.3.7")
_MATHJAX_FILES = (
    "MathJax.js",
    "config/Safe.js",
    "config/TeX-AMS-MML_HTMLorMML.js",
    "extensions/Safe.js",
    "jax/output/SVG/config.js",
    "jax/output/SVG/jax.js",
    "jax/output/SVG/fonts/TeX/fontdata.js",
    "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js",
)
#: Everything ``visdom.server.build.download_scripts`` (visdom 0.2.4) fetches, taken from the same versions on npm.
FRONTEND_ASSETS: tuple[FrontendAsset, ...] = (
    FrontendAsset("jquery", "3.1.1", "dist/jquery.min.js", "js/jquery.min.js"),
    FrontendAsset(*_BS, "dist/js/bootstrap.min.js", "js/bootstrap.min.js"),
    FrontendAsset("react", "16.2.0", "umd/react.production.min.js", "js/react-react.min.js"),
    FrontendAsset("react-dom", "16.2.0", "umd/react-dom.production.min.js", "js/react-dom.min.js"),
    FrontendAsset("react-modal", "3.1.10", "dist/react-modal.min.js", "js/react-modal.min.js"),
    FrontendAsset("plotly.js-dist-min", "2.11.1", "plotly.min.js", "js/plotly-plotly.min.js"),
    FrontendAsset("sjcl", "1.0.7", "sjcl.js", "js/sjcl.js"),
    FrontendAsset("layout-bin-packer", "1.4.0", "dist/layout-bin-packer.js", "js/layout_bin_packer.js"),
    FrontendAsset("layout-bin-packer", "1.4.0", "dist/layout-bin-packer.js.map", "js/layout-bin-packer.js.map"),
    FrontendAsset("d3", "3.5.17", "d3.min.js", "js/d3.v3.min.js"),
    FrontendAsset("d3-selection-multi", "1.0.1", "build/d3-selection-multi.js", "js/d3-selection-multi.v1.js"),
    FrontendAsset("save-svg-as-png", "1.4.17", "lib/saveSvgAsPng.js", "js/saveSvgAsPng.js"),
    FrontendAsset("react-resizable", "1.4.6", "css/styles.css", "css/react-resizable-styles.css"),
    FrontendAsset("react-grid-layout", "0.16.3", "css/styles.css", "css/react-grid-layout-styles.css"),
    FrontendAsset(*_BS, "dist/css/bootstrap.min.css", "css/bootstrap.min.css"),
    FrontendAsset("classnames", "2.2.5", "index.js", "fonts/classnames"),
    *(FrontendAsset(*_BS, f"dist/fonts/glyphicons-halflings-regular.{ext}", f"fonts/glyphicons-halflings-regular.{ext}")
      for ext in ("eot", "woff2", "woff", "ttf", "svg")),
    # visdom's downloader keeps the URL fragment in this file name; present so its own start-up finds it.
    FrontendAsset(*_BS, "dist/fonts/glyphicons-halflings-regular.svg",
                  "fonts/glyphicons-halflings-regular.svg#glyphicons_halflingsregular"),
    *(FrontendAsset("mathjax", "2.7.5", f, f"js/mathjax/2.7.5/{f}") for f in _MATHJAX_FILES),
)

NPM_MISSING_MESSAGE = (
    "the dashboard's web page needs front-end files (React, Plotly, Bootstrap, ...) that are not installed yet, "
    "and `npm` was not found to fetch them. Install Node.js with npm (e.g. `apt-get install npm`), then run "
    "`python scripts/dashboard.py --fetch-assets`; or start the server without them (`--no-assets`: training "
    "can log to it, but the page will not render until the files are fetched)"
)


def visdom_static_dir() -> Path:
    """visdom's own ``static/`` folder inside the installed package (read only; found without importing visdom)."""
    spec = importlib.util.find_spec("visdom")
    if spec is None or spec.origin is None:
        raise InputError("visdom is not installed in this environment (pip install visdom)")
    return Path(spec.origin).parent / "static"


def _visdom_version() -> str:
    try:
        return (visdom_static_dir().parent / "VERSION").read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


CACHE_ENV = "STEM_DENOISE_CACHE"


def cache_root() -> Path:
    """The user cache folder of this project: ``$STEM_DENOISE_CACHE``, else ``$XDG_CACHE_HOME/stem-denoise``, else
    ``~/.cache/stem-denoise``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "stem-denoise"


def frontend_dir() -> Path:
    """Where the dashboard page's static files live: ``cache_root()/visdom-<version>/static`` (visdom's shipped
    files are copied there by :func:`sync_shipped_static`, the fetched ones written there)."""
    return cache_root() / f"visdom-{_visdom_version()}" / "static"


def sync_shipped_static(root: str | os.PathLike | None = None) -> int:
    """Copy the files visdom ships in its ``static/`` folder (its page template and bundle) to ``root`` (default
    :func:`frontend_dir`) where missing or changed; return how many were copied."""
    root = Path(root) if root is not None else frontend_dir()
    src_root = visdom_static_dir()
    copied = 0
    for src in sorted(src_root.rglob("*")):
        if not src.is_file():
            continue
        dest = root / src.relative_to(src_root)
        st = src.stat()
        if dest.is_file() and dest.stat().st_size == st.st_size and dest.stat().st_mtime_ns == st.st_mtime_ns:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, src.read_bytes())
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        copied += 1
    return copied


def missing_frontend_assets(static_dir: str | os.PathLike | None = None) -> list[str]:
    """``dest`` names from :data:`FRONTEND_ASSETS` that are absent (or empty) under ``static_dir``."""
    root = Path(static_dir) if static_dir is not None else frontend_dir()
    missing = []
    for asset in FRONTEND_ASSETS:
        path = root / asset.dest
        if not path.is_file() or path.stat().st_size == 0:
            missing.append(asset.dest)
    return missing


def _package_id(tf: tarfile.TarFile) -> tuple[str, str] | None:
    for member in tf.getmembers():
        parts = member.name.split("/")
        if len(parts) == 2 and parts[1] == "package.json" and member.isfile():
            meta = json.loads(tf.extractfile(member).read().decode("utf-8"))
            return str(meta.get("name")), str(meta.get("version"))
    return None


def _npm_failure(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines()
             if ln.strip() and "npm warn" not in ln.lower()]
    errors = [ln for ln in lines if "err" in ln.lower()]
    return (errors or lines or [f"exit status {proc.returncode}"])[-1]


def fetch_frontend_assets(
    static_dir: str | os.PathLike | None = None,
    *,
    npm: str = "npm",
    force: bool = False,
    timeout_s: float = 600.0,
) -> list[Path]:
    """Fetch visdom's front-end files with ``npm pack`` and install them under ``static_dir``.

    ``static_dir`` defaults to the user cache folder (:func:`frontend_dir`), never visdom's installed package. Only
    missing files are fetched unless ``force``. npm runs with ``--prefer-offline``, so its cache is used when it
    holds the packages. Each file is written atomically. Returns the paths written. Raises :class:`InputError` when npm
    is absent or fails (e.g. no network and an empty
    npm cache) or a package lacks an expected file.
    """
    root = Path(static_dir) if static_dir is not None else frontend_dir()
    wanted = set(FRONTEND_ASSETS if force else ())
    if not force:
        missing = set(missing_frontend_assets(root))
        wanted = {a for a in FRONTEND_ASSETS if a.dest in missing}
    written: list[Path] = []
    if wanted:
        npm_exe = shutil.which(npm)
        if npm_exe is None:
            raise InputError(NPM_MISSING_MESSAGE)
        specs = sorted({a.spec for a in wanted})
        with tempfile.TemporaryDirectory(prefix="visdom-assets-") as tmp:
            cmd = [npm_exe, "pack", "--prefer-offline", "--silent", *specs]
            try:
                proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise InputError(f"`npm pack` took longer than {timeout_s:g} s; check the npm registry access") \
                    from None
            except OSError as exc:
                raise InputError(f"cannot run {npm_exe}: {exc.strerror or exc}") from None
            if proc.returncode != 0:
                raise InputError(
                    f"`npm pack` could not fetch the dashboard's front-end files ({_npm_failure(proc)}); "
                    "npm needs its registry or a cache that already holds these packages"
                )
            tarballs: dict[str, Path] = {}
            for tgz in Path(tmp).glob("*.tgz"):
                with tarfile.open(tgz, "r:gz") as tf:
                    pid = _package_id(tf)
                if pid is not None:
                    tarballs[f"{pid[0]}@{pid[1]}"] = tgz
            for spec in specs:
                if spec not in tarballs:
                    raise InputError(f"`npm pack` did not produce {spec}")
                todo = [a for a in wanted if a.spec == spec]
                with tarfile.open(tarballs[spec], "r:gz") as tf:
                    members = {m.name.split("/", 1)[1]: m for m in tf.getmembers()
                               if m.isfile() and "/" in m.name}
                    for asset in todo:
                        member = members.get(asset.member)
                        if member is None:
                            raise InputError(f"npm package {spec} has no file {asset.member}")
                        data = tf.extractfile(member).read()
                        dest = root / asset.dest
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_bytes(dest, data)
                        written.append(dest)
    return written


def ensure_frontend_assets(static_dir: str | os.PathLike | None = None, *, npm: str = "npm") -> list[Path]:
    """Make sure the web page's front-end files are installed; fetch the missing ones (see
    :func:`fetch_frontend_assets`). Returns the paths written (empty when nothing was missing)."""
    written = fetch_frontend_assets(static_dir, npm=npm)
    still = missing_frontend_assets(static_dir)
    if still:
        raise InputError(f"front-end files still missing after npm: {', '.join(still)}")
    return written


def _static_handler_class():
    """tornado's StaticFileHandler, except that a link outside the static folder gets no version hash.

    visdom 0.2.4's page links its user stylesheet as ``static_url("../user/style.css")`` (served by visdom's
    ``/user/`` handler). tornado >= 6.5 refuses to version a path outside the static root with HTTP 403, which made
    the whole page fail to render; older tornado logged an error and returned the plain URL, which is what this does.
    """
    import tornado.web

    class _StaticFiles(tornado.web.StaticFileHandler):
        @classmethod
        def get_version(cls, settings, path):
            try:
                return super().get_version(settings, path)
            except tornado.web.HTTPError:
                return None

    return _StaticFiles


def serve(
    *,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    env_path: str | os.PathLike | None = None,
    static_dir: str | os.PathLike | None = None,
    quiet_requests: bool = True,
) -> None:
    """Run a visdom server on ``host:port`` until interrupted, without visdom's download step.

    ``env_path`` is the folder where visdom keeps its environments as JSON (default: visdom's ``~/.visdom/``);
    ``static_dir`` the page's static files (default :func:`frontend_dir`; visdom's shipped files are synced into it
    first). Uses visdom's own tornado ``Application`` and page; binding goes to ``host`` only (127.0.0.1 by
    default). Raises :class:`InputError` when the port cannot be bound (in use, or a privileged port) or a folder
    cannot be written.
    """
    import tornado.ioloop
    from visdom.server import app as visdom_app
    from visdom.server.defaults import DEFAULT_ENV_PATH

    if not 0 < int(port) < 65536:
        raise InputError(f"port must be in 1..65535, got {port}")
    env_dir = str(Path(env_path).expanduser().resolve()) if env_path is not None else DEFAULT_ENV_PATH
    static = Path(static_dir) if static_dir is not None else frontend_dir()
    for what, folder in (("env", Path(env_dir)), ("static-files", static)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the {what} folder {folder}: {exc.strerror or exc}") from None
    try:
        sync_shipped_static(static)
    except OSError as exc:
        raise InputError(f"cannot copy visdom's page into {static}: {exc.strerror or exc}") from None
    if quiet_requests:
        logging.getLogger("tornado.access").setLevel(logging.WARNING)
    # visdom runs tornado in debug mode, which turns on autoreload: editing any imported source file (a `git pull`
    # in this repository) would restart the server and drop every plot. Debug mode only sets these if unset.
    visdom_app.tornado_settings.update(autoreload=False, serve_traceback=False, static_path=str(static),
                                       template_path=str(static))
    visdom_app.tornado_settings["static_handler_class"] = _static_handler_class()  # see its docstring
    app = visdom_app.Application(port=int(port), base_url="", env_path=env_dir)
    try:
        app.listen(int(port), address=host, max_buffer_size=1024 ** 3)
    except OSError as exc:
        hint = "; is a dashboard already running there? choose another --port" if exc.errno == errno.EADDRINUSE else ""
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None
    shown = host if host not in ("", "0.0.0.0", "::") else socket.gethostname()
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"dashboard: http://{shown}:{port}  (visdom env files in {env_dir}; page files in {static}; "
          "Ctrl-C stops it)", flush=True)
    tornado.ioloop.IOLoop.current().start()


def exposure_warning(host: str) -> str | None:
    """A warning line when ``host`` makes the server reachable from other machines, else None."""
    if _is_loopback(host):
        return None
    return (
        f"warning: the dashboard listens on {host or 'all interfaces'}: anyone who can reach this machine can read "
        "and change it (visdom has no login here). Prefer the default 127.0.0.1 and an ssh tunnel: "
        "ssh -L 8097:127.0.0.1:8097 user@this-machine"
    )


__all__ = [
    "Dashboard",
    "FRONTEND_ASSETS",
    "FrontendAsset",
    "IMAGE_WINDOW",
    "LOSS_WINDOW",
    "LR_WINDOW",
    "SPEED_WINDOW",
    "cache_root",
    "ensure_frontend_assets",
    "exposure_warning",
    "fetch_frontend_assets",
    "frontend_dir",
    "missing_frontend_assets",
    "panel_grid",
    "read_log",
    "serve",
    "sync_shipped_static",
    "visdom_static_dir",
    "window_for",
]
