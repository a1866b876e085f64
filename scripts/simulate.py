"""Command-line shim: ``python scripts/simulate.py`` runs :mod:`stem_denoise.commands.simulate` (see its help)."""
from stem_denoise.commands.simulate import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
