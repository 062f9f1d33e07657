"""Command-line entry points. They parse flags into a config and call the library;
user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence

from pyro_vae.config import DATASETS, DEVICES, ELBOS, NETS, TrainConfig
from pyro_vae.errors import PyroVAEError


def train_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="pyro-vae-train",
        description="Train a Pyro VAE with SVI on binarized MNIST or Fashion-MNIST.",
    )
    a = p.add_argument
    a("--dataset", choices=DATASETS, default=d.dataset, help="dataset (default %(default)s)")
    a("--data-dir", default=d.data_dir, help="root in torchvision's layout, <dir>/MNIST/raw/ (default %(default)s)")
    a("--no-download", dest="download", action="store_false", help="fail instead of downloading missing files")
    a("--net", choices=NETS, default=d.net, help="encoder/decoder pair (default %(default)s)")
    a("--z-dim", type=int, default=d.z_dim, help="latent size (default %(default)s)")
    a("--hidden", type=int, nargs="+", default=list(d.hidden), help="MLP hidden widths (default %(default)s)")
    a("--epochs", type=int, default=d.epochs, help="passes over the training set (default %(default)s)")
    a("--batch-size", type=int, default=d.batch_size, help="images per SVI step (default %(default)s)")
    a("--lr", type=float, default=d.lr, help="Adam learning rate (default %(default)s)")
    a(
        "--elbo",
        choices=ELBOS,
        default=d.elbo,
        help="mc: Trace_ELBO; analytic: TraceMeanField_ELBO, closed-form KL (default %(default)s)",
    )
    a("--device", choices=DEVICES, default=d.device, help="auto: CUDA when present (default %(default)s)")
    a("--seed", type=int, default=d.seed, help="seed of init, z draws, shuffling, binarization (default %(default)s)")
    a(
        "--test-binarization-seed",
        type=int,
        default=d.test_binarization_seed,
        help="seed of the one fixed binarization of the test set (default %(default)s)",
    )
    a("--limit-train", type=int, default=d.limit_train, help="use only the first N training images")
    a("--limit-test", type=int, default=d.limit_test, help="use only the first N test images")
    a("--eval-batch-size", type=int, default=d.eval_batch_size, help="test images per chunk (default %(default)s)")
    a("--log-every", type=int, default=d.log_every, help="steps between loss read-outs (default %(default)s)")
    a("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="keep only the newest N (default: all)")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    a("--out", default=d.out, help="run folder (default runs/<dataset>-<net>-<elbo>-<date>-<time>)")
    return p


def _run(fn: Callable[[], None]) -> int:
    try:
        fn()
    except PyroVAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """``pyro-vae-train``: parse flags, train, print where the run went."""
    args = vars(train_parser().parse_args(argv))
    args["hidden"] = tuple(args["hidden"])
    config = TrainConfig(**{f.name: args[f.name] for f in dataclasses.fields(TrainConfig)})

    def go() -> None:
        from pyro_vae.training import train

        result = train(config)
        last = result.metrics[-1]
        print(
            f"done: {result.run_dir}  epoch {last['epoch']:.0f}  "
            f"test loss {last['test_loss']:.2f} nats/image  ({result.config.elbo} ELBO, {result.config.device})"
        )

    return _run(go)
