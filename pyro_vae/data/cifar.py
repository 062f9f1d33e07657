"""CIFAR-10 through torchvision's own loader (the ``cifar-10-batches-py`` layout, md5-checked)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from pyro_vae.data.source import DataOptions, RawData
from pyro_vae.errors import DataError

FOLDER = "cifar-10-batches-py"
FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta")


def load_cifar10(options: DataOptions) -> RawData:
    import torchvision  # here, not at the top: importing it takes seconds, and only CIFAR-10 needs it

    root = Path(options.data_dir)
    created = [p for p in (root,) if not p.exists()]
    splits = []
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for train in (True, False):
                ds = torchvision.datasets.CIFAR10(root=str(root), train=train, download=options.download)
                images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> NCHW
                splits += [images, torch.as_tensor(ds.targets, dtype=torch.long)]
    except Exception as exc:
        for p in created:  # a failed download leaves no empty folder behind
            if p.is_dir() and not any(p.rglob("*")):
                p.rmdir()
        why = "and could not be downloaded" if options.download else "and `download=False` is set"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cifar10 not found or corrupt in {root / FOLDER} {why} ({reason}); expected torchvision's "
            f"{FOLDER}/ with {', '.join(FILES)}; point `data_dir` at the folder that holds {FOLDER}/"
        ) from None
    return RawData(*splits, classes=list(ds.classes))
