"""Command-line shim: ``python scripts/prepare_data.py`` runs :mod:`stem_denoise.commands.prepare_data` (see its help)."""
from stem_denoise.commands.prepare_data import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
