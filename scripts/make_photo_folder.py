"""Write a folder of square photo crops from the photographs that ship with scikit-image (a dev extra),
for trying and timing ``--dataset folder``: ``python scripts/make_photo_folder.py OUT --count 5000 --size 128``."""

from pathlib import Path

import numpy as np
from PIL import Image

from pyro_vae.errors import ConfigError, OneLineParser, run_script
from pyro_vae.files import check_out_folder

PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "rocket", "moon", "page")
SMALLEST_SIDE = 191  # "page" is 191 x 384: every crop must fit in every photograph


def _refuse(message: str) -> None:
    raise ConfigError(message)


def main() -> int:
    p = OneLineParser(prog="make_photo_folder.py", description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write (one subfolder per photograph: the classes)")
    p.add_argument("--count", type=int, default=5000, help="crops in all (default %(default)s)")
    p.add_argument("--size", type=int, default=128, help="side of each crop in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    return run_script(lambda: write_crops(args))


def write_crops(args) -> None:
    if args.count < 1:
        _refuse(f"--count must be a positive number of crops, got {args.count}")
    if not 1 <= args.size <= SMALLEST_SIDE:
        _refuse(f"--size must be from 1 to {SMALLEST_SIDE} pixels (the smallest photograph's side), got {args.size}")
    if not 0 <= args.seed < 2**32:
        _refuse(f"--seed must be an integer from 0 to {2**32 - 1}, got {args.seed}")
    out = Path(args.out)
    check_out_folder(out, "OUT")
    try:
        import skimage.data
    except ImportError:
        _refuse("scikit-image is needed for its photographs: pip install scikit-image (or pip install -e '.[dev]')")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _refuse(f"cannot create {out} ({exc.strerror or exc}); pass another folder")

    rng = np.random.default_rng(args.seed)
    photos = {name: np.asarray(getattr(skimage.data, name)()) for name in PHOTOS}
    for i in range(args.count):
        name = PHOTOS[i % len(PHOTOS)]
        img = photos[name]
        y = rng.integers(0, img.shape[0] - args.size + 1)
        x = rng.integers(0, img.shape[1] - args.size + 1)
        folder = out / name
        folder.mkdir(exist_ok=True)
        # a third as JPEG, the rest PNG: both decoders are exercised
        ext = "jpg" if i % 3 == 0 else "png"
        Image.fromarray(img[y : y + args.size, x : x + args.size]).save(folder / f"{i:05d}.{ext}")
    print(f"wrote {args.count} crops of {args.size}x{args.size} to {out}")


if __name__ == "__main__":
    raise SystemExit(main())
