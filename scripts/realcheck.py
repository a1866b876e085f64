"""Command-line shim: runs :mod:`stem_denoise.commands.realcheck` (``--help`` for its options)."""
from stem_denoise.commands.realcheck import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
