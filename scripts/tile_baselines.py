"""Bits/dim of the test tiles without a VAE, to put beside a model's: lossless PNG and lossless WebP (each
tile compressed on its own, as a model scores it, file headers included), and the no-latent model (one
discretised logistic per channel: location the training mean, one scale fitted on the training tiles).

``python scripts/tile_baselines.py TILES`` where TILES was written by ``scripts/make_photo_tiles.py``
(colour or grayscale tiles: one channel when every tile is grayscale, as the folder dataset reads them).
``--run RUN`` also scores a run trained on TILES, tile by tile (importance sampling, ``--k`` draws), and
prints its difference from each baseline with the paired standard error over the tiles, then the same per
photograph (the tile names' prefix) and for the flat tiles (every channel's spread under 2 levels).
"""

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pyro_vae.errors import ConfigError, OneLineParser, run_script
from pyro_vae.files import check_writable_file
from pyro_vae.parts.discrete import discretized_logistic_log_prob


def _refuse(message: str) -> None:
    raise ConfigError(message)


def tile_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        _refuse(f"no PNG tiles in {folder}; write them with scripts/make_photo_tiles.py")
    return files


def load(folder: Path, gray: bool = False) -> np.ndarray:
    """The tiles ``(N, H, W, C)`` uint8, C = 1 with ``gray`` else 3."""
    files = tile_files(folder)
    tiles = []
    for p in files:
        try:
            with Image.open(p) as img:
                t = np.asarray(img.convert("L" if gray else "RGB"))
                tiles.append(t[..., None] if gray else t)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            _refuse(f"{p} is not a readable image ({type(exc).__name__}); remove it or write the tiles again")
    shapes = [t.shape for t in tiles]
    usual = max(set(shapes), key=shapes.count)  # the size most tiles have; the odd ones are named
    for p, t in zip(files, tiles, strict=True):
        if t.shape != usual:
            _refuse(f"{p} is {t.shape[1]}x{t.shape[0]}, the other tiles {usual[1]}x{usual[0]}; a set shares one size")
    return np.stack(tiles)  # (N, H, W, C)


def all_gray(folder: Path) -> bool:
    """Whether every tile is grayscale: the folder dataset then reads one channel."""
    modes = set()
    for p in tile_files(folder):
        try:
            with Image.open(p) as img:
                modes.add(img.mode)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            _refuse(f"{p} is not a readable image ({type(exc).__name__}); remove it or write the tiles again")
    return modes <= {"L", "1", "I;16", "I", "F", "LA"}


def compressed_bits_per_dim(tiles: np.ndarray, fmt: str, **options) -> np.ndarray:
    """Each tile's file size in bits over its number of values."""
    out = []
    for t in tiles:
        buf = io.BytesIO()
        Image.fromarray(t[..., 0] if t.shape[-1] == 1 else t).save(buf, format=fmt, **options)
        out.append(8 * buf.tell() / t.size)
    return np.array(out)


def no_latent_bits_per_dim(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per tile, −log2 p(tile) / dims under independent discretised logistics per channel: location the
    training mean of the channel, one scale for all, fitted by maximum likelihood on the training tiles."""
    tr = torch.tensor(train, dtype=torch.float64).permute(0, 3, 1, 2)
    te = torch.tensor(test, dtype=torch.float64).permute(0, 3, 1, 2)
    c = tr.shape[1]
    loc = tr.mean((0, 2, 3)).view(1, c, 1, 1)
    # the training likelihood from the (channel, value) counts: C x 256 terms per scale tried
    counts = torch.stack([torch.bincount(tr[:, i].flatten().long(), minlength=256) for i in range(c)]).double()
    values = torch.arange(256, dtype=torch.float64)
    scales = torch.exp(torch.linspace(0, 6, 601, dtype=torch.float64))  # 1 to 400 pixels, steps of 1%
    lp = discretized_logistic_log_prob(values.view(1, 1, 256), loc.view(1, c, 1), scales.view(-1, 1, 1))
    scale = scales[(lp * counts).sum((1, 2)).argmax()]
    lp = discretized_logistic_log_prob(te, loc, scale).sum((1, 2, 3))
    return (-lp / (te[0].numel() * math.log(2))).numpy()


def model_bits_per_dim(run_dir: str, test: np.ndarray, k: int) -> np.ndarray:
    """−log2 p̂(tile) / dims for each of ``test`` (N, H, W, C) under the run's model (IS with ``k`` draws),
    in the order of ``test``: the run's test images are matched to the tiles by their pixels."""
    from pyro_vae import load_run_and_data
    from pyro_vae.evaluate.estimators import importance_log_likelihood

    run = load_run_and_data(run_dir)
    x = run.x
    if tuple(x.shape[1:]) != (test.shape[3], *test.shape[1:3]):
        _refuse(f"the run {run_dir} models images {tuple(x.shape[1:])}, the tiles are {test.shape[1:]}; pass its tiles")
    where: dict[bytes, list[int]] = {}  # identical tiles (a flat black corner) share their pixels: a queue each
    for i, t in enumerate(test):
        where.setdefault(t.tobytes(), []).append(i)
    try:
        order = [
            where[np.ascontiguousarray(xi.permute(1, 2, 0).cpu().numpy().astype(np.uint8)).tobytes()].pop(0) for xi in x
        ]
    except (KeyError, IndexError):
        _refuse(f"the run {run_dir} was not evaluated on these test tiles; pass the tiles it was trained on")
    if sorted(order) != list(range(len(test))):
        _refuse(f"the run {run_dir} has {len(x)} test images, not these {len(test)} tiles; pass its tiles")
    with run.vae.registration(False):
        log_p = importance_log_likelihood(run.vae, x, k, batch_size=20)[k].cpu().double().numpy()
    bits = np.empty(len(test))
    bits[order] = -log_p / (x[0].numel() * math.log(2))
    return bits


def by_group(folder: Path, test: np.ndarray, bits: np.ndarray, rows: dict[str, np.ndarray]) -> dict[str, dict]:
    """Bits/dim of the run, PNG and WebP per photograph (the tile names' prefix before the last ``-``) and for
    the flat tiles (every channel's spread under 2 levels), with the paired s.e. of run − PNG."""
    names = [p.stem.rsplit("-", 1)[0] for p in tile_files(folder)]
    png, webp = rows["PNG, lossless (PIL, optimize)"], rows["WebP, lossless (PIL, method 6)"]
    spread = (test.max((1, 2)).astype(int) - test.min((1, 2)).astype(int)).max(1)  # per tile, its widest channel
    masks = {f"photo {n}": np.array([m == n for m in names]) for n in sorted(set(names))}
    masks["flat tiles (spread < 2)"] = spread < 2
    out = {}
    for name, m in masks.items():
        if not m.any():
            continue
        d = bits[m] - png[m]
        se = float(d.std(ddof=1) / math.sqrt(m.sum())) if m.sum() > 1 else math.nan
        out[name] = {
            "n": int(m.sum()),
            "run": float(bits[m].mean()),
            "png": float(png[m].mean()),
            "webp": float(webp[m].mean()),
            "se_png": se,
        }
    return out


def main() -> int:
    p = OneLineParser(prog="tile_baselines.py", description=__doc__.split("\n\n")[0])
    p.add_argument("tiles", help="folder with train/ and test/ tiles (scripts/make_photo_tiles.py)")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    p.add_argument("--run", default=None, help="a run trained on these tiles: its bits/dim, paired with each row")
    p.add_argument("--k", type=int, default=10, help="importance samples per tile for --run (default 10)")
    args = p.parse_args()
    return run_script(lambda: baselines(args))


def baselines(args) -> None:
    if args.out is not None:
        check_writable_file(args.out, "--out", "baselines.json")  # before the work, not after
    if args.k < 1:
        _refuse(f"--k must be at least 1, got {args.k}")
    root = Path(args.tiles)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        _refuse(f"{root} has no train/ and test/ folders; write them with scripts/make_photo_tiles.py")
    gray = all_gray(root / "train") and all_gray(root / "test")
    train, test = load(root / "train", gray), load(root / "test", gray)
    if len(test) < 2:
        _refuse(f"{root / 'test'} holds {len(test)} tile; a standard error needs at least 2")
    # the run first: a run that does not fit these tiles is refused before anything is printed
    bits = model_bits_per_dim(args.run, test, args.k) if args.run is not None else None
    rows = {
        "no-latent (discretised logistic per channel, one scale)": no_latent_bits_per_dim(train, test),
        "PNG, lossless (PIL, optimize)": compressed_bits_per_dim(test, "PNG", optimize=True),
        "WebP, lossless (PIL, method 6)": compressed_bits_per_dim(test, "WEBP", lossless=True, quality=100, method=6),
    }
    print(f"{len(test)} test tiles of {test.shape[1]}x{test.shape[2]}x{test.shape[3]} from {root}")
    result = {}
    for name, v in rows.items():
        mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))
        result[name] = {"bits_per_dim": mean, "se": se}
        print(f"{name:<58} {mean:6.3f} ± {se:.3f} bits/dim")
    if bits is not None:
        mean, se = float(bits.mean()), float(bits.std(ddof=1) / math.sqrt(len(bits)))
        result["run"] = {"path": args.run, "k": args.k, "bits_per_dim": mean, "se": se, "paired": {}}
        print(f"{'the run ' + args.run + f' (IS, K = {args.k})':<58} {mean:6.3f} ± {se:.3f} bits/dim")
        for name, v in rows.items():
            d = bits - v
            diff, dse, lower = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), float((d < 0).mean())
            result["run"]["paired"][name] = {"difference": diff, "se": dse, "lower_on": lower}
            print(f"  run − {name:<51} {diff:+6.3f} ± {dse:.3f} (paired; the run lower on {lower:.0%} of tiles)")
        result["run"]["groups"] = groups = by_group(root / "test", test, bits, rows)
        print(f"{'tiles':<28} {'n':>4} {'run':>6} {'PNG':>6} {'WebP':>6}  run − PNG (paired s.e.)")
        for name, g in groups.items():
            print(
                f"{name:<28} {g['n']:>4} {g['run']:6.3f} {g['png']:6.3f} {g['webp']:6.3f}  "
                f"{g['run'] - g['png']:+.3f} ± {g['se_png']:.3f}"
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"tiles": str(root), "num_test": len(test), "rows": result}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
