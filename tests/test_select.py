"""best.pt chosen by an importance-sampled −log p(x) on the validation images (``select_k``): the kept epoch is
the estimate's minimum, the estimate is the evaluator's own, the training's random stream is untouched (an exact
resume), and the settings that cannot work are refused in one line."""

from __future__ import annotations

import math

import pytest
import torch
from test_bad_input import TINY, refused_train

from pyro_vae import resume, train
from pyro_vae.data import prepare
from pyro_vae.evaluate.estimators import importance_log_likelihood
from pyro_vae.runs import load_run

from conftest import make_idx_root, make_tiny_data, tiny_config


def test_best_is_the_epoch_with_the_lowest_estimate(tmp_path):
    data = make_tiny_data(n_train=140)
    config = tiny_config(tmp_path, epochs=5, validation=40, select_k=8, select_every=2)
    result = train(config, data=data)
    rows = result.metrics
    estimated = [r for r in rows if not math.isnan(r["val_nll"])]
    assert [r["epoch"] for r in estimated] == [2, 4, 5]  # every 2 epochs, and the last
    best = min(estimated, key=lambda r: r["val_nll"])
    state = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert state["epoch"] == best["epoch"] and state["best"] == pytest.approx(best["val_nll"])
    # the figure is the evaluator's: K = 8 on the validation images, seeded by the run's seed
    vae, _, _ = load_run(result.run_dir, checkpoint=result.run_dir / "checkpoints" / "best.pt")
    # the validation images: the last 40 training images, binarized once with a seed of their own
    g = torch.Generator().manual_seed(config.test_binarization_seed + 1)
    x = prepare(data.train[-40:], "binary", g, data.binary)
    want = -importance_log_likelihood(vae, x, [8], batch_size=100, seed=config.seed)[8].mean().item()
    assert state["best"] == pytest.approx(want, rel=1e-6)


def test_resume_with_select_k_is_exact(tmp_path):
    data = make_tiny_data(n_train=140)
    kw = dict(validation=40, select_k=8, select_every=1)
    straight = train(tiny_config(tmp_path, "straight", epochs=3, **kw), data=data)
    train(tiny_config(tmp_path, "parts", epochs=1, **kw), data=data)
    resumed = resume(tmp_path / "parts", epochs=3, data=data)
    for (name, a), b in zip(straight.vae.state_dict().items(), resumed.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [r["val_nll"] for r in straight.metrics] == [r["val_nll"] for r in resumed.metrics]


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["--select-k", "10"], "--select-k scores the validation images: pass --validation N"),
        (["--select-every", "5"], "--select-every applies to --select-k only"),
        (["--select-k", "0", "--validation", "20"], "--select-k must be a positive integer"),
        (["--select-k", "10", "--validation", "20", "--select-every", "0"], "--select-every must be a positive"),
        (["--model", "m2", "--labels", "20", "--validation", "40", "--select-k", "10"], "--select-k applies to"),
    ],
)
def test_bad_selection_settings_are_one_line(tmp_path, capsys, argv, expect):
    root = make_idx_root(tmp_path / "data")
    refused_train(["--dataset", "mnist", "--data-dir", str(root), *TINY, *argv], capsys, tmp_path / "data", expect,
                  out=tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists()
