"""Command-line shim: ``python scripts/dashboard.py`` runs :mod:`stem_denoise.commands.dashboard` (see its help)."""
from stem_denoise.commands.dashboard import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
