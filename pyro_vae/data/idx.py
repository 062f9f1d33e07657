"""MNIST and Fashion-MNIST: LeCun's idx files (or their ``.gz``), read and checked here."""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import struct
from pathlib import Path

import torch

from pyro_vae.data.source import DataOptions, RawData, read_maybe_gzipped
from pyro_vae.errors import DataError

# torchvision class (imported only to download: importing torchvision takes seconds) and folder of each dataset
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST"),
}
_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_raw(name: str, data_dir: str, download: bool = True) -> tuple[torch.Tensor, ...]:
    """Read an MNIST-family dataset as uint8 tensors, from the idx files or their ``.gz``.

    The files are read and checked here (magic number, shape, length, matching image and label
    counts), so a damaged file is reported as corrupt, by name. Missing files are fetched with
    torchvision's downloader when ``download`` is on; a failed download leaves no folders behind.

    :param name: ``"mnist"`` or ``"fashion-mnist"``.
    :param data_dir: root in torchvision's layout (``<data_dir>/MNIST/raw/...``).
    :param download: try to download missing files.
    :returns: ``(train_images, train_labels, test_images, test_labels)``; images ``(N, 1, H, W)`` uint8.
    :raises DataError: when files are absent and cannot be downloaded, or are corrupt.
    """
    if name not in _TORCHVISION:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(_TORCHVISION)}")
    cls, folder = _TORCHVISION[name]
    raw = Path(data_dir, folder, "raw")
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataError(f"`data_dir={data_dir}` is a file; pass the folder that holds {folder}/raw/")
    missing = [f for f in _RAW_FILES if _find(raw, f) is None]
    if missing:
        if download:
            import torchvision

            _download(getattr(torchvision.datasets, cls), data_dir, name, raw, missing)
        else:
            raise DataError(
                f"{name} not found in {raw} and `download=False` is set (missing {', '.join(missing)}); expected "
                f"{', '.join(f + '(.gz)' for f in _RAW_FILES)}; "
                f"point `data_dir` at a folder holding {folder}/raw/ (offline: copy the files there from any machine)"
            )
    arrays = [_read_idx(_find(raw, f), 3 if "images" in f else 1) for f in _RAW_FILES]  # type: ignore[arg-type]
    for images, labels, stem in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if len(images) != len(labels):
            raise DataError(
                f"{raw}: {stem} images ({len(images)}) and labels ({len(labels)}) differ in number; "
                "one of the files is corrupt or from another dataset; replace them"
            )
    x_train, y_train, x_test, y_test = arrays
    return x_train.unsqueeze(1).contiguous(), y_train.long(), x_test.unsqueeze(1).contiguous(), y_test.long()


def _find(raw: Path, stem: str) -> Path | None:
    for candidate in (raw / stem, raw / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(cls: type, data_dir: str, name: str, raw: Path, missing: list[str]) -> None:
    """torchvision's downloader; on failure, remove the folders it created and say what is missing."""
    created = []
    p = raw
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        # torchvision prints each failed mirror; the one-line error below says it all
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for train in (True, False):
                cls(root=data_dir, train=train, download=True)
    except Exception as exc:
        if created and not any(f.is_file() for f in created[-1].rglob("*")):
            shutil.rmtree(created[-1], ignore_errors=True)  # the outermost folder made here, still empty
        folder = raw.parent.name
        raise DataError(
            f"{name} not found in {raw} and could not be downloaded ({type(exc).__name__}); missing "
            f"{', '.join(missing)}; expected {', '.join(f + '(.gz)' for f in _RAW_FILES)}; "
            f"point `data_dir` at a folder holding {folder}/raw/ (offline: copy the files there from any machine)"
        ) from None


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An idx file of unsigned bytes (LeCun's MNIST format), checked: magic, rank, length."""

    def corrupt(why: str) -> DataError:
        return DataError(f"{path} is corrupt ({why}); delete it and download it again, or replace it")

    blob = read_maybe_gzipped(path, corrupt)
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise corrupt("not an idx file of unsigned bytes: bad magic number")
    if blob[3] != ndim:
        raise corrupt(f"{blob[3]} dimensions where {ndim} were expected")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise corrupt("truncated header")
    dims = struct.unpack(f">{ndim}I", blob[4:header])
    expected = header + math.prod(dims)
    if len(blob) != expected:
        raise corrupt(f"{len(blob):,} bytes where its header promises {expected:,}: truncated or padded")
    return torch.frombuffer(bytearray(blob[header:]), dtype=torch.uint8).reshape(dims)


def load_mnist(options: DataOptions) -> RawData:
    x_train, y_train, x_test, y_test = load_raw("mnist", options.data_dir, options.download)
    return RawData(x_train, y_train, x_test, y_test, classes=[str(i) for i in range(10)])


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]


def load_fashion_mnist(options: DataOptions) -> RawData:
    x_train, y_train, x_test, y_test = load_raw("fashion-mnist", options.data_dir, options.download)
    return RawData(x_train, y_train, x_test, y_test, classes=FASHION_CLASSES)
