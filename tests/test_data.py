import pytest
import torch

from pyro_vae.data import ResidentBatches, binarize, load_data, load_raw
from pyro_vae.errors import DataError


def test_binarize_is_seeded_and_binary():
    img = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8)
    a = binarize(img, torch.Generator().manual_seed(3))
    b = binarize(img, torch.Generator().manual_seed(3))
    c = binarize(img, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    # black stays off, white stays on
    assert binarize(torch.zeros(10, dtype=torch.uint8)).sum() == 0
    assert binarize(torch.full((10,), 255, dtype=torch.uint8)).sum() == 10


def test_binarize_mean_matches_intensity():
    # Bernoulli(p) with p = 64/255: the sample mean's standard error over 200k pixels is ~1e-3
    img = torch.full((200_000,), 64, dtype=torch.uint8)
    p = 64 / 255
    se = (p * (1 - p) / img.numel()) ** 0.5
    assert abs(binarize(img, torch.Generator().manual_seed(0)).mean().item() - p) < 4 * se


def test_resident_batches_cover_every_image_once_and_redraw_each_epoch():
    img = torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1, 1) * 25 + 1
    batches = ResidentBatches(img, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 3
    e1, e2 = list(batches), list(batches)
    assert [len(b) for b in e1] == [4, 4, 2]
    assert not all(torch.equal(a, b) for a, b in zip(e1, e2, strict=True))
    for b in e1:
        assert b.dtype == torch.float32 and set(b.unique().tolist()) <= {0.0, 1.0}


def test_missing_data_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_raw("mnist", str(tmp_path), download=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"mnist not found in {tmp_path}/MNIST/raw and `download=False` is set" in msg
    assert "train-images-idx3-ubyte(.gz)" in msg and "`data_dir` at" in msg


@pytest.mark.real_data
def test_real_mnist_shapes_and_fixed_test_binarization(data_dir):
    a = load_data("mnist", data_dir, download=False, limit_train=100, limit_test=50)
    b = load_data("mnist", data_dir, download=False, limit_train=100, limit_test=50)
    assert a.train.shape == (100, 1, 28, 28) and a.train.dtype == torch.uint8
    assert a.event_shape == (1, 28, 28)
    assert torch.equal(a.test, b.test)
    assert set(a.test.unique().tolist()) == {0.0, 1.0}
    c = load_data("mnist", data_dir, download=False, limit_test=50, test_binarization_seed=1)
    assert not torch.equal(a.test, c.test)


@pytest.mark.real_data
def test_real_fashion_mnist_loads(data_dir):
    d = load_data("fashion-mnist", data_dir, download=False, limit_train=10, limit_test=10)
    assert d.train.shape == (10, 1, 28, 28) and d.test.shape == (10, 1, 28, 28)
