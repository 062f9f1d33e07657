"""Speed benchmark: pyro_vae against the conventional Pyro loop and plain PyTorch, side by side.
``python scripts/benchmark.py --data-dir ../shared/data`` (``--help`` lists every flag)."""

from pyro_vae.cli import benchmark_main

if __name__ == "__main__":
    raise SystemExit(benchmark_main())
