"""Posterior families q(z|x): the fourth swappable part, beside priors, likelihoods and networks.

The encoder gives a location, a scale and (for a flow) a context vector h(x): the features its Gaussian
head reads. A posterior module turns them into the distribution the guide samples ``z`` from:

* ``gaussian``: Normal(loc, scale), diagonal (the default; it adds no parameter);
* ``iaf``: inverse autoregressive flow (Kingma et al., 2016): Normal(loc, scale) pushed through ``flows``
  conditional affine autoregressive steps of z given h (Pyro's gated, "stable" update), the order of
  the variables reversed between steps;
* ``householder``: Householder flow (Tomczak & Welling, 2016): ``flows`` reflections of z whose vectors
  depend on h, volume-preserving, so the posterior becomes a full-covariance Gaussian.

Each is Pyro's own transform, conditioned with ``.condition(h)``; the log-density of a sample is the
change-of-variables formula, read from the transforms' cache (no inverse pass). No flow has a closed-form
KL: ``TraceMeanField_ELBO`` falls back to the Monte-Carlo KL for it, and says so.

Your own family: a module ``(loc, scale, context) -> distribution over z`` (``event_shape (z_dim,)``),
passed as ``build_vae(..., guide=module)``; set ``needs_context = True`` to receive h.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from contextlib import nullcontext

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.parts.lean import DiagNormal
from pyro_vae.parts.registry import Registry


class GaussianPosterior(nn.Module):
    """q(z|x) = Normal(loc, scale), diagonal: the guide every VAE had before flows."""

    needs_context = False

    def forward(self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor | None = None):
        return DiagNormal(loc, scale)  # Normal(loc, scale).to_event(1), lean

    def point(self, loc: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The z the pictures decode: the posterior mean."""
        return loc


class FlowPosterior(nn.Module):
    """Normal(loc, scale) pushed through conditional transforms of z given the context h(x).

    :param kind: ``"iaf"`` or ``"householder"``.
    :param flows: number of steps (transforms).
    :param hidden: widths of the autoregressive (IAF) or context (Householder) network of each step.
    """

    needs_context = True

    def __init__(self, kind: str, z_dim: int, context_dim: int, flows: int = 2, hidden: Sequence[int] = (256,)):
        super().__init__()
        if isinstance(flows, bool) or not isinstance(flows, int) or not 1 <= flows <= 64:
            raise ConfigError(f"`flows` must be an integer from 1 to 64, got {flows!r}")
        self.kind = kind
        hidden = list(hidden)
        steps: list[nn.Module] = []
        # Pyro builds its autoregressive masks with .item(), which the meta device (the memory check's
        # dry build) cannot do: those few parameters are built on the CPU there
        place = torch.device("cpu") if torch.empty(0).device.type == "meta" else nullcontext()
        _check_flow_size(z_dim, context_dim, flows, hidden)
        with place:
            self._build(kind, z_dim, context_dim, flows, hidden, steps)
        self.steps = nn.ModuleList(steps)
        # IAF: reverse the variables between steps, so each is conditioned on every other somewhere
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1))

    @staticmethod
    def _build(kind: str, z_dim: int, context_dim: int, flows: int, hidden: list[int], steps: list) -> None:
        for _ in range(flows):
            if kind == "iaf":
                steps.append(T.conditional_affine_autoregressive(z_dim, context_dim, hidden_dims=hidden, stable=True))
            elif kind == "householder":
                steps.append(T.conditional_householder(z_dim, context_dim, hidden_dims=hidden))
            else:
                raise ConfigError(f"unknown flow {kind!r}; choose iaf or householder")

    def transforms(self, context: torch.Tensor) -> list:
        out: list = []
        for i, step in enumerate(self.steps):
            if i > 0 and self.kind == "iaf":
                out.append(T.Permute(self.reverse))
            out.append(step.condition(context))
        return out

    def forward(self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor | None = None):
        if context is None:
            raise ConfigError("a flow posterior needs the encoder's context h(x); pass context=")
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), self.transforms(context))

    def point(self, loc: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The z the pictures decode: the base distribution's mean pushed through the flow."""
        z = loc
        for t in self.transforms(context):
            z = t(z)
        return z


#: the names of the command line; each is built from (z_dim, context_dim, flows, hidden)
GUIDES = Registry("guide")
GUIDES.add(
    "gaussian", "diagonal Normal q(z|x) (no flow)", lambda z_dim, context_dim, flows, hidden: GaussianPosterior()
)
GUIDES.add(
    "iaf",
    "inverse autoregressive flow: `flows` conditional affine autoregressive steps given h(x) (Kingma et al. 2016)",
    lambda z_dim, context_dim, flows, hidden: FlowPosterior("iaf", z_dim, context_dim, flows, hidden),
)
GUIDES.add(
    "householder",
    "Householder flow: `flows` reflections given h(x), a full-covariance Gaussian (Tomczak & Welling 2016)",
    lambda z_dim, context_dim, flows, hidden: FlowPosterior("householder", z_dim, context_dim, flows, hidden),
)


def _check_flow_size(z_dim: int, context_dim: int, flows: int, hidden: list[int]) -> None:
    """Refuse, before a weight is made, flow networks whose parameters, gradients and Adam moments cannot fit
    in the free host memory (they are built on the CPU even in the memory check's dry build)."""
    from pyro_vae.resources import available_bytes, check_fits

    widths = [z_dim + context_dim, *hidden, 2 * z_dim]  # an IAF step's network; a Householder one's is smaller
    weights = flows * sum(a * b + b for a, b in itertools.pairwise(widths))
    shown = " ".join(map(str, hidden))
    check_fits(16 * weights, torch.device("cpu"), f"a flow guide of {flows} steps with `flow_hidden={shown}`",
               "lower them", available_bytes(torch.device("cpu")))  # fmt: skip


def build_guide(name: str, z_dim: int, context_dim: int, flows: int = 2, hidden: Sequence[int] = (256,)) -> nn.Module:
    """The posterior family called ``name`` (see :data:`GUIDES`)."""
    return GUIDES.build(name, z_dim, context_dim, flows, tuple(hidden))


def context_dim(encoder: nn.Module, z_dim: int) -> int:
    """The size of h(x): the features the encoder's Gaussian head reads, or 2·z_dim (loc and log-scale)
    for an encoder of your own without a ``body`` and a ``head``."""
    head = getattr(encoder, "head", None)
    loc = getattr(head, "loc", None)
    if getattr(encoder, "body", None) is not None and isinstance(loc, nn.Linear):
        return loc.in_features
    return 2 * z_dim
