"""Cut scikit-image's colour photographs into 32x32 tiles with a fixed train/test split, for measuring
8-bit likelihoods (bits/dim) against lossless PNG and WebP: ``python scripts/make_photo_tiles.py OUT``.

Every photograph is cut into non-overlapping tiles on a grid from its top-left corner; a seeded draw
puts ``--test-fraction`` of each photograph's tiles in ``OUT/test/`` and the rest in ``OUT/train/``,
so every photograph is in both splits and no test pixel is in a training tile. The tiles are PNG, so
they are the photographs' exact 8-bit values. Train on them with
``pyro-vae-train --dataset folder --data-dir OUT --likelihood discretized-mixture --net conv``.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from pyro_vae.errors import ConfigError, OneLineParser, run_script
from pyro_vae.files import check_out_folder

# the photographs of everyday scenes that ship inside the scikit-image wheel (no download): colour,
# 8 bits per channel; the synthetic ones (colorwheel, logo) and the mostly-black retina are left out
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "stereo_motorcycle")


def _refuse(message: str) -> None:
    raise ConfigError(message)


def photographs() -> dict[str, np.ndarray]:
    """Each photograph as ``(H, W, 3)`` uint8."""
    import skimage.data

    out = {}
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
            img = img[0]
        out[name] = np.asarray(img)[..., :3]
    return out


def main() -> int:
    p = OneLineParser(prog="make_photo_tiles.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write: OUT/train/ and OUT/test/")
    p.add_argument("--size", type=int, default=32, help="side of each tile in pixels (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="tiles of each photograph held out")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default %(default)s)")
    args = p.parse_args()
    return run_script(lambda: write_tiles(args))


def write_tiles(args) -> None:
    if not 4 <= args.size <= 256:
        _refuse(f"--size must be from 4 to 256 pixels, got {args.size}")
    if not 0 < args.test_fraction < 1:
        _refuse(f"--test-fraction must be between 0 and 1, got {args.test_fraction}; e.g. 0.1")
    if not 0 <= args.seed < 2**32:
        _refuse(f"--seed must be an integer from 0 to {2**32 - 1}, got {args.seed}")
    out = Path(args.out)
    check_out_folder(out, "OUT")
    if out.exists() and any(out.iterdir()):
        _refuse(f"{out} exists and is not an empty folder; pass a new folder")
    try:
        photos = photographs()
    except ImportError:
        _refuse("scikit-image is needed for its photographs: pip install scikit-image (or pip install -e '.[dev]')")
    rng = np.random.default_rng(args.seed)
    counts = {"train": 0, "test": 0}
    for split in counts:
        (out / split).mkdir(parents=True, exist_ok=True)
    s = args.size
    for name, img in photos.items():
        rows, cols = img.shape[0] // s, img.shape[1] // s
        n = rows * cols
        test = set(rng.permutation(n)[: max(1, round(n * args.test_fraction))].tolist())
        for i in range(n):
            r, c = divmod(i, cols)
            split = "test" if i in test else "train"
            Image.fromarray(img[r * s : (r + 1) * s, c * s : (c + 1) * s]).save(out / split / f"{name}-{i:04d}.png")
            counts[split] += 1
    print(f"wrote {counts['train']} training and {counts['test']} test tiles of {s}x{s} from {len(photos)} photographs")
    print(f"to {out}")


if __name__ == "__main__":
    raise SystemExit(main())
