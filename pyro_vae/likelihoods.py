"""Likelihoods p(x|z): they turn decoder output into a distribution over one data point."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.errors import DataError


class BernoulliLikelihood(nn.Module):
    """Independent Bernoulli pixels parameterised by **logits** (never probabilities).

    Expects binary data (0/1); grayscale intensities must be binarized first
    (:func:`pyro_vae.data.binarize`).
    """

    def forward(self, logits: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        """:param logits: decoder output ``(..., *event_shape)``.
        :param event_dim: number of trailing dims that make one data point."""
        return dist.Bernoulli(logits=logits).to_event(event_dim)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """E[x|z], for pictures only: the log-likelihood always uses the logits."""
        return torch.sigmoid(logits)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` unless every value of ``x`` is 0 or 1."""
        bad = (x != 0) & (x != 1)
        if bad.any():
            v = x[bad][0].item()
            raise DataError(
                f"Bernoulli likelihood needs binary {what} (0 or 1), found {v:g}; "
                "binarize the pixels (pyro_vae.data.binarize) or use a likelihood for intensities"
            )


class NormalLikelihood(nn.Module):
    """p(x|z) = Normal(decoder(z), scale) with a fixed, stated ``scale`` (the "MSE" loss with its
    constant made explicit). Expects real-valued, finite data."""

    scale: torch.Tensor

    def __init__(self, scale: float) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"NormalLikelihood scale must be > 0, got {scale}")
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, loc: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        return dist.Normal(loc, self.scale).to_event(event_dim)

    def mean(self, loc: torch.Tensor) -> torch.Tensor:
        return loc

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        if not torch.isfinite(x).all():
            raise DataError(f"Normal likelihood needs finite {what}; found NaN or Inf values")
