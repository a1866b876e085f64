"""Benchmarking the denoisers against simulated micrographs with known truth.

* :mod:`stem_denoise.evaluation.metrics` -- PSNR/SSIM, column detection (precision, recall, F1, RMSE), hallucinated
  and lost columns, column-intensity and dent fidelity.
* :mod:`stem_denoise.evaluation.filters` -- classical filters: Gaussian (oracle sigma), median, NLM and optional
  BM3D in the Anscombe domain, and the Bragg-peak (periodic) Fourier filter.
* :mod:`stem_denoise.evaluation.benchmark` -- test set, pluggable methods (CycleGAN and DIP through lazy adapters),
  the run.
* :mod:`stem_denoise.evaluation.report` -- results.csv, results.md, figure panels and dose plots.
"""
