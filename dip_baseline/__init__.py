"""Deep Image Prior baseline: one freshly initialised network fitted to each micrograph.

* :mod:`dip_baseline.net` -- the encoder-decoder "skip" network of the DIP paper, every setting of seed 002.
* :mod:`dip_baseline.presets` -- ``ulyanov`` (the paper's recipe), ``microscopy`` (seed 002's best) and ``light``
  (the CPU-sized default).
* :mod:`dip_baseline.lanczos` -- the Lanczos downsampler of the super-resolution data term.
* :mod:`dip_baseline.stopping` -- fixed, oracle (benchmarks only) and automatic stopping rules.
* :mod:`dip_baseline.optimize` -- the optimisation on normalised arrays (:func:`~dip_baseline.optimize.fit_dip`).
* :mod:`dip_baseline.api` -- :func:`~dip_baseline.api.dip_denoise`: physical units, any size and dtype, tiles.
"""
