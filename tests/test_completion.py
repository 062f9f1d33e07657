"""The image-completion CVAE (Pyro's conditional-VAE task): the quadrant layouts against the tutorial's own
transform, log p(y | x) against an exact answer by quadrature (a one-dimensional z), the Pyro model and guide
against the estimator's densities, Pyro's SVI training it, and the script end to end with its bad input."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.errors import ConfigError
from pyro_vae.models.completion import CompletionVAE, conditional_log_likelihood, quadrant_mask
from pyro_vae.training.completion import CompletionConfig, train_completion

from conftest import run_cli


def _tutorial_shown(num: int, h: int = 28, w: int = 28) -> torch.Tensor:
    """The shown pixels as Pyro's ``examples/cvae/mnist.py`` ``MaskImages`` makes them (written out again)."""
    out = torch.zeros(h, w)
    out[h // 2 :, : w // 2] = -1
    if num == 2:
        out[:, : w // 2] = -1
    if num == 3:
        out[: h // 2, :] = -1
    return (out == -1).flatten()  # the input keeps what the output masks


@pytest.mark.parametrize("num", [1, 2, 3])
def test_the_layouts_are_the_tutorials(num):
    mask = quadrant_mask(num)
    assert torch.equal(mask, _tutorial_shown(num))
    assert int(mask.sum()) == 196 * num


@pytest.mark.parametrize("bad", [0, 4, -1, True, 1.5])
def test_other_quadrant_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="`quadrants` must be 1, 2 or 3"):
        quadrant_mask(bad)


def _tiny(seed: int = 0) -> CompletionVAE:
    """A 2x2 image, the left column shown, z one-dimensional, float64, weights moved off their start."""
    torch.manual_seed(seed)
    cvae = CompletionVAE(quadrant_mask(2, 2, 2), z_dim=1, hidden=(6,)).double()
    with torch.no_grad():
        for p in cvae.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return cvae


def _exact(cvae: CompletionVAE, shown: torch.Tensor, hidden: torch.Tensor, nodes: int = 200) -> torch.Tensor:
    """log p(y | x) = log ∫ p(y | z) N(z; m(x), s(x)) dz by Gauss–Hermite quadrature, per image (z is 1-d)."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, w = torch.as_tensor(t), torch.as_tensor(w)
    prior = cvae.prior(shown).base_dist
    z = prior.loc[None] + math.sqrt(2) * prior.scale[None] * t[:, None, None]  # (nodes, N, 1)
    log_py = cvae.likelihood(z).log_prob(hidden)  # (nodes, N)
    return torch.logsumexp(log_py + w.log()[:, None], 0) - 0.5 * math.log(math.pi)


def test_the_likelihood_of_binary_pixels_sums_to_one_over_every_completion():
    cvae = _tiny()
    shown = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.3, 0.8]], dtype=torch.float64)
    completions = torch.tensor([[a, b] for a in (0.0, 1.0) for b in (0.0, 1.0)], dtype=torch.float64)
    total = torch.stack([_exact(cvae, shown, y.expand(3, 2)) for y in completions]).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(3, dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_importance_sampled_log_likelihood_matches_the_exact_integral():
    cvae = _tiny()
    g = torch.Generator().manual_seed(3)
    shown = torch.rand(30, 2, generator=g, dtype=torch.float64)
    hidden = torch.bernoulli(torch.full((30, 2), 0.5, dtype=torch.float64), generator=g)
    want = _exact(cvae, shown, hidden)
    runs = [conditional_log_likelihood(cvae, shown, hidden, 500, seed=s) for s in range(8)]
    ll = torch.stack([r["log_likelihood"] for r in runs])
    se = ll.std(0) / math.sqrt(len(ll))
    assert ((ll.mean(0) - want).abs() <= 4 * se + 1e-6).all(), (ll.mean(0) - want).abs().max()
    elbo = torch.stack([r["elbo"] for r in runs]).mean(0)
    assert (elbo <= want + 1e-9).all()  # a bound; its gap is the KL from q(z | x, y) to p(z | x, y)
    assert (elbo < ll.mean(0)).all()


def test_pyros_model_and_guide_give_the_estimators_weights():
    cvae = _tiny()
    shown = torch.rand(5, 2, dtype=torch.float64)
    hidden = torch.rand(5, 2, dtype=torch.float64)  # grey targets: the Bernoulli's cross-entropy, as the tutorial
    guide_tr = poutine.trace(cvae.guide).get_trace(shown, hidden)
    model_tr = poutine.trace(poutine.replay(cvae.model, trace=guide_tr)).get_trace(shown, hidden)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    log_w = model_tr.nodes["z"]["log_prob"] + model_tr.nodes["hidden"]["log_prob"] - guide_tr.nodes["z"]["log_prob"]
    z = guide_tr.nodes["z"]["value"]
    by_parts = (cvae.likelihood(z).log_prob(hidden) + cvae.prior(shown).log_prob(z)
                - cvae.posterior(shown, hidden).log_prob(z))  # fmt: skip
    torch.testing.assert_close(log_w, by_parts, rtol=1e-12, atol=1e-12)
    # by hand: the cross-entropy of the hidden pixels from the logits
    logits = cvae.generation_net(z)[:, ~cvae.mask]
    ce = -(hidden * torch.nn.functional.logsigmoid(logits) + (1 - hidden) * torch.nn.functional.logsigmoid(-logits))
    torch.testing.assert_close(model_tr.nodes["hidden"]["log_prob"], -ce.sum(-1), rtol=1e-12, atol=1e-12)


def test_pyros_own_svi_trains_it_and_leaves_the_frozen_baseline_alone():
    pyro.set_rng_seed(0)
    cvae = CompletionVAE(quadrant_mask(2, 4, 4), z_dim=2, hidden=(16,))
    baseline = [p.detach().clone() for p in cvae.baseline.parameters()]
    x = torch.rand(64, 16)
    shown, hidden = x[:, cvae.mask], (x[:, ~cvae.mask] > 0.5).float()
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    first = sum(svi.evaluate_loss(shown, hidden) for _ in range(20)) / 20
    for _ in range(200):
        svi.step(shown, hidden)
    last = sum(svi.evaluate_loss(shown, hidden) for _ in range(20)) / 20
    assert last < first - 1.0
    assert all(torch.equal(a, b) for a, b in zip(baseline, cvae.baseline.parameters(), strict=True))
    completions = cvae.complete(shown[:3], draws=4)
    assert completions.shape == (4, 3, 16)
    torch.testing.assert_close(completions[:, :, cvae.mask], shown[:3].expand(4, 3, -1))  # the shown pixels kept


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "complete_quadrants.py"
    spec = importlib.util.spec_from_file_location("complete_quadrants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_script_trains_scores_and_writes_each_quadrant_count(idx_root, tmp_path, capsys):
    out = tmp_path / "completion"
    argv = ["--data-dir", str(idx_root), "--out", str(out), "--quadrants", "1", "3", "--epochs", "2",
            "--validation", "20", "--k", "5", "--threads", "1"]  # fmt: skip
    code, stdout, err = run_cli(_script().main, argv, capsys)
    assert code == 0, err
    for q in (1, 3):
        record = json.loads((out / f"completion-q{q}.json").read_text())
        r = record["result"]
        assert record["config"]["quadrants"] == q and r["test_images"] == 40 and r["k"] == 5
        assert r["phases"]["baseline"]["epochs"] <= 2 and r["phases"]["cvae"]["epochs"] <= 2
        assert {p["ended"] for p in r["phases"].values()} <= {"epochs", "patience"}
        assert all(math.isfinite(r[n]["mean"]) and r[n]["se"] > 0 for n in ("baseline", "elbo", "nll"))
        assert r["nll"]["mean"] <= r["elbo"]["mean"]
        weights = torch.load(out / f"completion-q{q}.pt", weights_only=True)
        assert int(weights["mask"].sum()) == 16 * q  # 8x8 images: 16 pixels a quadrant
    assert "| 3 |" in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quadrants", "4"], "invalid choice"),
        (["--k", "0"], "--k must be"),
        (["--epochs", "0"], "--epochs must be"),
        (["--validation", "500"], "leaves no training images"),
        (["--time-limit", "-1"], "--time-limit must be"),
        (["--data-dir", "/nonexistent/place"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(idx_root, tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    code, _, err = run_cli(_script().main, ["--data-dir", str(idx_root), "--out", str(out), *argv], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_finished_count_is_not_overwritten(idx_root, tmp_path):
    config = CompletionConfig(quadrants=2, data_dir=str(idx_root), out=str(tmp_path / "c"), epochs=1,
                              validation=20, k=2, limit_test=10)  # fmt: skip
    train_completion(config)
    with pytest.raises(ConfigError, match="exists"):
        train_completion(CompletionConfig(**{**config.__dict__, "log": []}))


def test_a_time_limit_ends_each_phase_after_an_epoch_and_still_scores(idx_root, tmp_path):
    config = CompletionConfig(quadrants=1, data_dir=str(idx_root), out=str(tmp_path / "c"), epochs=50,
                              validation=20, k=2, time_limit=1e-6)  # fmt: skip
    r = train_completion(config)
    assert [(p["epochs"], p["ended"]) for p in r["phases"].values()] == [(1, "time limit"), (1, "time limit")]
    assert math.isfinite(r["nll"]["mean"]) and (tmp_path / "c" / "completion-q1.pt").exists()
