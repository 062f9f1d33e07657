"""Cut scikit-image's photographs into 32x32 tiles with a fixed train/test split, for measuring
8-bit likelihoods (bits/dim) against lossless PNG and WebP: ``python scripts/make_photo_tiles.py OUT``.

``--set`` picks one of the named photo sets (``everyday``, the default; ``flat-dark``: large flat dark
regions and synthetic gradients beside ordinary photographs; ``gray``: grayscale photographs, textures
and a page of text, one channel), or ``--photos`` names scikit-image's images one by one.

Every photograph is cut into non-overlapping tiles on a grid from its top-left corner; a seeded draw
puts ``--test-fraction`` of each photograph's tiles in ``OUT/test/`` (and ``--valid-fraction`` in
``OUT/valid/``, which then chooses ``best.pt``) and the rest in ``OUT/train/``, so every photograph is in
every split and no test pixel is in a training tile. The tiles are PNG, so
they are the photographs' exact 8-bit values. Train on them with
``pyro-vae-train --dataset folder --data-dir OUT --likelihood discretized-mixture --net conv``.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from pyro_vae.errors import ConfigError, OneLineParser, run_script
from pyro_vae.files import check_out_folder

# photo sets from the images that ship inside the scikit-image wheel (no download), 8 bits per channel;
# each set is one kind of image for a codec: ordinary scenes, flat regions and gradients, one channel
PHOTO_SETS = {
    # everyday colour scenes
    "everyday": (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
        "stereo_motorcycle",
    ),
    # where PNG is strong: the mostly-black retina and deep field, a synthetic colour wheel on flat white,
    # a logo with flat saturated colours, beside two ordinary photographs
    "flat-dark": ("retina", "hubble_deep_field", "colorwheel", "logo", "astronaut", "rocket"),
    # one channel: a photograph, the moon, textures, coins, scanned text and a page, a clock's smooth wall
    "gray": ("camera", "moon", "brick", "grass", "gravel", "coins", "text", "page", "clock", "cell"),
}
PHOTOS = PHOTO_SETS["everyday"]


def _refuse(message: str) -> None:
    raise ConfigError(message)


def _as_bytes(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` uint8: alpha composited over white (the logo), other dtypes refused."""
    if img.dtype != np.uint8:
        _refuse(f"an image of dtype {img.dtype} is not an 8-bit photograph; choose another")
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = img[..., 3:].astype(np.float64) / 255
        img = np.rint(img[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return img


def photographs(names=PHOTOS) -> dict[str, np.ndarray]:
    """Each of scikit-image's images ``names`` as ``(H, W, 3)`` or ``(H, W)`` uint8; a set mixing colour and
    grayscale images is refused (a folder of tiles has one channel count)."""
    import skimage.data

    out = {}
    for name in names:
        load = getattr(skimage.data, name, None)
        if not callable(load) or name.startswith("_") or name in ("download_all", "data_dir"):
            _refuse(f"skimage.data has no image {name!r}; name one of its images, e.g. astronaut")
        try:
            img = load()
        except (ImportError, OSError, ValueError) as exc:  # images that need pooch and a download
            _refuse(f"skimage.data.{name} cannot be loaded here ({type(exc).__name__}); choose another image")
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
            img = img[0]
        out[name] = _as_bytes(np.asarray(img))
    if len({img.ndim for img in out.values()}) > 1:
        gray = ", ".join(n for n, img in out.items() if img.ndim == 2)
        _refuse(f"the set mixes grayscale ({gray}) and colour images; make one set of each")
    return out


def main() -> int:
    p = OneLineParser(prog="make_photo_tiles.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write: OUT/train/ and OUT/test/")
    p.add_argument("--size", type=int, default=32, help="side of each tile in pixels (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="tiles of each photograph held out")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.0,
        help="tiles of each photograph in OUT/valid/, which chooses best.pt (default 0: no valid/)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default %(default)s)")
    p.add_argument("--set", choices=sorted(PHOTO_SETS), default="everyday", help="the photo set (default %(default)s)")
    p.add_argument("--photos", nargs="+", metavar="NAME", help="scikit-image's images by name, instead of --set")
    args = p.parse_args()
    return run_script(lambda: write_tiles(args))


def write_tiles(args) -> None:
    if not 4 <= args.size <= 256:
        _refuse(f"--size must be from 4 to 256 pixels, got {args.size}")
    if not 0 < args.test_fraction < 1:
        _refuse(f"--test-fraction must be between 0 and 1, got {args.test_fraction}; e.g. 0.1")
    if not 0 <= args.valid_fraction < 1 or args.test_fraction + args.valid_fraction >= 1:
        _refuse(
            f"--valid-fraction must be from 0 and leave training tiles beside --test-fraction, got "
            f"{args.valid_fraction}; e.g. 0.1"
        )
    if not 0 <= args.seed < 2**32:
        _refuse(f"--seed must be an integer from 0 to {2**32 - 1}, got {args.seed}")
    out = Path(args.out)
    check_out_folder(out, "OUT")
    if out.exists() and any(out.iterdir()):
        _refuse(f"{out} exists and is not an empty folder; pass a new folder")
    try:
        photos = photographs(args.photos or PHOTO_SETS[args.set])
    except ImportError:
        _refuse("scikit-image is needed for its photographs: pip install scikit-image (or pip install -e '.[dev]')")
    s = args.size
    for name, img in photos.items():  # every photograph checked before the folder is made
        if (img.shape[0] // s) * (img.shape[1] // s) < 2:
            _refuse(f"{name} ({img.shape[1]}x{img.shape[0]}) has under 2 tiles of {s}x{s}; pass a smaller --size")
    rng = np.random.default_rng(args.seed)
    counts = {"train": 0, "test": 0, **({"valid": 0} if args.valid_fraction else {})}
    for split in counts:
        (out / split).mkdir(parents=True, exist_ok=True)
    for name, img in photos.items():
        rows, cols = img.shape[0] // s, img.shape[1] // s
        n = rows * cols
        order = rng.permutation(n)
        n_test = max(1, round(n * args.test_fraction))
        test = set(order[:n_test].tolist())
        # the validation tiles come after the test ones in the same draw: the test split is the same with or
        # without a validation split
        valid = set(order[n_test : n_test + round(n * args.valid_fraction)].tolist())
        for i in range(n):
            r, c = divmod(i, cols)
            split = "test" if i in test else "valid" if i in valid else "train"
            Image.fromarray(img[r * s : (r + 1) * s, c * s : (c + 1) * s]).save(out / split / f"{name}-{i:04d}.png")
            counts[split] += 1
    held = f", {counts['valid']} validation" if "valid" in counts else ""
    print(
        f"wrote {counts['train']} training{held} and {counts['test']} test tiles of {s}x{s} from {len(photos)} "
        "photographs"
    )
    print(f"to {out}")


if __name__ == "__main__":
    raise SystemExit(main())
