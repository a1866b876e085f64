"""Command-line shim: ``python scripts/dip_denoise.py`` runs :mod:`stem_denoise.commands.dip_denoise` (see its help)."""
from stem_denoise.commands.dip_denoise import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
