"""The two ELBOs: the closed-form KL is exact, and both estimate the same quantity."""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Normal, kl_divergence

from pyro_vae import build_vae, make_elbo
from pyro_vae.objectives import SyncFreeTrace_ELBO, SyncFreeTraceMeanField_ELBO


def small_vae_and_batch(n=16, shape=(1, 6, 6), z_dim=4):
    vae = build_vae(shape, "mlp", z_dim=z_dim, hidden=(32,))
    # a non-trivial guide: push the encoder away from q = p so the KL is far from zero
    with torch.no_grad():
        vae.encoder.head.loc.bias.copy_(torch.linspace(-1.5, 1.5, z_dim))
        vae.encoder.head.scale.bias.fill_(-1.0)
    x = torch.bernoulli(torch.full((n, *shape), 0.3))
    return vae, x


def test_make_elbo_names():
    # Pyro's classes, without their host reads (tests/test_syncfree.py)
    assert type(make_elbo("mc")) is SyncFreeTrace_ELBO and isinstance(make_elbo("mc"), Trace_ELBO)
    assert type(make_elbo("analytic")) is SyncFreeTraceMeanField_ELBO
    assert isinstance(make_elbo("analytic"), TraceMeanField_ELBO)


def test_closed_form_kl_used_by_trace_mean_field_matches_torch():
    vae, x = small_vae_and_batch()
    vae.double()
    x = x.double()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    q, p = guide_tr.nodes["z"]["fn"], model_tr.nodes["z"]["fn"]
    # exactly the call TraceMeanField_ELBO makes for the latent site
    kl_pyro = kl_divergence(q, p)  # (N,), on Independent(Normal) sites
    loc, scale = q.base_dist.loc, q.base_dist.scale
    kl_torch = kl_divergence(Normal(loc, scale), Normal(torch.zeros_like(loc), torch.ones_like(scale))).sum(-1)
    kl_formula = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)
    assert kl_pyro.shape == (len(x),)
    torch.testing.assert_close(kl_pyro, kl_torch, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl_pyro, kl_formula, rtol=1e-10, atol=1e-10)
    assert (kl_pyro > 0.5).all()


def test_analytic_loss_is_reconstruction_minus_closed_form_kl():
    """TraceMeanField_ELBO's loss = -(log p(x|z) - KL(q||p)) for the same draw of z."""
    vae, x = small_vae_and_batch()
    pyro.set_rng_seed(1)
    loss = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    z = guide_tr.nodes["z"]["value"]
    recon = dist.Bernoulli(logits=vae.decoder(z)).to_event(3).log_prob(x).sum()
    kl = kl_divergence(guide_tr.nodes["z"]["fn"], model_tr.nodes["z"]["fn"]).sum()
    torch.testing.assert_close(loss, -(recon - kl), rtol=1e-6, atol=1e-4)


def test_mc_and_analytic_elbo_agree_in_expectation():
    """For a fixed guide, E[Trace_ELBO loss] = E[TraceMeanField_ELBO loss]. Each call scores
    `copies` copies of the batch (independent z per copy), so a call's loss / copies is the mean of
    i.i.d. draws; the standard error comes from the spread over `calls` calls."""
    vae, x = small_vae_and_batch()
    calls, copies = 200, 25
    xr = x.repeat(copies, 1, 1, 1)

    def draws(elbo):
        with torch.no_grad():
            return torch.stack([elbo.differentiable_loss(vae.model, vae.guide, xr) / copies for _ in range(calls)])

    mc, an = draws(Trace_ELBO()), draws(TraceMeanField_ELBO())
    se = math.sqrt(mc.var().item() / calls + an.var().item() / calls)
    diff = (mc.mean() - an.mean()).abs().item()
    assert diff < 4 * se, f"mean losses differ by {diff:.3f}, 4 s.e. = {4 * se:.3f}"
    # the check has power: a KL off by 0.1 nat per image would be caught
    assert 0.1 * len(x) > 4 * se
    # the closed-form KL removes the KL term's sampling noise
    assert an.var() < mc.var()
