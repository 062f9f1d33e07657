"""Held-out evaluation from the Pyro traces of a model/guide pair.

* :func:`elbo_terms`: the ELBO per data point, split into the expected
  reconstruction log-likelihood and the KL term, with the KL either Monte-Carlo
  (as ``Trace_ELBO``) or closed-form where one exists (as ``TraceMeanField_ELBO``).
* :func:`importance_log_likelihood`: log p(x) ≈ logsumexp_k [log p(x, z_k) − log q(z_k|x)] − log K,
  z_k ~ q(z|x), vectorised over data points and samples and streamed over chunks of
  samples, so K = 5000 fits in memory. Every requested K is read off one pass over
  the samples (the first K of them), so K = 1, 50, 1000, 5000 cost one K = 5000 pass.
  For a given K the expectation of the estimate is the IWAE bound L_K.

Both work for any model whose data points sit in ``pyro.plate("data")`` and whose
guide has a sample site for each latent site of the model: the samples get an
extra ``pyro.plate("particles")`` to the left of the model's plates.

* :func:`evaluate` (:mod:`~pyro_vae.evaluate.report`) gathers both ELBOs, the active units and
  −log p(x) for each K, and :func:`format_table` prints them.
* :func:`evaluate_run` (:mod:`~pyro_vae.evaluate.run`) scores a run folder, as ``pyro-vae-evaluate`` does.
"""

from pyro_vae.evaluate.estimators import (
    DEFAULT_CHUNK_ELEMENTS,
    ELBO_CHUNK_ELEMENTS,
    MAX_K,
    Estimate,
    _particle_traces,  # noqa: F401  (the tests reach it here)
    elbo_terms,
    importance_log_likelihood,
    log_importance_weights,
    prepare_inputs,
    sample_counts,
    seeded,
)
from pyro_vae.evaluate.report import (
    ACTIVE_UNIT_THRESHOLD,
    active_units,
    bits_per_dim,
    check_arguments,
    evaluate,
    format_table,
)
from pyro_vae.evaluate.run import EvalConfig, evaluate_run

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "DEFAULT_CHUNK_ELEMENTS",
    "ELBO_CHUNK_ELEMENTS",
    "MAX_K",
    "Estimate",
    "EvalConfig",
    "active_units",
    "bits_per_dim",
    "check_arguments",
    "elbo_terms",
    "evaluate",
    "evaluate_run",
    "format_table",
    "importance_log_likelihood",
    "log_importance_weights",
    "prepare_inputs",
    "sample_counts",
    "seeded",
]
