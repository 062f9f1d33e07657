"""Shipped weights: written and read back bit for bit, refused when damaged, scored by ``evaluate --pretrained``,
and the real shipped models scored on a subset of their test set against the figure stored with them."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

import pyro_vae.pretrained as pretrained
from pyro_vae.cli import evaluate_main
from pyro_vae.evaluate import importance_log_likelihood
from pyro_vae.models import build_vae_from_config
from pyro_vae.recipes import get_recipe
from pyro_vae.runs.folder import RunError

from conftest import run_cli, write_amat


@pytest.fixture
def shipped_here(tmp_path, monkeypatch):
    """A weights folder of its own, holding a vae-static-mnist-shaped model with random weights."""
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(pretrained, "INDEX", tmp_path / "index.json")
    pretrained.pretrained_models.cache_clear()
    vae = build_vae_from_config((1, 28, 28), get_recipe("vae-static-mnist").config())
    nll = {"k": 5000, "mean": 123.0, "se": 1.0, "num_points": 10000}
    entry = pretrained.write_pretrained("vae-static-mnist", vae, epoch=7, nll=nll, measured="a test")
    yield vae, entry
    pretrained.pretrained_models.cache_clear()


def test_weights_come_back_bit_for_bit(shipped_here):
    vae, entry = shipped_here
    loaded = pretrained.load_pretrained("vae-static-mnist")
    for (name, a), b in zip(vae.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not loaded.training
    assert entry.sha256 == pretrained.file_sha256(entry.path) and entry.epoch == 7
    record = json.loads((entry.path.parent / "index.json").read_text())["vae-static-mnist"]
    assert record["nll"]["mean"] == 123.0 and record["event_shape"] == [1, 28, 28]
    state = torch.load(entry.path, weights_only=True)
    assert all(t.dtype == torch.float32 for t in state.values())  # weights only, float32


def test_a_damaged_or_missing_file_is_refused(shipped_here):
    _, entry = shipped_here
    data = bytearray(entry.path.read_bytes())
    data[-1] ^= 1
    entry.path.write_bytes(bytes(data))
    with pytest.raises(RunError, match="does not match its checksum"):
        pretrained.load_pretrained("vae-static-mnist")
    entry.path.unlink()
    with pytest.raises(RunError, match="is missing; reinstall"):
        pretrained.load_pretrained("vae-static-mnist")
    with pytest.raises(Exception, match="no shipped weights named 'nope'"):
        pretrained.load_pretrained("nope")


def test_evaluate_pretrained_scores_the_shipped_model(shipped_here, tmp_path, capsys):
    vae, _ = shipped_here
    write_amat(tmp_path / "data", 30)
    out = tmp_path / "scores.json"
    argv = ["--pretrained", "vae-static-mnist", "--data-dir", str(tmp_path / "data"), "--k", "1", "50",
            "--limit", "20", "--threads", "1", "--out", str(out)]  # fmt: skip
    code, text, err = run_cli(evaluate_main, argv, capsys)
    assert code == 0, err
    assert "-log p(x), IS K=50" in text and "measured when shipped: -log p(x) 123.00 ± 1.00 nats, K=5000" in text
    stored = json.loads(out.read_text())["evaluations"][-1]
    path = tmp_path / "data" / "binarized_mnist" / "binarized_mnist_test.amat.gz"
    x = torch.tensor([list(map(float, line.split())) for line in gzip.open(path, "rt")][:20]).reshape(20, 1, 28, 28)
    want = -importance_log_likelihood(vae.eval(), x, [50], batch_size=100, seed=0)[50].mean().item()
    assert stored["nll"]["50"]["mean"] == pytest.approx(want, rel=1e-6)
    for bad, expect in (
        (["runs/x", "--pretrained", "vae-static-mnist"], "pass a run folder or --pretrained, not both"),
        (["--pretrained", "vae-static-mnist", "--split", "train"], "drop --split and --checkpoint"),
        (["--pretrained", "nope"], "no shipped weights named 'nope'"),
    ):
        code, _, err = run_cli(evaluate_main, bad, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, err


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(pretrained.pretrained_models()))
def test_shipped_models_score_their_figure_on_a_subset(name, data_dir):
    """Every 20th test image (500, spread over the set: its first images are harder than the rest) at the stored
    K: their mean −log p(x) is within three standard errors (of the subset's mean, from the spread over its
    images, and of the stored figure) of the figure measured on the whole test set when the weights were shipped."""
    from pyro_vae.data import load_data

    entry = pretrained.pretrained_models()[name]
    vae = pretrained.load_pretrained(name)
    config = get_recipe(name).config()
    data = load_data(config.dataset, data_dir, kind=vae.data_kind, download=False)
    k = entry.nll["k"]
    nll = -importance_log_likelihood(vae, data.test[::20], [k], batch_size=100, seed=0)[k]
    se = (nll.var() / len(nll) + entry.nll["se"] ** 2).sqrt().item()
    assert abs(nll.mean().item() - entry.nll["mean"]) < 3 * se, (nll.mean().item(), entry.nll, se)
