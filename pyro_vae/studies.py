"""Studies of the estimators themselves, for the MC-against-analytic-KL notebook: the spread of an
ELBO estimator and of its gradient at fixed parameters, and the covariance of the ELBO's two terms."""

from __future__ import annotations

import torch

from pyro_vae.evaluate import elbo_terms, seeded
from pyro_vae.models import VAE


def estimator_variance(vae: VAE, elbo, x: torch.Tensor, draws: int = 100, seed: int = 0) -> dict[str, float]:
    """Spread of an ELBO estimator at fixed parameters: ``draws`` independent evaluations of the
    loss and of its gradient on the batch ``x``.

    :returns: ``loss_mean`` and ``loss_var`` (per image), and ``grad_var``: the summed variance of
        every gradient coordinate (the trace of the gradient's covariance), for the whole batch.
    """
    params = [p for p in vae.parameters() if p.requires_grad]
    losses, grads = [], []
    with seeded(seed, x.device):
        for _ in range(draws):
            loss = elbo.differentiable_loss(vae.model, vae.guide, x)
            g = torch.autograd.grad(loss, params)
            losses.append(loss.detach() / len(x))
            grads.append(torch.cat([t.reshape(-1) for t in g]))
    lv = torch.stack(losses).double()
    gv = torch.stack(grads).double()
    return {"loss_mean": lv.mean().item(), "loss_var": lv.var().item(), "grad_var": gv.var(0).sum().item()}


def elbo_term_covariance(vae: VAE, x: torch.Tensor, draws: int = 100, seed: int = 0) -> dict[str, float]:
    """Why the Monte-Carlo-KL loss can have *lower* variance than the closed-form one: per image, over
    ``draws`` independent z ~ q(z|x), the variance of the reconstruction term r = log p(x|z), of the
    Monte-Carlo KL k = log q(z|x) − log p(z), and their covariance. ``Trace_ELBO``'s estimate r − k has
    variance Var r + Var k − 2 Cov(r, k); ``TraceMeanField_ELBO``'s, r − KL, has Var r. Each value is
    averaged over the images of ``x``.
    """
    rs, ks = [], []
    for d in range(draws):
        r, k, _ = elbo_terms(vae, x, analytic_kl=False, seed=seed + d)
        rs.append(r)
        ks.append(k)
    r, k = torch.stack(rs).double(), torch.stack(ks).double()  # (draws, N)
    cov = ((r - r.mean(0)) * (k - k.mean(0))).sum(0) / (draws - 1)
    return {
        "var_reconstruction": r.var(0).mean().item(),
        "var_mc_kl": k.var(0).mean().item(),
        "cov_reconstruction_mc_kl": cov.mean().item(),
        "var_mc_elbo": (r - k).var(0).mean().item(),
        "var_analytic_elbo": r.var(0).mean().item(),
    }
