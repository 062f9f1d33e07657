"""The VAE as a Pyro model and guide.

``model(x)``: z ~ p(z) (site ``"z"``), x ~ p(x|z) from the decoder (site ``"x"``),
both inside the ``"data"`` plate over the batch (``DataPlate``, ``pyro.plate("data", N)`` without
its subsample site). ``guide(x)``: z ~ q(z|x) = Normal(loc, scale)
from the encoder. Prior, likelihood and networks are injected modules, so each can
be swapped without touching the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import pyro
import torch
from pyro import poutine
from pyro.poutine.indep_messenger import IndepMessenger
from torch import nn

from pyro_vae.parts.guides import GaussianPosterior


class DataPlate(pyro.plate):
    """``pyro.plate("data", size)`` over a whole batch: the same frame on every site (name ``"data"``, the
    batch dimension, its size), the same broadcasting and scale 1, without the plate's subsample site.
    ``pyro.plate`` records that site (a message through every handler, and an ``arange``) to say which
    points a subsampled plate took; over the whole batch it says "all of them", and every ELBO drops it.

    :param size: the batch size N.
    :param device: where the batch is (what ``pyro.plate`` puts its indices on).
    """

    def __init__(self, size: int, device: torch.device | str | None = None) -> None:
        IndepMessenger.__init__(self, "data", size, None, device)  # SubsampleMessenger's, less its site
        self.subsample_size = size


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
    :param posterior: the family of q(z|x) (``pyro_vae.parts.guides``): a module
        ``(loc, scale, context) -> distribution over z``; default the diagonal Gaussian.

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
        posterior: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        # the family of q(z|x); the default Gaussian has no parameter, so checkpoints stay as they were
        self.posterior = GaussianPosterior() if posterior is None else posterior
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
        with self.data_plate(x):
            with self._kl_scaled():
                z = pyro.sample("z", self.prior())  # (N, z_dim)
            logits = _full_precision(self.decoder(z))  # (N, *event_shape)
            pyro.sample("x", self.likelihood(logits, len(self.event_shape)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) for a batch ``x: (N, *event_shape)``."""
        self._register("encoder", "posterior")
        with self.data_plate(x):
            loc, scale, context = self._encode(x)
            with self._kl_scaled():
                pyro.sample("z", self.posterior(loc, scale, context))

    def data_plate(self, x: torch.Tensor) -> pyro.plate:
        """The ``"data"`` plate over the batch ``x`` that model and guide sample in (``DataPlate``)."""
        return DataPlate(x.shape[0], x.device)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """loc and scale of the base Gaussian, and the context h(x) a flow posterior conditions on: the
        features the encoder's head reads, or (loc, log scale) for an encoder without body and head."""
        inp = self.encoder_input(x)
        if not getattr(self.posterior, "needs_context", False):
            loc, scale = self.encoder(inp)
            return _full_precision(loc), _full_precision(scale), None
        body, head = getattr(self.encoder, "body", None), getattr(self.encoder, "head", None)
        if body is not None and head is not None:
            h = body(inp)
            loc, scale = head(h)
        else:
            loc, scale = self.encoder(inp)
            h = torch.cat([loc, scale.log()], -1)
        return _full_precision(loc), _full_precision(scale), _full_precision(h)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of ``x``: 8-bit data (``data_kind == "byte"``) as x / 127.5 − 1 in
        [−1, 1], so a network's first layer meets inputs of order one (raw values up to 255 saturate it
        and start z far from the prior); other data as they are. The likelihood scores ``x`` itself."""
        return x / 127.5 - 1 if self.data_kind == "byte" else x

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
    def pictures(self) -> str:
        """What the pictures show of p(x|z): ``"mean"``, E[x|z] (:meth:`decode_mean`), or ``"draw"``, one
        draw x ~ p(x|z), for a likelihood whose mean is not worth a picture (the autoregressive one, whose
        pixel-by-pixel mean drifts into flat ramps) and which says so with ``pictures = "draw"``."""
        return getattr(self.likelihood, "pictures", "mean")

    @torch.no_grad()
    def decode_picture(self, z: torch.Tensor) -> torch.Tensor:
        """What the pictures show for ``z``, in [0, 1]: E[x|z], or a draw of p(x|z) (see :attr:`pictures`)."""
        if self.pictures == "mean":
            return self.decode_mean(z)
        x = self.likelihood(_full_precision(self.decoder(z)), len(self.event_shape)).sample()
        return (x / 255 if self.data_kind == "byte" else x).clamp(0, 1)

    @property
    def latent_sites(self) -> list[str]:
        """The latent sample sites, in the order of :meth:`posterior_means`."""
        return ["z"]

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The guide's mean of each latent layer (a flow's: the base mean pushed through the flow); the
        first is what the decoder takes."""
        loc, _, context = self._encode(x)
        return [self.posterior.point(loc, context) if hasattr(self.posterior, "point") else loc]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = posterior mean] (or a draw, see :attr:`pictures`): what the pictures show."""
        return self.decode_picture(self.posterior_means(x)[0])

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """E[x|z] (or a draw, see :attr:`pictures`) for ``n`` draws z ~ p(z): ``(n, *event_shape)``."""
        z = self.prior().sample((n,))
        return self.decode_picture(z)
