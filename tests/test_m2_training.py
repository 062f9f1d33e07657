"""M2 trained by the library's loop (``model=m2``): the labelled set (balanced, seeded, kept in the run folder,
never a validation or test image), the mixed step's weights against Kingma et al.'s eq. 9, an exact resume,
the evaluation and pictures of an M2 run, and bad input refused in one line."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from test_bad_input import TINY, refused_train

from pyro_vae import ImageData, TrainConfig, resume, train
from pyro_vae.cli import evaluate_main, train_main
from pyro_vae.data import binarize
from pyro_vae.evaluate.estimators import _batch_seed
from pyro_vae.evaluate.labels import evaluate_labels, label_elbos, label_summed_log_likelihood
from pyro_vae.models.m2 import build_m2
from pyro_vae.runs import load_run_and_data
from pyro_vae.training.labels import EnumeratedELBO, SemiSupervisedLoss

from conftest import make_idx_root, run_cli

CLASSES = 4


def labelled_data(n_train: int = 160, n_test: int = 40, seed: int = 0) -> ImageData:
    """Four classes of 8x8 images, each a bar in its own place, with noise: a label the data carry."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    labels = torch.arange(n) % CLASSES
    img = 40 * torch.rand(n, 1, 8, 8, generator=g)
    for c in range(CLASSES):
        img[labels == c, 0, 2 * c : 2 * c + 2, :] += 200
    img = img.clamp(0, 255).to(torch.uint8)
    return ImageData("bars", img[:n_train], labels[:n_train], binarize(img[n_train:], g), labels[n_train:])


def m2_config(tmp_path, name: str = "m2", **kw) -> TrainConfig:
    base = dict(model="m2", labels=8, validation=40, epochs=2, batch_size=20, z_dim=2, hidden=(16,), progress=False)
    return TrainConfig(**{**base, "out": str(tmp_path / name), **kw})


def test_labelled_set_is_balanced_seeded_and_never_held_out(tmp_path):
    data = labelled_data()
    result = train(m2_config(tmp_path, labels=12), data=data)
    record = json.loads((result.run_dir / "labelled.json").read_text())
    index = torch.tensor(record["index"])
    assert len(index) == 12 and len(set(record["index"])) == 12
    assert torch.equal(data.train_labels[index], torch.tensor(record["labels"]))
    assert torch.bincount(torch.tensor(record["labels"]), minlength=CLASSES).tolist() == [3, 3, 3, 3]
    assert int(index.max()) < len(data.train) - 40, "a validation image was labelled for training"
    again = train(m2_config(tmp_path, "again", labels=12), data=data)
    assert json.loads((again.run_dir / "labelled.json").read_text()) == record  # the seed decides
    other = train(m2_config(tmp_path, "other", labels=12, seed=1), data=data)
    assert json.loads((other.run_dir / "labelled.json").read_text())["index"] != record["index"]
    rows = result.metrics
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1 for r in rows)
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith("val_accuracy,test_accuracy")


def test_best_checkpoint_is_the_most_accurate_epoch(tmp_path):
    result = train(m2_config(tmp_path, epochs=4), data=labelled_data())
    accuracies = [r["val_accuracy"] for r in result.metrics]
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] == 1 + accuracies.index(max(accuracies))  # the first of the best
    assert best["best"] == pytest.approx(1 - max(accuracies))


def test_labelled_batches_cycle_through_the_set_without_state():
    vae = build_m2((1, 8, 8), classes=CLASSES, z_dim=2, hidden=(8,))
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    loss = SemiSupervisedLoss(
        vae, images, torch.arange(10) % CLASSES, batch_size=4, train_size=100, classifier_weight=0.1,
        generator=torch.Generator(), kind="binary", binary=False, seed=3,
    )  # fmt: skip
    seen = torch.cat([loss.labelled_index(s) for s in range(5)])  # 20 draws: two whole cycles of 10
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])  # a fresh order each cycle
    fresh = SemiSupervisedLoss(
        vae, images, torch.arange(10) % CLASSES, batch_size=4, train_size=100, classifier_weight=0.1,
        generator=torch.Generator(), kind="binary", binary=False, seed=3,
    )  # fmt: skip
    assert torch.equal(fresh.labelled_index(3), loss.labelled_index(3))  # a resume needs no saved position


def test_step_loss_weighs_the_terms_as_kingma_eq9():
    """One step's loss is the unlabelled batch's −ELBO, the labelled batch's −ELBO scaled to the labelled set's
    share of the step, and α·(B/N)·mean(−log q(y|x)) with α = w·N; each term computed here from Pyro and torch."""
    pyro.set_rng_seed(0)
    vae = build_m2((1, 8, 8), classes=CLASSES, z_dim=2, hidden=(8,))
    data = labelled_data()
    x_l = (data.train[:6] >= 128).float()  # binary already: no random binarization
    y_l = data.train_labels[:6]
    x_u = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3))
    loss = SemiSupervisedLoss(
        vae, data.train[:6], y_l, batch_size=6, train_size=50, classifier_weight=0.1,
        generator=torch.Generator(), kind="binary", binary=True, seed=0,
    )  # fmt: skip
    elbo = EnumeratedELBO()
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(5)
        got = loss(x_u)
        pyro.set_rng_seed(5)
        unlabelled = elbo.differentiable_loss(vae.model, vae.guide, x_u)
        index = loss.labelled_index(0)
        labelled = elbo.differentiable_loss(vae.model, vae.guide, x_l[index], y_l[index])
    share = 6 / 50
    ce = torch.nn.functional.cross_entropy(vae.classifier(x_l), y_l, reduction="mean")
    want = unlabelled + share * (6 / 6) * labelled + (0.1 * 50) * share * ce
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)


class _CountingELBO:
    """A stand-in ELBO that is a fixed function of its batch (unlabelled or labelled), so that the weighting of
    the step's terms is compared exactly, free of Monte-Carlo draws."""

    def differentiable_loss(self, model, guide, x, y=None):
        return x.sum() * (1.0 if y is None else 10.0 + y.float().mean())


@pytest.mark.parametrize("batch,train_size,step", [(6, 50, 0), (6, 50, 8), (7, 23, 3), (4, 12, 2)])
def test_the_ranks_steps_add_up_to_one_processs_step_on_the_global_batch(monkeypatch, batch, train_size, step):
    """Under torchrun each rank scores its share of the unlabelled and of the labelled batch; the gradients are
    summed over the ranks, so the ranks' losses must add up to the single process's loss on the whole batch,
    the last (short) batch of an epoch included."""
    import pyro_vae.training.labels as labels_module
    from pyro_vae.distributed import shard

    vae = build_m2((1, 8, 8), classes=CLASSES, z_dim=2, hidden=(8,))
    monkeypatch.setattr(vae, "classifier_loss", lambda x, y: 3.0 * x.sum() + y.float().sum())
    images = torch.randint(0, 2, (9, 1, 8, 8), dtype=torch.uint8)

    def make() -> SemiSupervisedLoss:
        loss = SemiSupervisedLoss(
            vae, images, torch.arange(9) % CLASSES, batch_size=batch, train_size=train_size, classifier_weight=0.5,
            generator=torch.Generator(), kind="binary", binary=True, seed=1,
        )  # fmt: skip
        loss.elbo = _CountingELBO()
        loss.step = step
        return loss

    per_epoch = -(-train_size // batch)
    size = min(batch, train_size - (step % per_epoch) * batch)  # this step's global unlabelled batch
    x = torch.rand(size, 1, 8, 8)
    single = make()(x)
    for world in (2, 3):
        total = 0.0
        for rank in range(world):
            monkeypatch.setattr(labels_module, "shard", lambda n, r=rank, w=world: shard(n, w, r))
            total = total + make()(x[shard(size, world, rank)])
        torch.testing.assert_close(total, single, rtol=1e-6, atol=1e-4)


def test_resume_is_exact(tmp_path):
    data = labelled_data()
    straight = train(m2_config(tmp_path, "straight", epochs=2), data=data)
    train(m2_config(tmp_path, "parts", epochs=1), data=data)
    resumed = resume(tmp_path / "parts", epochs=2, data=data)
    for (name, a), b in zip(straight.vae.state_dict().items(), resumed.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert straight.metrics[-1]["val_accuracy"] == resumed.metrics[-1]["val_accuracy"]
    (tmp_path / "parts" / "labelled.json").write_text("{}")
    with pytest.raises(Exception, match=r"labelled\.json is missing or damaged"):
        resume(tmp_path / "parts", epochs=3, data=data)


def test_evaluation_and_pictures_of_an_m2_run(tmp_path, capsys):
    root = make_idx_root(tmp_path / "data", n_train=160, n_test=40)
    out = tmp_path / "run"
    argv = ["--dataset", "mnist", "--data-dir", str(root), *TINY, "--model", "m2", "--labels", "20"]
    code, _, err = run_cli(train_main, [*argv, "--validation", "40", "--out", str(out)], capsys)
    assert code == 0, err
    code, text, err = run_cli(evaluate_main, [str(out), "--k", "1", "10", "--batch-size", "20"], capsys)
    assert code == 0, err
    assert "accuracy of q(y|x)" in text and "-ELBO, the label summed out under q(y|x)" in text
    result = json.loads((out / "eval.json").read_text())["evaluations"][-1]
    run = load_run_and_data(out)
    want = evaluate_labels(run.vae, run.x, run.labels, [1, 10], seed=0, batch_size=20)
    assert result["nll"]["10"]["mean"] == pytest.approx(want["nll"]["10"]["mean"], rel=1e-6)
    # the K = 10 column is the same estimator as label_summed_log_likelihood, draw for draw
    direct = label_summed_log_likelihood(run.vae, run.x, 10, batch_size=20, seed=0)
    assert want["nll"]["10"]["mean"] == pytest.approx(-direct.mean().item(), rel=1e-6)
    # the ELBO rows: label_elbos over chunks of 10 x batch_size images (one chunk here), seeded per chunk
    elbos = label_elbos(run.vae, run.x, run.labels, seed=_batch_seed(0, 0))
    for name in ("labelled", "unlabelled"):
        assert want["elbo"][name]["neg_elbo"]["mean"] == pytest.approx(-elbos[name].mean().item(), rel=1e-6)
    assert want["accuracy"]["mean"] == (run.vae.classify(run.x) == run.labels).double().mean().item()
    from pyro_vae.pictures import PicturesConfig, draw_pictures

    paths = draw_pictures(PicturesConfig(run_dir=str(out), out=str(tmp_path / "pics")))
    assert {p.name for p in paths} >= {"analogies.png", "samples_by_class.png", "kl.png"}


BAD = [
    (["--model", "m2", "--validation", "40"], "--model m2 trains on a labelled share of the images: pass --labels N"),
    (["--model", "m2", "--labels", "20"], "pass --validation N"),
    (["--model", "m2", "--labels", "20", "--validation", "40", "--elbo", "analytic"], "--elbo analytic does not apply"),
    (["--model", "m2", "--labels", "20", "--validation", "40", "--prior", "vamp"], "--prior vamp reads the encoder"),
    (["--model", "m2", "--labels", "20", "--validation", "40", "--guide", "iaf"], "--guide iaf is for --model vae"),
    (["--model", "m2", "--labels", "20", "--validation", "40", "--free-bits", "0.5"], "--free-bits is not built for"),
    (["--model", "m2", "--labels", "0", "--validation", "40"], "--labels must be a positive integer"),
    (["--model", "m2", "--labels", "500", "--validation", "40"], "--labels 500 is more than the 80 training images"),
    (["--model", "m2", "--labels", "5", "--validation", "40"], "must be from 10 (one per class)"),
    (["--labels", "20"], "--labels applies to --model m2 only"),
    (["--classifier-weight", "1"], "--classifier-weight applies to --model m2 only"),
    (["--model", "m2", "--labels", "20", "--validation", "40", "--classifier-weight", "0"], "--classifier-weight"),
]


@pytest.mark.parametrize("argv,expect", BAD)
def test_bad_m2_settings_are_one_line(tmp_path, capsys, argv, expect):
    root = make_idx_root(tmp_path / "data")
    refused_train(["--dataset", "mnist", "--data-dir", str(root), *TINY, *argv], capsys, tmp_path / "data", expect,
                  out=tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_dataset_without_labels_is_refused(tmp_path, capsys):
    data = labelled_data()
    data = ImageData(data.name, data.train, torch.zeros_like(data.train_labels), data.test, data.test_labels)
    with pytest.raises(Exception, match="has no labels") as info:
        train(m2_config(tmp_path), data=data)
    assert "`model=m2` needs labelled data" in str(info.value)
    assert not (tmp_path / "m2").exists()


def test_cli_refuses_binarized_mnist_for_m2(tmp_path, capsys):
    import gzip

    folder = tmp_path / "data" / "binarized_mnist"
    folder.mkdir(parents=True)
    row = " ".join(["0"] * 784) + "\n"
    for split, n in (("train", 30), ("valid", 10), ("test", 10)):
        with gzip.open(folder / f"binarized_mnist_{split}.amat.gz", "wt") as f:
            f.write(row * n)
    code, _, err = run_cli(
        train_main,
        ["--dataset", "binarized-mnist", "--data-dir", str(tmp_path / "data"), *TINY, "--model", "m2",
         "--labels", "20", "--validation", "5", "--out", str(tmp_path / "run")],
        capsys,
    )  # fmt: skip
    assert code == 2 and "binarized-mnist" in err, err
    assert not (tmp_path / "run").exists()


def test_conditional_vae_trains_resumes_and_is_scored_given_labels(tmp_path, capsys):
    data = labelled_data()
    kw = dict(model="cvae", validation=40, epochs=2, batch_size=20, z_dim=2, hidden=(16,), progress=False,
              elbo="analytic")  # fmt: skip
    straight = train(TrainConfig(**kw, out=str(tmp_path / "straight")), data=data)
    assert not (straight.run_dir / "labelled.json").exists()
    assert "val_accuracy" not in straight.metrics[-1]
    train(TrainConfig(**{**kw, "epochs": 1}, out=str(tmp_path / "parts")), data=data)
    resumed = resume(tmp_path / "parts", epochs=2, data=data)
    for (name, a), b in zip(straight.vae.state_dict().items(), resumed.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # the held-out loss is −ELBO(x | y) at the true labels, as Pyro's ELBO computes it with y given
    from pyro_vae.training.labels import labelled_heldout_loss

    vae = straight.vae.eval()
    pyro.set_rng_seed(3)
    got = labelled_heldout_loss(vae, pyro.infer.TraceMeanField_ELBO(), data.test, data.test_labels)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        want = pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, data.test, data.test_labels)
    assert got == pytest.approx(want.item() / len(data.test), rel=1e-5)


BAD_CVAE = [
    (["--model", "cvae", "--labels", "20"], "--labels applies to --model m2 only"),
    (["--model", "cvae", "--elbo", "iwae"], "--model cvae is built for the ELBO"),
    (["--model", "cvae", "--select-k", "10", "--validation", "20"], "--select-k applies to"),
    (["--model", "cvae", "--prior", "vamp"], "--prior vamp reads the encoder"),
]


@pytest.mark.parametrize("argv,expect", BAD_CVAE)
def test_bad_cvae_settings_are_one_line(tmp_path, capsys, argv, expect):
    root = make_idx_root(tmp_path / "data")
    refused_train(["--dataset", "mnist", "--data-dir", str(root), *TINY, *argv], capsys, tmp_path / "data", expect,
                  out=tmp_path / "run")  # fmt: skip
