"""Likelihoods p(x|z): each turns decoder output into a distribution over one data point,
states the data it expects (``data_kind``), and refuses data outside its support.

Data kinds, prepared by :func:`pyro_vae.data.prepare`:

* ``"binary"``: pixels in {0, 1} (training images binarized afresh each epoch);
* ``"unit"``: intensities in [0, 1];
* ``"byte"``: 8-bit values 0, 1, …, 255.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.distributions.utils import broadcast_all

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.parts.registry import Registry


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class Scale(nn.Module):
    """A positive scale: fixed (a buffer), or learned shared by all pixels (``"image"``) or one per
    pixel position (``"pixel"``)."""

    def __init__(self, init: float, learn: str | None = None, event_shape: Sequence[int] = ()) -> None:
        super().__init__()
        if not init > 0:
            raise ConfigError(f"a likelihood scale must be > 0, got {init}")
        self.learn = learn
        if learn is None:
            self.register_buffer("value", torch.tensor(float(init)))
        elif learn in ("image", "pixel"):
            shape = () if learn == "image" else tuple(event_shape)
            self.raw = nn.Parameter(torch.full(shape, _inv_softplus(init)))
        else:
            raise ConfigError(f"scale can be fixed (None), 'image' or 'pixel', got {learn!r}")

    def forward(self) -> torch.Tensor:
        return self.value if self.learn is None else F.softplus(self.raw) + 1e-4


def _check_range(x: torch.Tensor, lo: float, hi: float, name: str, what: str, fix: str) -> None:
    if not torch.isfinite(x).all():
        raise DataError(f"{name} likelihood got NaN or Inf in the {what}; clean the data")
    if x.numel() and (x.min() < lo or x.max() > hi):
        raise DataError(
            f"{name} likelihood needs {what} in [{lo:g}, {hi:g}], found values in "
            f"[{x.min().item():g}, {x.max().item():g}]; {fix}"
        )


class BernoulliLikelihood(nn.Module):
    """Independent Bernoulli pixels parameterised by **logits** (never probabilities).

    Expects binary data (0/1); grayscale intensities must be binarized first
    (:func:`pyro_vae.data.binarize`) or modelled with :class:`ContinuousBernoulliLikelihood`.
    """

    data_kind = "binary"

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
                "binarize the pixels (pyro_vae.data.binarize) or use --likelihood continuous-bernoulli"
            )


def _small_logit_cut(t: torch.Tensor) -> float:
    # below this |logit| the Taylor series is used: its next term is < 1e-9 there, while the closed
    # forms lose digits to cancellation (float32 needs the wider band)
    return 0.1 if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-3


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(η) of the continuous Bernoulli with logit η, accurate for every η in float32 and float64.

    With λ = sigmoid(η), C = 2 atanh(1 − 2λ) / (1 − 2λ) = η / tanh(η/2), an even function. For
    a = |η| it is computed as log a − log(−expm1(−a)) + softplus(−a), which never forms λ, so nothing
    saturates at large |η| (torch's version, from probabilities, is wrong beyond |η| ≈ 16 in float32);
    near 0, the series log 2 + η²/12 − 7η⁴/1440.
    """
    a = logits.abs()
    cut = _small_logit_cut(logits)
    safe = torch.where(a < cut, torch.ones_like(a), a)
    exact = safe.log() - torch.log(-torch.expm1(-safe)) + F.softplus(-safe)
    sq = logits.square()
    taylor = math.log(2.0) + sq / 12 - 7 * sq.square() / 1440
    return torch.where(a < cut, taylor, exact)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] of the continuous Bernoulli with logit η: 1 / (1 − e^{−η}) − 1/η, with the series
    1/2 + η/12 − η³/720 near 0; in [0, 1] for every η."""
    cut = _small_logit_cut(logits)
    small = logits.abs() < cut
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = -1 / torch.expm1(-safe) - 1 / safe
    taylor = 0.5 + logits / 12 - logits.pow(3) / 720
    return torch.where(small, taylor, exact).clamp(0, 1)


class StableContinuousBernoulli(dist.ContinuousBernoulli):
    """Pyro's (torch's) continuous Bernoulli with a log-normaliser and mean computed from the logits,
    valid for every logit (:func:`continuous_bernoulli_log_norm`). torch's own version works from
    probabilities: in float32 its density integrates to 0.80 at logit 20 and 0.16 at logit 100."""

    def _cont_bern_log_norm(self) -> torch.Tensor:
        return continuous_bernoulli_log_norm(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return continuous_bernoulli_mean(self.logits)


class ContinuousBernoulliLikelihood(nn.Module):
    """Continuous Bernoulli on [0, 1] intensities, from logits, **with** its normaliser
    (Loaiza-Ganem & Cunningham, 2019): a proper density where Bernoulli-on-grayscale is not."""

    data_kind = "unit"

    def forward(self, logits: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        return StableContinuousBernoulli(logits=logits).to_event(event_dim)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return continuous_bernoulli_mean(logits)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        _check_range(x, 0, 1, "continuous Bernoulli", what, "scale intensities to [0, 1]")


class _LocScaleLikelihood(nn.Module):
    """``family(decoder(z), scale)`` per pixel on [0, 1] intensities, the scale fixed or learned."""

    data_kind = "unit"
    family: type[dist.TorchDistribution]
    name: str

    def __init__(self, scale: float = 0.1, learn: str | None = None, event_shape: Sequence[int] = ()) -> None:
        super().__init__()
        self.scale = Scale(scale, learn, event_shape)

    def forward(self, loc: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        return self.family(loc, self.scale()).to_event(event_dim)

    def mean(self, loc: torch.Tensor) -> torch.Tensor:
        return loc.clamp(0, 1)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        if not torch.isfinite(x).all():
            raise DataError(f"{self.name} likelihood got NaN or Inf in the {what}; clean the data")


class NormalLikelihood(_LocScaleLikelihood):
    """p(x|z) = Normal(decoder(z), scale) on [0, 1] intensities.

    With a fixed ``scale`` this is the "MSE" loss with its constant made explicit:
    −log p(x|z) = ||x − x̂||² / (2 scale²) + D log(scale √(2π)). ``learn="image"`` learns one scale
    shared by all pixels, ``learn="pixel"`` one per pixel position.
    """

    family = dist.Normal
    name = "Normal"


class LaplaceLikelihood(_LocScaleLikelihood):
    """p(x|z) = Laplace(decoder(z), scale) on [0, 1] intensities: the "L1" loss with its constant.
    ``learn`` as for :class:`NormalLikelihood`."""

    family = dist.Laplace
    name = "Laplace"


class DiscretizedLogistic(TorchDistribution):
    """8-bit values k ∈ {0, …, 255}: P(k) = F(k + ½) − F(k − ½) for a logistic CDF F with
    ``loc`` and ``scale`` in pixel units, the end bins taking the tails (PixelCNN++), so the
    256 probabilities sum to one."""

    arg_constraints: ClassVar = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.integer_interval(0, 255)

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        upper = (value + 0.5 - self.loc) / self.scale
        lower = (value - 0.5 - self.loc) / self.scale
        log_cdf_upper, log_cdf_lower = -F.softplus(-upper), -F.softplus(-lower)  # log F
        log_sf_upper, log_sf_lower = -F.softplus(upper), -F.softplus(lower)  # log(1 − F)
        # F(u) − F(l) in logs: as F(u)(1 − F(l)/F(u)) left of the location and as S(l)(1 − S(u)/S(l))
        # right of it, so neither tail loses the difference to rounding. The clamp only guards
        # exact cancellation (scale > ~1e5 pixels) and the branch torch.where discards.
        log_left = log_cdf_upper + torch.log(-torch.expm1((log_cdf_lower - log_cdf_upper).clamp(max=-1e-6)))
        log_right = log_sf_lower + torch.log(-torch.expm1((log_sf_upper - log_sf_lower).clamp(max=-1e-6)))
        log_mid = torch.where(value < self.loc, log_left, log_right)
        return torch.where(value <= 0, log_cdf_upper, torch.where(value >= 255, log_sf_lower, log_mid))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 255)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
        with torch.no_grad():
            return (self.loc + self.scale * (u.log() - (-u).log1p())).round().clamp(0, 255)


class DiscretizedLogisticLikelihood(nn.Module):
    """Discretised logistic over 8-bit pixel values, with a learned per-pixel scale.

    The decoder output o maps to the location 127.5 (1 + o) in pixel units, so o ∈ [−1, 1]
    spans the pixel range, as in PixelCNN++."""

    data_kind = "byte"

    def __init__(self, event_shape: Sequence[int], scale: float = 8.0) -> None:
        super().__init__()
        self.scale = Scale(scale, "pixel", event_shape)

    def forward(self, out: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        return DiscretizedLogistic(127.5 * (1 + out), self.scale()).to_event(event_dim)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return (0.5 * (1 + out)).clamp(0, 1)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        _check_range(x, 0, 255, "discretized logistic", what, "pass 8-bit pixel values 0..255")
        if (x != x.round()).any():
            raise DataError(f"discretized logistic likelihood needs whole 8-bit values in the {what}; found fractions")


# the names of the command line: what each likelihood models; each is built from (event_shape, scale)
LIKELIHOODS = Registry("likelihood")
LIKELIHOODS.add("bernoulli", "Bernoulli from logits on binarized pixels", lambda shape, scale: BernoulliLikelihood())
LIKELIHOODS.add(
    "continuous-bernoulli",
    "continuous Bernoulli (normalised) on [0, 1] intensities",
    lambda shape, scale: ContinuousBernoulliLikelihood(),
)
LIKELIHOODS.add(
    "normal",
    "Normal with a fixed scale (--likelihood-scale) on [0, 1] intensities",
    lambda shape, scale: NormalLikelihood(scale),
)
LIKELIHOODS.add(
    "normal-image",
    "Normal with one learned scale for all pixels",
    lambda shape, scale: NormalLikelihood(scale, "image", shape),
)
LIKELIHOODS.add(
    "normal-pixel",
    "Normal with a learned scale per pixel",
    lambda shape, scale: NormalLikelihood(scale, "pixel", shape),
)
LIKELIHOODS.add(
    "laplace",
    "Laplace with a fixed scale (--likelihood-scale) on [0, 1] intensities",
    lambda shape, scale: LaplaceLikelihood(scale),
)
LIKELIHOODS.add(
    "discretized-logistic",
    "discretised logistic on 8-bit values, learned per-pixel scale",
    lambda shape, scale: DiscretizedLogisticLikelihood(shape),
)


def build_likelihood(name: str, event_shape: Sequence[int], scale: float = 0.1) -> nn.Module:
    """The likelihood called ``name`` (see :data:`LIKELIHOODS`); ``scale`` is the fixed or initial scale."""
    return LIKELIHOODS.build(name, event_shape, scale)
