"""Command-line shim: ``python scripts/bench_dip.py`` runs :mod:`stem_denoise.commands.bench_dip` (see its help)."""
from stem_denoise.commands.bench_dip import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
