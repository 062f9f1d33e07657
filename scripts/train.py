"""Train a Pyro VAE with SVI. ``python scripts/train.py --help`` lists every flag."""

from pyro_vae.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
