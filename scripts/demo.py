"""Command-line shim: runs :mod:`stem_denoise.commands.demo` (``--help`` for its options)."""
from stem_denoise.commands.demo import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
