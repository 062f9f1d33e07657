"""Datasets as device-resident tensors, prepared for the likelihood's kind of data.

Training images stay as uint8 intensities on the training device and are prepared
per batch: for binary data (Bernoulli) binarized afresh every epoch (dynamic
binarization), for ``"unit"`` data scaled to [0, 1], for ``"byte"`` data kept as
0..255. The test set is prepared once; binary test data are binarized once, with
their own seed, on the CPU, so held-out numbers are the same on every device and run.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

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
    """Read a torchvision image dataset as uint8 tensors.

    :param name: ``"mnist"`` or ``"fashion-mnist"``.
    :param data_dir: root in torchvision's layout (``<data_dir>/MNIST/raw/...``).
    :param download: try to download missing files.
    :returns: ``(train_images, train_labels, test_images, test_labels)``; images ``(N, 1, H, W)`` uint8.
    :raises DataError: when the files are absent and cannot be downloaded.
    """
    if name not in _TORCHVISION:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(_TORCHVISION)}")
    cls, folder = _TORCHVISION[name]
    splits = []
    for train in (True, False):
        try:
            # torchvision prints each failed mirror; the one-line error below says it all
            with contextlib.redirect_stdout(io.StringIO()):
                ds = cls(root=data_dir, train=train, download=download)
        except (RuntimeError, OSError) as exc:
            raw = os.path.join(data_dir, folder, "raw")
            why = "and could not be downloaded" if download else "and --no-download is set"
            raise DataError(
                f"{name} not found in {raw} {why} ({type(exc).__name__}); expected "
                f"{', '.join(f + '(.gz)' for f in _RAW_FILES)}; "
                f"point --data-dir at a folder holding {folder}/raw/, e.g. --data-dir ../shared/data"
            ) from None
        splits += [ds.data.unsqueeze(1).contiguous(), ds.targets.clone()]
    return tuple(splits)


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
