"""Command-line shim: ``python scripts/finetune_study.py`` runs :mod:`stem_denoise.commands.finetune_study` (see its help)."""
from stem_denoise.commands.finetune_study import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
