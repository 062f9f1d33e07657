"""Priors p(z). Each is an ``nn.Module`` whose parameters are buffers or parameters,
so ``vae.to(device)`` moves them; calling it returns a distribution with
``event_shape == (z_dim,)`` that the ``"data"`` plate broadcasts over the batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae.parts.lean import DiagNormal, StandardDiagNormal
from pyro_vae.parts.registry import Registry


class _FixedPrior(nn.Module):
    """Independent ``family(0, 1)`` coordinates, their parameters as buffers."""

    family: type[dist.TorchDistribution]
    loc: torch.Tensor
    scale: torch.Tensor

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        return self.family(self.loc, self.scale).to_event(1)


class StandardNormalPrior(_FixedPrior):
    """p(z) = Normal(0, I)."""

    family = dist.Normal

    def forward(self) -> dist.TorchDistribution:
        return StandardDiagNormal(self.loc, self.scale)  # Normal(0, 1).to_event(1), lean


def _positive(raw: torch.Tensor) -> torch.Tensor:
    # softplus keeps learned scales positive without exp's overflow
    return F.softplus(raw) + 1e-4


_SOFTPLUS_INV_1 = math.log(math.e - 1)  # softplus(this) = 1: learned scales start at 1


class LearnedNormalPrior(nn.Module):
    """p(z) = Normal(loc, diag(scale)) with ``loc`` and ``scale`` learned; starts at N(0, I)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.raw_scale = nn.Parameter(torch.full((z_dim,), _SOFTPLUS_INV_1))

    def forward(self) -> dist.TorchDistribution:
        return DiagNormal(self.loc, _positive(self.raw_scale))


class StudentTPrior(nn.Module):
    """p(z) = independent Student-t(df, 0, 1): heavier tails than the Normal. No closed-form KL."""

    df: torch.Tensor
    loc: torch.Tensor
    scale: torch.Tensor

    def __init__(self, z_dim: int, df: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("df", torch.full((z_dim,), float(df)))
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)


class LaplacePrior(_FixedPrior):
    """p(z) = independent Laplace(0, 1): a sparsity-favouring prior. torch knows KL(Normal || Laplace)
    in closed form, so ``--elbo analytic`` uses it."""

    family = dist.Laplace


class DiagonalGaussianMixture(TorchDistribution):
    """Σ_k π_k Normal(μ_k, diag σ_k²) over vectors, ``event_shape = (D,)``.

    The log-density is one matrix product per call, in float64: scoring N points against K
    components costs an (N, 2D) × (2D, K) GEMM and an (N, K) result, never an (N, K, D) tensor.
    It is accurate for float32 inputs with scales from 1e-5 to 1e2 (tested against float64
    ``MixtureSameFamily`` at the same points); the float32 expansion it replaced was off by
    tens of nats at σ = 1e-4.

    :param logits: ``(K,)`` unnormalised component weights.
    :param locs: ``(K, D)``.
    :param scales: ``(K, D)``, positive.
    """

    arg_constraints: ClassVar = {
        "logits": constraints.real_vector,
        "locs": constraints.real,
        "scales": constraints.positive,
    }
    support = constraints.real_vector

    def __init__(self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor, validate_args=None) -> None:
        self.logits, self.locs, self.scales = logits, locs, scales
        batch_shape = torch.Size()
        super().__init__(batch_shape, locs.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        # the components are shared by every batch element; only the reported shape changes
        new = self._get_checked_instance(DiagonalGaussianMixture, _instance)
        new.logits, new.locs, new.scales = self.logits, self.locs, self.scales
        super(DiagonalGaussianMixture, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = value.shape[:-1]
        d = value.shape[-1]
        # Σ_d (z − μ_k)² / σ_k² expanded into [z², z] · [1/σ_k², −2μ_k/σ_k²] + Σ_d μ_k²/σ_k²: one GEMM for
        # all points and components. The expansion cancels when σ_k is small (float32 loses tens of
        # nats at σ = 1e-4), so it is done in float64, about the cost of two float32 GEMMs, after
        # centring on the mean location, which keeps the cancelling terms as small as they can be.
        center = self.locs.detach().double().mean(0)  # (D,)
        z = value.reshape(-1, d).double() - center  # (M, D)
        locs = self.locs.double() - center  # (K, D)
        prec = self.scales.double().pow(-2)  # (K, D)
        quad = torch.cat([z * z, z], -1) @ torch.cat([prec, -2 * locs * prec], -1).T  # (M, K)
        quad = quad + (locs.square() * prec).sum(-1)
        # Even float64 cancels where σ is tiny (terms of 1e10 per unit at σ = 1e-5, a result of about 1), by an
        # amount that depends on the CPU's GEMM: the component that dominates each point's sum has its term
        # computed directly, at O(M D). The rest stays in float64 too and is rounded once at the end (a float32
        # sum of D log-scales, hundreds of nats at tiny scales, loses a few ulps).
        log_norm = torch.log_softmax(self.logits.double(), -1) - self.scales.double().log().sum(-1)  # (K,)
        top = (log_norm - 0.5 * quad).detach().argmax(-1, keepdim=True)  # (M, 1)
        exact = ((z - locs[top[:, 0]]).square() * prec[top[:, 0]]).sum(-1, keepdim=True)
        quad = quad.scatter(-1, top, exact)
        log_comp = log_norm - 0.5 * (quad + d * math.log(2 * math.pi))
        lp = torch.logsumexp(log_comp, -1).to(value.dtype)
        return lp.reshape(shape).expand(torch.broadcast_shapes(shape, self.batch_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape)[:-1]
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(shape)
            return self.locs[k] + self.scales[k] * torch.randn(*shape, self.locs.shape[-1], device=self.locs.device)


class MixtureOfGaussiansPrior(nn.Module):
    """p(z) = Σ_k π_k Normal(μ_k, diag(σ_k)) with weights, means and scales learned.

    :param n_components: number of Gaussians; means start spread out as N(0, I) draws.
    """

    def __init__(self, z_dim: int, n_components: int = 10) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.locs = nn.Parameter(torch.randn(n_components, z_dim))
        self.raw_scales = nn.Parameter(torch.full((n_components, z_dim), _SOFTPLUS_INV_1))

    def forward(self) -> dist.TorchDistribution:
        return DiagonalGaussianMixture(self.logits, self.locs, _positive(self.raw_scales))


class VampPrior(nn.Module):
    """p(z) = (1/K) Σ_k q(z | u_k): the guide's posteriors at K learned pseudo-inputs u_k
    (Tomczak & Welling, 2018).

    :param encoder: the VAE's encoder; used, not owned (the VAE registers and moves it).
    :param event_shape: shape of one data point; pseudo-inputs have this shape.
    :param n_pseudo: number of pseudo-inputs.
    """

    def __init__(self, encoder: nn.Module, event_shape: Sequence[int], n_pseudo: int = 500) -> None:
        super().__init__()
        # kept out of the module tree so the encoder's weights are saved once, under the VAE
        self.__dict__["encoder"] = encoder
        self.pseudo_inputs = nn.Parameter(0.5 + 0.05 * torch.randn(n_pseudo, *event_shape))

    def forward(self) -> dist.TorchDistribution:
        loc, scale = self.encoder(self.pseudo_inputs)  # (K, z_dim) each
        return DiagonalGaussianMixture(torch.zeros(len(loc), device=loc.device), loc, scale)


#: CLI names: what each prior is, for --help and errors
PRIORS = Registry("prior")
PRIORS.add("normal", "standard Normal N(0, I)", lambda z_dim, encoder, event_shape: StandardNormalPrior(z_dim))
PRIORS.add(
    "learned-normal",
    "diagonal Normal with learned mean and scale",
    lambda z_dim, encoder, event_shape: LearnedNormalPrior(z_dim),
)
PRIORS.add("student-t", "independent Student-t, df = 3", lambda z_dim, encoder, event_shape: StudentTPrior(z_dim))
PRIORS.add("laplace", "independent Laplace(0, 1)", lambda z_dim, encoder, event_shape: LaplacePrior(z_dim))
PRIORS.add(
    "mog",
    "mixture of 10 Gaussians, learned weights, means and scales",
    lambda z_dim, encoder, event_shape: MixtureOfGaussiansPrior(z_dim),
)
PRIORS.add(
    "vamp",
    "VampPrior: the guide's posteriors at 500 learned pseudo-inputs",
    lambda z_dim, encoder, event_shape: VampPrior(encoder, event_shape),
)


def build_prior(name: str, z_dim: int, encoder: nn.Module, event_shape: Sequence[int]) -> nn.Module:
    """The prior called ``name`` (see :data:`pyro_vae.parts.priors.PRIORS`)."""
    return PRIORS.build(name, z_dim, encoder, event_shape)


def has_closed_form_kl(prior: nn.Module, z_dim: int | None = None) -> bool:
    """Whether torch knows KL(Normal posterior || prior) in closed form (what ``--elbo analytic`` uses);
    the latent size is read off the prior when ``z_dim`` is not given."""
    p = prior()
    device = p.sample().device
    z_dim = p.event_shape[-1] if z_dim is None else z_dim
    q = dist.Normal(torch.zeros(z_dim, device=device), torch.ones(z_dim, device=device)).to_event(1)
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True
