"""The command-line jobs, one module per job, each with ``main(argv)`` (see :mod:`stem_denoise.cli`)."""
