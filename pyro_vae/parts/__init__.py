"""The swappable parts of a VAE, one module and one :class:`~pyro_vae.parts.registry.Registry` each:
:mod:`~pyro_vae.parts.priors` (``PRIORS``: p(z)), :mod:`~pyro_vae.parts.likelihoods` (``LIKELIHOODS``:
p(x|z)) and :mod:`~pyro_vae.parts.nets` (``NETWORKS``: encoder/decoder pairs). Any of them can also be
your own ``nn.Module``, passed to :func:`pyro_vae.build_vae` or ``train(config, vae=...)``."""
