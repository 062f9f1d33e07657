"""Bits/dim of the test tiles without a VAE, to put beside a model's: lossless PNG and lossless WebP (each
tile compressed on its own, as a model scores it, file headers included), and the no-latent model (one
discretised logistic per channel: location the training mean, one scale fitted on the training tiles).

``python scripts/tile_baselines.py TILES`` where TILES was written by ``scripts/make_photo_tiles.py``.
"""

import argparse
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pyro_vae.parts.discrete import discretized_logistic_log_prob


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(folder: Path) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        _refuse(f"no PNG tiles in {folder}; write them with scripts/make_photo_tiles.py")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])  # (N, H, W, 3)


def compressed_bits_per_dim(tiles: np.ndarray, fmt: str, **options) -> np.ndarray:
    """Each tile's file size in bits over its number of values."""
    out = []
    for t in tiles:
        buf = io.BytesIO()
        Image.fromarray(t).save(buf, format=fmt, **options)
        out.append(8 * buf.tell() / t.size)
    return np.array(out)


def no_latent_bits_per_dim(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per tile, −log2 p(tile) / dims under independent discretised logistics per channel: location the
    training mean of the channel, one scale for all, fitted by maximum likelihood on the training tiles."""
    tr = torch.tensor(train, dtype=torch.float64).permute(0, 3, 1, 2)
    te = torch.tensor(test, dtype=torch.float64).permute(0, 3, 1, 2)
    loc = tr.mean((0, 2, 3)).view(1, 3, 1, 1)
    # the training likelihood from the (channel, value) counts: 3 x 256 terms per scale tried
    counts = torch.stack([torch.bincount(tr[:, c].flatten().long(), minlength=256) for c in range(3)]).double()
    values = torch.arange(256, dtype=torch.float64)
    scales = torch.exp(torch.linspace(0, 6, 601, dtype=torch.float64))  # 1 to 400 pixels, steps of 1%
    lp = discretized_logistic_log_prob(values.view(1, 1, 256), loc.view(1, 3, 1), scales.view(-1, 1, 1))
    scale = scales[(lp * counts).sum((1, 2)).argmax()]
    lp = discretized_logistic_log_prob(te, loc, scale).sum((1, 2, 3))
    return (-lp / (te[0].numel() * math.log(2))).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tiles", help="folder with train/ and test/ tiles (scripts/make_photo_tiles.py)")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    args = p.parse_args()
    root = Path(args.tiles)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        _refuse(f"{root} has no train/ and test/ folders; write them with scripts/make_photo_tiles.py")
    train, test = load(root / "train"), load(root / "test")
    rows = {
        "no-latent (discretised logistic per channel, one scale)": no_latent_bits_per_dim(train, test),
        "PNG, lossless (PIL, optimize)": compressed_bits_per_dim(test, "PNG", optimize=True),
        "WebP, lossless (PIL, method 6)": compressed_bits_per_dim(test, "WEBP", lossless=True, quality=100, method=6),
    }
    print(f"{len(test)} test tiles of {test.shape[1]}x{test.shape[2]}x3 from {root}")
    result = {}
    for name, v in rows.items():
        mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))
        result[name] = {"bits_per_dim": mean, "se": se}
        print(f"{name:<58} {mean:6.3f} ± {se:.3f} bits/dim")
    if args.out:
        Path(args.out).write_text(json.dumps({"tiles": str(root), "num_test": len(test), "rows": result}, indent=1))


if __name__ == "__main__":
    main()
