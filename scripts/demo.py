"""Command-line shim: ``python scripts/demo.py`` runs :mod:`stem_denoise.commands.demo` (see its help)."""
from stem_denoise.commands.demo import main
from stem_denoise.common.cli import run_main

if __name__ == "__main__":
    run_main(main)
