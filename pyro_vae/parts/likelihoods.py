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

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.utils import broadcast_all

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.parts.autoregressive import AutoregressiveMixtureLikelihood
from pyro_vae.parts.blocks import in_blocks
from pyro_vae.parts.discrete import (
    DecoderLogisticLikelihood,
    DiscretizedLogistic,
    DiscretizedMixtureLikelihood,
)
from pyro_vae.parts.lean import BernoulliLogits, bernoulli_log_prob
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
    (:func:`pyro_vae.binarize`) or modelled with :class:`ContinuousBernoulliLikelihood`.
    """

    data_kind = "binary"

    def forward(self, logits: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        """:param logits: decoder output ``(..., *event_shape)``.
        :param event_dim: number of trailing dims that make one data point."""
        return BernoulliLogits(logits, event_dim)  # Bernoulli(logits=logits).to_event(event_dim), lean

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
                "binarize the pixels (pyro_vae.data.binarize) or use `likelihood=continuous-bernoulli`"
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

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # torch's x·l − softplus(l) + log C; on the CPU the first terms from exp and log
        # (pyro_vae.parts.lean.bernoulli_log_prob; torch's go through the scalar-loop log_sigmoid), and
        # evaluation's large inputs in cache-sized blocks
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        if logits.device.type == "cpu":
            return in_blocks(_continuous_bernoulli_log_prob, logits, value)
        cross = -F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return cross + self._cont_bern_log_norm()

    @property
    def mean(self) -> torch.Tensor:
        return continuous_bernoulli_mean(self.logits)


def _continuous_bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # x·l − softplus(l) + log C(l), elementwise
    return bernoulli_log_prob(logits, value) + continuous_bernoulli_log_norm(logits)


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


class DecoderNormalLikelihood(nn.Module):
    """p(x|z) = Normal(loc, scale) on [0, 1] intensities, location **and** log-scale from the decoder
    (its output has twice the channels: the C location maps, then the C log-scale maps). The scale is
    bounded smoothly to [1e-3, 1], starting at 0.1."""

    data_kind = "unit"

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)

    def param_shape(self, event_shape: Sequence[int]) -> tuple[int, ...]:
        return (2 * event_shape[0], *event_shape[1:])

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = out.chunk(2, dim=out.dim() - len(self.event_shape))
        # log-scale between log 1e-3 and log 1 through a sigmoid, 0.1 at raw 0
        lo, hi, init = math.log(1e-3), 0.0, math.log(0.1)
        return loc, torch.exp(lo + (hi - lo) * torch.sigmoid(raw + math.log((init - lo) / (hi - init))))

    def forward(self, out: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        loc, scale = self._split(out)
        return dist.Normal(loc, scale).to_event(event_dim)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self._split(out)[0].clamp(0, 1)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        if not torch.isfinite(x).all():
            raise DataError(f"Normal likelihood got NaN or Inf in the {what}; clean the data")


class DiscretizedLogisticLikelihood(nn.Module):
    """Discretised logistic over 8-bit pixel values, with a learned scale per pixel **position** (a
    parameter, the same for every image): ``discretized-logistic-pixel``. The decoder-predicted scale of
    ``pyro_vae.parts.discrete.DecoderLogisticLikelihood`` trains far better; this one stays for
    comparison and for the runs trained with it.

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


#: the names of the command line: what each likelihood models; each is built from
#: (event_shape, scale, components): the fixed or initial scale, and a mixture's number of components
LIKELIHOODS = Registry("likelihood")
LIKELIHOODS.add("bernoulli", "Bernoulli from logits on binarized pixels", lambda shape, scale, m: BernoulliLikelihood())
LIKELIHOODS.add(
    "continuous-bernoulli",
    "continuous Bernoulli (normalised) on [0, 1] intensities",
    lambda shape, scale, m: ContinuousBernoulliLikelihood(),
)
LIKELIHOODS.add(
    "normal",
    "Normal with a fixed scale (`likelihood_scale`) on [0, 1] intensities",
    lambda shape, scale, m: NormalLikelihood(scale),
)
LIKELIHOODS.add(
    "normal-image",
    "Normal with one learned scale for all pixels",
    lambda shape, scale, m: NormalLikelihood(scale, "image", shape),
)
LIKELIHOODS.add(
    "normal-pixel",
    "Normal with a learned scale per pixel position (a parameter, the same for every image)",
    lambda shape, scale, m: NormalLikelihood(scale, "pixel", shape),
)
LIKELIHOODS.add(
    "normal-decoder",
    "Normal with location and log-scale per pixel from the decoder",
    lambda shape, scale, m: DecoderNormalLikelihood(shape),
)
LIKELIHOODS.add(
    "laplace",
    "Laplace with a fixed scale (`likelihood_scale`) on [0, 1] intensities",
    lambda shape, scale, m: LaplaceLikelihood(scale),
)
LIKELIHOODS.add(
    "discretized-logistic",
    "discretised logistic on 8-bit values, location and log-scale per pixel from the decoder",
    lambda shape, scale, m: DecoderLogisticLikelihood(shape),
)
LIKELIHOODS.add(
    "discretized-logistic-pixel",
    "discretised logistic on 8-bit values, learned scale per pixel position (the earlier default)",
    lambda shape, scale, m: DiscretizedLogisticLikelihood(shape),
)
LIKELIHOODS.add(
    "discretized-mixture",
    "mixture of `mixture_components` discretised logistics per pixel, coupled RGB means (PixelCNN++)",
    lambda shape, scale, m: DiscretizedMixtureLikelihood(shape, m),
)

LIKELIHOODS.add(
    "autoregressive-mixture",
    "`discretized-mixture` given the decoder's maps and each pixel's causal neighbourhood (PixelVAE)",
    lambda shape, scale, m, kernel=5, dropout=0.0: AutoregressiveMixtureLikelihood(shape, m, kernel, dropout=dropout),
)


def build_likelihood(
    name: str,
    event_shape: Sequence[int],
    scale: float = 0.1,
    components: int = 10,
    *,
    kernel: int = 5,
    dropout: float = 0.0,
) -> nn.Module:
    """The likelihood called ``name`` (see :data:`pyro_vae.parts.likelihoods.LIKELIHOODS`); ``scale`` is the fixed
    or initial scale, ``components`` the number of logistics of ``discretized-mixture``; ``kernel`` and
    ``dropout`` the neighbourhood's width and the neighbours hidden in training of ``autoregressive-mixture``."""
    if name == "autoregressive-mixture":
        return LIKELIHOODS.build(name, event_shape, scale, components, kernel=kernel, dropout=dropout)
    return LIKELIHOODS.build(name, event_shape, scale, components)


def decoder_shape(likelihood: nn.Module, event_shape: Sequence[int]) -> tuple[int, ...]:
    """What the decoder must output per data point for ``likelihood``: its ``param_shape`` where it has
    one (location and scale maps, mixture parameters), else the data point's own shape."""
    param_shape = getattr(likelihood, "param_shape", None)
    return tuple(param_shape(tuple(event_shape))) if param_shape is not None else tuple(event_shape)
