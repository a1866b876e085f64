"""Command-line shim: ``python scripts/train_cyclegan.py`` runs :mod:`stem_denoise.commands.train_cyclegan` (see its help)."""
from stem_denoise.commands.train_cyclegan import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
