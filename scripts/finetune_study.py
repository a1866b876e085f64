"""Command-line shim: runs :mod:`stem_denoise.commands.finetune_study` (``--help`` for its options)."""
from stem_denoise.commands.finetune_study import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
