"""The VAE as a Pyro model and guide.

``model(x)``: z ~ p(z) (site ``"z"``), x ~ p(x|z) from the decoder (site ``"x"``),
both inside ``pyro.plate("data", N)``. ``guide(x)``: z ~ q(z|x) = Normal(loc, scale)
from the encoder. Prior, likelihood and networks are injected modules, so each can
be swapped without touching the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_vae.likelihoods import build_likelihood
from pyro_vae.nets import build_networks
from pyro_vae.priors import build_prior


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    # under bf16/fp16 autocast the networks run in half precision; the densities must not
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class VAE(nn.Module):
    """A variational autoencoder written as a Pyro model/guide pair.

    :param encoder: ``x -> (loc, scale)`` of q(z|x), each ``(N, z_dim)``.
    :param decoder: ``z -> `` likelihood parameters shaped ``(..., *event_shape)``.
    :param prior: module returning p(z) with ``event_shape (z_dim,)``.
    :param likelihood: module mapping decoder output to p(x|z).
    :param event_shape: shape of one data point, e.g. ``(1, 28, 28)``.

    ``kl_weight`` (β, default 1) scales the latent site ``"z"`` in model and guide with
    ``poutine.scale``, so both ELBOs weight their KL term (closed-form or log q − log p) by β;
    a weight of 0 masks the site instead (``poutine.scale`` takes only positive factors).
    Training sets it each step from the KL schedule; evaluation ignores it.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        likelihood: nn.Module,
        event_shape: Sequence[int],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.event_shape = torch.Size(event_shape)
        self.kl_weight = 1.0

    def model(self, x: torch.Tensor) -> None:
        """p(x, z) for a batch ``x: (N, *event_shape)``."""
        with pyro.plate("data", x.shape[0]):
            with self._kl_scaled():
                z = pyro.sample("z", self.prior())  # (N, z_dim)
            logits = _full_precision(self.decoder(z))  # (N, *event_shape)
            pyro.sample("x", self.likelihood(logits, len(self.event_shape)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) for a batch ``x: (N, *event_shape)``."""
        with pyro.plate("data", x.shape[0]):
            loc, scale = map(_full_precision, self.encoder(x))
            with self._kl_scaled():
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _kl_scaled(self) -> AbstractContextManager:
        if self.kl_weight == 1:  # the common case: no messenger at all on the hot path
            return nullcontext()
        if self.kl_weight > 0:
            return poutine.scale(scale=self.kl_weight)
        return poutine.mask(mask=False)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = posterior mean]: what the pictures show."""
        loc, _ = self.encoder(x)
        return self.likelihood.mean(self.decoder(loc))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """E[x|z] for ``n`` draws z ~ p(z): ``(n, *event_shape)``."""
        z = self.prior().sample((n,))
        return self.likelihood.mean(self.decoder(z))


def build_vae(
    event_shape: Sequence[int],
    net: str = "mlp",
    z_dim: int = 50,
    hidden: Sequence[int] = (400,),
    prior: str = "normal",
    likelihood: str = "bernoulli",
    likelihood_scale: float = 0.1,
) -> VAE:
    """A VAE from names: ``net`` networks, ``prior`` (see :data:`pyro_vae.priors.PRIORS`) and
    ``likelihood`` (see :data:`pyro_vae.likelihoods.LIKELIHOODS`)."""
    encoder, decoder = build_networks(net, event_shape, z_dim, hidden)
    return VAE(
        encoder,
        decoder,
        build_prior(prior, z_dim, encoder, event_shape),
        build_likelihood(likelihood, event_shape, likelihood_scale),
        event_shape,
    )
