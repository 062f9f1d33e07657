"""Binarized MNIST with the fixed binarization of Larochelle & Murray (2011): the 50,000 / 10,000 /
10,000 split of the published likelihood tables, as ``.amat`` text files (or ``.amat.gz``), one image
a line, 784 values 0 or 1 separated by spaces."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.source import DataOptions, RawData, read_maybe_gzipped
from pyro_vae.errors import DataError

FOLDER = "binarized_mnist"
SPLITS = ("train", "valid", "test")
URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
PIXELS = 784


def _find(root: Path, split: str) -> Path | None:
    for name in (f"binarized_mnist_{split}.amat", f"binarized_mnist_{split}.amat.gz"):
        if (root / name).is_file():
            return root / name
    return None


def read_amat(path: Path) -> torch.Tensor:
    """One ``.amat`` file as uint8 images ``(N, 1, 28, 28)`` with pixels 0 or 255, checked: every
    line holds 784 values, each 0 or 1."""

    def corrupt(why: str) -> DataError:
        return DataError(f"{path} is corrupt ({why}); replace it with the original binarized MNIST file")

    text = read_maybe_gzipped(path, corrupt)
    lines = text.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise corrupt("empty")
    digits = np.frombuffer(text.replace(b" ", b"").replace(b"\n", b"").replace(b"\r", b""), dtype=np.uint8)
    if len(digits) != len(lines) * PIXELS:
        bad = next((i + 1 for i, line in enumerate(lines) if len(line.split()) != PIXELS), None)
        raise corrupt(f"line {bad} does not hold {PIXELS} values" if bad else "values are not single digits")
    if not np.isin(digits, (ord("0"), ord("1"))).all():
        raise corrupt("values other than 0 and 1")
    pixels = (digits - ord("0")) * 255
    return torch.from_numpy(pixels.reshape(len(lines), 1, 28, 28).copy())


def load_binarized_mnist(options: DataOptions) -> RawData:
    root = Path(options.data_dir, FOLDER)
    missing = [s for s in SPLITS if _find(root, s) is None]
    if missing and options.download:
        _download(root, missing)
        missing = [s for s in SPLITS if _find(root, s) is None]
    if missing:
        why = "and could not be downloaded" if options.download else "and `download=False` is set"
        raise DataError(
            f"binarized-mnist not found in {root} {why} (missing "
            f"{', '.join(f'binarized_mnist_{s}.amat(.gz)' for s in missing)}); point `data_dir` at the folder "
            f"holding {FOLDER}/ (offline: copy the files there from any machine)"
        )
    train, valid, test = (read_amat(_find(root, s)) for s in SPLITS)  # type: ignore[arg-type]
    no_labels = [torch.zeros(len(x), dtype=torch.long) for x in (train, valid, test)]  # the files carry none
    return RawData(train, no_labels[0], test, no_labels[2], valid=valid, valid_labels=no_labels[1], binary=True)


def _download(root: Path, splits: list[str]) -> None:
    from torchvision.datasets.utils import download_url

    created = not root.exists()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for split in splits:
                download_url(URL.format(split=split), str(root))
    except Exception:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
