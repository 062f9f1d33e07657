"""The VAE as a Pyro model and guide.

``model(x)``: z ~ p(z) (site ``"z"``), x ~ p(x|z) from the decoder (site ``"x"``),
both inside ``pyro.plate("data", N)``. ``guide(x)``: z ~ q(z|x) = Normal(loc, scale)
from the encoder. Prior, likelihood and networks are injected modules, so each can
be swapped without touching the rest.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_vae.likelihoods import build_likelihood
from pyro_vae.nets import DEFAULT_CONV, ConvSpec, build_networks
from pyro_vae.priors import build_prior


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    # under bf16/fp16 autocast the networks run in half precision; the densities must not
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class VAE(nn.Module):
    """A variational autoencoder written as a Pyro model/guide pair.

    :param encoder: ``x -> (loc, scale)`` of q(z|x), each ``(N, z_dim)``.
    :param decoder: ``z -> `` likelihood parameters shaped ``(..., *event_shape)``.
    :param prior: module returning p(z) with ``event_shape (z_dim,)``.
    :param likelihood: module mapping decoder output to p(x|z).
    :param event_shape: shape of one data point, e.g. ``(1, 28, 28)``.

    ``kl_weight`` (β, default 1) scales the latent site ``"z"`` in model and guide with
    ``poutine.scale``, so both ELBOs weight their KL term (closed-form or log q − log p) by β;
    a weight of 0 masks the site instead (``poutine.scale`` takes only positive factors).
    Training sets it each step from the KL schedule; evaluation ignores it.

    Model and guide register their modules with Pyro (``pyro.module``: ``"decoder"``, ``"prior"``
    and ``"likelihood"`` in the model, ``"encoder"`` in the guide), so Pyro's own loop,
    ``SVI(vae.model, vae.guide, pyro.optim.Adam(...), Trace_ELBO()).step(x)``, trains every
    parameter: networks, learned prior parameters and learned likelihood scales. The module is
    authoritative: a stale param-store entry of the same name (another VAE's) is replaced by this
    VAE's parameter. ``register_params = False`` skips the registration; the library's own loop
    does, since it steps ``vae.parameters()`` with a torch optimiser.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        likelihood: nn.Module,
        event_shape: Sequence[int],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.event_shape = torch.Size(event_shape)
        self.kl_weight = 1.0
        self.register_params = True

    @contextmanager
    def registration(self, enabled: bool) -> Iterator[None]:
        """Turn the ``pyro.module`` registration on or off inside a block (the library's own loop and
        evaluation run with it off: they read ``vae.parameters()`` directly)."""
        before, self.register_params = self.register_params, enabled
        try:
            yield
        finally:
            self.register_params = before

    def _register(self, *names: str) -> None:
        if not self.register_params:
            return
        store = pyro.get_param_store()
        for name in names:
            module = getattr(self, name)
            for pname, p in module.named_parameters():
                full = f"{name}$$${pname}"
                if full in store and store[full] is not p:
                    del store[full]  # another module's parameter under this name: ours wins
            pyro.module(name, module)

    def model(self, x: torch.Tensor) -> None:
        """p(x, z) for a batch ``x: (N, *event_shape)``."""
        self._register("decoder", "prior", "likelihood")
        with pyro.plate("data", x.shape[0]):
            with self._kl_scaled():
                z = pyro.sample("z", self.prior())  # (N, z_dim)
            logits = _full_precision(self.decoder(z))  # (N, *event_shape)
            pyro.sample("x", self.likelihood(logits, len(self.event_shape)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) for a batch ``x: (N, *event_shape)``."""
        self._register("encoder")
        with pyro.plate("data", x.shape[0]):
            loc, scale = map(_full_precision, self.encoder(x))
            with self._kl_scaled():
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _kl_scaled(self) -> AbstractContextManager:
        if isinstance(self.kl_weight, torch.Tensor):  # a device tensor (CUDA graphs): no host read
            return poutine.scale(scale=self.kl_weight)
        if self.kl_weight == 1:  # the common case: no messenger at all on the hot path
            return nullcontext()
        if self.kl_weight > 0:
            return poutine.scale(scale=self.kl_weight)
        return poutine.mask(mask=False)

    @property
    def data_kind(self) -> str:
        """The data the likelihood models: ``"binary"``, ``"unit"`` or ``"byte"`` (a custom likelihood
        without ``data_kind`` is taken as binary)."""
        return getattr(self.likelihood, "data_kind", "binary")

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """The likelihood's one-line check of ``x``, where it has one."""
        check = getattr(self.likelihood, "check_data", None)
        if check is not None:
            check(x, what)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] in [0, 1] for pictures: the likelihood's ``mean`` where it has one, else the mean of
        its distribution (8-bit values scaled to [0, 1])."""
        out = self.decoder(z)
        mean = getattr(self.likelihood, "mean", None)
        if callable(mean):
            return mean(out)
        m = self.likelihood(_full_precision(out), len(self.event_shape)).mean
        return (m / 255 if self.data_kind == "byte" else m).clamp(0, 1)

    @property
    def latent_sites(self) -> list[str]:
        """The latent sample sites, in the order of :meth:`posterior_means`."""
        return ["z"]

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The guide's mean of each latent layer; the first is what the decoder takes."""
        return [self.encoder(x)[0]]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = posterior mean]: what the pictures show."""
        loc, _ = self.encoder(x)
        return self.decode_mean(loc)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """E[x|z] for ``n`` draws z ~ p(z): ``(n, *event_shape)``."""
        z = self.prior().sample((n,))
        return self.decode_mean(z)


def build_vae(
    event_shape: Sequence[int],
    net: str | tuple[nn.Module, nn.Module] = "mlp",
    z_dim: int = 50,
    hidden: Sequence[int] = (400,),
    prior: str | nn.Module = "normal",
    likelihood: str | nn.Module = "bernoulli",
    likelihood_scale: float = 0.1,
    *,
    decoder_hidden: Sequence[int] | None = None,
    conv: ConvSpec = DEFAULT_CONV,
) -> VAE:
    """A VAE from names or modules.

    :param net: ``"mlp"`` or ``"conv"``, or your own ``(encoder, decoder)`` pair.
    :param prior: a name of :data:`pyro_vae.priors.PRIORS`, or your own module returning p(z).
    :param decoder_hidden: MLP decoder widths from z outwards (default: ``hidden`` mirrored).
    :param conv: the conv stack of ``net="conv"`` (:class:`pyro_vae.nets.ConvSpec`).
    :param likelihood: a name of :data:`pyro_vae.likelihoods.LIKELIHOODS`, or your own module
        ``(decoder_output, event_dim) -> p(x|z)``; it should set ``data_kind`` (``"binary"``,
        ``"unit"`` or ``"byte"``; default ``"binary"``) and may define ``check_data`` and ``mean``.
    """
    _check_sizes(event_shape, z_dim, hidden, decoder_hidden, likelihood_scale)
    if isinstance(net, str):
        encoder, decoder = build_networks(net, event_shape, z_dim, hidden, decoder_hidden, conv)
    else:
        encoder, decoder = net
    return VAE(
        encoder,
        decoder,
        build_prior(prior, z_dim, encoder, event_shape) if isinstance(prior, str) else prior,
        build_likelihood(likelihood, event_shape, likelihood_scale) if isinstance(likelihood, str) else likelihood,
        event_shape,
    )


def _check_sizes(
    event_shape: Sequence[int],
    z_dim: int,
    hidden: Sequence[int],
    decoder_hidden: Sequence[int] | None,
    likelihood_scale: float,
) -> None:
    """One line for sizes no network can have (the settings a :class:`TrainConfig` checks for the CLI)."""
    from pyro_vae.errors import ConfigError

    def count(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 1

    if isinstance(event_shape, (str, bytes)) or not isinstance(event_shape, Sequence) or not event_shape:
        raise ConfigError(f"event_shape must be the shape of one data point, e.g. (1, 28, 28), got {event_shape!r}")
    if not all(count(d) for d in event_shape):
        raise ConfigError(f"event_shape must hold positive integers, got {tuple(event_shape)}")
    if not count(z_dim):
        raise ConfigError(f"z_dim must be a positive integer, got {z_dim!r}")
    for name, widths in (("hidden", hidden), ("decoder_hidden", decoder_hidden or ())):
        if not all(count(w) for w in widths):
            raise ConfigError(f"{name} must be positive widths (or empty for a linear map), got {list(widths)}")
    if not (isinstance(likelihood_scale, numbers.Real) and math.isfinite(likelihood_scale) and likelihood_scale > 0):
        raise ConfigError(f"likelihood_scale must be a finite number > 0, got {likelihood_scale!r}")


def build_vae_from_config(event_shape: Sequence[int], config: Any, **parts: nn.Module) -> VAE:
    """The VAE a :class:`pyro_vae.TrainConfig` names, with any of ``encoder``, ``decoder``, ``prior``
    and ``likelihood`` given as a module in place of its name."""
    net: Any = config.net
    if "encoder" in parts or "decoder" in parts or config.net == "custom":
        default: tuple[Any, Any] = (None, None)
        if config.net != "custom":
            default = build_networks(
                config.net, event_shape, config.z_dim, config.hidden, config.decoder_hidden, config.conv_spec()
            )
        net = (parts.get("encoder") or default[0], parts.get("decoder") or default[1])
    if getattr(config, "model", "vae") == "ladder":
        return _hierarchy_from_config(event_shape, config, parts)
    return build_vae(
        event_shape,
        net,
        config.z_dim,
        config.hidden,
        parts.get("prior") or config.prior,
        parts.get("likelihood") or config.likelihood,
        config.likelihood_scale,
        decoder_hidden=config.decoder_hidden,
        conv=config.conv_spec(),
    )


def _hierarchy_from_config(event_shape: Sequence[int], config: Any, parts: dict[str, nn.Module]) -> VAE:
    from pyro_vae.errors import ConfigError
    from pyro_vae.models.hierarchy import build_hierarchy

    if "encoder" in parts or config.net == "custom":
        raise ConfigError("--model ladder builds its own inference network; pass a decoder, prior or likelihood only")
    latents, hidden = config.hierarchy()
    decoder = parts.get("decoder")
    if decoder is None:
        # the data's decoder from z_1: the MLP mirrors the first deterministic layer, or the conv stack
        dec_hidden = config.decoder_hidden if config.decoder_hidden is not None else (hidden[0],)
        decoder = build_networks(config.net, event_shape, latents[0], (hidden[0],), dec_hidden, config.conv_spec())[1]
    likelihood = parts.get("likelihood") or build_likelihood(config.likelihood, event_shape, config.likelihood_scale)
    return build_hierarchy(
        event_shape,
        latents,
        hidden,
        parts.get("prior"),
        config.prior,
        likelihood,
        decoder,
        config.inference,
        batch_norm=getattr(config, "batch_norm", False),
    )
