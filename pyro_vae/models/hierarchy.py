"""Hierarchical VAEs: L stochastic layers z_1 … z_L, each a Pyro sample site ``"z1"`` … ``"zL"``
inside the ``"data"`` plate.

Generative model, top-down (shared by both inference choices)::

    z_L ~ p(z_L)                         (the top prior: normal, mog, vamp, ...)
    z_i ~ N(μ_i(z_{i+1}), σ_i(z_{i+1}))  for i = L-1 … 1
    x   ~ p(x | z_1)                     (any likelihood, from the decoder)

Inference, one of two:

* ``"ladder"`` (Sønderby et al., 2016): a deterministic bottom-up pass d_1 = f_1(x),
  d_i = f_i(d_{i-1}) gives Gaussian parameters (μ̂_i, σ̂_i) per layer; then, top-down,
  q(z_L | x) = N(μ̂_L, σ̂_L) and q(z_i | z_{i+1}, x) merges (μ̂_i, σ̂_i) with the generative
  model's own (μ_i(z_{i+1}), σ_i(z_{i+1})) by precision weighting (:func:`precision_merge`). The
  top-down path is the generative model's, shared.
* ``"bottom-up"`` (the IWAE paper's hierarchy): q(z_1 | x) q(z_2 | z_1) … q(z_L | z_{L-1}).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.vae import VAE, _full_precision
from pyro_vae.parts.nets import GaussianHead
from pyro_vae.parts.priors import build_prior

INFERENCES = ("ladder", "bottom-up")
# the ladder VAE paper's MNIST set-up, used when --model ladder is given without --latents
PAPER_LATENTS = (64, 32, 16, 8, 4)
PAPER_HIDDEN = (512, 256, 128, 64, 32)


def precision_merge(
    loc_a: torch.Tensor, scale_a: torch.Tensor, loc_b: torch.Tensor, scale_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian proportional to N(loc_a, scale_a²) · N(loc_b, scale_b²), coordinate-wise:
    precision 1/σ² = 1/σ_a² + 1/σ_b², mean σ² (μ_a/σ_a² + μ_b/σ_b²)."""
    prec_a, prec_b = scale_a.pow(-2), scale_b.pow(-2)
    var = 1 / (prec_a + prec_b)
    return (loc_a * prec_a + loc_b * prec_b) * var, var.sqrt()


class FeatureBatchNorm(nn.BatchNorm1d):
    """Batch norm over the last dimension, with any number of leading (sample, batch) dimensions:
    statistics are taken over all of them (importance samples included) in training, and the running
    averages are used in evaluation."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(h.reshape(-1, h.shape[-1])).reshape(h.shape)


def _dense(in_features: int, out_features: int, batch_norm: bool) -> list[nn.Module]:
    norm: list[nn.Module] = [FeatureBatchNorm(out_features)] if batch_norm else []
    return [nn.Linear(in_features, out_features), *norm, nn.LeakyReLU()]


class GaussianLayer(nn.Module):
    """``input -> Linear [-> batch norm] -> LeakyReLU -> (loc, scale)``: one conditional Gaussian layer.
    Works on any number of leading (sample, batch) dimensions."""

    def __init__(self, in_features: int, hidden: int, out_features: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(*_dense(in_features, hidden, batch_norm))
        self.head = GaussianHead(hidden, out_features)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(h))


class LadderEncoder(nn.Module):
    """The ladder's deterministic bottom-up pass: ``x -> [(μ̂_1, σ̂_1), …, (μ̂_L, σ̂_L)]`` via
    :meth:`all`; ``forward(x)`` is the top posterior q(z_L | x), which depends on x alone (what a
    VampPrior on the top layer needs)."""

    def __init__(
        self, event_shape: Sequence[int], latents: Sequence[int], hidden: Sequence[int], batch_norm: bool = False
    ) -> None:
        super().__init__()
        widths = [int(torch.Size(event_shape).numel()), *hidden]
        self.steps = nn.ModuleList(
            nn.Sequential(nn.Flatten(-len(event_shape)) if i == 0 else nn.Identity(), *_dense(a, b, batch_norm))
            for i, (a, b) in enumerate(itertools.pairwise(widths))
        )
        self.heads = nn.ModuleList(GaussianHead(h, z) for h, z in zip(hidden, latents, strict=True))

    def all(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out, d = [], x
        for step, head in zip(self.steps, self.heads, strict=True):
            d = step(d)
            out.append(head(d))
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.all(x)[-1]


class BottomUpEncoder(nn.Module):
    """q(z_1 | x) and q(z_i | z_{i-1}): ``forward(x)`` is q(z_1 | x); ``layers[i]`` maps z_i to q(z_{i+1})."""

    def __init__(
        self, event_shape: Sequence[int], latents: Sequence[int], hidden: Sequence[int], batch_norm: bool = False
    ) -> None:
        super().__init__()
        n_in = int(torch.Size(event_shape).numel())
        self.flatten = nn.Flatten(-len(event_shape))
        ins = [n_in, *latents[:-1]]
        self.layers = nn.ModuleList(
            GaussianLayer(a, h, z, batch_norm) for a, h, z in zip(ins, hidden, latents, strict=True)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[0](self.flatten(x))


class HierarchicalVAE(VAE):
    """A VAE with L stochastic layers (see the module docstring); a :class:`pyro_vae.VAE` in every other way:
    the same ``kl_weight`` (scaling every latent site), ``registration``, pictures and evaluation.

    :param encoder: a ``LadderEncoder`` (``inference="ladder"``) or ``BottomUpEncoder``.
    :param decoder: ``z_1 -> `` likelihood parameters shaped ``(..., *event_shape)``.
    :param top_down: ``top_down[i]`` maps z_{i+2} to (loc, scale) of p(z_{i+1} | z_{i+2}).
    :param prior: the top prior p(z_L).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        top_down: nn.ModuleList,
        prior: nn.Module,
        likelihood: nn.Module,
        event_shape: Sequence[int],
        inference: str = "ladder",
    ) -> None:
        super().__init__(encoder, decoder, prior, likelihood, event_shape)
        if inference not in INFERENCES:
            raise ConfigError(f"unknown `inference={inference!r}`; choose one of {', '.join(INFERENCES)}")
        self.top_down = top_down
        self.inference = inference
        self.layers = len(top_down) + 1

    def model(self, x: torch.Tensor) -> None:
        """p(x, z_1, …, z_L), top-down."""
        self._register("decoder", "prior", "likelihood", "top_down")
        with self.data_plate(x):
            with self._kl_scaled():
                z = pyro.sample(f"z{self.layers}", self.prior())
            for i in reversed(range(self.layers - 1)):
                loc, scale = self.top_down[i](z)
                with self._kl_scaled():
                    z = pyro.sample(f"z{i + 1}", dist.Normal(loc, scale).to_event(1))
            out = _full_precision(self.decoder(z))
            pyro.sample("x", self.likelihood(out, len(self.event_shape)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z_1, …, z_L | x): ladder (top-down, merged) or bottom-up."""
        self._register("encoder", "top_down")
        with self.data_plate(x):
            if self.inference == "ladder":
                stats = self.encoder.all(self.encoder_input(x))
                loc, scale = stats[-1]
                with self._kl_scaled():
                    z = pyro.sample(f"z{self.layers}", dist.Normal(loc, scale).to_event(1))
                for i in reversed(range(self.layers - 1)):
                    p_loc, p_scale = self.top_down[i](z)
                    loc, scale = precision_merge(*stats[i], p_loc, p_scale)
                    with self._kl_scaled():
                        z = pyro.sample(f"z{i + 1}", dist.Normal(loc, scale).to_event(1))
            else:
                loc, scale = self.encoder(self.encoder_input(x))
                for i in range(self.layers):
                    if i > 0:
                        loc, scale = self.encoder.layers[i](z)
                    with self._kl_scaled():
                        z = pyro.sample(f"z{i + 1}", dist.Normal(loc, scale).to_event(1))

    @property
    def latent_sites(self) -> list[str]:
        return [f"z{i + 1}" for i in range(self.layers)]

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The guide's means of z_1 … z_L, each layer conditioned on the means above (ladder) or
        below (bottom-up) it: what the pictures reconstruct from and active units are counted on."""
        means: list[torch.Tensor] = []
        if self.inference == "ladder":
            stats = self.encoder.all(self.encoder_input(x))
            z = stats[-1][0]
            means.append(z)
            for i in reversed(range(self.layers - 1)):
                z = precision_merge(*stats[i], *self.top_down[i](z))[0]
                means.append(z)
            return means[::-1]
        z = self.encoder(self.encoder_input(x))[0]
        means.append(z)
        for i in range(1, self.layers):
            z = self.encoder.layers[i](z)[0]
            means.append(z)
        return means

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_picture(self.posterior_means(x)[0])

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """E[x | z_1] (or a draw, see :attr:`VAE.pictures`) for z_L ~ p(z_L), z_i ~ p(z_i | z_{i+1})."""
        z = self.prior().sample((n,))
        for i in reversed(range(self.layers - 1)):
            loc, scale = self.top_down[i](z)
            z = loc + scale * torch.randn_like(loc)
        return self.decode_picture(z)


def build_hierarchy(
    event_shape: Sequence[int],
    latents: Sequence[int],
    hidden: Sequence[int],
    prior: nn.Module | None,
    prior_name: str,
    likelihood: nn.Module,
    decoder: nn.Module,
    inference: str = "ladder",
    batch_norm: bool = False,
) -> HierarchicalVAE:
    """A :class:`HierarchicalVAE` with MLP layers: ``latents[i]`` units in z_{i+1}, ``hidden[i]`` in the
    deterministic layer below it. ``prior`` (a module) or ``prior_name`` picks the top prior;
    ``batch_norm`` adds batch norm to every deterministic layer of the hierarchy."""
    if len(latents) != len(hidden):
        raise ConfigError(
            f"a hierarchy needs one `hidden` width per latent layer: `latents={' '.join(map(str, latents))}` "
            f"has {len(latents)} layers, `hidden={' '.join(map(str, hidden))}` has {len(hidden)}"
        )
    if inference not in INFERENCES:
        raise ConfigError(f"unknown `inference={inference!r}`; choose one of {', '.join(INFERENCES)}")
    cls = LadderEncoder if inference == "ladder" else BottomUpEncoder
    encoder: nn.Module = cls(event_shape, latents, hidden, batch_norm)
    top_down = nn.ModuleList(
        GaussianLayer(latents[i + 1], hidden[i], latents[i], batch_norm) for i in range(len(latents) - 1)
    )
    if prior is None:
        if prior_name == "vamp" and inference != "ladder":
            raise ConfigError(
                "`prior=vamp` needs a top posterior that depends on x alone: use `inference=ladder` "
                "(the bottom-up guide's q(z_L | z_{L-1}) depends on the layers below)"
            )
        prior = build_prior(prior_name, latents[-1], encoder, event_shape)
    return HierarchicalVAE(encoder, decoder, top_down, prior, likelihood, event_shape, inference)
