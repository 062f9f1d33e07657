"""An autoregressive 8-bit likelihood: PixelCNN++'s mixture of discretised logistics, each pixel's
parameters computed from the decoder's feature maps **and** from the pixels already seen (the rows
above and the pixels to the left, within a small masked neighbourhood), as in PixelVAE (Gulrajani et al.
2016). A VAE whose pixels are independent given z must carry every local detail through z; a lossless
codec (PNG, WebP) predicts each pixel from its coded neighbours. This likelihood does both: z carries
what the neighbourhood cannot know (colour, layout, texture), the neighbourhood what z need not.

p(x | z) = Π_i p(x_i | x_<i, z) in raster order, each factor the coupled-RGB mixture of
:class:`~pyro_vae.parts.discrete.DiscretizedLogisticMixture` over one pixel's channels; each factor sums
to one over its 256^C values, so the product does over the whole image. Scoring is one parallel pass
(the masks hide what a pixel may not see); drawing and the pictures' decoding go pixel by pixel, each
step reading only the neighbourhood, so they cost H·W small steps, not H·W passes over the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.parts.discrete import _check_bytes, mixture_from_params, mixture_param_count


class CausalConv2d(nn.Module):
    """A ``kernel``×``kernel`` neighbourhood cut to what raster order has already produced: the
    ``kernel // 2`` rows above (full width) and, in the pixel's own row, the pixels to its left.
    The pixel itself is hidden in every channel (PixelCNN's mask A); its channels are coupled by the
    mixture instead.

    It takes the input padded by :meth:`pad` and convolves without padding, so its output at (i, j)
    reads padded rows i … i + kernel // 2 and columns j … j + kernel − 1, which is how one pixel's step
    of the sequential decoder reads a patch of the same shape."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.reach = kernel // 2
        self.conv = nn.Conv2d(in_channels, out_channels, (self.reach + 1, kernel))
        mask = torch.ones(self.reach + 1, kernel)
        mask[-1, self.reach :] = 0  # the pixel and those right of it, in its own row
        self.register_buffer("mask", mask, persistent=False)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` with the rows above and the columns either side that the kernel reads."""
        r = self.reach
        return F.pad(x, (r, r, r, 0))

    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        return F.conv2d(padded, self.conv.weight * self.mask, self.conv.bias)


class AutoregressiveHead(nn.Module):
    """Mixture parameters per pixel from its causal neighbourhood and the decoder's features there.

    :param channels: the image's channels C (1 or 3, or any other).
    :param features: the decoder's feature maps per pixel.
    :param components: logistics per pixel.
    :param kernel: the neighbourhood's width (odd): ``kernel // 2`` rows above, as many pixels either side.
    :param hidden: the width of the per-pixel network.
    :param dropout: in training, the share of pixels hidden from their neighbours' view (each pixel's value and
        inside flag zeroed, so it reads as the padding outside the image): the head must then take more from
        z. Scoring in eval mode and drawing see every neighbour; each factor sums to one either way.
    """

    def __init__(
        self, channels: int, features: int, components: int, kernel: int = 5, hidden: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.channels, self.components, self.dropout = channels, components, dropout
        # one more input channel, 1 inside the image and 0 in the padding, so borders are known
        self.neighbours = CausalConv2d(channels + 1, hidden, kernel)
        self.condition = nn.Conv2d(features, hidden, 1)
        self.body = nn.ModuleList([nn.Conv2d(hidden, hidden, 1) for _ in range(2)])
        self.out = nn.Conv2d(hidden, mixture_param_count(channels, components), 1)

    def inputs(self, x: torch.Tensor, hide: bool = False) -> torch.Tensor:
        """8-bit ``x`` ``(B, C, H, W)`` as the padded network input: x / 127.5 − 1 and the inside mask; ``hide``:
        with ``dropout`` pixels hidden."""
        inside = torch.ones_like(x[:, :1])
        values = x / 127.5 - 1
        if hide and self.dropout > 0:  # hidden pixels look like the padding: value 0, not inside
            inside = torch.bernoulli(torch.full_like(inside, 1 - self.dropout))
            values = values * inside
        return self.neighbours.pad(torch.cat([values, inside], 1))

    def params(self, padded: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Raw mixture parameters from padded inputs and the projected features ``condition``."""
        h = F.elu(self.neighbours(padded) + condition)
        for layer in self.body:
            h = h + F.elu(layer(h))
        return self.out(h)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Raw mixture parameters ``(B, P, H, W)`` for every pixel of ``x`` ``(B, C, H, W)`` at once."""
        return self.params(self.inputs(x, hide=self.training), self.condition(features))

    @torch.no_grad()
    def decode(self, features: torch.Tensor, draw: bool) -> torch.Tensor:
        """Images ``(B, C, H, W)`` pixel by pixel given ``features`` ``(B, F, H, W)``: each pixel drawn
        from its mixture (``draw``), or set to the mixture's mean, rounded, given the pixels set before
        it. Each step runs the network on one pixel's neighbourhood patch."""
        b, _, h, w = features.shape
        c, r = self.channels, self.neighbours.reach
        x = torch.zeros(b, c, h, w, dtype=features.dtype, device=features.device)
        padded = self.inputs(x)
        condition = self.condition(features)
        for i in range(h):
            for j in range(w):
                patch = padded[:, :, i : i + r + 1, j : j + 2 * r + 1]
                raw = self.params(patch, condition[:, :, i : i + 1, j : j + 1])
                mixture = mixture_from_params(raw, c, self.components)
                value = mixture.sample() if draw else mixture.mean.round()
                x[:, :, i : i + 1, j : j + 1] = value
                padded[:, :c, i + r, j + r] = value[:, :, 0, 0] / 127.5 - 1
        return x


class AutoregressiveMixture(TorchDistribution):
    """p(x | features) = Π_i p(x_i | x_<i, features) over images ``(C, H, W)`` of 8-bit values, in
    raster order, each factor a coupled-channel mixture from :class:`AutoregressiveHead`.

    :param features: ``(..., F, H, W)`` the decoder's maps; the batch shape is what precedes them.
    :param head: the network giving each pixel's mixture.
    """

    arg_constraints: ClassVar = {}
    support = constraints.independent(constraints.integer_interval(0, 255), 3)

    def __init__(self, features: torch.Tensor, head: AutoregressiveHead, validate_args: bool | None = None) -> None:
        self.features, self.head = features, head
        h, w = features.shape[-2:]
        super().__init__(features.shape[:-3], torch.Size((head.channels, h, w)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:  # what a plate asks of a site already its size
            return self
        return AutoregressiveMixture(self.features.expand(batch_shape + self.features.shape[-3:]), self.head)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        batch = torch.broadcast_shapes(value.shape[:-3], self.batch_shape)
        x = value.expand(batch + value.shape[-3:]).reshape(-1, *value.shape[-3:])
        features = self.features.expand(batch + self.features.shape[-3:]).reshape(-1, *self.features.shape[-3:])
        raw = self.head(x, features).to(features.dtype)  # under bf16 autocast: the density in float32
        return mixture_from_params(raw, self.head.channels, self.head.components).log_prob(x).reshape(batch)

    def _decode(self, shape: torch.Size, draw: bool) -> torch.Tensor:
        features = self.features.expand(shape + self.features.shape[-3:]).reshape(-1, *self.features.shape[-3:])
        return self.head.decode(features, draw).reshape(shape + self.event_shape)

    @property
    def mean(self) -> torch.Tensor:
        """**Not** the exact mean (a sum over 256^(C·H·W) images): the image decoded pixel by pixel,
        each set to its mixture's mean (rounded) given the pixels set before it. What the pictures show."""
        return self._decode(self.batch_shape, draw=False)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """Exact ancestral draws, pixel by pixel in raster order."""
        return self._decode(torch.Size(sample_shape) + self.batch_shape, draw=True)


class AutoregressiveMixtureLikelihood(nn.Module):
    """``likelihood=autoregressive-mixture``: the decoder outputs ``features`` maps per pixel (not the
    mixture itself), and an :class:`AutoregressiveHead` turns them and each pixel's causal neighbourhood
    into a mixture of ``components`` discretised logistics with coupled channel means.

    :param event_shape: the images' ``(C, H, W)``.
    :param components: logistics per pixel.
    :param kernel: the neighbourhood's width (odd, ≥ 3).
    :param features: decoder maps per pixel.
    :param hidden: width of the per-pixel network.
    :param dropout: share of neighbour pixels hidden from the head in training (see :class:`AutoregressiveHead`).
    """

    data_kind = "byte"
    # the pictures show draws: the pixel-by-pixel mean drifts into flat ramps (see VAE.pictures)
    pictures = "draw"

    def __init__(
        self,
        event_shape: Sequence[int],
        components: int = 10,
        kernel: int = 5,
        features: int = 32,
        hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(event_shape) != 3:
            raise ConfigError(
                f"`likelihood=autoregressive-mixture` needs images shaped (channels, height, width), got "
                f"{tuple(event_shape)}"
            )
        if isinstance(components, bool) or not isinstance(components, int) or not 1 <= components <= 100:
            raise ConfigError(f"`mixture_components` must be an integer from 1 to 100, got {components!r}")
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 3 or kernel % 2 == 0:
            raise ConfigError(f"the neighbourhood `kernel` must be an odd integer >= 3, got {kernel!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"`ar_dropout` must be a share from 0 up to, not including, 1, got {dropout!r}")
        self.event_shape, self.features = tuple(event_shape), features
        self.head = AutoregressiveHead(event_shape[0], features, components, kernel, hidden, dropout)

    @property
    def components(self) -> int:
        return self.head.components

    def param_shape(self, event_shape: Sequence[int]) -> tuple[int, ...]:
        """What the decoder outputs per image: ``features`` maps at the image's size."""
        return (self.features, *event_shape[1:])

    def forward(self, out: torch.Tensor, event_dim: int) -> TorchDistribution:
        if event_dim != 3:
            raise ConfigError(f"the autoregressive mixture scores whole images (3 event dims), got {event_dim}")
        return AutoregressiveMixture(out, self.head)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """What the pictures show, / 255: see :attr:`AutoregressiveMixture.mean`."""
        return AutoregressiveMixture(out, self.head).mean / 255

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        _check_bytes(x, "autoregressive mixture", what)
