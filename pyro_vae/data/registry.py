"""One registry of datasets: a name maps to its loader, where its files live, and what it holds.
Adding a dataset is one entry here (and a loader returning :class:`~pyro_vae.data.source.RawData`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyro_vae.data.amat import load_binarized_mnist
from pyro_vae.data.cifar import load_cifar10
from pyro_vae.data.folder import load_folder
from pyro_vae.data.idx import load_fashion_mnist, load_mnist
from pyro_vae.data.source import DataOptions, RawData, patched
from pyro_vae.errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the command line knows by name.

    :param load: reads it; every loader takes the same :class:`pyro_vae.data.source.DataOptions`.
    :param layout: where its files are under ``--data-dir``, for help and errors.
    :param shape: ``(C, H, W)`` of one image, or ``None`` when it depends on the files and options.
    :param splits: the splits it has; ``valid`` is used to choose ``best.pt``.
    :param binary: its pixels are binary already (no binarization is applied).
    """

    load: Callable[[DataOptions], RawData]
    description: str
    layout: str
    shape: tuple[int, int, int] | None
    splits: tuple[str, ...] = ("train", "test")
    binary: bool = False


#: every dataset by name: its loader, what it is, where its files live, its image shape and splits
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        load_mnist, "MNIST digits, 60,000 / 10,000, grayscale", "<dir>/MNIST/raw/*-ubyte(.gz)", (1, 28, 28)
    ),
    "fashion-mnist": DatasetSpec(
        load_fashion_mnist,
        "Fashion-MNIST clothing, 60,000 / 10,000, grayscale",
        "<dir>/FashionMNIST/raw/*-ubyte(.gz)",
        (1, 28, 28),
    ),
    "binarized-mnist": DatasetSpec(
        load_binarized_mnist,
        "MNIST with Larochelle's fixed binarization, 50,000 / 10,000 valid / 10,000 test",
        "<dir>/binarized_mnist/binarized_mnist_{train,valid,test}.amat(.gz)",
        (1, 28, 28),
        ("train", "valid", "test"),
        binary=True,
    ),
    "cifar10": DatasetSpec(
        load_cifar10,
        "CIFAR-10, 50,000 / 10,000, 3x32x32 colour (torchvision's loader)",
        "<dir>/cifar-10-batches-py/",
        (3, 32, 32),
    ),
    "folder": DatasetSpec(
        load_folder,
        "any folder of images: PNG, JPEG, ...; class subfolders become labels; train/ and test/ or a seeded split",
        "<dir>/**/*.png|jpg|...",
        None,
    ),
}


def load_source(name: str, options: DataOptions, patches: int | None = None) -> RawData:
    """Read dataset ``name`` with ``options``, cut into ``patches`` × ``patches`` tiles if asked."""
    spec = DATASETS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return patched(spec.load(options), patches)
