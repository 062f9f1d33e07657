"""The lean hot-path distributions (:mod:`pyro_vae.parts.lean`) against torch's own classes and exact
formulas: densities, gradients, normalisation, ``expand``, KL and broadcasting."""

from __future__ import annotations

import itertools
import math

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from pyro_vae.parts.lean import BernoulliLogits, DiagNormal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,scale_shape", [((), (5,)), ((7,), (7, 5)), ((3, 7), (5,)), ((3, 7), (3, 7, 5))])
def test_diag_normal_density_and_gradients_equal_torchs(dtype, batch, scale_shape):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(*batch, 5, generator=g, dtype=dtype, requires_grad=True)
    scale = (torch.rand(scale_shape, generator=g, dtype=dtype) * 3 + 1e-3).requires_grad_()
    value = 10 * torch.randn(*batch, 5, generator=g, dtype=dtype)  # far into the tails too
    ours = DiagNormal(loc, scale).log_prob(value)
    ref = dist.Normal(loc, scale).to_event(1).log_prob(value)
    assert ours.shape == ref.shape == batch and ours.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(ours, ref, **tol)
    grads = torch.autograd.grad(ours.sum(), [loc, scale]), torch.autograd.grad(ref.sum(), [loc, scale])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_diag_normal_float32_against_an_exact_float64_formula():
    g = torch.Generator().manual_seed(1)
    loc, scale = torch.randn(100, 8, generator=g), torch.rand(100, 8, generator=g) + 0.01
    value = loc + 50 * scale * torch.randn(100, 8, generator=g)
    v, m, s = value.double(), loc.double(), scale.double()
    exact = (-0.5 * ((v - m) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    got = DiagNormal(loc, scale).log_prob(value).double()
    assert ((got - exact).abs() / exact.abs()).max() < 1e-6


def test_diag_normal_integrates_to_one():
    loc, scale = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64)
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64).unsqueeze(-1)
    density = DiagNormal(loc, scale).log_prob(grid).exp()
    assert torch.trapezoid(density, grid.squeeze(-1)).item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("event_dim", [0, 1, 2, 3])
def test_bernoulli_logits_density_and_gradient_equal_torchs(dtype, event_dim):
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(6, 1, 4, 4, generator=g, dtype=dtype) * 30).requires_grad_()  # saturating logits too
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5, dtype=dtype), generator=g)
    ours = BernoulliLogits(logits, event_dim).log_prob(x)
    ref = dist.Bernoulli(logits=logits).to_event(event_dim).log_prob(x)
    assert ours.shape == ref.shape == (6, 1, 4, 4)[: 4 - event_dim]
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])
    # the exact form x*l - softplus(l), in float64: nothing saturates at |l| ~ 100
    exact = x.double() * logits.double() - F.softplus(logits.double())
    if event_dim:
        exact = exact.sum(dim=tuple(range(4 - event_dim, 4)))
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=1e-4)


def test_bernoulli_logits_sums_to_one_over_every_image():
    logits = torch.tensor([[-3.0, 0.2], [40.0, -0.7]], dtype=torch.float64)  # one 2x2 "image"
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).reshape(16, 2, 2)
    total = BernoulliLogits(logits, 2).log_prob(images).logsumexp(0)
    assert total.item() == pytest.approx(0.0, abs=1e-12)


def test_bernoulli_logits_broadcasts_particles_against_one_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 6, 1, 3, 3, generator=g)  # (K, N, *event)
    x = torch.bernoulli(torch.full((6, 1, 3, 3), 0.5), generator=g)
    ours = BernoulliLogits(logits, 3).log_prob(x)
    torch.testing.assert_close(ours, dist.Bernoulli(logits=logits).to_event(3).log_prob(x))
    assert ours.shape == (5, 6)


@pytest.mark.parametrize(
    "make", [lambda: DiagNormal(torch.zeros(4, 3), torch.ones(4, 3)), lambda: BernoulliLogits(torch.zeros(4, 3), 1)]
)
def test_expand_to_the_same_shape_is_the_same_object_and_otherwise_a_true_expand(make):
    d = make()
    assert d.expand((4,)) is d
    wider = d.expand((2, 4))
    assert type(wider) is type(d) and wider.batch_shape == (2, 4) and wider.event_shape == (3,)
    value = torch.ones(2, 4, 3)
    torch.testing.assert_close(wider.log_prob(value), d.log_prob(value).expand(2, 4))


def test_a_prior_expanded_by_the_plate_scores_as_torchs():
    prior = DiagNormal(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.3]))  # batch (), as a prior module returns it
    z = torch.randn(9, 2)
    torch.testing.assert_close(
        prior.expand((9,)).log_prob(z), dist.Normal(prior.base_dist.loc, prior.base_dist.scale).to_event(1).log_prob(z)
    )


def test_closed_form_kl_is_torchs():
    g = torch.Generator().manual_seed(4)
    q_loc, q_scale = torch.randn(6, 4, generator=g), torch.rand(6, 4, generator=g) + 0.1
    q = DiagNormal(q_loc, q_scale)
    p = DiagNormal(torch.zeros(4), torch.ones(4)).expand((6,))
    ref = kl_divergence(dist.Normal(q_loc, q_scale).to_event(1), dist.Normal(0.0, 1.0).expand([6, 4]).to_event(1))
    torch.testing.assert_close(kl_divergence(q, p), ref)
    torch.testing.assert_close(kl_divergence(q, dist.Normal(0.0, 1.0).expand([6, 4]).to_event(1)), ref)
    # the closed form against the definition, by Monte Carlo: mean of log q - log p, within 5 standard errors
    z = q.rsample((20000,))
    terms = q.log_prob(z) - p.log_prob(z)
    se = terms.std(0) / math.sqrt(len(terms))
    assert ((terms.mean(0) - ref).abs() < 5 * se).all()


def test_reparameterised_samples_carry_gradients_and_pyros_score_parts():
    loc = torch.zeros(3, 2, requires_grad=True)
    q = DiagNormal(loc, torch.ones(3, 2))
    z = q.rsample()
    assert z.shape == (3, 2) and z.requires_grad
    parts = q.score_parts(z)
    torch.testing.assert_close(parts.log_prob, q.log_prob(z))
    assert parts.score_function == 0  # reparameterised: no score-function term
