"""Start the visdom dashboard server for watching training live, without internet access.

    python scripts/dashboard.py [--port 8097] [--host 127.0.0.1] [--env-path DIR]
    python scripts/dashboard.py --fetch-assets        # only install the web page's front-end files, then exit

visdom's own start-up downloads the page's JavaScript/CSS from CDNs and crashes offline; this script starts
visdom's server without that step. The page's front-end files are fetched once with `npm pack` into a user cache
folder ($STEM_DENOISE_CACHE, else ~/.cache/stem-denoise; never into the installed visdom package), done
automatically when missing; see cyclegan/dashboard.py. It listens on 127.0.0.1 only; for a
remote machine use an ssh tunnel (ssh -L 8097:127.0.0.1:8097 user@host) rather than --host 0.0.0.0.
"""
from __future__ import annotations

import argparse
import logging
import sys

from cyclegan.dashboard import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ensure_frontend_assets,
    exposure_warning,
    fetch_frontend_assets,
    frontend_dir,
    missing_frontend_assets,
    serve,
)
from stem_denoise.common.cli import ArgumentParser, run_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Start the visdom training dashboard (works offline).",
        epilog="Remote machine: keep --host 127.0.0.1 and tunnel: ssh -L 8097:127.0.0.1:8097 user@host",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default %(default)s)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind (default %(default)s, this machine only; 0.0.0.0 = all interfaces)")
    p.add_argument("--env-path", default=None,
                   help="folder where visdom keeps its environments as JSON (default: ~/.visdom/)")
    p.add_argument("--fetch-assets", action="store_true",
                   help="install the web page's front-end files with npm, then exit")
    p.add_argument("--no-assets", action="store_true",
                   help="start even if the front-end files are missing (API only: the page will not render)")
    p.add_argument("--npm", default="npm", help="npm executable (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.fetch_assets:
        written = fetch_frontend_assets(npm=args.npm)
        print(f"front-end files: {len(written)} written, all present in {frontend_dir()}")
        return 0
    if args.no_assets:
        missing = missing_frontend_assets()
        if missing:
            print(f"warning: {len(missing)} front-end files missing; the page will not render until "
                  "`python scripts/dashboard.py --fetch-assets` has run", file=sys.stderr)
    else:
        written = ensure_frontend_assets(npm=args.npm)
        if written:
            print(f"front-end files: {len(written)} installed in {frontend_dir()}")
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    try:
        serve(port=args.port, host=args.host, env_path=args.env_path)
    except KeyboardInterrupt:
        print("dashboard stopped")
    return 0


if __name__ == "__main__":
    # visdom imports torch only to recognise tensors, which the server never receives; skipping that import
    # cuts seconds from the start-up. (Only here, in the server's own process.)
    sys.modules.setdefault("torch", None)
    run_main(main)
