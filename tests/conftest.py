import os
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, binarize

# where the real datasets live (torchvision layout); .ci/run sets it
DATA_ENV = "PYRO_VAE_DATA"

# the suite runs on every core at once (pytest-xdist, `-n auto` in pyproject.toml): one torch thread per
# worker, and one for the processes the tests start, or spinning OpenMP threads fight over the cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: the CPUs this process may use (affinity, cgroup quota), not the host's count, and at most 8
    (each worker's runs and child processes take a GB or two of memory)."""
    from pyro_vae.resources import usable_cpus

    return min(8, usable_cpus())


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def seed_and_clear_param_store():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch sees none")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_dir() -> str:
    """The real-data root, or skip."""
    d = os.environ.get(DATA_ENV)
    if not d or not (Path(d) / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data absent: set {DATA_ENV} to a folder holding MNIST/raw")
    return d


def tiny_config(tmp_path, name: str = "run", **kw) -> TrainConfig:
    """The settings of a seconds-long run in ``tmp_path / name``: tiny MLP, two epochs; ``kw`` overrides."""
    base = dict(epochs=2, batch_size=16, z_dim=3, hidden=(24,), progress=False, log_every=2, out=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


def run_cli(main, argv, capsys) -> tuple[int, str, str]:
    """Run a command's ``main(argv)`` in-process: its exit status (argparse's SystemExit included),
    standard output and standard error."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def make_tiny_data(n_train: int = 96, n_test: int = 40, shape=(1, 8, 8), seed: int = 0) -> ImageData:
    """Synthetic 'images': smooth blobs plus noise, uint8 train and binarized test."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    centers = torch.rand(n, 1, 1, 2, generator=g) * torch.tensor(shape[1:])
    yy, xx = torch.meshgrid(torch.arange(shape[1]), torch.arange(shape[2]), indexing="ij")
    grid = torch.stack([yy, xx], -1).float()
    blob = torch.exp(-((grid - centers) ** 2).sum(-1) / 4.0)  # (n, H, W)
    img = (255 * blob.unsqueeze(1).expand(n, *shape)).to(torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    return ImageData("tiny", img[:n_train], labels[:n_train], binarize(img[n_train:], g), labels[n_train:])


def tiny_data_with(**change) -> ImageData:
    """The tiny data with some fields replaced (``train=...``, ``test=...``): bad data, other shapes."""
    d = make_tiny_data()
    return ImageData(**{**d.__dict__, **change})


@pytest.fixture
def tiny_data() -> ImageData:
    return make_tiny_data()


def write_idx(path: Path, array, gz: bool = True) -> None:
    """An idx file of unsigned bytes (the MNIST format), gzipped or not."""
    import gzip
    import struct

    import numpy as np

    a = np.asarray(array, dtype=np.uint8)
    blob = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(blob)
    else:
        Path(path).write_bytes(blob)


def make_idx_root(root: Path, folder: str = "MNIST", n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """A fabricated MNIST-layout dataset of 8x8 blobs, as .gz idx files, under ``root``."""
    d = make_tiny_data(n_train, n_test, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    test = (255 * torch.rand(n_test, 8, 8, generator=g)).to(torch.uint8)  # intensities, not binarized
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", d.train[:, 0].numpy())
    write_idx(raw / "train-labels-idx1-ubyte", (torch.arange(n_train) % 10).numpy())
    write_idx(raw / "t10k-images-idx3-ubyte", test.numpy())
    write_idx(raw / "t10k-labels-idx1-ubyte", (torch.arange(n_test) % 10).numpy())
    return root


@pytest.fixture
def idx_root(tmp_path) -> Path:
    """A tiny MNIST in torchvision's layout (gzipped idx files only), for command-line runs."""
    return make_idx_root(tmp_path / "data")


def write_amat(root: Path, n: int = 12) -> None:
    """A fabricated binarized-MNIST folder (``root/binarized_mnist/*.amat.gz``, Larochelle's text format) of ``n``
    random 784-pixel binary rows per split."""
    import gzip

    folder = root / "binarized_mnist"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    for split in ("train", "valid", "test"):
        rows = torch.bernoulli(torch.full((n, 784), 0.2), generator=g).int().tolist()
        with gzip.open(folder / f"binarized_mnist_{split}.amat.gz", "wt") as f:
            f.write("".join(" ".join(map(str, r)) + "\n" for r in rows))
