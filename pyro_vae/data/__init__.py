"""Datasets: one registry of sources (:data:`DATASETS`), loaders that return uint8 images per split,
and the training-side pieces (preparation for the likelihood, resident and streamed batches)."""

from pyro_vae.data.core import (
    DATA_KINDS,
    ImageData,
    ResidentBatches,
    ShardedBatches,
    StreamedBatches,
    binarize,
    fixed,
    from_raw,
    heldout_images,
    load_data,
    prepare,
    split_of,
)
from pyro_vae.data.idx import load_raw
from pyro_vae.data.registry import DATASETS, DatasetSpec, load_source
from pyro_vae.data.source import DataOptions, RawData, patched, to_patches

__all__ = [
    "DATASETS",
    "DATA_KINDS",
    "DataOptions",
    "DatasetSpec",
    "ImageData",
    "RawData",
    "ResidentBatches",
    "ShardedBatches",
    "StreamedBatches",
    "binarize",
    "fixed",
    "from_raw",
    "heldout_images",
    "load_data",
    "load_raw",
    "load_source",
    "patched",
    "prepare",
    "split_of",
    "to_patches",
]
