"""Kingma et al. (2014)'s M2, the semi-supervised VAE: the label y is a discrete latent, observed when it is
known and summed out exactly by Pyro's parallel enumeration when it is not.

Model, in the ``"data"`` plate: y ~ p(y) = Categorical(uniform) (site ``"y"``, observed for labelled images),
z ~ p(z) (site ``"z"``), x ~ p(x | z, y) (site ``"x"``, the decoder reads z and the one-hot y).

Guide: y ~ q(y|x), the classifier (only where y is not given), then z ~ q(z | x, y), the encoder's body on x
reading x and the one-hot y from its first layer.

For unlabelled images, ``config_enumerate(vae.guide)`` with ``TraceEnum_ELBO(max_plate_nesting=1)`` sums over
the C classes in one vectorised pass: the loss is E_q(y|x)[−ELBO(x, y)] − H[q(y|x)], with no sampling of y.
Labelled images pass ``y`` to both; Kingma's classifier term α·E[−log q(y|x)] (eq. 9) is
:meth:`SemiSupervisedVAE.classifier_loss`, added on labelled batches. Pyro's own loop trains it::

    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(vae.model, config_enumerate(vae.guide), pyro.optim.Adam({"lr": 1e-3}), elbo)
    svi.step(x_unlabelled)           # y enumerated
    svi.step(x_labelled, y)          # y observed
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.sizes import check_sizes
from pyro_vae.models.vae import VAE, _full_precision
from pyro_vae.parts.nets import DEFAULT_CONV, ConvSpec


def _with_label(h: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """[h, one-hot y], broadcast: ``h (..., N, F)`` and ``y (..., N)`` or an enumerated ``(C, 1)``."""
    onehot = F.one_hot(y.long(), classes).to(h.dtype)
    shape = torch.broadcast_shapes(h.shape[:-1], onehot.shape[:-1])
    return torch.cat([h.expand(*shape, h.shape[-1]), onehot.expand(*shape, classes)], -1)


def _with_planes(x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """[x, one-hot y as C constant planes] along the channels, broadcast: ``x (..., N, C_in, H, W)``."""
    onehot = F.one_hot(y.long(), classes).to(x.dtype)
    planes = onehot[..., None, None].expand(*onehot.shape, *x.shape[-2:])
    shape = torch.broadcast_shapes(x.shape[:-3], planes.shape[:-3])
    return torch.cat([x.expand(*shape, *x.shape[-3:]), planes.expand(*shape, *planes.shape[-3:])], -3)


class LabelledEncoder(nn.Module):
    """q(z | x, y): an encoder network that reads the label from its first layer on, as Kingma et al.'s does:
    an MLP reads [x flattened, one-hot y]; a conv net reads the one-hot y as C constant planes beside x's
    channels. Enumerated labels ``(C, 1)`` broadcast against the batch.

    :param encoder: ``inputs -> (loc, scale)``, built for ``(D + C,)`` flat inputs, or for images with
        ``C_in + C`` channels when ``planes``.
    :param classes: the number of labels C.
    :param event_dims: the number of dimensions of one image (3 for ``(C, H, W)``).
    :param planes: join the label as planes (conv nets) rather than as C more inputs (MLPs).
    """

    def __init__(self, encoder: nn.Module, classes: int, event_dims: int = 3, planes: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.classes = classes
        self.event_dims = event_dims
        self.planes = planes

    def _split_at(self) -> int | None:
        """Where the first layer ends in an encoder of :mod:`pyro_vae.parts.nets` (``body`` then ``head``), or
        None for any other network, which then reads the joined input as it is."""
        body, head = getattr(self.encoder, "body", None), getattr(self.encoder, "head", None)
        if not isinstance(body, nn.Sequential) or head is None:
            return None
        if self.planes and len(body) and type(body[0]) is nn.Conv2d and body[0].groups == 1:
            return 1
        if not self.planes and len(body) > 1 and isinstance(body[0], nn.Flatten) and type(body[1]) is nn.Linear:
            return 2
        return None

    def _first_layer(self, x: torch.Tensor, y: torch.Tensor, layer: nn.Module) -> tuple[torch.Tensor, int]:
        """The first layer on [x, one-hot y] as (its part on x) + (its part on the label). The label's part has
        only C values, so an enumerated batch of C·N images runs x's part once, not C times: the same sum,
        about a third of M2's arithmetic saved on MNIST."""
        if self.planes:
            c_in = x.shape[-3]
            lead = x.shape[:-3]
            hx = layer._conv_forward(x.reshape(-1, *x.shape[-3:]), layer.weight[:, :c_in], layer.bias)
            hx = hx.reshape(*lead, *hx.shape[-3:])  # (..., N, out, H', W')
            planes = torch.eye(self.classes, dtype=x.dtype, device=x.device)[..., None, None]
            hy = layer._conv_forward(planes.expand(-1, -1, *x.shape[-2:]), layer.weight[:, c_in:], None)
            return hx + hy[y.long()], 3  # hy: (C, out, H', W'), one map per class
        d = layer.in_features - self.classes
        hx = F.linear(x.flatten(-self.event_dims), layer.weight[:, :d], layer.bias)  # (..., N, hidden)
        return hx + layer.weight[:, d:].T[y.long()], 1  # column y of the label's block

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of q(z | x, y), shaped like the broadcast of ``x``'s batch and ``y``, then z."""
        split = self._split_at()
        if split is not None:
            inp, point = self._first_layer(x, y, self.encoder.body[split - 1])
            lead = inp.shape[:-point]
            rest = self.encoder.body[split:]
            loc, scale = self.encoder.head(rest(inp.reshape(-1, *inp.shape[-point:])))
        else:
            if self.planes:
                inp, point = _with_planes(x, y, self.classes), 3
            else:
                inp, point = _with_label(x.flatten(-self.event_dims), y, self.classes), 1
            lead = inp.shape[:-point]
            loc, scale = self.encoder(inp.reshape(-1, *inp.shape[-point:]))
        return loc.reshape(*lead, loc.shape[-1]), scale.reshape(*lead, scale.shape[-1])


class LabelledDecoder(nn.Module):
    """p(x | z, y): a decoder built for ``z_dim + classes`` inputs, reading [z, one-hot y]."""

    def __init__(self, decoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.classes = classes

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(_with_label(z, y, self.classes))


class Classifier(nn.Module):
    """q(y | x): an encoder's feature network and one linear layer to the C class logits."""

    def __init__(self, body: nn.Module, features: int, classes: int) -> None:
        super().__init__()
        self.body = body
        self.logits = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(x))


class SemiSupervisedVAE(VAE):
    """M2 (Kingma et al., 2014) as a Pyro model and guide; see the module docstring.

    :param encoder: a :class:`LabelledEncoder`, q(z | x, y).
    :param decoder: a :class:`LabelledDecoder`, p(x | z, y).
    :param classifier: x -> class logits, q(y | x).
    :param prior: p(z), as for :class:`pyro_vae.VAE`.
    :param likelihood: p(x | z, y)'s distribution from the decoder's output, as for :class:`pyro_vae.VAE`.
    :param event_shape: the shape of one image.
    :param classes: the number of labels C; p(y) is uniform over them.
    """

    def __init__(
        self,
        encoder: LabelledEncoder,
        decoder: LabelledDecoder,
        classifier: nn.Module,
        prior: nn.Module,
        likelihood: nn.Module,
        event_shape: Sequence[int],
        classes: int,
    ) -> None:
        super().__init__(encoder, decoder, prior, likelihood, event_shape)
        self.classifier = classifier
        self.classes = classes
        self.register_buffer("label_logits", torch.zeros(classes))  # p(y): uniform, moved by .to(device)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(x, y, z) for a batch ``x: (N, *event_shape)``; ``y: (N,)`` observes the labels."""
        self._register("decoder", "prior", "likelihood")
        with self.data_plate(x):
            y = pyro.sample("y", dist.Categorical(logits=self.label_logits), obs=y)
            with self._kl_scaled():
                z = pyro.sample("z", self.prior())  # (N, z_dim), or (C, N, z_dim) with y enumerated
            out = _full_precision(self.decoder(z, y))
            pyro.sample("x", self.likelihood(out, len(self.event_shape)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(y|x) where ``y`` is not given (enumerate it with ``config_enumerate``), then q(z | x, y)."""
        self._register("encoder", "posterior", "classifier")
        with self.data_plate(x):
            inp = self.encoder_input(x)
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=_full_precision(self.classifier(inp))))
            loc, scale = self.encoder(inp, y)
            with self._kl_scaled():
                pyro.sample("z", self.posterior(_full_precision(loc), _full_precision(scale)))

    def model_classify(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> None:
        """Kingma's classifier term as a Pyro model, weight·(−log q(y|x)), whose guide
        (:meth:`guide_classify`) is empty: ``SVI(vae.model_classify, vae.guide_classify, optim, Trace_ELBO())``
        adds it on labelled batches, as Pyro's own semi-supervised example does."""
        if self.register_params:
            pyro.module("classifier", self.classifier)
        with self.data_plate(x), poutine.scale(scale=weight):
            logits = _full_precision(self.classifier(self.encoder_input(x)))
            pyro.sample("y_aux", dist.Categorical(logits=logits), obs=y)

    def guide_classify(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> None:
        """The empty guide of :meth:`model_classify` (it has no latent site)."""

    def classifier_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """−log q(y|x) summed over the batch: Kingma's auxiliary term, to be weighted by α."""
        logits = _full_precision(self.classifier(self.encoder_input(x)))
        return F.cross_entropy(logits, y.long(), reduction="sum")

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable label under q(y|x), ``(N,)``."""
        return self.classifier(self.encoder_input(x)).argmax(-1)

    @property
    def latent_sites(self) -> list[str]:
        return ["z"]

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The mean of q(z | x, y), at the given labels or at the classifier's."""
        inp = self.encoder_input(x)
        y = self.classify(x) if y is None else y
        return [self.encoder(inp, y)[0]]

    @torch.no_grad()
    def decode_labelled(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the pictures show for ``z`` and labels ``y``: E[x | z, y], or a draw (see
        :attr:`pyro_vae.VAE.pictures`)."""
        return self._picture(self.decoder(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classify(x)
        return self.decode_labelled(self.posterior_means(x, y)[0], y)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` draws z ~ p(z) decoded with labels ``y`` (default: y ~ p(y))."""
        z = self.prior().sample((n,))
        if y is None:
            y = dist.Categorical(logits=self.label_logits).sample((n,))
        return self.decode_labelled(z, y.to(z.device))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] with y summed out: Σ_y p(y) E[x | z, y]."""
        means = torch.stack([self.decode_labelled(z, torch.full(z.shape[:-1], c, device=z.device))
                             for c in range(self.classes)])  # fmt: skip
        return (means * self.label_logits.softmax(-1).reshape(-1, *[1] * (means.dim() - 1))).sum(0)

    def _picture(self, out: torch.Tensor) -> torch.Tensor:
        out = _full_precision(out)
        mean = getattr(self.likelihood, "mean", None)
        if self.pictures == "mean" and callable(mean):
            return mean(out)
        d = self.likelihood(out, len(self.event_shape))
        x = d.mean if self.pictures == "mean" else d.sample()
        return (x / 255 if self.data_kind == "byte" else x).clamp(0, 1)


class ConditionalVAE(SemiSupervisedVAE):
    """A class-conditional VAE, for data whose every label is known: p(x | z, y) and q(z | x, y), with y an input
    of both (no label site, no classifier). Its ELBO bounds log p(x | y).

    :param encoder: a :class:`LabelledEncoder`, q(z | x, y).
    :param decoder: a :class:`LabelledDecoder`, p(x | z, y).
    :param prior: p(z); ``likelihood``, ``event_shape`` and ``classes`` as for :class:`SemiSupervisedVAE`.
    """

    def __init__(
        self,
        encoder: LabelledEncoder,
        decoder: LabelledDecoder,
        prior: nn.Module,
        likelihood: nn.Module,
        event_shape: Sequence[int],
        classes: int,
    ) -> None:
        super().__init__(encoder, decoder, None, prior, likelihood, event_shape, classes)  # type: ignore[arg-type]

    @staticmethod
    def _need(y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ConfigError("a conditional VAE models x given its label: pass y, one label per image")
        return y

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(x, z | y) for a batch ``x: (N, *event_shape)`` and its labels ``y: (N,)``."""
        y = self._need(y)
        self._register("decoder", "prior", "likelihood")
        with self.data_plate(x):
            with self._kl_scaled():
                z = pyro.sample("z", self.prior())
            out = _full_precision(self.decoder(z, y))
            pyro.sample("x", self.likelihood(out, len(self.event_shape)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(z | x, y)."""
        y = self._need(y)
        self._register("encoder", "posterior")
        with self.data_plate(x):
            loc, scale = self.encoder(self.encoder_input(x), y)
            with self._kl_scaled():
                pyro.sample("z", self.posterior(_full_precision(loc), _full_precision(scale)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError("a conditional VAE has no classifier q(y|x); it models x given y")

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The mean of q(z | x, y) at the given labels."""
        return [self.encoder(self.encoder_input(x), self._need(y))[0]]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = self._need(y)
        return self.decode_labelled(self.posterior_means(x, y)[0], y)


def balanced_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` images balanced over the classes (n / C of each, the first n mod C classes one more),
    drawn with ``seed``: the labelled set of a semi-supervised run. Sorted, so a saved list reads plainly.

    :param labels: ``(N,)`` integer labels of the training images.
    :param n: how many to keep labelled, from the number of classes to N.

    >>> import torch
    >>> from pyro_vae.models.m2 import balanced_subset
    >>> labels = torch.arange(100) % 10
    >>> chosen = balanced_subset(labels, 20, seed=0)
    >>> torch.bincount(labels[chosen]).tolist()
    [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    labels = torch.as_tensor(labels).long().cpu()
    classes = labels.unique()
    if isinstance(n, bool) or not isinstance(n, int) or not len(classes) <= n <= len(labels):
        raise ConfigError(
            f"`labels` must be from {len(classes)} (one per class) to {len(labels)} (every training image), got {n!r}"
        )
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for i, c in enumerate(classes.tolist()):
        members = (labels == c).nonzero().flatten()
        want = n // len(classes) + (1 if i < n % len(classes) else 0)
        if want > len(members):
            raise ConfigError(f"`labels={n}` asks for {want} images of class {c}, which has {len(members)}; lower it")
        chosen.append(members[torch.randperm(len(members), generator=g)[:want]])
    return torch.cat(chosen).sort().values


def build_m2(
    event_shape: Sequence[int],
    classes: int,
    net: str = "mlp",
    z_dim: int = 50,
    hidden: Sequence[int] = (500,),
    prior: str | nn.Module = "normal",
    likelihood: str | nn.Module = "bernoulli",
    likelihood_scale: float = 0.1,
    *,
    decoder_hidden: Sequence[int] | None = None,
    conv: ConvSpec = DEFAULT_CONV,
    mixture_components: int = 10,
    conditional: bool = False,
) -> SemiSupervisedVAE:
    """An M2 model from names, with the networks of :func:`pyro_vae.build_vae`: an encoder for q(z|x,y) that
    reads the one-hot label beside x, a classifier q(y|x) (an encoder's feature network and a linear layer),
    and a decoder that reads z and the one-hot label.

    :param classes: the number of labels C (10 for MNIST).
    :param hidden: the hidden widths (Kingma et al. used one layer of 500 on MNIST).
    :param prior: a name of :data:`pyro_vae.parts.priors.PRIORS` but ``vamp`` (its pseudo-inputs would need
        labels), or a module returning p(z).
    :param conditional: build a :class:`ConditionalVAE` (every label known, no classifier) instead.

    >>> import torch
    >>> from pyro_vae.models.m2 import build_m2
    >>> vae = build_m2((1, 28, 28), classes=10, z_dim=2, hidden=(32,))
    >>> vae.sample(4, y=torch.tensor([0, 1, 2, 3])).shape
    torch.Size([4, 1, 28, 28])
    >>> vae.classify(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3])
    """
    from pyro_vae.parts.likelihoods import build_likelihood, decoder_shape
    from pyro_vae.parts.nets import build_networks
    from pyro_vae.parts.priors import build_prior

    check_sizes(event_shape, z_dim, hidden, decoder_hidden, likelihood_scale)
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= 10_000:
        raise ConfigError(f"`classes` must be a number of labels from 2 to 10000, got {classes!r}")
    if prior == "vamp":
        raise ConfigError("`prior=vamp` reads the encoder at pseudo-inputs, which in M2 would need labels too; "
                          "choose another prior")  # fmt: skip
    if isinstance(likelihood, str):
        likelihood = build_likelihood(likelihood, event_shape, likelihood_scale, mixture_components)
    out = decoder_shape(likelihood, event_shape)
    planes = net == "conv"
    # the encoder of q(z|x,y) reads the label too: C more inputs, or C more channels
    joined = (event_shape[0] + classes, *event_shape[1:]) if planes else (math.prod(event_shape) + classes,)
    encoder = build_networks(net, joined, z_dim, hidden, decoder_hidden, conv, tuple(joined))[0]
    decoder = build_networks(net, event_shape, z_dim + classes, hidden, decoder_hidden, conv, out)[1]
    classifier = build_networks(net, event_shape, z_dim, hidden, decoder_hidden, conv, out)[0]
    features = classifier.head.loc.in_features
    prior_module = build_prior(prior, z_dim, classifier, event_shape) if isinstance(prior, str) else prior
    if conditional:
        return ConditionalVAE(
            LabelledEncoder(encoder, classes, len(event_shape), planes),
            LabelledDecoder(decoder, classes),
            prior_module,
            likelihood,
            event_shape,
            classes,
        )
    return SemiSupervisedVAE(
        LabelledEncoder(encoder, classes, len(event_shape), planes),
        LabelledDecoder(decoder, classes),
        Classifier(classifier.body, features, classes),
        prior_module,
        likelihood,
        event_shape,
        classes,
    )


__all__ = [
    "Classifier",
    "ConditionalVAE",
    "LabelledDecoder",
    "LabelledEncoder",
    "SemiSupervisedVAE",
    "balanced_subset",
    "build_m2",
]
