"""Any folder of images (PNG, JPEG, BMP, GIF, WebP, TIFF; flat or nested), decoded once with PIL
and cached as uint8 arrays that later runs memory-map.

* **Classes.** When every image sits in a subfolder of the split's root, the subfolder names are
  the classes (``root/cats/1.png`` has class ``cats``); otherwise the images have no labels (0).
* **Split.** ``train/`` and ``test/`` subfolders are the split when both exist, and a ``valid/`` beside
  them is the dataset's own validation split (it chooses ``best.pt``). Otherwise a seeded
  share of the images is held out: each file is ranked by a hash of its relative path and the seed,
  and the lowest ``test_fraction`` go to the test set, so the split does not depend on the order in
  which the file system lists the files, and adding a file moves no other.
* **Size and colour.** ``image_size`` resizes the shorter side (antialiased) and centre-crops a
  square; ``channels`` converts to 1 (grayscale) or 3 (RGB) channels (palette and alpha images
  included). Without them, every image must already share one size, and the channels are 1 when every
  image is grayscale, else 3.
* **Cache.** The decoded arrays go to ``<cache>/<key>.{train,test}.npy`` with a JSON of labels,
  keyed by the file list, sizes, modification times and settings: a change to any file decodes
  again. The cache folder is ``<root>/.pyro_vae_cache`` where that is writable, else
  ``~/.cache/pyro_vae``, or ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.source import DataOptions, RawData
from pyro_vae.errors import DataError
from pyro_vae.files import write_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CACHE_VERSION = 1
CACHE_FOLDER = ".pyro_vae_cache"


def list_images(root: Path) -> list[Path]:
    """Image files below ``root`` by extension, sorted by relative path; hidden folders (the cache)
    and other files are ignored."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _class_of(root: Path, path: Path) -> str | None:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def _labels(root: Path, files: list[Path], classes: list[str] | None) -> torch.Tensor:
    if classes is None:
        return torch.zeros(len(files), dtype=torch.long)
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[_class_of(root, f)] for f in files], dtype=torch.long)  # type: ignore[index]


def _classes(roots_files: list[tuple[Path, list[Path]]]) -> list[str] | None:
    names = [_class_of(root, f) for root, files in roots_files for f in files]
    if not names or any(n is None for n in names):
        return None
    return sorted(set(names))  # type: ignore[arg-type]


def held_out(root: Path, files: list[Path], fraction: float, seed: int) -> list[bool]:
    """Which files are held out: the ``fraction`` of them with the lowest hash of (seed, relative path)."""
    n_test = round(fraction * len(files))
    if len(files) >= 2 and fraction > 0:
        n_test = min(max(n_test, 1), len(files) - 1)  # both splits keep at least one image
    keys = [hashlib.sha256(f"{seed}:{f.relative_to(root).as_posix()}".encode()).hexdigest() for f in files]
    chosen = set(sorted(range(len(files)), key=keys.__getitem__)[:n_test])
    return [i in chosen for i in range(len(files))]


# cache writes held back while a run is being checked (cache_writes_after_checks); None: write at once
_pending: list | None = None


@contextmanager
def cache_writes_after_checks() -> Iterator[None]:
    """Hold back the image-folder cache writes of the block; write them if it ends normally, drop them if
    it raises. A run refused for its settings after its images were decoded leaves nothing behind, not
    even a cache in the image folder."""
    global _pending
    if _pending is not None:  # nested: the outermost block decides
        yield
        return
    _pending = []
    try:
        yield
    except BaseException:
        _pending = None
        raise
    writes, _pending = _pending, None
    for write in writes:
        write()


def _unreadable(path: Path, exc: BaseException) -> DataError:
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        return DataError(
            f"image {path} claims more pixels than PIL's safety limit ({Image.MAX_IMAGE_PIXELS:,}): a decompression "
            "bomb, or a scan far too large to train on; remove or shrink the file"
        )
    text = str(exc).splitlines()[0] if str(exc) else ""
    return DataError(f"cannot read image {path} ({type(exc).__name__}: {text}); fix or remove the file")


def _decode(path: Path, size: int | None, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as img:
            img.load()
            mode = "L" if channels == 1 else "RGB"
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")  # composite transparency over white, not over black
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            img = img.convert(mode)
            if size is not None:
                img = TF.center_crop(TF.resize(img, size, antialias=True), [size, size])
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _probe(path: Path) -> tuple[tuple[int, int], str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError("too many pixels")
            return img.size, img.mode
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None


def _decode_all(files: list[Path], size: int | None, channels: int) -> np.ndarray:
    if not files:
        return np.zeros((0, channels, size or 1, size or 1), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        arrays = list(pool.map(lambda f: _decode(f, size, channels), files))
    return np.stack(arrays)


def _cache_dir(root: Path, options: DataOptions) -> Path:
    if options.cache_dir:
        return Path(options.cache_dir)
    local = root / CACHE_FOLDER
    if (local.is_dir() and os.access(local, os.W_OK)) or os.access(root, os.W_OK):
        return local
    return Path.home() / ".cache" / "pyro_vae"


def _cache_key(root: Path, files: list[Path], options: DataOptions, layout: str) -> str:
    listing = []
    for f in files:
        try:
            st = f.stat()
        except OSError as exc:  # a dangling link, a loop of links, a file gone since the listing
            raise DataError(f"cannot read image {f} ({exc.strerror or exc}); fix or remove the file") from None
        listing.append((f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    settings = {
        "version": CACHE_VERSION,
        "root": str(root.resolve()),
        "files": listing,
        "image_size": options.image_size,
        "channels": options.channels,
        "layout": layout,
        "test_fraction": options.test_fraction if layout == "split" else None,
        "split_seed": options.split_seed if layout == "split" else None,
    }
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:24]


def _check_cache_dir(path: Path) -> None:
    """A cache folder given by name must be one this process can write (or create): otherwise the run
    would decode every image on every start without a word."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"`cache_dir={path}` is, or lies below, a file ({existing}); pass a folder for the cache")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(
            f"`cache_dir={path}`: cannot write in {existing}; pass a folder you can write, or leave `cache_dir` "
            "out (the image folder's .pyro_vae_cache, else ~/.cache/pyro_vae)"
        )


def _check_decoded_size(
    files: list[Path], probed: dict[Path, tuple[tuple[int, int], str]], size: int | None, channels: int
) -> None:
    """Refuse before decoding what would not fit in memory: all images at their decoded size, and the
    largest one while it is decoded and resized."""
    from pyro_vae.resources import GB, available_bytes

    free = available_bytes(torch.device("cpu"))
    largest = max(w * h for (w, h), _ in probed.values()) * 4  # RGBA while decoding
    per_image = (size * size if size is not None else largest // 4) * channels
    needed = per_image * len(files) + largest + (size * size * 4 if size is not None else 0)
    if needed > free:
        what = f"`image_size={size}`" if size is not None else "the images at their own size"
        raise DataError(
            f"{what} would need {needed / GB:.1f} GB to decode {len(files)} images, more than the "
            f"{free / GB:.1f} GB free; lower `image_size`"
        )


def load_folder(options: DataOptions, stats: dict | None = None) -> RawData:
    """Read an image folder (see the module docstring).

    :param stats: if given, filled with ``cache`` (``"hit"`` or ``"miss"``), ``cache_path`` and ``seconds``.
    """
    start = time.perf_counter()
    root = Path(options.data_dir)
    if not root.is_dir():
        raise DataError(f"`data_dir={root}` is not a folder; pass the folder that holds your images")
    if options.channels not in (None, 1, 3):
        raise DataError(f"`channels` must be 1 or 3, got {options.channels}")
    if options.cache_dir:
        _check_cache_dir(Path(options.cache_dir))
    split_dirs = (root / "train", root / "test")
    valid_dir, valid_files = root / "valid", None
    if all(d.is_dir() for d in split_dirs):
        layout = "folders"
        train_files, test_files = list_images(split_dirs[0]), list_images(split_dirs[1])
        parts = [(split_dirs[0], train_files), (split_dirs[1], test_files)]
        every = train_files + test_files
        if valid_dir.is_dir():  # the dataset's own validation split
            valid_files = list_images(valid_dir)
            if not valid_files:
                raise DataError(f"no images in {valid_dir}; add validation images or remove the folder")
            parts.append((valid_dir, valid_files))
            every = every + valid_files
    else:
        layout = "split"
        every = list_images(root)
        if not every:
            raise DataError(
                f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} in it and its subfolders); "
                "point `data_dir` at a folder of images"
            )
        test_mask = held_out(root, every, options.test_fraction, options.split_seed)
        train_files = [f for f, t in zip(every, test_mask, strict=True) if not t]
        test_files = [f for f, t in zip(every, test_mask, strict=True) if t]
        parts = [(root, train_files), (root, test_files)]
    if not train_files:
        raise DataError(f"no training images in {parts[0][0]}; add images or lower `test_fraction`")
    if not test_files:
        raise DataError(f"no test images in {parts[1][0]}; add images, or raise `test_fraction` above 0")
    classes = _classes(parts)

    cache = _cache_dir(root, options)
    key = _cache_key(root, every, options, layout)
    meta_path = cache / f"{key}.json"
    train_path, test_path = cache / f"{key}.train.npy", cache / f"{key}.test.npy"
    valid_path = cache / f"{key}.valid.npy"
    if meta_path.is_file() and train_path.is_file() and test_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            train = torch.from_numpy(np.load(train_path, mmap_mode="c"))  # copy-on-write: tensors may be written
            test = torch.from_numpy(np.load(test_path, mmap_mode="c"))
            valid = valid_labels = None
            if valid_files is not None:
                valid = torch.from_numpy(np.load(valid_path, mmap_mode="c"))
                valid_labels = torch.tensor(meta["valid_labels"], dtype=torch.long)
            if stats is not None:
                stats.update(cache="hit", cache_path=str(train_path), seconds=time.perf_counter() - start)
            return RawData(
                train,
                torch.tensor(meta["train_labels"], dtype=torch.long),
                test,
                torch.tensor(meta["test_labels"], dtype=torch.long),
                valid=valid,
                valid_labels=valid_labels,
                classes=meta["classes"],
            )
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # a damaged cache entry: decode again and replace it

    # every header is read before any image is decoded: no image is decoded at a size refused below
    probed = {f: _probe(f) for f in every}
    channels = options.channels
    if channels is None:
        modes = {mode for _, mode in probed.values()}
        channels = 1 if modes <= {"L", "1", "I;16", "I", "F", "LA"} else 3
    _check_decoded_size(every, probed, options.image_size, channels)
    if options.image_size is None:
        sizes = {}
        for f in every:
            sizes.setdefault(probed[f][0], f)
        if len(sizes) > 1:
            (a, fa), (b, fb) = list(sizes.items())[:2]
            raise DataError(
                f"the images differ in size ({fa.name}: {a[0]}x{a[1]}, {fb.name}: {b[0]}x{b[1]}); "
                "pass `image_size=S` to resize the shorter side to S and centre-crop S x S"
            )
    train_np = _decode_all(train_files, options.image_size, channels)
    test_np = _decode_all(test_files, options.image_size, channels)
    train_labels = _labels(parts[0][0], train_files, classes)
    test_labels = _labels(parts[1][0], test_files, classes)
    valid_np = valid_labels = None
    if valid_files is not None:
        valid_np = _decode_all(valid_files, options.image_size, channels)
        valid_labels = _labels(valid_dir, valid_files, classes)

    def save() -> None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            write_atomic(train_path, lambda f: np.save(f, train_np))
            write_atomic(test_path, lambda f: np.save(f, test_np))
            meta = {"train_labels": train_labels.tolist(), "test_labels": test_labels.tolist(), "classes": classes}
            if valid_np is not None and valid_labels is not None:
                write_atomic(valid_path, lambda f: np.save(f, valid_np))
                meta["valid_labels"] = valid_labels.tolist()
            # written last: its presence means the arrays are complete
            write_atomic(meta_path, lambda f: f.write(json.dumps(meta).encode()))
        except OSError:
            pass  # no writable cache: decode again next time

    if _pending is not None:
        _pending.append(save)  # written once the run's checks have passed
    else:
        save()
    if stats is not None:
        stats.update(cache="miss", cache_path=str(train_path), seconds=time.perf_counter() - start)
    return RawData(
        torch.from_numpy(train_np),
        train_labels,
        torch.from_numpy(test_np),
        test_labels,
        valid=None if valid_np is None else torch.from_numpy(valid_np),
        valid_labels=valid_labels,
        classes=classes,
    )
