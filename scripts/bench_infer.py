"""Command-line shim: ``python scripts/bench_infer.py`` runs :mod:`stem_denoise.commands.bench_infer` (see its help)."""
from stem_denoise.commands.bench_infer import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
