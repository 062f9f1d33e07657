"""Encoder/decoder pairs. Encoders map x to (loc, scale) of q(z|x); decoders map z to
the likelihood's parameters (logits for Bernoulli) with the data's event shape."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import ConfigError

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


# the seed design's convolutional stack: (filters, stride), kernel 3, "same" padding
CONV_LAYERS = ((32, 1), (64, 2), (64, 2), (64, 1))


def _conv_sizes(hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Spatial size before each conv layer and after the last one."""
    sizes = [hw]
    for _, stride in CONV_LAYERS:
        h, w = sizes[-1]
        sizes.append(((h - 1) // stride + 1, (w - 1) // stride + 1))
    return sizes


def _image_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(event_shape) != 3:
        raise ConfigError(
            f"--net conv needs images shaped (channels, height, width), got {tuple(event_shape)}; use --net mlp"
        )
    c, h, w = event_shape
    return c, h, w


class ConvEncoder(nn.Module):
    """Conv2d 32-64-64-64, kernel 3, strides 1-2-2-1, LeakyReLU, then a Gaussian head."""

    def __init__(self, event_shape: Sequence[int], z_dim: int) -> None:
        super().__init__()
        c, h, w = _image_shape(event_shape)
        layers: list[nn.Module] = []
        for filters, stride in CONV_LAYERS:
            layers += [nn.Conv2d(c, filters, 3, stride=stride, padding=1), nn.LeakyReLU()]
            c = filters
        self.body = nn.Sequential(*layers, nn.Flatten())
        fh, fw = _conv_sizes((h, w))[-1]
        self.head = GaussianHead(c * fh * fw, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x))


class ConvDecoder(nn.Module):
    """Dense -> reshape -> ConvTranspose2d mirroring :class:`ConvEncoder`; outputs logits."""

    def __init__(self, event_shape: Sequence[int], z_dim: int) -> None:
        super().__init__()
        channels, h, w = _image_shape(event_shape)
        sizes = _conv_sizes((h, w))
        filters = [f for f, _ in CONV_LAYERS]
        self.event_shape = (channels, h, w)
        self.start = (filters[-1], *sizes[-1])
        self.dense = nn.Linear(z_dim, math.prod(self.start))
        layers: list[nn.Module] = []
        # walk the encoder backwards; output_padding restores sizes that a stride-2 conv rounded down
        outs = [*reversed(filters[:-1]), channels]
        for i, (_, stride) in enumerate(reversed(CONV_LAYERS)):
            c_in = self.start[0] if i == 0 else outs[i - 1]
            (th, tw), (sh, sw) = sizes[-2 - i], sizes[-1 - i]
            pad = (th - ((sh - 1) * stride + 1), tw - ((sw - 1) * stride + 1))
            layers.append(nn.ConvTranspose2d(c_in, outs[i], 3, stride=stride, padding=1, output_padding=pad))
            if i < len(CONV_LAYERS) - 1:
                layers.append(nn.LeakyReLU())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = F.leaky_relu(self.dense(z)).reshape(-1, *self.start)
        return self.body(h).reshape(*batch, *self.event_shape)


def build_networks(
    net: str, event_shape: Sequence[int], z_dim: int, hidden: Sequence[int] = (400,)
) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder for data points of ``event_shape``.

    :param net: ``"mlp"`` or ``"conv"``.
    :param event_shape: shape of one data point, e.g. ``(1, 28, 28)``.
    :param z_dim: latent size.
    :param hidden: MLP hidden widths (ignored by ``"conv"``).
    """
    if net == "mlp":
        return MLPEncoder(event_shape, z_dim, hidden), MLPDecoder(event_shape, z_dim, hidden)
    if net == "conv":
        return ConvEncoder(event_shape, z_dim), ConvDecoder(event_shape, z_dim)
    raise ConfigError(f"unknown --net {net!r}; choose one of mlp, conv")
