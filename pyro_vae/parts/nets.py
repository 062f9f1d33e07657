"""Encoder/decoder pairs. Encoders map x to (loc, scale) of q(z|x); decoders map z to
the likelihood's parameters (logits for Bernoulli) with the data's event shape."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.parts.registry import Registry

# floor on the posterior scale: keeps log q(z|x) finite when softplus underflows
_MIN_SCALE = 1e-5


class GaussianHead(nn.Module):
    """Two linear maps from features to ``loc`` and a positive ``scale``."""

    def __init__(self, features: int, z_dim: int) -> None:
        super().__init__()
        self.loc = nn.Linear(features, z_dim)
        self.scale = nn.Linear(features, z_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # softplus rather than exp: no overflow for large pre-activations early in training
        return self.loc(h), F.softplus(self.scale(h)) + _MIN_SCALE


class MLPEncoder(nn.Module):
    """Flatten, ReLU hidden layers, Gaussian head. ``x: (N, *event_shape) -> (N, z_dim) x 2``."""

    def __init__(self, event_shape: Sequence[int], z_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = [math.prod(event_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = GaussianHead(widths[-1], z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x))


class MLPDecoder(nn.Module):
    """The encoder's layers in reverse. ``z: (..., z_dim) -> (..., *event_shape)`` logits."""

    def __init__(self, event_shape: Sequence[int], z_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        widths = [z_dim, *reversed(hidden)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], math.prod(event_shape)))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).reshape(*z.shape[:-1], *self.event_shape)


@dataclass(frozen=True)
class ConvSpec:
    """A convolutional stack: filters and stride per layer, one odd kernel size, "same" padding, and an
    optional dense layer between the flattened features and the latent (mirrored in the decoder).

    The default is the seed design: filters 32-64-64-64, strides 1-2-2-1, kernel 3, no dense layer.
    """

    channels: tuple[int, ...] = (32, 64, 64, 64)
    strides: tuple[int, ...] = (1, 2, 2, 1)
    kernel: int = 3
    dense: int | None = None

    @classmethod
    def doubling(cls, depth: int, dense: int, kernel: int = 3) -> ConvSpec:
        """``depth`` layers of stride 2 whose filters double from 32 (32, 64, 128, ...), then a dense
        layer of ``dense`` units: the shortcut for large images."""
        return cls(tuple(32 * 2**i for i in range(depth)), (2,) * depth, kernel, dense)

    def check(self) -> ConvSpec:
        if not self.channels or len(self.channels) != len(self.strides):
            raise ConfigError(
                f"`conv_channels` and `conv_strides` need one value per layer, got {list(self.channels)} and "
                f"{list(self.strides)}"
            )
        if any(c < 1 for c in self.channels) or any(s < 1 for s in self.strides):
            raise ConfigError("`conv_channels` and `conv_strides` must be positive integers")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"`conv_kernel` must be odd (3, 5, ...) so 'same' padding exists, got {self.kernel}")
        if self.dense is not None and self.dense < 1:
            raise ConfigError(f"the dense layer width must be positive, got {self.dense}")
        return self

    # a stack past this many weights cannot be trained here anyway; refusing it early beats an overflow
    MAX_PARAMETERS = 2**31

    def check_for(self, hw: tuple[int, int], channels: int) -> list[tuple[int, int]]:
        """The spatial sizes for ``hw`` images, after refusing a stack that does not fit them: a stride
        above 1 on maps already 1x1, or more weights than :attr:`MAX_PARAMETERS` (checked in integers,
        before any tensor is made)."""
        sizes = self.sizes(hw)
        if min(sizes[-1]) < 1:
            raise ConfigError(f"the conv stack shrinks {hw[0]}x{hw[1]} images to nothing; use fewer stride-2 layers")
        for i, ((h, w), stride) in enumerate(zip(sizes, self.strides, strict=False)):
            if stride > 1 and h == 1 and w == 1:
                fit = sum(1 for (hh, ww), st in zip(sizes, self.strides, strict=False) if st > 1 and hh * ww > 1)
                raise ConfigError(
                    f"conv layer {i + 1} of {len(self.strides)} strides over 1x1 maps: {hw[0]}x{hw[1]} images are "
                    f"down to 1x1 after {fit} stride-2 layers; use at most {fit} (`conv_depth`, `conv_strides`) "
                    "or larger images"
                )
        weights, c = 0, channels
        for filters in self.channels:
            weights += c * filters * self.kernel**2
            c = filters
        weights += c * sizes[-1][0] * sizes[-1][1] * (self.dense or 1)
        if weights > self.MAX_PARAMETERS:
            raise ConfigError(
                f"the conv stack would hold about {weights:.3g} weights; use fewer or narrower layers "
                "(`conv_depth`, `conv_channels`)"
            )
        return sizes

    def sizes(self, hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Spatial size before each conv layer and after the last one."""
        pad = self.kernel // 2
        sizes = [hw]
        for stride in self.strides:
            h, w = sizes[-1]
            sizes.append(((h + 2 * pad - self.kernel) // stride + 1, (w + 2 * pad - self.kernel) // stride + 1))
        return sizes


DEFAULT_CONV = ConvSpec()


def _image_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(event_shape) != 3:
        raise ConfigError(
            f"`net=conv` needs images shaped (channels, height, width), got {tuple(event_shape)}; use `net=mlp`"
        )
    c, h, w = event_shape
    return c, h, w


class ConvEncoder(nn.Module):
    """Conv2d layers (LeakyReLU) as :class:`pyro_vae.parts.nets.ConvSpec` says, an optional dense layer, a
    Gaussian head. ``x: (N, C, H, W) -> (N, z_dim) x 2``; any image size and number of channels."""

    def __init__(self, event_shape: Sequence[int], z_dim: int, spec: ConvSpec = DEFAULT_CONV) -> None:
        super().__init__()
        spec.check()
        c, h, w = _image_shape(event_shape)
        sizes = spec.check_for((h, w), c)
        layers: list[nn.Module] = []
        for filters, stride in zip(spec.channels, spec.strides, strict=True):
            layers += [nn.Conv2d(c, filters, spec.kernel, stride=stride, padding=spec.kernel // 2), nn.LeakyReLU()]
            c = filters
        layers.append(nn.Flatten())
        features = c * sizes[-1][0] * sizes[-1][1]
        if spec.dense is not None:
            layers += [nn.Linear(features, spec.dense), nn.LeakyReLU()]
            features = spec.dense
        self.body = nn.Sequential(*layers)
        self.head = GaussianHead(features, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x))


class ConvDecoder(nn.Module):
    """Dense (optional dense layer first) -> reshape -> ConvTranspose2d mirroring :class:`ConvEncoder`;
    outputs the likelihood's parameters (logits for Bernoulli) at the data's exact size.

    :param event_shape: what it outputs per data point, ``(maps, H, W)``.
    :param event_channels: the data's channels, when the likelihood wants more maps than that: the
        transposed convs then end in features and a 1x1 conv head gives the maps.
    """

    def __init__(
        self, event_shape: Sequence[int], z_dim: int, spec: ConvSpec = DEFAULT_CONV, event_channels: int | None = None
    ) -> None:
        super().__init__()
        spec.check()
        channels, h, w = _image_shape(event_shape)
        event_channels = channels if event_channels is None else event_channels
        sizes = spec.check_for((h, w), channels)
        self.event_shape = (channels, h, w)
        self.start = (spec.channels[-1], *sizes[-1])
        dense: list[nn.Module] = []
        width = z_dim
        if spec.dense is not None:
            dense += [nn.Linear(z_dim, spec.dense), nn.LeakyReLU()]
            width = spec.dense
        dense.append(nn.Linear(width, math.prod(self.start)))
        self.dense = nn.Sequential(*dense) if spec.dense is not None else dense[0]
        layers: list[nn.Module] = []
        # walk the encoder backwards; output_padding restores sizes that a strided conv rounded down.
        # A likelihood with more than one map per channel (location and scale, mixture parameters) gets
        # a head: the last transposed conv gives features, a 1x1 conv the parameters of each pixel
        head = channels != event_channels
        last = spec.channels[0] if head else channels
        outs = [*reversed(spec.channels[:-1]), last]
        pad = spec.kernel // 2
        n = len(spec.strides)
        for i, stride in enumerate(reversed(spec.strides)):
            c_in = self.start[0] if i == 0 else outs[i - 1]
            (th, tw), (sh, sw) = sizes[-2 - i], sizes[-1 - i]
            out_pad = (
                th - ((sh - 1) * stride - 2 * pad + spec.kernel),
                tw - ((sw - 1) * stride - 2 * pad + spec.kernel),
            )
            layers.append(
                nn.ConvTranspose2d(c_in, outs[i], spec.kernel, stride=stride, padding=pad, output_padding=out_pad)
            )
            if i < n - 1 or head:
                layers.append(nn.LeakyReLU())
        if head:
            layers.append(nn.Conv2d(last, channels, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = F.leaky_relu(self.dense(z)).reshape(-1, *self.start)
        return self.body(h).reshape(*batch, *self.event_shape)


def build_networks(
    net: str,
    event_shape: Sequence[int],
    z_dim: int,
    hidden: Sequence[int] = (400,),
    decoder_hidden: Sequence[int] | None = None,
    conv: ConvSpec = DEFAULT_CONV,
    out_shape: Sequence[int] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder for data points of ``event_shape``.

    :param net: ``"mlp"`` or ``"conv"``.
    :param event_shape: shape of one data point, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)``.
    :param z_dim: latent size.
    :param hidden: MLP encoder widths (ignored by ``"conv"``).
    :param decoder_hidden: MLP decoder widths from z outwards; default: the encoder's reversed.
    :param conv: the convolutional stack of ``"conv"``.
    :param out_shape: what the decoder outputs per data point, when the likelihood wants more than one
        map per channel (``pyro_vae.parts.likelihoods.decoder_shape``); default ``event_shape``.
    """
    out = tuple(event_shape) if out_shape is None else tuple(out_shape)
    return NETWORKS.build(net, event_shape, z_dim, tuple(hidden), decoder_hidden, conv, out)


def _mlp(event_shape, z_dim, hidden, decoder_hidden, conv, out_shape) -> tuple[nn.Module, nn.Module]:
    dec = tuple(reversed(tuple(decoder_hidden))) if decoder_hidden is not None else hidden
    return MLPEncoder(event_shape, z_dim, hidden), MLPDecoder(out_shape, z_dim, dec)


#: encoder/decoder pairs, each built from (event_shape, z_dim, hidden, decoder_hidden, conv, out_shape):
#: the decoder outputs out_shape (the likelihood's parameters) per data point
NETWORKS = Registry("net")
NETWORKS.add("mlp", "fully connected, ReLU, widths `hidden` (decoder mirrored or `decoder_hidden`)", _mlp)
NETWORKS.add(
    "conv",
    "Conv2d stack (`conv_channels`/`conv_strides`/`conv_depth`), mirrored ConvTranspose2d decoder",
    lambda event_shape, z_dim, hidden, decoder_hidden, conv, out_shape: (
        ConvEncoder(event_shape, z_dim, conv),
        ConvDecoder(out_shape, z_dim, conv, event_shape[0]),
    ),
)
