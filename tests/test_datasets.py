"""Every dataset through the registry: CIFAR-10 (torchvision's loader on fabricated files), binarized
MNIST (fabricated and real .amat), image folders (every kind of file, the split, the cache), patches,
conv nets at any size, and streamed batches equal to resident ones."""

import gzip
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae import TrainConfig, train
from pyro_vae.cli import train_main
from pyro_vae.data import (
    DATASETS,
    DataOptions,
    ResidentBatches,
    StreamedBatches,
    load_source,
    to_patches,
)
from pyro_vae.data import folder as folder_mod
from pyro_vae.errors import DataError
from pyro_vae.parts.nets import ConvSpec, build_networks
from pyro_vae.runs import load_run_and_data

# ------------------------------------------------------------------------------------------------
# CIFAR-10: torchvision's real loader on a fabricated cifar-10-batches-py folder


def make_cifar(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> np.ndarray:
    """The real format: pickled dicts with "data" (N, 3072) uint8 rows (1024 R, 1024 G, 1024 B) and "labels"."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = rng.integers(0, 256, size=(5 * per_batch + n_test, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=len(images)).tolist()
    for i in range(5):
        chunk = slice(i * per_batch, (i + 1) * per_batch)
        entry = {"data": images[chunk].reshape(per_batch, -1), "labels": labels[chunk], "batch_label": f"b{i}"}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(entry))
    test = {"data": images[5 * per_batch :].reshape(n_test, -1), "labels": labels[5 * per_batch :]}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return images


@pytest.fixture
def no_md5(monkeypatch):
    """As torchvision's own tests do: fabricated files cannot match the published md5 sums."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)


def test_cifar10_reads_torchvisions_layout_exactly(tmp_path, no_md5):
    images = make_cifar(tmp_path)
    raw = load_source("cifar10", DataOptions(data_dir=str(tmp_path), download=False))
    assert raw.train.shape == (100, 3, 32, 32) and raw.test.shape == (30, 3, 32, 32)
    assert torch.equal(raw.train, torch.from_numpy(images[:100]))
    assert torch.equal(raw.test, torch.from_numpy(images[100:]))
    assert raw.classes[3] == "cat" and raw.train_labels.dtype == torch.long


def test_cifar10_without_the_md5_patch_is_refused_in_one_line(tmp_path):
    make_cifar(tmp_path)
    with pytest.raises(DataError, match=r"cifar10 not found or corrupt in .*`download=False` is set"):
        load_source("cifar10", DataOptions(data_dir=str(tmp_path), download=False))


def test_cifar10_trains_with_a_conv_net_and_the_discretized_logistic(tmp_path, no_md5):
    make_cifar(tmp_path / "data")
    config = TrainConfig(
        dataset="cifar10",
        data_dir=str(tmp_path / "data"),
        download=False,
        net="conv",
        likelihood="discretized-logistic",
        z_dim=8,
        epochs=1,
        batch_size=20,
        progress=False,
        out=str(tmp_path / "run"),
    )
    result = train(config)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["data"]["event_shape"] == [3, 32, 32] and saved["data"]["kind"] == "byte"
    run = load_run_and_data(result.run_dir)
    assert run.x.shape == (30, 3, 32, 32) and run.x.max() > 1  # 8-bit values, as the likelihood needs
    picture = Image.open(result.run_dir / "images" / "samples_epoch0001.png")
    assert picture.mode in ("RGB", "RGBA")
    from pyro_vae.evaluate import evaluate

    out = evaluate(run.vae, run.x, [2])
    assert out["dims"] == 3 * 32 * 32
    assert out["nll"]["2"]["bits_per_dim"] == pytest.approx(out["nll"]["2"]["mean"] / (3072 * np.log(2)))


# ------------------------------------------------------------------------------------------------
# binarized MNIST


def write_amat(path: Path, bits: np.ndarray, gz: bool) -> None:
    text = "\n".join(" ".join(str(v) for v in row) for row in bits.reshape(len(bits), -1)) + "\n"
    if gz:
        with gzip.open(str(path) + ".gz", "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def make_amat(root: Path, sizes=(60, 20, 25), gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "binarized_mnist"
    folder.mkdir(parents=True)
    out = {}
    for split, n in zip(("train", "valid", "test"), sizes, strict=True):
        out[split] = rng.integers(0, 2, size=(n, 784), dtype=np.uint8)
        write_amat(folder / f"binarized_mnist_{split}.amat", out[split], gz=gz and split != "valid")
    return out


def test_binarized_mnist_reads_amat_and_amat_gz_exactly(tmp_path):
    bits = make_amat(tmp_path)
    raw = load_source("binarized-mnist", DataOptions(data_dir=str(tmp_path), download=False))
    assert raw.binary and raw.train.shape == (60, 1, 28, 28) and raw.valid.shape == (20, 1, 28, 28)
    assert torch.equal(raw.test.reshape(25, 784), torch.from_numpy(bits["test"] * 255))
    assert torch.equal(raw.valid.reshape(20, 784), torch.from_numpy(bits["valid"] * 255))


def test_binarized_mnist_trains_without_binarizing_and_picks_best_on_valid(tmp_path):
    bits = make_amat(tmp_path / "data")
    config = TrainConfig(
        dataset="binarized-mnist",
        data_dir=str(tmp_path / "data"),
        download=False,
        z_dim=4,
        hidden=(32,),
        epochs=2,
        batch_size=20,
        progress=False,
        out=str(tmp_path / "run"),
    )
    result = train(config)
    assert all(not np.isnan(m["val_loss"]) for m in result.metrics)  # the valid split chose best.pt
    run = load_run_and_data(result.run_dir)
    assert torch.equal(run.x.reshape(25, 784), torch.from_numpy(bits["test"]).float())  # no binarization drawn
    # the training batches are the file's bits exactly: a batch's pixels are 0/1 and equal the source rows
    batches = ResidentBatches(
        torch.from_numpy(bits["train"] * 255).reshape(60, 1, 28, 28),
        60,
        torch.Generator().manual_seed(0),
        "binary",
        binary=True,
    )
    x = next(iter(batches))
    assert sorted(map(tuple, x.reshape(60, 784).int().tolist())) == sorted(map(tuple, bits["train"].tolist()))
    with pytest.raises(Exception, match="own validation split"):
        train(TrainConfig(**{**config.__dict__, "validation": 5, "out": str(tmp_path / "r2")}))


@pytest.mark.parametrize(
    "damage,expect",
    [
        (lambda t: t.replace("0 1", "0 2", 1), "values other than 0 and 1"),
        (lambda t: t.split("\n", 1)[0][:-2] + "\n" + t.split("\n", 1)[1], "line 1 does not hold 784 values"),
        (lambda t: "", "empty"),
    ],
)
def test_damaged_amat_is_named(tmp_path, damage, expect):
    make_amat(tmp_path, gz=False)
    path = tmp_path / "binarized_mnist" / "binarized_mnist_valid.amat"
    path.write_text(damage(path.read_text()))
    with pytest.raises(DataError) as info:
        load_source("binarized-mnist", DataOptions(data_dir=str(tmp_path), download=False))
    assert str(path) in str(info.value) and expect in str(info.value)


def test_binarized_mnist_missing_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"binarized-mnist not found in .* `download=False` is set"):
        load_source("binarized-mnist", DataOptions(data_dir=str(tmp_path), download=False))


@pytest.mark.real_data
def test_real_binarized_mnist(data_dir):
    root = Path(data_dir, "binarized_mnist")
    if not root.is_dir():
        pytest.skip("no binarized_mnist folder")
    raw = load_source("binarized-mnist", DataOptions(data_dir=data_dir, download=False))
    assert (len(raw.train), len(raw.valid), len(raw.test)) == (50000, 10000, 10000)
    # independent check: the file's published sha256 (shared/data/README.md), from the decoded pixels
    text = "\n".join(" ".join("1" if v else "0" for v in row) for row in (raw.train.reshape(50000, 784) > 0).tolist())
    assert hashlib.sha256((text + "\n").encode()).hexdigest() == (
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"
    )


# ------------------------------------------------------------------------------------------------
# image folders


def _save(path: Path, mode: str, size: tuple[int, int], value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    if mode == "L":
        img = Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), "L")
    elif mode == "RGB":
        img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8), "RGB")
    elif mode == "RGBA":
        a = rng.integers(0, 256, (*size[::-1], 4), dtype=np.uint8)
        a[..., 3] = 0  # fully transparent: must come out white
        img = Image.fromarray(a, "RGBA")
    else:  # palette
        img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8), "RGB").convert("P")
    img.save(path)


def make_folder(root: Path) -> Path:
    _save(root / "cats" / "a.png", "RGB", (40, 30))
    _save(root / "cats" / "b.jpg", "L", (20, 20))
    _save(root / "cats" / "deep" / "c.png", "P", (33, 45))
    _save(root / "dogs" / "d.png", "RGBA", (24, 24))
    _save(root / "dogs" / "e.gif", "P", (50, 20))
    for i in range(15):
        _save(root / "dogs" / f"x{i:02d}.png", "RGB", (16 + i, 18))
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("ignored")
    return root


def opts(root, **kw) -> DataOptions:
    return DataOptions(data_dir=str(root), download=False, cache_dir=str(root.parent / "cache"), **kw)


def test_folder_with_classes_sizes_and_modes(tmp_path):
    root = make_folder(tmp_path / "imgs")
    raw = load_source("folder", opts(root, image_size=16, channels=3, test_fraction=0.25))
    assert raw.train.shape[1:] == (3, 16, 16) and len(raw.train) + len(raw.test) == 20
    assert len(raw.test) == 5  # round(0.25 * 20)
    assert raw.classes == ["cats", "dogs"]
    assert sorted(torch.cat([raw.train_labels, raw.test_labels]).tolist()) == [0] * 3 + [1] * 17
    gray = load_source("folder", opts(root, image_size=16, channels=1))
    assert gray.train.shape[1:] == (1, 16, 16)


def test_transparent_pixels_are_white(tmp_path):
    _save(tmp_path / "f" / "a.png", "RGBA", (8, 8))
    _save(tmp_path / "f" / "b.png", "RGBA", (8, 8))
    raw = load_source("folder", opts(tmp_path / "f", channels=3, test_fraction=0.5))
    assert torch.all(torch.cat([raw.train, raw.test]) == 255)


def test_images_of_different_sizes_need_image_size(tmp_path):
    root = make_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"differ in size .* pass `image_size=S`"):
        load_source("folder", opts(root))


def test_unreadable_image_stops_with_its_name(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError) as info:
        load_source("folder", opts(root, image_size=16, channels=3))
    assert "broken.png" in str(info.value) and "fix or remove the file" in str(info.value)


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "x.txt").write_text("no images")
    with pytest.raises(DataError, match="no images in"):
        load_source("folder", opts(tmp_path / "empty"))
    with pytest.raises(DataError, match="is not a folder"):
        load_source("folder", opts(tmp_path / "nope"))


def test_train_and_test_subfolders_are_the_split(tmp_path):
    for split, n in (("train", 6), ("test", 3)):
        for i in range(n):
            _save(tmp_path / "d" / split / ("a" if i % 2 else "b") / f"{i}.png", "L", (12, 12))
    raw = load_source("folder", opts(tmp_path / "d"))
    assert (len(raw.train), len(raw.test)) == (6, 3) and raw.classes == ["a", "b"]
    assert raw.train.shape[1:] == (1, 12, 12)


def _three_splits(root: Path, counts=(("train", 8), ("valid", 4), ("test", 4)), mode="L") -> Path:
    """train/, valid/ and test/ with class subfolders a and b; each image's first pixel is its index."""
    for split, n in counts:
        for i in range(n):
            path = root / split / ("a" if i % 2 else "b") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = np.full((12, 12) if mode == "L" else (12, 12, 3), 100, dtype=np.uint8)
            img[0, 0] = i
            Image.fromarray(img).save(path)
    return root


def test_a_valid_folder_is_the_datasets_own_validation_split(tmp_path):
    root = _three_splits(tmp_path / "d")
    stats: dict = {}
    raw = folder_mod.load_folder(opts(root), stats)
    assert (len(raw.train), len(raw.valid), len(raw.test)) == (8, 4, 4) and stats["cache"] == "miss"
    # sorted by path within each split: class a (odd indices) then b (even)
    assert raw.valid[:, 0, 0, 0].tolist() == [1, 3, 0, 2] and raw.valid_labels.tolist() == [0, 0, 1, 1]
    again = folder_mod.load_folder(opts(root), stats)  # from the cache: the same arrays and labels
    assert stats["cache"] == "hit" and torch.equal(again.valid, raw.valid)
    assert torch.equal(again.valid_labels, raw.valid_labels) and torch.equal(again.train, raw.train)
    # without valid/ there is no validation split; an empty valid/ is refused
    for f in (root / "valid").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match=r"no images in .*valid; add validation images or remove the folder"):
        load_source("folder", opts(root))


def test_training_on_a_folder_with_valid_keeps_best_by_it(tmp_path):
    root = _three_splits(tmp_path / "d", counts=(("train", 16), ("valid", 6), ("test", 6)))
    base = dict(dataset="folder", data_dir=str(root), z_dim=2, hidden=(8,), batch_size=8, epochs=2, progress=False)
    result = train(TrainConfig(**base, out=str(tmp_path / "run")))
    assert all(np.isfinite(r["val_loss"]) for r in result.metrics)
    with pytest.raises(Exception, match="has its own validation split"):
        train(TrainConfig(**base, validation=4, out=str(tmp_path / "other")))
    assert not (tmp_path / "other").exists()
    # M2 takes the valid/ images and their labels to choose best.pt by accuracy
    m2 = train(TrainConfig(**base, model="m2", labels=4, out=str(tmp_path / "m2")))
    assert all(0 <= r["val_accuracy"] <= 1 for r in m2.metrics)
    flat = tmp_path / "flat"
    for i in range(12):
        _save(flat / ("a" if i % 2 else "b") / f"{i}.png", "L", (12, 12))
    with pytest.raises(Exception, match=r"pass `validation=N`, or give the image folder a valid/"):
        train(TrainConfig(**{**base, "data_dir": str(flat)}, model="m2", labels=4, out=str(tmp_path / "m2b")))
    assert not (tmp_path / "m2b").exists()


def test_split_does_not_depend_on_listing_order(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    first = load_source("folder", opts(root, image_size=8, channels=1, test_fraction=0.3, split_seed=4))
    real_walk = os.walk

    def reversed_walk(top, *a, **k):
        for dirpath, dirnames, filenames in real_walk(top, *a, **k):
            yield dirpath, dirnames, list(reversed(filenames))

    monkeypatch.setattr(folder_mod.os, "walk", reversed_walk)
    again = load_source("folder", DataOptions(str(root), False, 8, 1, 0.3, 4, cache_dir=str(tmp_path / "other-cache")))
    assert torch.equal(first.test, again.test) and torch.equal(first.train, again.train)
    other_seed = load_source("folder", opts(root, image_size=8, channels=1, test_fraction=0.3, split_seed=5))
    assert not torch.equal(first.test, other_seed.test)


def test_cache_hit_miss_and_invalidation(tmp_path):
    root = make_folder(tmp_path / "imgs")
    stats: dict = {}
    options = opts(root, image_size=16, channels=3)
    first = folder_mod.load_folder(options, stats)
    assert stats["cache"] == "miss" and Path(stats["cache_path"]).is_file()
    stats = {}
    second = folder_mod.load_folder(options, stats)
    assert stats["cache"] == "hit" and torch.equal(first.train, second.train)
    assert torch.equal(first.train_labels, second.train_labels) and first.classes == second.classes
    # another setting is another entry
    stats = {}
    folder_mod.load_folder(opts(root, image_size=12, channels=3), stats)
    assert stats["cache"] == "miss"
    # a changed file invalidates it
    _save(root / "cats" / "a.png", "L", (40, 30))
    os.utime(root / "cats" / "a.png", ns=(1, 1))
    stats = {}
    third = folder_mod.load_folder(options, stats)
    assert stats["cache"] == "miss" and not torch.equal(
        torch.cat([first.train, first.test]), torch.cat([third.train, third.test])
    )


def test_default_cache_sits_beside_the_images(tmp_path):
    root = make_folder(tmp_path / "imgs")
    stats: dict = {}
    folder_mod.load_folder(DataOptions(str(root), False, 16, 3), stats)
    assert Path(stats["cache_path"]).parent == root / ".pyro_vae_cache"
    # the cache folder is hidden from the image listing
    assert len(folder_mod.list_images(root)) == 20


# ------------------------------------------------------------------------------------------------
# patches


def test_patches_tile_each_image_exactly():
    images = torch.arange(2 * 3 * 10 * 12, dtype=torch.int64).reshape(2, 3, 10, 12).to(torch.uint8)
    tiles, labels = to_patches(images, torch.tensor([7, 9]), 4)
    assert tiles.shape == (2 * 2 * 3, 3, 4, 4) and labels.tolist() == [7] * 6 + [9] * 6
    for n in range(2):
        for r in range(2):
            for c in range(3):
                assert torch.equal(tiles[n * 6 + r * 3 + c], images[n, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4])
    with pytest.raises(DataError, match="larger than the 10x12 images"):
        to_patches(images, torch.tensor([0, 0]), 11)


def test_patches_through_the_command_line(tmp_path, capsys):
    root = tmp_path / "photos"
    for i in range(3):
        _save(root / f"p{i}.png", "RGB", (64, 48))
    out = tmp_path / "run"
    argv = [
        "--dataset",
        "folder",
        "--data-dir",
        str(root),
        "--patches",
        "16",
        "--test-fraction",
        "0.34",
        "--net",
        "conv",
        "--z-dim",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--likelihood",
        "continuous-bernoulli",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert train_main(argv) == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    # 3 photos 48x64: 3 x 4 tiles each; one photo held out
    assert saved["data"]["event_shape"] == [3, 16, 16] and saved["data"]["test_size"] == 12
    assert saved["data"]["train_size"] == 24


# ------------------------------------------------------------------------------------------------
# conv nets at any size and colour


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(28, 28), (32, 32), (64, 64), (128, 128), (27, 27), (33, 45), (7, 9)])
@pytest.mark.parametrize("spec", ["default", "depth", "kernel5"])
def test_conv_nets_restore_every_shape(channels, size, spec):
    shape = (channels, *size)
    conv = {"default": ConvSpec(), "depth": ConvSpec.doubling(3, 64), "kernel5": ConvSpec((16, 32), (2, 2), 5)}[spec]
    enc, dec = build_networks("conv", shape, 6, conv=conv)
    x = torch.rand(2, *shape)
    loc, scale = enc(x)
    assert loc.shape == (2, 6) and (scale > 0).all()
    assert dec(loc).shape == (2, *shape)
    assert dec(torch.randn(5, 2, 6)).shape == (5, 2, *shape)  # extra sample dims (IS evaluation)


def test_conv_depth_shortcut_doubles_filters_with_a_dense_layer():
    spec = TrainConfig(net="conv", conv_depth=4, hidden=(256,)).conv_spec()
    assert spec == ConvSpec((32, 64, 128, 256), (2, 2, 2, 2), 3, 256)
    enc, _ = build_networks("conv", (3, 128, 128), 8, conv=spec)
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == 256 * 8 * 8 and linears[0].out_features == 256


def test_mlp_decoder_widths_apart_from_the_encoder():
    enc, dec = build_networks("mlp", (1, 28, 28), 50, hidden=(420, 210, 105), decoder_hidden=(200, 400, 800))
    enc_widths = [m.out_features for m in enc.body if isinstance(m, torch.nn.Linear)]
    dec_widths = [m.out_features for m in dec.body if isinstance(m, torch.nn.Linear)]
    assert enc_widths == [420, 210, 105] and dec_widths == [200, 400, 800, 784]


# ------------------------------------------------------------------------------------------------
# streamed batches are the resident ones


def test_streamed_batches_equal_resident_batches(tmp_path):
    images = torch.randint(0, 256, (70, 1, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    resident = ResidentBatches(images, 16, torch.Generator().manual_seed(3), "binary")
    mm = np.lib.format.open_memmap(
        str(tmp_path / "images.npy"),
        mode="w+",
        dtype=np.uint8,
        shape=tuple(images.shape),
    )
    mm[:] = images.numpy()
    streamed = StreamedBatches(torch.from_numpy(mm), 16, torch.Generator().manual_seed(3), "binary")
    for _ in range(2):  # two epochs: same permutations, same binarization
        a, b = list(resident), list(streamed)
        assert len(a) == len(b) == 5 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    perm = resident.permutation()
    assert torch.equal(streamed.permutation(), perm)  # the generators stay in step
    assert all(
        torch.equal(x, y) for x, y in zip(resident.batches(perm, 2), streamed.batches(perm.clone(), 2), strict=True)
    )


def test_streamed_and_resident_training_give_identical_losses(tmp_path):
    from conftest import make_tiny_data

    data = make_tiny_data()
    runs = []
    for placement in ("resident", "stream"):
        config = TrainConfig(
            epochs=2,
            batch_size=16,
            z_dim=3,
            hidden=(24,),
            progress=False,
            data_placement=placement,
            out=str(tmp_path / placement),
        )
        runs.append(train(config, data=data).metrics)
    strip = [[{k: v for k, v in m.items() if "seconds" not in k} for m in r] for r in runs]
    assert strip[0] == strip[1]


def test_registry_names_every_dataset_once():
    assert set(DATASETS) == {"mnist", "fashion-mnist", "binarized-mnist", "cifar10", "folder"}
    assert set(TrainConfig.__dataclass_fields__["dataset"].default for _ in [0]) <= set(DATASETS)
    from pyro_vae.config import DATASETS as CONFIG_NAMES

    assert tuple(DATASETS) == CONFIG_NAMES


# ------------------------------------------------------------------------------------------------
# real photographs (the scikit-image wheel's), a dev extra


def test_skimage_photographs_as_texture_patches(tmp_path, capsys):
    skdata = pytest.importorskip("skimage.data")
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("brick", "grass", "gravel", "astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(skdata, name)()).save(root / f"{name}.png")
    out = tmp_path / "run"
    argv = [
        "--dataset",
        "folder",
        "--data-dir",
        str(root),
        "--image-size",
        "256",
        "--channels",
        "3",
        "--patches",
        "64",
        "--test-fraction",
        "0.2",
        "--net",
        "conv",
        "--conv-depth",
        "3",
        "--hidden",
        "64",
        "--z-dim",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--likelihood",
        "discretized-logistic",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
        "--out",
        str(out),
    ]
    assert train_main(argv) == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["event_shape"] == [3, 64, 64]
    assert saved["data"]["train_size"] + saved["data"]["test_size"] == 6 * 16
