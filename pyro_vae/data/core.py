"""Datasets ready for training: prepared for the likelihood's kind of data, resident on the device
or streamed to it.

Training images stay as uint8 intensities and are prepared per batch: for binary data
(Bernoulli) binarized afresh every epoch (dynamic binarization) unless the dataset is binary
already, for ``"unit"`` data scaled to [0, 1], for ``"byte"`` data kept as 0..255. The test set
is prepared once; binary test data are binarized once, with their own seed, on the CPU, so
held-out numbers are the same on every device and run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pyro_vae.data.source import DataOptions, RawData
from pyro_vae.errors import DataError


@dataclass
class ImageData:
    """One dataset, train and test, ready for training.

    :param train: uint8 intensities, shape ``(N, C, H, W)``, prepared per batch (a tensor in memory,
        or over a memory-mapped cache file).
    :param test: test images prepared once for ``kind``, float32, shape ``(M, C, H, W)``.
    :param kind: ``"binary"``, ``"unit"`` or ``"byte"`` (see :data:`pyro_vae.parts.likelihoods.LIKELIHOODS`).
    :param valid: the dataset's own validation images (uint8), where it has a validation split.
    :param binary: the pixels are binary already (0 or 255): no random binarization is applied.
    :param valid_labels: the labels of ``valid``.
    """

    name: str
    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    kind: str = "binary"
    valid: torch.Tensor | None = None
    binary: bool = False
    classes: list[str] | None = None
    valid_labels: torch.Tensor | None = None

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one data point, e.g. ``(1, 28, 28)``."""
        return self.train.shape[1:]


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw binary images with pixel-on probability equal to the intensity.

    :param images: uint8 intensities in 0..255 (or floats in [0, 1]).
    :param generator: RNG on the images' device; seeds the draw.
    :returns: float32 tensor in {0, 1}, same shape and device.
    """
    probs = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return torch.bernoulli(probs, generator=generator)


DATA_KINDS = ("binary", "unit", "byte")


def prepare(
    images: torch.Tensor, kind: str, generator: torch.Generator | None = None, binary: bool = False
) -> torch.Tensor:
    """uint8 intensities -> float32 data of ``kind``: binarized with ``generator`` (or, for data that
    are ``binary`` already, taken as they are), scaled to [0, 1], or 8-bit values as floats."""
    if kind == "binary":
        return (images >= 128).float() if binary else binarize(images, generator)
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
    options: DataOptions | None = None,
    patches: int | None = None,
) -> ImageData:
    """Load a dataset by name (see :data:`pyro_vae.data.registry.DATASETS`) and prepare its test set once
    for ``kind``. Binary test data are binarized on the CPU with a fixed seed (the whole test set,
    then ``limit_test``, so a limited run sees the same bits).

    :param options: how to read it (image size, channels, split, cache) for folder datasets;
        ``data_dir`` and ``download`` fill it when it is not given.
    :param patches: cut every image into non-overlapping tiles of this size.
    """
    from pyro_vae.data.registry import load_source

    options = options or DataOptions(data_dir=data_dir, download=download)
    raw = load_source(name, options, patches)
    return from_raw(name, raw, kind, test_binarization_seed, limit_train, limit_test)


def from_raw(
    name: str,
    raw: RawData | tuple[torch.Tensor, ...],
    kind: str,
    test_binarization_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> ImageData:
    """:class:`ImageData` from a loader's :class:`RawData` (or the 4-tuple of ``load_raw``), the
    test set prepared once for ``kind``."""
    if isinstance(raw, tuple):
        raw = RawData(*raw)
    test = fixed(raw.test, kind, test_binarization_seed, raw.binary)[:limit_test]
    return ImageData(
        name,
        raw.train[:limit_train],
        raw.train_labels[:limit_train],
        test,
        raw.test_labels[:limit_test],
        kind,
        valid=raw.valid,
        binary=raw.binary,
        classes=raw.classes,
        valid_labels=raw.valid_labels,
    )


def fixed(images: torch.Tensor, kind: str, seed: int, binary: bool = False) -> torch.Tensor:
    """Held-out images prepared once, on the CPU, with their own seed."""
    return prepare(torch.as_tensor(images), kind, torch.Generator().manual_seed(seed), binary)


def heldout_images(
    name: str,
    data_dir: str,
    split: str = "test",
    *,
    kind: str = "binary",
    seed: int = 0,
    download: bool = True,
    limit: int | None = None,
    options: DataOptions | None = None,
    patches: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split prepared once for ``kind`` (binary data binarized with ``seed``), for evaluation;
    ``"test"`` with the run's ``test_binarization_seed`` is exactly the test set it was trained against.

    :param split: ``"test"``, ``"train"``, or ``"valid"`` for a dataset with a validation split.
    :returns: ``(images, labels)``, images float32.
    """
    from pyro_vae.data.registry import load_source

    raw = load_source(name, options or DataOptions(data_dir=data_dir, download=download), patches)
    return split_of(raw, split, kind, seed, limit)


def split_of(
    raw: RawData, split: str, kind: str, seed: int, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of ``raw``, its first ``limit`` images, prepared once for ``kind``."""
    if split == "valid":
        if raw.valid is None or raw.valid_labels is None:
            raise DataError("this dataset has no validation split; choose test or train")
        x, y = raw.valid, raw.valid_labels
    elif split in ("test", "train"):
        x, y = (raw.test, raw.test_labels) if split == "test" else (raw.train, raw.train_labels)
    else:
        raise DataError(f"unknown split {split!r}; choose test or train")
    # the whole split is prepared, then limited: a limited evaluation sees the same bits
    return fixed(x, kind, seed, raw.binary)[:limit], y[:limit]


class ResidentBatches:
    """Shuffled training batches sliced from a tensor already on the device, prepared per batch.

    No DataLoader, no host-device copies: each epoch draws a permutation (and, for binary
    data, fresh Bernoulli pixels) with ``generator`` on the images' device.

    :param images: uint8 intensities ``(N, C, H, W)`` on the training device.
    :param batch_size: images per step; the last batch of an epoch may be smaller.
    :param generator: RNG on the same device as ``images``.
    :param kind: the likelihood's data kind.
    :param binary: the images are binary already (no random binarization).
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        kind: str = "binary",
        binary: bool = False,
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.generator = generator
        self.kind = kind
        self.binary = binary
        self.device = images.device

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def permutation(self) -> torch.Tensor:
        """A fresh order of the images, drawn with the generator on the training device."""
        return torch.randperm(len(self.images), device=self.device, generator=self.generator)

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]

    def batches(self, perm: torch.Tensor, start: int = 0) -> Iterator[torch.Tensor]:
        """The batches of one epoch in the order ``perm``, from batch ``start`` on (resuming)."""
        for first in range(start * self.batch_size, len(perm), self.batch_size):
            rows = self._rows(perm[first : first + self.batch_size])
            yield prepare(rows, self.kind, self.generator, self.binary)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.permutation())


class StreamedBatches(ResidentBatches):
    """The same batches as :class:`ResidentBatches`, bit for bit, for data that stay in host memory
    (a memory-mapped cache file, say) because they do not fit on the device.

    The permutation is drawn on the device with the same generator, so the order, the binarization and
    hence the losses equal the resident path's for the same seed. Each batch's rows are gathered on the
    host in one indexing operation (sorted, for locality in the memory map), copied into pinned memory
    and sent with an asynchronous copy; the next batch is gathered and sent while the current one
    trains. No per-sample Python, no DataLoader.

    :param images: uint8 intensities ``(N, C, H, W)`` on the CPU.
    :param device: the training device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        kind: str = "binary",
        binary: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(images, batch_size, generator, kind, binary)
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"

    def _fetch(self, index: torch.Tensor) -> torch.Tensor:
        idx = index.cpu()
        order, inverse = torch.sort(idx)[0], torch.argsort(torch.argsort(idx))
        rows = self.images[order][inverse]  # one gather, in file order, then back to the batch's order
        if self.pin:
            rows = rows.pin_memory()
        return rows.to(self.device, non_blocking=True)

    def batches(self, perm: torch.Tensor, start: int = 0) -> Iterator[torch.Tensor]:
        starts = list(range(start * self.batch_size, len(perm), self.batch_size))
        if not starts:
            return
        ahead = self._fetch(perm[starts[0] : starts[0] + self.batch_size])
        for i in range(len(starts)):
            rows = ahead
            if i + 1 < len(starts):  # the next copy is under way while this batch trains
                ahead = self._fetch(perm[starts[i + 1] : starts[i + 1] + self.batch_size])
            yield prepare(rows, self.kind, self.generator, self.binary)


class ShardedBatches(ResidentBatches):
    """One rank's part of every global batch, for a run of ``world_size`` processes.

    Each epoch every rank draws the same permutation of all ``N`` images (a CPU generator seeded with
    the run's seed, which no other draw touches). Global batch ``b`` is ``perm[b*B : (b+1)*B]`` with
    ``B = batch_size``, the same batches a single process would see for that permutation; rank ``r``
    takes the ``r``-th of its ``world_size`` contiguous pieces (sizes differ by at most one; a piece
    can be empty in the last, short batch). The pieces are disjoint and together cover the data.

    Only this rank's share of the epoch, ``N / world_size`` images, is copied to the device (once, at
    the start of the epoch): the device never holds the other ranks' images. The full uint8 array
    stays in host memory (a memory map for cached folders).

    :param images: uint8 intensities ``(N, C, H, W)`` in host memory.
    :param batch_size: the global batch, summed over the ranks.
    :param generator: this rank's RNG on ``device`` for the binarization (different on every rank).
    :param seed: the shared seed of the permutations.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        kind: str = "binary",
        binary: bool = False,
        *,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(images, batch_size, generator, kind, binary)
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.order = torch.Generator().manual_seed(seed)

    def permutation(self) -> torch.Tensor:
        """The epoch's order of all images: equal on every rank (CPU, shared seed)."""
        return torch.randperm(len(self.images), generator=self.order)

    def pieces(self, perm: torch.Tensor, start: int = 0, rank: int | None = None) -> list[torch.Tensor]:
        """The image indices ``rank`` (default: this one) takes from each global batch, from ``start`` on."""
        from pyro_vae.distributed import shard

        rank = self.rank if rank is None else rank
        perm = perm.cpu()
        out = []
        for first in range(start * self.batch_size, len(perm), self.batch_size):
            batch = perm[first : first + self.batch_size]
            out.append(batch[shard(len(batch), self.world_size, rank)])
        return out

    def batches(self, perm: torch.Tensor, start: int = 0) -> Iterator[torch.Tensor]:
        pieces = self.pieces(perm, start)
        if not pieces:
            return
        rows = self.images[torch.cat(pieces)]  # this rank's share of the epoch, gathered once
        if self.device.type == "cuda":
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        offset = 0
        for piece in pieces:
            yield prepare(rows[offset : offset + len(piece)], self.kind, self.generator, self.binary)
            offset += len(piece)
