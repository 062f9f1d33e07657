"""Densities against independent float64 references: the mixture prior and the continuous Bernoulli."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.parts.likelihoods import (
    ContinuousBernoulliLikelihood,
    StableContinuousBernoulli,
    continuous_bernoulli_mean,
)
from pyro_vae.parts.priors import DiagonalGaussianMixture, VampPrior

SCALES = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


def _reference(logits, locs, scales, z):
    """float64 MixtureSameFamily at the very float32 values the tested code sees."""
    logits, locs, scales, z = (t.float().double() for t in (logits, locs, scales, z))
    mix = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1))
    return mix.log_prob(z)


@pytest.mark.parametrize("scale", SCALES)
def test_mixture_float32_matches_float64_reference(scale):
    g = torch.Generator().manual_seed(1)
    k, d = 10, 50
    locs = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    scales = scale * torch.exp(0.1 * torch.randn(k, d, generator=g, dtype=torch.float64))
    logits = torch.randn(k, generator=g, dtype=torch.float64)
    # points close to the components (where a posterior puts them), and points anywhere
    comp = torch.randint(k, (400,), generator=g)
    near = locs[comp] + scales[comp] * torch.randn(400, d, generator=g, dtype=torch.float64)
    far = locs[comp] + 3 * scales[comp] * torch.randn(400, d, generator=g, dtype=torch.float64)
    z = torch.cat([near, far])
    ref = _reference(logits, locs, scales, z)
    got = DiagonalGaussianMixture(logits.float(), locs.float(), scales.float()).log_prob(z.float())
    assert got.dtype == torch.float32
    # float32 output: a few ulps of |log p| (hundreds of nats at tiny scales)
    tol = 1e-4 + 2e-6 * ref.abs()
    assert ((got.double() - ref).abs() <= tol).all(), (got.double() - ref).abs().max()


def test_mixture_batch_shapes_and_sum_of_two_components():
    # exact identity: a mixture of two equal components is that component
    locs = torch.tensor([[0.5, -1.0], [0.5, -1.0]])
    scales = torch.tensor([[1e-3, 2.0], [1e-3, 2.0]])
    z = torch.tensor([[[0.5004, 0.3]], [[0.4999, -2.0]]])  # (2, 1, 2)
    got = DiagonalGaussianMixture(torch.tensor([0.3, -1.2]), locs, scales).log_prob(z)
    ref = dist.Normal(locs[0].double(), scales[0].double()).log_prob(z.double()).sum(-1)
    assert got.shape == (2, 1)
    assert torch.allclose(got.double(), ref, atol=1e-5, rtol=1e-6)


def test_mixture_gradient_matches_float64_reference():
    g = torch.Generator().manual_seed(2)
    locs = torch.randn(5, 4, generator=g)
    scales = 1e-3 + torch.rand(5, 4, generator=g)
    z = locs[torch.arange(12) % 5] + 0.5 * scales[torch.arange(12) % 5] * torch.randn(12, 4, generator=g)
    ours = locs.clone().requires_grad_(True)
    DiagonalGaussianMixture(torch.zeros(5), ours, scales).log_prob(z).sum().backward()
    ref = locs.double().requires_grad_(True)
    _reference(torch.zeros(5), ref, scales, z).sum().backward()
    assert torch.allclose(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-3)


def test_vamp_prior_at_the_encoder_scale_floor_is_accurate():
    class Encoder(torch.nn.Module):
        def forward(self, x):
            n = len(x)
            return 3 + x.reshape(n, -1)[:, :8], torch.full((n, 8), 1e-5)

    prior = VampPrior(Encoder(), (1, 4, 4), n_pseudo=20)
    p = prior()
    loc, scale = Encoder()(prior.pseudo_inputs)
    z = loc[:10] + scale[:10] * torch.randn(10, 8)
    ref = _reference(torch.zeros(20), loc, scale, z)
    assert ((p.log_prob(z).double() - ref).abs() <= 1e-4 + 2e-6 * ref.abs()).all()


LOGITS = [0.0, 1e-4, -1e-4, 0.5, -0.5, 5.0, -5.0, 16.0, -16.0, 20.0, -20.0, 50.0, -50.0, 100.0, -100.0, 200.0, -200.0]


def _integrate(fn, eta: float) -> float:
    """∫_0^1 fn(x) dx by the trapezoid rule on 2^21 intervals; its error is below 1e-8 for |η| ≤ 200."""
    x = torch.linspace(0, 1, 2**21 + 1, dtype=torch.float64)
    return torch.trapezoid(fn(x), x).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eta", LOGITS)
def test_continuous_bernoulli_integrates_to_one(eta, dtype):
    d = StableContinuousBernoulli(logits=torch.tensor(eta, dtype=dtype))
    total = _integrate(lambda x: d.log_prob(x.to(dtype)).double().exp(), eta)
    assert abs(total - 1) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eta", LOGITS)
def test_continuous_bernoulli_mean_is_the_integral_of_x(eta, dtype):
    d64 = StableContinuousBernoulli(logits=torch.tensor(eta, dtype=torch.float64))
    # independent reference: the unnormalised density exp(x η), normalised numerically
    unnorm = _integrate(lambda x: torch.exp(eta * x - max(eta, 0.0)), eta)
    first = _integrate(lambda x: x * torch.exp(eta * x - max(eta, 0.0)), eta)
    ref = first / unnorm
    assert abs(continuous_bernoulli_mean(torch.tensor(eta, dtype=dtype)).item() - ref) < 1e-6
    assert abs(d64.mean.item() - ref) < 1e-9


@pytest.mark.parametrize("eta", [-30.0, -2.0, 0.01, 3.0, 40.0])
def test_continuous_bernoulli_log_prob_closed_form(eta):
    # log p(x) = x η + log(η / (e^η − 1)) for η ≠ 0, written here in float64 from the definition
    x = torch.tensor([0.0, 0.25, 0.5, 0.999, 1.0], dtype=torch.float64)
    log_norm = math.log(abs(eta)) - math.log(abs(math.expm1(eta)))
    ref = x * eta + log_norm
    got = StableContinuousBernoulli(logits=torch.tensor(eta)).log_prob(x.float()).double()
    assert torch.allclose(got, ref, atol=2e-5 * max(1.0, abs(eta)))


def test_likelihood_uses_the_stable_density():
    lik = ContinuousBernoulliLikelihood()
    logits = torch.full((2, 1, 2, 2), 60.0)
    d = lik(logits, 3)
    x = torch.ones(2, 1, 2, 2)
    # each pixel: log(60 / (1 − e^−60)) at x = 1
    assert torch.allclose(d.log_prob(x), torch.full((2,), 4 * math.log(60.0)), rtol=1e-6)
    assert torch.allclose(lik.mean(logits), torch.full_like(logits, 1 - 1 / 60), atol=1e-7)
