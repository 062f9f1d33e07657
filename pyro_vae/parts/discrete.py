"""8-bit likelihoods whose every parameter comes from the decoder, as in IAF-VAE, PixelCNN++, VDVAE and
NVAE: a discretised logistic per pixel, and a mixture of them with PixelCNN++'s coupling of the colour
channels' means.

Values are whole numbers k ∈ {0, …, 255}; a logistic with location μ and scale s (pixel units) gives
P(k) = F(k + ½) − F(k − ½), the end bins taking the tails, so the 256 probabilities sum to one. The
decoder's raw output o maps to μ = 127.5 (1 + o), and its log-scale head to a scale bounded smoothly
to [:data:`MIN_SCALE`, :data:`MAX_SCALE`] pixels, where float32 still sums to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.distributions.utils import broadcast_all

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.parts.blocks import in_blocks

# the scales the decoder can produce, in pixel units: below 0.01 a bin already holds all but e^-50 of
# the mass; above 256 a bin's mass (~1/(4s)) starts to lose digits to float32 cancellation
MIN_SCALE, MAX_SCALE = 0.01, 256.0
# where the scale starts (raw log-scale output 0): about a photograph's spread around its mean, so the
# first epoch scores near the no-latent baseline instead of far above 8 bits/dim
INIT_SCALE = 16.0
_LO, _HI = math.log(MIN_SCALE), math.log(MAX_SCALE)
_INIT_LOGIT = math.log((math.log(INIT_SCALE) - _LO) / (_HI - math.log(INIT_SCALE)))


def bounded_scale(raw: torch.Tensor) -> torch.Tensor:
    """The decoder's raw log-scale output as a scale in [MIN_SCALE, MAX_SCALE] pixels: a sigmoid between
    the bounds in log space, so the gradient is finite everywhere and raw 0 gives :data:`INIT_SCALE`."""
    return torch.exp(_LO + (_HI - _LO) * torch.sigmoid(raw + _INIT_LOGIT))


def discretized_logistic_log_prob(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log P(value) for 8-bit ``value`` under a discretised logistic(``loc``, ``scale``), elementwise,
    accurate in float32 in both tails (no CDF is subtracted from another in probability space).

    The bin's mass is F(u) − F(l) with u, l = (value ± ½ − loc) / scale. Right of the location it is
    computed as F(−l) − F(−u), the same number by the logistic's symmetry, so one formula,
    log F(a) + log(1 − F(b)/F(a)) with a > b both left of the centre, serves both tails. The end bins
    take the tails: log F(u) at 0 and log F(−l) at 255 (b = −∞). Evaluation's large inputs are scored in
    cache-sized blocks (:func:`pyro_vae.parts.blocks.in_blocks`).
    """
    return in_blocks(_discretized_logistic_log_prob, value, loc, scale)


def _discretized_logistic_log_prob(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    centred = value - loc
    up, lo = (centred + 0.5) / scale, (centred - 0.5) / scale
    left = value < loc
    low_end, high_end = value <= 0, value >= 255
    a = torch.where(low_end, up, torch.where(high_end, -lo, torch.where(left, up, -lo)))
    b = torch.where(left, lo, -up)
    log_fa, log_fb = -F.softplus(-a), -F.softplus(-b)  # log F
    # the clamp guards only exact cancellation (scale > ~1e5 levels) and the end bins, where the ratio
    # is replaced by 0 below
    log_mass = log_fa + torch.log(-torch.expm1((log_fb - log_fa).clamp(max=-1e-6)))
    return torch.where(low_end | high_end, log_fa, log_mass)


def _logistic_sample(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Exact draws of the discretised logistic: a continuous logistic draw, rounded and clamped (the
    rounding bins are the probability bins, the clamp merges the tails into the end bins)."""
    u = torch.rand(loc.shape, device=loc.device, dtype=loc.dtype).clamp(1e-7, 1 - 1e-7)
    return (loc + scale * (u.log() - (-u).log1p())).round().clamp(0, 255)


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
        return discretized_logistic_log_prob(value, self.loc, self.scale)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 255)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return _logistic_sample(self.loc.expand(shape), self.scale.expand(shape))


def _check_bytes(x: torch.Tensor, name: str, what: str) -> None:
    if not torch.isfinite(x).all():
        raise DataError(f"{name} likelihood got NaN or Inf in the {what}; clean the data")
    if x.numel() and (x.min() < 0 or x.max() > 255):
        raise DataError(
            f"{name} likelihood needs {what} in [0, 255], found values in "
            f"[{x.min().item():g}, {x.max().item():g}]; pass 8-bit pixel values 0..255"
        )
    if (x != x.round()).any():
        raise DataError(f"{name} likelihood needs whole 8-bit values in the {what}; found fractions")


class DecoderLogisticLikelihood(nn.Module):
    """Discretised logistic per pixel with location **and** log-scale from the decoder.

    The decoder outputs ``param_shape(event_shape)``: twice the channels (first the C location maps,
    then the C log-scale maps), or twice the length of a flat data point."""

    data_kind = "byte"

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)

    def param_shape(self, event_shape: Sequence[int]) -> tuple[int, ...]:
        """What the decoder outputs per data point: location and log-scale stacked on the first axis."""
        return (2 * event_shape[0], *event_shape[1:])

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        axis = out.dim() - len(self.event_shape)
        loc, raw_scale = out.chunk(2, dim=axis)
        return 127.5 * (1 + loc), bounded_scale(raw_scale)

    def forward(self, out: torch.Tensor, event_dim: int) -> TorchDistribution:
        loc, scale = self._split(out)
        return DiscretizedLogistic(loc, scale).to_event(event_dim)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x|z] / 255 for pictures: the location, clamped to the pixel range."""
        return (self._split(out)[0] / 255).clamp(0, 1)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        _check_bytes(x, "discretized logistic", what)


def coupling_count(channels: int) -> int:
    """PixelCNN++'s coupling coefficients per component: one for each earlier channel of each channel."""
    return channels * (channels - 1) // 2


class DiscretizedLogisticMixture(TorchDistribution):
    """A mixture of ``M`` discretised logistics per pixel over images ``(C, H, W)`` of 8-bit values, with
    PixelCNN++'s linear coupling of the channel means: in component m, channel c's location is
    μ_{m,c} + Σ_{j<c} α_{m,c,j} · (x_j / 127.5 − 1) · 127.5, so an RGB pixel is modelled jointly
    (its 256³ probabilities sum to one) while the mixture weights are shared by its channels.

    :param logits: ``(..., M, H, W)`` mixture logits.
    :param loc: ``(..., M, C, H, W)`` locations in pixel units, before coupling.
    :param scale: ``(..., M, C, H, W)`` scales in pixel units.
    :param coeffs: ``(..., M, C(C−1)/2, H, W)`` coupling coefficients, ordered (1,0), (2,0), (2,1), ….
    """

    arg_constraints: ClassVar = {}
    support = constraints.independent(constraints.integer_interval(0, 255), 3)

    def __init__(
        self,
        logits: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
        coeffs: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        self.logits, self.loc, self.scale, self.coeffs = logits, loc, scale, coeffs
        c, h, w = loc.shape[-3:]
        super().__init__(loc.shape[:-4], torch.Size((c, h, w)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.logits.shape[-3:])
        new.loc = self.loc.expand(batch_shape + self.loc.shape[-4:])
        new.scale = self.scale.expand(batch_shape + self.scale.shape[-4:])
        new.coeffs = self.coeffs.expand(batch_shape + self.coeffs.shape[-4:])
        super(DiscretizedLogisticMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _coupled_loc(self, x: torch.Tensor) -> torch.Tensor:
        """Each component's channel locations given the earlier channels' values ``x`` ``(..., C, H, W)``."""
        channels = self.loc.shape[-3]
        locs = [self.loc[..., 0, :, :]]
        k = 0
        for c in range(1, channels):
            shift = 0.0
            for j in range(c):
                shift = shift + self.coeffs[..., k, :, :] * (x[..., j, :, :].unsqueeze(-3) - 127.5)
                k += 1
            locs.append(self.loc[..., c, :, :] + shift)
        return torch.stack(torch.broadcast_tensors(*locs), dim=-3)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        x = value.unsqueeze(-4)  # (..., 1, C, H, W) against the components
        per_channel = discretized_logistic_log_prob(x, self._coupled_loc(value), self.scale)
        joint = per_channel.sum(-3) + torch.log_softmax(self.logits, dim=-3)  # (..., M, H, W)
        return torch.logsumexp(joint, dim=-3).sum((-2, -1))

    @property
    def mean(self) -> torch.Tensor:
        """Σ_m π_m E[x | m] per channel, with each component's coupling applied at the earlier channels'
        component means (exact for the unclamped logistics, which are symmetric), clamped to [0, 255]."""
        weights = torch.softmax(self.logits, dim=-3).unsqueeze(-3)
        channels = self.loc.shape[-3]
        means = [self.loc[..., 0, :, :]]
        k = 0
        for c in range(1, channels):
            m = self.loc[..., c, :, :]
            for j in range(c):
                m = m + self.coeffs[..., k, :, :] * (means[j] - 127.5)
                k += 1
            means.append(m)
        per_component = torch.stack(means, dim=-3).clamp(0, 255)
        return (weights * per_component).sum(-4)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """Exact ancestral draws: a component per pixel, then channel by channel, each given the
        channels already drawn."""
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            logits = self.logits.expand(shape + self.logits.shape[-3:])
            pick = torch.distributions.Categorical(logits=logits.movedim(-3, -1)).sample()  # (..., H, W)
            index = pick.unsqueeze(-3).unsqueeze(-4)  # (..., 1, 1, H, W)

            def chosen(t: torch.Tensor) -> torch.Tensor:
                t = t.expand(shape + t.shape[-4:])
                return t.gather(-4, index.expand(*shape, 1, *t.shape[-3:])).squeeze(-4)

            loc, scale, coeffs = chosen(self.loc), chosen(self.scale), chosen(self.coeffs)
            x = torch.zeros(shape + self.event_shape, dtype=loc.dtype, device=loc.device)
            k = 0
            for c in range(self.event_shape[0]):
                m = loc[..., c, :, :]
                for j in range(c):
                    m = m + coeffs[..., k, :, :] * (x[..., j, :, :] - 127.5)
                    k += 1
                x[..., c, :, :] = _logistic_sample(m, scale[..., c, :, :])
            return x


def mixture_param_count(channels: int, components: int) -> int:
    """Parameter maps of a mixture of ``components`` logistics over ``channels`` coupled channels."""
    return components * (1 + 2 * channels + coupling_count(channels))


def mixture_from_params(out: torch.Tensor, channels: int, components: int) -> DiscretizedLogisticMixture:
    """The mixture whose raw parameters are the maps ``out`` ``(..., M (1 + 2C + C(C−1)/2), H, W)``: M
    logits, then M·C locations (raw o ↦ 127.5 (1 + o) pixels), M·C log-scales (:func:`bounded_scale`)
    and M·C(C−1)/2 coupling coefficients (bounded to (−1, 1) by tanh)."""
    c, m = channels, components
    batch, (h, w) = out.shape[:-3], out.shape[-2:]
    logits, loc, raw_scale, coeffs = out.split([m, m * c, m * c, m * coupling_count(c)], dim=-3)
    return DiscretizedLogisticMixture(
        logits,
        127.5 * (1 + loc.reshape(*batch, m, c, h, w)),
        bounded_scale(raw_scale.reshape(*batch, m, c, h, w)),
        torch.tanh(coeffs.reshape(*batch, m, coupling_count(c), h, w)),
    )


class DiscretizedMixtureLikelihood(nn.Module):
    """PixelCNN++'s likelihood without the autoregression: per pixel, a mixture of ``components``
    discretised logistics with coupled channel means, every parameter from the decoder.

    The decoder outputs ``(M (1 + 2C + C(C−1)/2), H, W)`` per image: M logits, then M·C locations,
    M·C log-scales and M·C(C−1)/2 coupling coefficients (bounded to (−1, 1) by tanh)."""

    data_kind = "byte"

    def __init__(self, event_shape: Sequence[int], components: int = 10) -> None:
        super().__init__()
        if len(event_shape) != 3:
            raise ConfigError(
                f"`likelihood=discretized-mixture` needs images shaped (channels, height, width), got "
                f"{tuple(event_shape)}"
            )
        if isinstance(components, bool) or not isinstance(components, int) or not 1 <= components <= 100:
            raise ConfigError(f"`mixture_components` must be an integer from 1 to 100, got {components!r}")
        self.event_shape, self.components = tuple(event_shape), components

    def param_shape(self, event_shape: Sequence[int]) -> tuple[int, ...]:
        return (mixture_param_count(event_shape[0], self.components), *event_shape[1:])

    def distribution(self, out: torch.Tensor) -> DiscretizedLogisticMixture:
        return mixture_from_params(out, self.event_shape[0], self.components)

    def forward(self, out: torch.Tensor, event_dim: int) -> TorchDistribution:
        if event_dim != 3:
            raise ConfigError(f"the discretized mixture scores whole images (3 event dims), got {event_dim}")
        return self.distribution(out)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x|z] / 255 for pictures: the mixture's mean (see :attr:`DiscretizedLogisticMixture.mean`)."""
        return self.distribution(out).mean / 255

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        _check_bytes(x, "discretized mixture", what)
