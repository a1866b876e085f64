"""Command-line shim: runs :mod:`stem_denoise.commands.ablation` (``--help`` for its options)."""
from stem_denoise.commands.ablation import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
