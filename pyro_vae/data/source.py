"""What every dataset loader returns, and what it is given.

A loader reads one dataset into uint8 images ``(N, C, H, W)`` with labels, split into train and
test (and, where the dataset defines one, a validation split). Everything after that, preparing
pixels for the likelihood, patches, placement on the device, is the same for every dataset.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pyro_vae.errors import DataError


@dataclass(frozen=True)
class DataOptions:
    """How to read a dataset; taken from the run's :class:`pyro_vae.TrainConfig`.

    :param data_dir: the root the dataset's files are under (its layout depends on the dataset).
    :param download: fetch missing files where the dataset has a downloader.
    :param image_size: folder datasets: resize the shorter side to this, then centre-crop to a square.
    :param channels: folder datasets: convert every image to 1 (grayscale) or 3 (RGB) channels.
    :param test_fraction: folder datasets without ``train/`` and ``test/``: the held-out share.
    :param split_seed: seed of that held-out split.
    :param cache_dir: folder datasets: where decoded arrays are cached (default beside the images).
    """

    data_dir: str = "./data"
    download: bool = True
    image_size: int | None = None
    channels: int | None = None
    test_fraction: float = 0.1
    split_seed: int = 0
    cache_dir: str | None = None


@dataclass
class RawData:
    """A dataset as read from disk: uint8 images ``(N, C, H, W)`` and int64 labels per split.

    :param valid: the dataset's own validation split, where it has one (binarized MNIST).
    :param binary: the pixels are already binary (0 or 255): the Bernoulli likelihood uses them as
        they are, with no random binarization.
    :param classes: label names, where the data have classes.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    valid: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    binary: bool = False
    classes: list[str] | None = None


def to_patches(images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each image into non-overlapping ``size`` × ``size`` tiles, row by row; a border narrower
    than a tile is dropped. ``(N, C, H, W) -> (N · ⌊H/size⌋ · ⌊W/size⌋, C, size, size)``."""
    n, c, h, w = images.shape
    rows, cols = h // size, w // size
    if rows == 0 or cols == 0:
        raise DataError(f"`patches={size}` is larger than the {h}x{w} images; pass at most {min(h, w)}")
    x = images[:, :, : rows * size, : cols * size]
    x = x.reshape(n, c, rows, size, cols, size).permute(0, 2, 4, 1, 3, 5)  # (N, rows, cols, C, size, size)
    return x.reshape(n * rows * cols, c, size, size).contiguous(), labels.repeat_interleave(rows * cols)


def patched(raw: RawData, size: int | None) -> RawData:
    """``raw`` with every split cut into patches (see :func:`to_patches`); ``None`` leaves it whole."""
    if size is None:
        return raw
    train, train_labels = to_patches(raw.train, raw.train_labels, size)
    test, test_labels = to_patches(raw.test, raw.test_labels, size)
    valid = valid_labels = None
    if raw.valid is not None and raw.valid_labels is not None:
        valid, valid_labels = to_patches(raw.valid, raw.valid_labels, size)
    return replace(
        raw,
        train=train,
        train_labels=train_labels,
        test=test,
        test_labels=test_labels,
        valid=valid,
        valid_labels=valid_labels,
    )


def read_maybe_gzipped(path: Path, corrupt: Callable[[str], DataError]) -> bytes:
    """The bytes of ``path``, gunzipped when it ends in ``.gz``; a read or decompression failure is
    ``corrupt(reason)``, so the message names the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise corrupt(f"{type(exc).__name__}: {exc}") from None
