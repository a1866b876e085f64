"""Command-line shim: ``python scripts/ablation.py`` runs :mod:`stem_denoise.commands.ablation` (see its help)."""
from stem_denoise.commands.ablation import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
