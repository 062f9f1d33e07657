"""Priors p(z). Each is an ``nn.Module`` whose parameters are buffers or parameters,
so ``vae.to(device)`` moves them; calling it returns a distribution with
``event_shape == (z_dim,)`` that the ``"data"`` plate broadcasts over the batch."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormalPrior(nn.Module):
    """p(z) = Normal(0, I)."""

    loc: torch.Tensor
    scale: torch.Tensor

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
