"""A plain-PyTorch replica of pythae's reproduction of the binarized-MNIST VAE (784-400-40, ReLU, the
exp(log_var / 2) posterior scale, sigmoid + binary cross-entropy, closed-form KL, torch Adam, batch 100),
written apart from this library, to compare its per-epoch validation -ELBO with a ``vae-static-mnist`` run's
``metrics.csv``: ``python scripts/plain_vae_replica.py --data-dir data --epochs 30``.

Prints ``epoch,train -ELBO,validation -ELBO,seconds`` per epoch (nats per image).
"""

import gzip
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def load(data_dir: Path, split: str, limit: int | None) -> torch.Tensor:
    path = data_dir / "binarized_mnist" / f"binarized_mnist_{split}.amat.gz"
    if not path.exists():
        from pyro_vae.errors import DataError

        raise DataError(f"{path} not found; pass --data-dir holding binarized_mnist/")
    with gzip.open(path) as f:
        x = torch.tensor(np.loadtxt(f, max_rows=limit), dtype=torch.float32)
    return x


def main() -> int:
    from pyro_vae.errors import OneLineParser, run_script

    p = OneLineParser(prog="plain_vae_replica.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder holding binarized_mnist/ (default %(default)s)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--limit", type=int, default=None, help="first N images of each split (smoke runs)")
    p.add_argument("--seed", type=int, default=123, help="pythae's seed (default %(default)s)")
    args = p.parse_args()
    return run_script(lambda: replicate(args))


def replicate(args) -> None:
    torch.manual_seed(args.seed)
    train, valid = load(Path(args.data_dir), "train", args.limit), load(Path(args.data_dir), "valid", args.limit)
    enc = nn.Sequential(nn.Linear(784, 400), nn.ReLU())
    mu_head, log_var_head = nn.Linear(400, 40), nn.Linear(400, 40)
    dec = nn.Sequential(nn.Linear(40, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid())
    params = [*enc.parameters(), *mu_head.parameters(), *log_var_head.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr)

    def loss(x: torch.Tensor) -> torch.Tensor:
        h = enc(x)
        mu, log_var = mu_head(h), log_var_head(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        rec = F.binary_cross_entropy(dec(z), x, reduction="none").sum(-1)
        kld = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)
        return (rec + kld).mean()

    print("epoch,train,valid,seconds")
    for epoch in range(1, args.epochs + 1):
        start, total = time.time(), 0.0
        for idx in torch.randperm(len(train)).split(100):
            batch_loss = loss(train[idx])
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
            total += batch_loss.item() * len(idx)
        with torch.no_grad():
            v = sum(loss(chunk).item() * len(chunk) for chunk in valid.split(1000)) / len(valid)
        print(f"{epoch},{total / len(train):.3f},{v:.3f},{time.time() - start:.1f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
