"""The sync-free ELBOs equal Pyro's Trace_ELBO and TraceMeanField_ELBO, loss and gradient, for the
same draws, and read nothing back to the host."""

from __future__ import annotations

import contextlib
import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import build_vae
from pyro_vae.objectives import SyncFreeTrace_ELBO, SyncFreeTraceMeanField_ELBO


def loss_and_grads(elbo, model, guide, params, x, seed):
    torch.manual_seed(seed)
    loss = elbo.differentiable_loss(model, guide, x)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), grads


@contextlib.contextmanager
def no_host_reads():
    """Any read of a tensor's value on the host (what a sync is on a GPU) raises."""
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(self, *a, **k):
        raise AssertionError("a tensor was read back to the host")

    for n in names:
        setattr(torch.Tensor, n, refuse)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


CASES = [
    ("normal", "bernoulli", 1.0, 1),
    ("learned-normal", "normal-pixel", 0.3, 1),  # a KL weight (poutine.scale)
    ("mog", "normal-image", 1.0, 3),  # no closed form: the analytic ELBO falls back to Monte-Carlo
    ("vamp", "bernoulli", 0.0, 2),  # KL weight 0 masks the site
]


@pytest.mark.parametrize("prior,likelihood,weight,particles", CASES)
@pytest.mark.parametrize(
    "ours,pyros", [(SyncFreeTrace_ELBO, Trace_ELBO), (SyncFreeTraceMeanField_ELBO, TraceMeanField_ELBO)]
)
def test_loss_and_gradient_equal_pyros_for_the_same_draws(prior, likelihood, weight, particles, ours, pyros):
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,), prior=prior, likelihood=likelihood)
    vae.kl_weight = weight
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 4, 4, generator=g)
    if likelihood == "bernoulli":
        x = torch.bernoulli(x, generator=g)
    params = list(vae.parameters())
    with pyro.validation_enabled(False), vae.registration(False):
        a, ga = loss_and_grads(ours(num_particles=particles), vae.model, vae.guide, params, x, 7)
        b, gb = loss_and_grads(pyros(num_particles=particles), vae.model, vae.guide, params, x, 7)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)
    for u, v in zip(ga, gb, strict=True):
        if v is None:
            assert u is None or not u.any()
            continue
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)
    assert any(v is not None and v.abs().sum() > 0 for v in gb)


def test_score_function_sites_as_pyro():
    """A discrete latent (no reparameterisation): the surrogate's score-function term, as Pyro forms it."""
    loc = torch.tensor(0.3, requires_grad=True)
    logit = torch.tensor(-0.2, requires_grad=True)

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(logits=torch.zeros(())))
            pyro.sample("x", dist.Normal(loc + c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(logits=logit + 0 * x))

    x = torch.tensor([0.1, 1.2, -0.4, 2.0])
    with pyro.validation_enabled(False):
        a, ga = loss_and_grads(SyncFreeTrace_ELBO(num_particles=4), model, guide, [loc, logit], x, 3)
        b, gb = loss_and_grads(Trace_ELBO(num_particles=4), model, guide, [loc, logit], x, 3)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-7)
    assert gb[1].abs() > 0  # the score-function gradient is really there


@pytest.mark.parametrize(
    "ours,pyros", [(SyncFreeTrace_ELBO, Trace_ELBO), (SyncFreeTraceMeanField_ELBO, TraceMeanField_ELBO)]
)
def test_no_host_reads_inside_the_loss_unlike_pyros(ours, pyros):
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.5))
    with pyro.validation_enabled(False), vae.registration(False):
        ours().differentiable_loss(vae.model, vae.guide, x)  # the first call guesses the plate nesting
        pyros().differentiable_loss(vae.model, vae.guide, x)
        with no_host_reads():
            loss = ours().differentiable_loss(vae.model, vae.guide, x)
            loss.backward()
        with pytest.raises(AssertionError, match="read back"), no_host_reads():
            pyros().differentiable_loss(vae.model, vae.guide, x)  # the check itself can fail


@pytest.mark.parametrize(
    "ours,pyros", [(SyncFreeTrace_ELBO, Trace_ELBO), (SyncFreeTraceMeanField_ELBO, TraceMeanField_ELBO)]
)
@pytest.mark.parametrize("prior", ["normal", "learned-normal"])
def test_the_lean_hot_path_equals_pyro_with_torchs_own_distributions(ours, pyros, prior):
    """The default parts return lean distributions and the sync-free ELBOs build their traces with less
    Python; against Pyro's ELBO on the same VAE rebuilt from torch's classes (``Normal(...).to_event(1)``,
    ``Bernoulli(logits=...).to_event(3)``), the loss and every gradient are the same."""
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,), prior=prior)
    classic = copy.deepcopy(vae)
    p = classic.prior
    classic.posterior.forward = lambda loc, scale, context=None: dist.Normal(loc, scale).to_event(1)
    classic.likelihood.forward = lambda logits, event_dim: dist.Bernoulli(logits=logits).to_event(event_dim)
    if prior == "normal":
        classic.prior.forward = lambda: dist.Normal(p.loc, p.scale).to_event(1)
    else:
        classic.prior.forward = lambda: dist.Normal(p.loc, torch.nn.functional.softplus(p.raw_scale) + 1e-4).to_event(1)
    x = torch.bernoulli(torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1)))
    with pyro.validation_enabled(False), vae.registration(False), classic.registration(False):
        tr = pyro.poutine.trace(vae.model).get_trace(x)
        assert type(tr.nodes["x"]["fn"]).__name__ == "BernoulliLogits"  # the lean classes are really in use
        a, ga = loss_and_grads(ours(num_particles=2), vae.model, vae.guide, list(vae.parameters()), x, 5)
        b, gb = loss_and_grads(pyros(num_particles=2), classic.model, classic.guide, list(classic.parameters()), x, 5)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prior,scored", [("normal", {"x"}), ("learned-normal", {"x"}), ("mog", {"x", "z"})])
def test_the_analytic_loss_scores_only_what_it_uses(prior, scored, monkeypatch):
    """Beside a closed-form KL, log q(z) and log p(z) are not part of TraceMeanField_ELBO's loss: the sync-free
    version does not compute them (Pyro's computes both, then drops them). Without a closed form (a mixture
    prior) it scores z under both, as Pyro does."""
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,), prior=prior)
    x = torch.bernoulli(torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1)))
    seen: list[str] = []
    compute = pyro.poutine.trace_struct.Trace.compute_log_prob
    score = pyro.poutine.trace_struct.Trace.compute_score_parts

    def spy_log_prob(self, site_filter=lambda name, site: True):
        seen.extend(n for n, s in self.nodes.items() if s["type"] == "sample" and site_filter(n, s))
        return compute(self, site_filter)

    def spy_score(self):
        seen.extend(n for n, s in self.nodes.items() if s["type"] == "sample")
        return score(self)

    monkeypatch.setattr(pyro.poutine.trace_struct.Trace, "compute_log_prob", spy_log_prob)
    monkeypatch.setattr(pyro.poutine.trace_struct.Trace, "compute_score_parts", spy_score)
    with pyro.validation_enabled(False), vae.registration(False):
        a, _ = loss_and_grads(SyncFreeTraceMeanField_ELBO(), vae.model, vae.guide, list(vae.parameters()), x, 3)
        assert set(seen) == scored
        seen.clear()
        b, _ = loss_and_grads(TraceMeanField_ELBO(), vae.model, vae.guide, list(vae.parameters()), x, 3)
        assert set(seen) == {"x", "z"}  # Pyro's scores every site (the spy sees what it would skip)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
