"""Speed benchmark, side by side in one run: this library's training path against the reference loops
(:mod:`~pyro_vae.benchmark.baselines`), and the batched importance-sampled evaluation against a
per-image loop (:mod:`~pyro_vae.benchmark.run`); and where one step's time goes beyond the plain-PyTorch floor
(:mod:`~pyro_vae.benchmark.breakdown`)."""

from pyro_vae.benchmark.breakdown import format_breakdown, step_breakdown
from pyro_vae.benchmark.config import PATH_NOTES, PATHS, REFERENCES, BenchmarkConfig
from pyro_vae.benchmark.run import format_results, run_benchmark, save

__all__ = [
    "PATHS",
    "PATH_NOTES",
    "REFERENCES",
    "BenchmarkConfig",
    "format_breakdown",
    "format_results",
    "run_benchmark",
    "save",
    "step_breakdown",
]
