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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    p.add_argument("--data-dir", default=d.data_dir, help="root in torchvision's layout (<dir>/MNIST/raw/...)")
    p.add_argument("--no-download", dest="download", action="store_false", help="never try to download")
    p.add_argument("--net", choices=NETS, default=d.net, help="encoder/decoder pair")
    p.add_argument("--z-dim", type=int, default=d.z_dim, help="latent size")
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden), help="MLP hidden widths")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument(
        "--elbo", choices=ELBOS, default=d.elbo, help="mc: Trace_ELBO; analytic: TraceMeanField_ELBO (closed-form KL)"
    )
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--test-binarization-seed", type=int, default=d.test_binarization_seed)
    p.add_argument("--limit-train", type=int, default=d.limit_train, help="use the first N training images")
    p.add_argument("--limit-test", type=int, default=d.limit_test, help="use the first N test images")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between loss read-outs")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="keep the newest N (default all)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--out", default=d.out, help="run folder (default runs/<dataset>-<net>-<elbo>-<time>)")
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
