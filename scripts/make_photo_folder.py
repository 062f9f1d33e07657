"""Write a folder of square photo crops from the photographs that ship with scikit-image (a dev extra),
for trying and timing ``--dataset folder``: ``python scripts/make_photo_folder.py OUT --count 5000 --size 128``."""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "rocket", "moon", "page")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", help="folder to write (one subfolder per photograph: the classes)")
    p.add_argument("--count", type=int, default=5000, help="crops in all (default %(default)s)")
    p.add_argument("--size", type=int, default=128, help="side of each crop in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import skimage.data

    rng = np.random.default_rng(args.seed)
    photos = {name: np.asarray(getattr(skimage.data, name)()) for name in PHOTOS}
    for i in range(args.count):
        name = PHOTOS[i % len(PHOTOS)]
        img = photos[name]
        y = rng.integers(0, img.shape[0] - args.size + 1)
        x = rng.integers(0, img.shape[1] - args.size + 1)
        folder = Path(args.out, name)
        folder.mkdir(parents=True, exist_ok=True)
        # a third as JPEG, the rest PNG: both decoders are exercised
        ext = "jpg" if i % 3 == 0 else "png"
        Image.fromarray(img[y : y + args.size, x : x + args.size]).save(folder / f"{i:05d}.{ext}")


if __name__ == "__main__":
    main()
