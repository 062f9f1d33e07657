"""Building a model from names or settings: :func:`build_vae` (names or modules) and
:func:`build_vae_from_config` (a :class:`pyro_vae.TrainConfig`), for every model family. The families
themselves (:mod:`pyro_vae.models.vae`, :mod:`pyro_vae.models.hierarchy`) know nothing of settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.hierarchy import build_hierarchy
from pyro_vae.models.sizes import check_sizes
from pyro_vae.models.vae import VAE
from pyro_vae.parts.guides import build_guide, context_dim
from pyro_vae.parts.likelihoods import build_likelihood, decoder_shape
from pyro_vae.parts.nets import DEFAULT_CONV, ConvSpec, build_networks
from pyro_vae.parts.priors import build_prior


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
    mixture_components: int = 10,
    guide: str | nn.Module = "gaussian",
    flows: int = 2,
    flow_hidden: Sequence[int] = (256,),
) -> VAE:
    """A VAE from names or modules.

    :param net: ``"mlp"`` or ``"conv"``, or your own ``(encoder, decoder)`` pair.
    :param prior: a name of :data:`pyro_vae.parts.priors.PRIORS`, or your own module returning p(z).
    :param decoder_hidden: MLP decoder widths from z outwards (default: ``hidden`` mirrored).
    :param conv: the conv stack of ``net="conv"`` (:class:`pyro_vae.parts.nets.ConvSpec`).
    :param likelihood: a name of :data:`pyro_vae.parts.likelihoods.LIKELIHOODS`, or your own module
        ``(decoder_output, event_dim) -> p(x|z)``; it should set ``data_kind`` (``"binary"``,
        ``"unit"`` or ``"byte"``; default ``"binary"``) and may define ``check_data``, ``mean`` and
        ``param_shape`` (what the decoder outputs per data point, if not the data point's shape).
    :param mixture_components: the logistics per pixel of ``likelihood="discretized-mixture"``.
    :param guide: a name of :data:`pyro_vae.parts.guides.GUIDES` (``"gaussian"``, ``"iaf"``,
        ``"householder"``), or your own posterior module ``(loc, scale, context) -> q(z|x)``.
    :param flows: steps of a flow guide; ``flow_hidden``: the widths of each step's network.

    >>> import torch
    >>> from pyro_vae import build_vae
    >>> vae = build_vae((1, 28, 28), z_dim=2, prior="mog", likelihood="bernoulli")
    >>> vae.sample(3).shape                    # E[x|z] for three draws z ~ p(z)
    torch.Size([3, 1, 28, 28])
    >>> [name for name in vae.latent_sites]
    ['z']
    """
    check_sizes(event_shape, z_dim, hidden, decoder_hidden, likelihood_scale)
    if isinstance(likelihood, str):
        likelihood = build_likelihood(likelihood, event_shape, likelihood_scale, mixture_components)
    if isinstance(net, str):
        out = decoder_shape(likelihood, event_shape)
        encoder, decoder = build_networks(net, event_shape, z_dim, hidden, decoder_hidden, conv, out)
    else:
        encoder, decoder = net
    if isinstance(guide, str):
        guide = build_guide(guide, z_dim, context_dim(encoder, z_dim), flows, flow_hidden)
    return VAE(
        encoder,
        decoder,
        build_prior(prior, z_dim, encoder, event_shape) if isinstance(prior, str) else prior,
        likelihood,
        event_shape,
        guide,
    )


def build_vae_from_config(
    event_shape: Sequence[int], config: Any, *, classes: int | None = None, **parts: nn.Module
) -> VAE:
    """The VAE a :class:`pyro_vae.TrainConfig` names, with any of ``encoder``, ``decoder``, ``prior``
    and ``likelihood`` given as a module in place of its name.

    :param classes: the number of labels, for ``model=m2``."""
    net: Any = config.net
    likelihood = parts.get("likelihood") or build_likelihood(
        config.likelihood,
        event_shape,
        config.likelihood_scale,
        getattr(config, "mixture_components", 10),
        kernel=getattr(config, "ar_kernel", 5),
        dropout=getattr(config, "ar_dropout", 0.0),
    )
    if getattr(config, "model", "vae") in ("m2", "cvae"):
        return _m2_from_config(event_shape, config, parts, likelihood, classes)
    out = decoder_shape(likelihood, event_shape)
    if getattr(config, "model", "vae") == "ladder":
        return _hierarchy_from_config(event_shape, config, parts, likelihood, out)
    if "encoder" in parts or "decoder" in parts or config.net == "custom":
        default: tuple[Any, Any] = (None, None)
        if config.net != "custom":
            default = build_networks(
                config.net, event_shape, config.z_dim, config.hidden, config.decoder_hidden, config.conv_spec(), out
            )
        net = (parts.get("encoder") or default[0], parts.get("decoder") or default[1])
    return build_vae(
        event_shape,
        net,
        config.z_dim,
        config.hidden,
        parts.get("prior") or config.prior,
        likelihood,
        config.likelihood_scale,
        decoder_hidden=config.decoder_hidden,
        conv=config.conv_spec(),
        guide=parts.get("posterior") or getattr(config, "guide", "gaussian"),
        flows=getattr(config, "flows", 2),
        flow_hidden=getattr(config, "flow_hidden", (256,)),
    )


def _m2_from_config(
    event_shape: Sequence[int], config: Any, parts: dict[str, nn.Module], likelihood: nn.Module, classes: int | None
) -> VAE:
    from pyro_vae.models.m2 import build_m2

    if set(parts) - {"likelihood", "prior"} or config.net == "custom":
        raise ConfigError(
            f"`model={config.model}` builds its own label-reading networks; pass a prior or likelihood only"
        )
    if classes is None:
        raise ConfigError(f"`model={config.model}` needs the number of classes, from the data's labels")
    return build_m2(
        event_shape,
        classes,
        config.net,
        config.z_dim,
        config.hidden,
        parts.get("prior") or config.prior,
        likelihood,
        config.likelihood_scale,
        decoder_hidden=config.decoder_hidden,
        conv=config.conv_spec(),
        conditional=config.model == "cvae",
    )


def _hierarchy_from_config(
    event_shape: Sequence[int], config: Any, parts: dict[str, nn.Module], likelihood: nn.Module, out: tuple[int, ...]
) -> VAE:
    if "encoder" in parts or config.net == "custom":
        raise ConfigError("`model=ladder` builds its own inference network; pass a decoder, prior or likelihood only")
    latents, hidden = config.hierarchy()
    decoder = parts.get("decoder")
    if decoder is None:
        # the data's decoder from z_1: the MLP mirrors the first deterministic layer, or the conv stack
        dec_hidden = config.decoder_hidden if config.decoder_hidden is not None else (hidden[0],)
        decoder = build_networks(
            config.net, event_shape, latents[0], (hidden[0],), dec_hidden, config.conv_spec(), out
        )[1]
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
