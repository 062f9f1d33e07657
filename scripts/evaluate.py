"""Held-out ELBO and importance-sampled log-likelihood of a trained run.
``python scripts/evaluate.py RUN_DIR --k 5000`` (``--help`` lists every flag)."""

from pyro_vae.cli import evaluate_main

if __name__ == "__main__":
    raise SystemExit(evaluate_main())
