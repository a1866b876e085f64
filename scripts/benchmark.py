"""Command-line shim: ``python scripts/benchmark.py`` runs :mod:`stem_denoise.commands.benchmark` (see its help)."""
from stem_denoise.commands.benchmark import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
