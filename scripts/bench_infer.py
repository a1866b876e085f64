"""Command-line shim: runs :mod:`stem_denoise.commands.bench_infer` (``--help`` for its options)."""
from stem_denoise.commands.bench_infer import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
