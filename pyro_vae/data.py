"""Datasets as device-resident tensors, prepared for the likelihood's kind of data.

Training images stay as uint8 intensities on the training device and are prepared
per batch: for binary data (Bernoulli) binarized afresh every epoch (dynamic
binarization), for ``"unit"`` data scaled to [0, 1], for ``"byte"`` data kept as
0..255. The test set is prepared once; binary test data are binarized once, with
their own seed, on the CPU, so held-out numbers are the same on every device and run.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from pyro_vae.errors import DataError

# torchvision class and folder name of each dataset
_TORCHVISION = {
    "mnist": (torchvision.datasets.MNIST, "MNIST"),
    "fashion-mnist": (torchvision.datasets.FashionMNIST, "FashionMNIST"),
}
_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class ImageData:
    """One dataset, train and test, ready for training.

    :param train: uint8 intensities, shape ``(N, C, H, W)``, prepared per batch.
    :param test: test images prepared once for ``kind``, float32, shape ``(M, C, H, W)``.
    :param kind: ``"binary"``, ``"unit"`` or ``"byte"`` (see :mod:`pyro_vae.likelihoods`).
    """

    name: str
    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    kind: str = "binary"

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one data point, e.g. ``(1, 28, 28)``."""
        return self.train.shape[1:]


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
        raise DataError(f"--data-dir {data_dir} is a file; pass the folder that holds {folder}/raw/")
    missing = [f for f in _RAW_FILES if _find(raw, f) is None]
    if missing:
        if download:
            _download(cls, data_dir, name, raw, missing)
        else:
            raise DataError(
                f"{name} not found in {raw} and --no-download is set (missing {', '.join(missing)}); expected "
                f"{', '.join(f + '(.gz)' for f in _RAW_FILES)}; "
                f"point --data-dir at a folder holding {folder}/raw/, e.g. --data-dir ../shared/data"
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
            f"point --data-dir at a folder holding {folder}/raw/, e.g. --data-dir ../shared/data"
        ) from None


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An idx file of unsigned bytes (LeCun's MNIST format), checked: magic, rank, length."""

    def corrupt(why: str) -> DataError:
        return DataError(f"{path} is corrupt ({why}); delete it and download it again, or replace it")

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                blob = f.read()
        else:
            blob = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise corrupt(f"{type(exc).__name__}: {exc}") from None
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


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw binary images with pixel-on probability equal to the intensity.

    :param images: uint8 intensities in 0..255 (or floats in [0, 1]).
    :param generator: RNG on the images' device; seeds the draw.
    :returns: float32 tensor in {0, 1}, same shape and device.
    """
    probs = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return torch.bernoulli(probs, generator=generator)


DATA_KINDS = ("binary", "unit", "byte")


def prepare(images: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 intensities -> float32 data of ``kind``: binarized with ``generator``, scaled to
    [0, 1], or 8-bit values as floats."""
    if kind == "binary":
        return binarize(images, generator)
    if kind == "unit":
        return images.float() / 255
    if kind == "byte":
        return images.float()
    raise DataError(f"unknown data kind {kind!r}; choose one of {', '.join(DATA_KINDS)}")


def load_data(
    name: str,
    data_dir: str,
    *,
    kind: str = "binary",
    download: bool = True,
    test_binarization_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> ImageData:
    """Load a dataset and prepare its test set once for ``kind``. Binary test data are binarized
    on the CPU with a fixed seed (the whole test set, then ``limit_test``, so a limited run sees
    the same bits)."""
    raw = load_raw(name, data_dir, download)
    return from_raw(name, raw, kind, test_binarization_seed, limit_train, limit_test)


def from_raw(
    name: str,
    raw: tuple[torch.Tensor, ...],
    kind: str,
    test_binarization_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> ImageData:
    """:class:`ImageData` from :func:`load_raw`'s tensors, the test set prepared once for ``kind``."""
    x_train, y_train, x_test, y_test = raw
    test = _fixed(x_test, kind, test_binarization_seed)[:limit_test]
    return ImageData(name, x_train[:limit_train], y_train[:limit_train], test, y_test[:limit_test], kind)


def _fixed(images: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    return prepare(images, kind, torch.Generator().manual_seed(seed))


def heldout_images(
    name: str,
    data_dir: str,
    split: str = "test",
    *,
    kind: str = "binary",
    seed: int = 0,
    download: bool = True,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split prepared once for ``kind`` (binary data binarized with ``seed``), for evaluation;
    ``"test"`` with the run's ``test_binarization_seed`` is exactly the test set it was trained against.

    :returns: ``(images, labels)``, images float32.
    """
    if split not in ("test", "train"):
        raise DataError(f"unknown split {split!r}; choose test or train")
    x_train, y_train, x_test, y_test = load_raw(name, data_dir, download)
    x, y = (x_test, y_test) if split == "test" else (x_train, y_train)
    return _fixed(x, kind, seed)[:limit], y[:limit]


class ResidentBatches:
    """Shuffled training batches sliced from a tensor already on the device, prepared per batch.

    No DataLoader, no host-device copies: each epoch draws a permutation (and, for binary
    data, fresh Bernoulli pixels) with ``generator`` on the images' device.

    :param images: uint8 intensities ``(N, C, H, W)`` on the training device.
    :param batch_size: images per step; the last batch of an epoch may be smaller.
    :param generator: RNG on the same device as ``images``.
    :param kind: the likelihood's data kind.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, generator: torch.Generator, kind: str = "binary") -> None:
        self.images = images
        self.batch_size = batch_size
        self.generator = generator
        self.kind = kind

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def permutation(self) -> torch.Tensor:
        """A fresh order of the images, drawn with the generator on their device."""
        return torch.randperm(len(self.images), device=self.images.device, generator=self.generator)

    def batches(self, perm: torch.Tensor, start: int = 0) -> Iterator[torch.Tensor]:
        """The batches of one epoch in the order ``perm``, from batch ``start`` on (resuming)."""
        for first in range(start * self.batch_size, len(perm), self.batch_size):
            yield prepare(self.images[perm[first : first + self.batch_size]], self.kind, self.generator)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.permutation())
