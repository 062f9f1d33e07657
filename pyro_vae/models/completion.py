"""Completing an image from part of it: Pyro's conditional-VAE task (Sohn et al. 2015, the Pyro tutorial
``examples/cvae``): MNIST digits with 1, 2 or 3 of their quadrants shown, the rest to be drawn.

With x the shown pixels and y the hidden ones:

* a baseline network guesses y from x (``baseline``, one deterministic guess ŷ, trained first and then frozen);
* the prior p(z | x) reads x with ŷ in the hidden places (``prior_net``);
* the likelihood p(y | x, z) is Bernoulli with logits from z (``generation_net``), over the hidden pixels only;
* the guide q(z | x, y) reads the whole image (``recognition_net``).

Its ELBO bounds log p(y | x); :func:`conditional_log_likelihood` gives the importance-sampled estimate, a
tighter bound. As in Pyro's tutorial the targets are the grey levels in [0, 1] scored by the Bernoulli's
cross-entropy, so for grey pixels these are the tutorial's scores rather than a normalised density; for
binary pixels they are log-probabilities.

Pyro's own loop trains it: ``SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())`` with
``svi.step(shown, hidden)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.parts.nets import GaussianHead


def quadrant_mask(shown: int, height: int = 28, width: int = 28) -> torch.Tensor:
    """The shown pixels, ``(height * width,)`` bool, for Pyro's tutorial's layouts: 1 shows the bottom-left
    quadrant, 2 the left half, 3 all but the bottom-right quadrant.

    >>> quadrant_mask(2, 4, 4).reshape(4, 4).int().tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    """
    if isinstance(shown, bool) or shown not in (1, 2, 3):
        raise ConfigError(f"`quadrants` must be 1, 2 or 3 (the quadrants shown), got {shown!r}")
    mask = torch.zeros(height, width, dtype=torch.bool)
    h, w = height // 2, width // 2
    mask[h:, :w] = True  # bottom-left
    if shown >= 2:
        mask[:, :w] = True  # the left half
    if shown == 3:
        mask[:h, :] = True  # and the top-right
    return mask.flatten()


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class CompletionVAE(nn.Module):
    """The conditional VAE of Pyro's tutorial for one layout of shown pixels; see the module docstring.

    :param mask: ``(D,)`` bool, True where a pixel is shown.
    :param z_dim: the latent's size (the tutorial's is 200).
    :param hidden: the hidden widths of every network (the tutorial's are 500, 500).
    """

    def __init__(self, mask: torch.Tensor, z_dim: int = 200, hidden: Sequence[int] = (500, 500)) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool).flatten()
        if not 0 < int(mask.sum()) < len(mask):
            raise ConfigError("the mask must show some pixels and hide some")
        self.register_buffer("mask", mask)  # moved by .to(device), saved with the weights
        d, hidden = len(mask), tuple(hidden)
        self.baseline = nn.Sequential(_mlp((d, *hidden)), nn.Linear(hidden[-1], d))
        self.prior_net = nn.Sequential(_mlp((d, *hidden)), GaussianHead(hidden[-1], z_dim))
        self.recognition_net = nn.Sequential(_mlp((d, *hidden)), GaussianHead(hidden[-1], z_dim))
        self.generation_net = nn.Sequential(_mlp((z_dim, *hidden)), nn.Linear(hidden[-1], d))
        self.baseline.requires_grad_(False)  # trained first, by baseline_loss, then frozen

    @property
    def hidden_pixels(self) -> int:
        return int((~self.mask).sum())

    def _image(self, shown: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """The full ``(N, D)`` image with ``shown`` in the shown places and ``fill`` ``(N, D_hidden)`` in the rest."""
        image = shown.new_empty(len(shown), len(self.mask))
        image[:, self.mask], image[:, ~self.mask] = shown, fill
        return image

    def baseline_logits(self, shown: torch.Tensor) -> torch.Tensor:
        """The baseline's logits for the hidden pixels, ``(N, D_hidden)``; it reads −1 where a pixel is hidden,
        as the tutorial's does."""
        return self.baseline(self._image(shown, shown.new_full((len(shown), self.hidden_pixels), -1.0)))[:, ~self.mask]

    def baseline_loss(self, shown: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The baseline's cross-entropy on the hidden pixels, per image ``(N,)``, from logits."""
        logits = self.baseline_logits(shown)
        return F.binary_cross_entropy_with_logits(logits, hidden, reduction="none").sum(-1)

    def prior(self, shown: torch.Tensor) -> dist.TorchDistribution:
        """p(z | x): the prior network on x with the baseline's guess in the hidden places."""
        with torch.no_grad():
            guess = torch.sigmoid(self.baseline_logits(shown))
        loc, scale = self.prior_net(self._image(shown, guess))
        return dist.Normal(loc, scale).to_event(1)

    def posterior(self, shown: torch.Tensor, hidden: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x, y): the recognition network on the whole image."""
        loc, scale = self.recognition_net(self._image(shown, hidden))
        return dist.Normal(loc, scale).to_event(1)

    def likelihood(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(y | x, z): Bernoulli logits for the hidden pixels (grey targets are scored by its cross-entropy)."""
        logits = self.generation_net(z)[..., ~self.mask]
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)

    def model(self, shown: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """p(z | x) p(y | x, z) for shown pixels ``(N, D_shown)`` and, in training, the hidden ones."""
        pyro.module("prior_net", self.prior_net)  # the frozen baseline is not a parameter of the ELBO
        pyro.module("generation_net", self.generation_net)
        with pyro.plate("data", len(shown)):
            z = pyro.sample("z", self.prior(shown))
            d = self.likelihood(z)
            pyro.sample("hidden", d, obs=hidden)
            return torch.sigmoid(d.base_dist.logits)

    def guide(self, shown: torch.Tensor, hidden: torch.Tensor | None = None) -> None:
        """q(z | x, y) in training; with the hidden pixels unknown, the prior p(z | x) (to draw completions)."""
        pyro.module("recognition_net", self.recognition_net)
        with pyro.plate("data", len(shown)):
            pyro.sample("z", self.prior(shown) if hidden is None else self.posterior(shown, hidden))

    @torch.no_grad()
    def complete(self, shown: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """``draws`` completions per image, ``(draws, N, D)``: z ~ p(z | x), then the hidden pixels' means."""
        z = self.prior(shown).sample((draws,))
        means = torch.sigmoid(self.generation_net(z)[..., ~self.mask])
        return torch.stack([self._image(shown, m) for m in means])


@torch.no_grad()
def conditional_log_likelihood(
    cvae: CompletionVAE,
    shown: torch.Tensor,
    hidden: torch.Tensor,
    k: int,
    *,
    chunk: int = 100,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Per image, the ELBO and the importance-sampled estimate of log p(y | x), both from the same K draws of
    q(z | x, y): ``log (1/K) Σ_k p(y | x, z_k) p(z_k | x) / q(z_k | x, y)``, which tightens towards log p(y | x)
    as K grows. Seeded, with the caller's random state restored.

    :param k: importance samples per image.
    :param chunk: images per pass.
    :returns: ``{"elbo": (N,), "log_likelihood": (N,)}`` in nats, float64.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"`k` must be a number of importance samples of at least 1, got {k!r}")
    elbo, ll = [], []
    devices = [shown.device] if shown.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for at in range(0, len(shown), chunk):
            x, y = shown[at : at + chunk], hidden[at : at + chunk]
            q = cvae.posterior(x, y)
            z = q.sample((k,))  # (K, n, z_dim)
            log_w = cvae.likelihood(z).log_prob(y) + cvae.prior(x).log_prob(z) - q.log_prob(z)  # (K, n)
            log_w = log_w.double()
            elbo.append(log_w.mean(0))
            ll.append(torch.logsumexp(log_w, 0) - math.log(k))
    return {"elbo": torch.cat(elbo), "log_likelihood": torch.cat(ll)}


__all__ = ["CompletionVAE", "conditional_log_likelihood", "quadrant_mask"]
