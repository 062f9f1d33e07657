"""Held-out estimators against known answers: a linear-Gaussian model with an exact log p(x),
Pyro's own ELBOs, and a per-image, per-sample loop."""

import json
import math
import subprocess
import sys

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import MultivariateNormal

from pyro_vae import VAE, StandardNormalPrior, build_vae
from pyro_vae.distributed import derive_seed
from pyro_vae.evaluate import (
    Estimate,
    bits_per_dim,
    elbo_terms,
    evaluate,
    importance_log_likelihood,
    log_importance_weights,
    seeded,
)
from pyro_vae.parts.likelihoods import NormalLikelihood

from conftest import ROOT

Z, D, SIGMA = 2, 3, 0.5


class LinearGaussianEncoder(nn.Module):
    """q(z|x) = Normal(exact posterior mean, `widen` x exact posterior marginal std): a diagonal
    proposal wider than the correlated posterior, so importance weights have finite variance."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, widen: float) -> None:
        super().__init__()
        cov = torch.linalg.inv(torch.eye(Z, dtype=w.dtype) + w.T @ w / SIGMA**2)
        self.register_buffer("gain", cov @ w.T / SIGMA**2)  # (Z, D)
        self.register_buffer("b", b)
        self.register_buffer("std", widen * cov.diagonal().sqrt())

    def forward(self, x):
        return (x - self.b) @ self.gain.T, self.std.expand(len(x), Z)


def linear_gaussian(widen=1.3, n=60, seed=0):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) built from this library's pieces, data drawn from it,
    and the exact log p(x) = log N(x; b, WWᵀ + σ²I)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, Z, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    decoder = nn.Linear(Z, D).double()
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
    vae = VAE(LinearGaussianEncoder(w, b, widen), decoder, StandardNormalPrior(Z), NormalLikelihood(SIGMA), (D,))
    vae.double()
    marginal = MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))
    x = marginal.sample((n,))
    return vae, x, marginal.log_prob(x)


def test_is_log_likelihood_matches_exact_marginal():
    vae, x, exact = linear_gaussian()
    est = importance_log_likelihood(vae, x, 5000, seed=1, sample_chunk=1000)[5000]
    d = est - exact
    se = d.std().item() / math.sqrt(len(d))
    assert abs(d.mean().item()) < 4 * se + 1e-4, (d.mean().item(), se)
    # each image's estimate is close too (its own Monte-Carlo error is ~0.01 nats here)
    assert d.abs().max().item() < 0.1


def test_elbo_lies_below_exact_and_iwae_bound_rises_with_k():
    vae, x, exact = linear_gaussian()
    recon, kl, _ = elbo_terms(vae, x, analytic_kl=True, num_particles=200, seed=2)
    gap = exact - (recon - kl)
    assert gap.mean().item() > 4 * gap.std().item() / math.sqrt(len(gap)) > 0
    # L_K is an expectation: estimate it from 50 independent repetitions of each image
    reps = 50
    ll = importance_log_likelihood(vae, x.repeat(reps, 1), [1, 10, 100, 1000], seed=3)
    for k_lo, k_hi in [(1, 10), (10, 100)]:
        rise = ll[k_hi] - ll[k_lo]
        assert rise.mean().item() > 3 * rise.std().item() / math.sqrt(len(rise)), (k_lo, k_hi)
    # by K = 1000 this proposal's bound has converged: what is left is below what 3000 points resolve
    below = exact.repeat(reps) - ll[1000]
    assert abs(below.mean().item()) < 3 * below.std().item() / math.sqrt(len(below))


@pytest.mark.parametrize("per_pass", [None, 7], ids=["one-pass", "7-draws-per-pass"])
def test_reconstruction_term_matches_its_closed_form(per_pass, monkeypatch):
    """E_q[log N(x; Wz+b, σ²I)] = log N(x; Wμ+b, σ²I) − tr(W diag(s²) Wᵀ) / (2σ²), with the draws
    taken in one pass or, as for a very large number of draws, in passes of a few (summed, averaged)."""
    import pyro_vae.evaluate.estimators as estimators

    vae, x, _ = linear_gaussian()
    if per_pass is not None:
        # each pass holds per_pass draws x the batch x D elements
        monkeypatch.setattr(estimators, "ELBO_CHUNK_ELEMENTS", per_pass * len(x) * D)
    recon, kl, _ = elbo_terms(vae, x, analytic_kl=True, num_particles=400, seed=4)
    # the closed-form KL does not depend on the draws: exact whatever the passes
    mu, s = vae.encoder(x)
    exact_kl = 0.5 * (mu**2 + s**2 - 1 - torch.log(s**2)).sum(-1)
    torch.testing.assert_close(kl, exact_kl, rtol=1e-12, atol=1e-12)
    w = vae.decoder.weight
    at_mean = torch.distributions.Normal(vae.decoder(mu), SIGMA).log_prob(x).sum(-1)
    exact = at_mean - ((w**2) @ (s[0] ** 2)).sum() / (2 * SIGMA**2)
    # per-image Monte-Carlo error of a 400-draw average, from the draws' spread
    _, single = _recon_draws(vae, x, 400)
    se = single.std(0) / math.sqrt(400)
    assert ((recon - exact).abs() < 4 * se + 1e-9).float().mean() > 0.95
    assert abs((recon - exact).mean().item()) < 4 * (se**2).sum().sqrt().item() / len(x)


def test_evaluate_refuses_an_unbounded_number_of_draws_before_any_pass():
    vae, x, _ = linear_gaussian(n=4)
    with pytest.raises(ValueError, match="`elbo_particles` must be an integer from 1 to 1,000,000"):
        evaluate(vae, x, [5], elbo_particles=10**9)


def _recon_draws(vae, x, s):
    from pyro_vae.evaluate import _particle_traces

    model_tr, _ = _particle_traces(vae, x, s, dim=-2)
    return None, model_tr.nodes["x"]["fn"].log_prob(x)


@pytest.mark.parametrize("analytic", [False, True])
def test_elbo_terms_equal_pyro_elbo_with_the_same_draws(analytic):
    vae = build_vae((1, 5, 5), z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((12, 1, 5, 5), 0.4))
    elbo = TraceMeanField_ELBO() if analytic else Trace_ELBO()
    elbo.loss(vae.model, vae.guide, x)  # let Pyro make its one-off dry run first
    pyro.set_rng_seed(7)
    loss = elbo.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(7)
    recon, kl, kinds = elbo_terms(vae, x, analytic_kl=analytic, seed=None)
    assert kinds == [f"z: {'analytic' if analytic else 'Monte-Carlo'}"]
    assert (kl - recon).sum().item() == pytest.approx(loss, rel=1e-6)


def test_batched_is_equals_per_image_loop_with_the_same_draws():
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.5))
    k = 23
    loc, scale = vae.encoder(x)
    z = (loc + scale * torch.randn(k, *loc.shape)).detach()  # (K, N, Z) draws from q
    batched = importance_log_likelihood(vae, x, [k], batch_size=2, sample_chunk=6, latents={"z": z})[k]
    weights = log_importance_weights(vae, x, k, latents={"z": z})

    ref_w = torch.empty(k, len(x))
    for i in range(len(x)):
        for s in range(k):
            draw = {"z": z[s, i : i + 1]}
            guide_tr = poutine.trace(poutine.condition(vae.guide, data=draw)).get_trace(x[i : i + 1])
            model_tr = poutine.trace(poutine.condition(vae.model, data=draw)).get_trace(x[i : i + 1])
            ref_w[s, i] = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    ref = ref_w.logsumexp(0) - math.log(k)
    torch.testing.assert_close(weights, ref_w, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(batched, ref, rtol=1e-5, atol=1e-4)


def test_is_estimate_is_deterministic_given_a_seed_and_leaves_global_rng_alone():
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5))
    state = torch.get_rng_state()
    a = importance_log_likelihood(vae, x, [1, 7], seed=5, sample_chunk=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = importance_log_likelihood(vae, x, [1, 7], seed=5, sample_chunk=3)
    c = importance_log_likelihood(vae, x, [1, 7], seed=6, sample_chunk=3)
    assert torch.equal(a[7], b[7]) and not torch.equal(a[7], c[7])
    # nested K: the K=1 estimate is the first draw's log weight, a one-sample ELBO estimate; the draws of
    # the batch starting at image 0 are seeded from (seed, 0)
    with seeded(derive_seed(5, 0), x.device):
        first = log_importance_weights(vae, x, 1)[0]
    torch.testing.assert_close(a[1], first)


def test_evaluate_reports_consistent_numbers():
    vae, x, exact = linear_gaussian(n=40)
    out = evaluate(vae, x, [1, 500], seed=0, elbo_particles=50)
    assert out["elbo"]["analytic"]["kl_kind"] == ["z: analytic"]
    assert out["elbo"]["mc"]["kl_kind"] == ["z: Monte-Carlo"]
    e = out["elbo"]["analytic"]
    assert e["neg_elbo"]["mean"] == pytest.approx(e["kl"]["mean"] - e["reconstruction"]["mean"])
    assert out["nll"]["500"]["mean"] == pytest.approx(-exact.mean().item(), abs=0.05)
    assert out["nll"]["500"]["bits_per_dim"] == pytest.approx(bits_per_dim(out["nll"]["500"]["mean"], D))
    assert Estimate.of(torch.tensor([1.0, 3.0])).se == pytest.approx(1.0)


@pytest.mark.real_data
def test_evaluate_command_writes_eval_json(data_dir, tmp_path):
    run = tmp_path / "run"
    train = [sys.executable, "scripts/train.py", "--data-dir", data_dir, "--out", str(run), "--epochs", "1"]
    train += ["--limit-train", "500", "--limit-test", "100", "--no-progress", "--z-dim", "8"]
    assert subprocess.run(train, cwd=ROOT, capture_output=True).returncode == 0
    cmd = [sys.executable, "scripts/evaluate.py", str(run), "--k", "1", "20", "--limit", "30", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "-log p(x), IS K=20" in proc.stdout
    (out,) = json.loads((run / "eval.json").read_text())["evaluations"]
    assert {"run_dir", "checkpoint", "epoch", "split", "device", "num_points", "dims", "seed", "elbo", "nll"} <= set(
        out
    )
    assert out["num_points"] == 30 and out["dims"] == 784 and out["epoch"] == 1
    for name in ("mc", "analytic"):
        assert set(out["elbo"][name]) == {"neg_elbo", "reconstruction", "kl", "kl_per_site", "kl_kind", "seconds"}
        assert set(out["elbo"][name]["neg_elbo"]) == {"mean", "se"}
    assert set(out["nll"]) == {"1", "20"}
    assert out["nll"]["20"]["mean"] <= out["nll"]["1"]["mean"] + 3 * out["nll"]["1"]["se"]
    assert set(out["nll"]["20"]) == {"mean", "se", "bits_per_dim"}

    # a train-split evaluation goes beside the test results, from any working directory; a later
    # test evaluation with another K adds that K to the same entry
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = str(ROOT / "scripts" / "evaluate.py")
    for extra in (["--split", "train", "--k", "5"], ["--k", "50"]):
        cmd = [sys.executable, script, str(run), "--limit", "30", "--no-progress", *extra]
        proc = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    entries = json.loads((run / "eval.json").read_text())["evaluations"]
    assert [(e["split"], sorted(e["nll"], key=int)) for e in entries] == [("test", ["1", "20", "50"]), ("train", ["5"])]
    assert entries[0]["nll"]["20"] == out["nll"]["20"]  # kept, not recomputed


def test_evaluate_command_on_a_missing_run_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/evaluate.py", str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no run folder") and "Traceback" not in proc.stderr


@pytest.mark.cuda
def test_is_estimate_on_cuda_matches_cpu_for_the_same_draws():
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.5))
    loc, scale = vae.encoder(x)
    z = (loc + scale * torch.randn(11, *loc.shape)).detach()
    cpu = importance_log_likelihood(vae, x, 11, latents={"z": z})[11]
    gpu = importance_log_likelihood(vae.to("cuda"), x.cuda(), 11, latents={"z": z.cuda()})[11]
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-3)
