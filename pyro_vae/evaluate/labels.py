"""Held-out numbers of a semi-supervised VAE (:class:`pyro_vae.models.m2.SemiSupervisedVAE`): test accuracy of
its classifier with a standard error, the ELBO with the label given and with it summed out, and log p(x) by
importance sampling over z with the label summed exactly over the classes.

Every density is read from Pyro traces of the model and the guide with the label fixed to each class in turn
(``model(x, y=c)``, ``guide(x, y=c)``), as :mod:`pyro_vae.evaluate` reads the one-layer VAE's.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from types import SimpleNamespace

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.evaluate.estimators import (
    Estimate,
    _batch_seed,
    _log_weights,
    _particle_traces,
    seeded,
)


def _check(vae: object, x: torch.Tensor, labels: torch.Tensor | None) -> None:
    if not hasattr(vae, "classify") or not hasattr(vae, "classes"):
        raise ConfigError(f"{type(vae).__name__} has no labels to score; pass a SemiSupervisedVAE (build_m2)")
    if not torch.is_tensor(x) or x.dim() < 2 or len(x) == 0:
        raise ConfigError("`x` must be a batch of images (N, ...) with N >= 1")
    if labels is not None and (not torch.is_tensor(labels) or labels.shape != (len(x),)):
        raise ConfigError(f"`labels` must be one integer label per image, shaped ({len(x)},)")


@torch.no_grad()
def accuracy(vae: object, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The share of images whose most probable label under q(y|x) is the true one, with its standard error
    over images, sqrt(a (1 − a) / N).

    :returns: ``{"mean": a, "se": ...}``.
    """
    _check(vae, x, labels)
    correct = (vae.classify(x).cpu() == labels.cpu()).double()  # type: ignore[attr-defined]
    return Estimate.of(correct).to_dict()


@torch.no_grad()
def log_weights_by_label(vae: object, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log p(x, z, y=c) − log q(z | x, y=c) for ``num_samples`` draws z ~ q(z | x, y=c) of each class c.

    :returns: ``(C, S, N)`` log weights.
    """
    _check(vae, x, None)
    out = []
    for c in range(vae.classes):  # type: ignore[attr-defined]
        y = torch.full((len(x),), c, device=x.device, dtype=torch.long)
        fixed = SimpleNamespace(
            model=functools.partial(vae.model, y=y),
            guide=functools.partial(vae.guide, y=y),  # type: ignore[attr-defined]
        )
        # the model's one plate is "data" (dim -1); the particles go left of it
        out.append(_log_weights(*_particle_traces(fixed, x, num_samples, -2), len(x)))  # type: ignore[arg-type]
    return torch.stack(out)


@torch.no_grad()
def label_summed_log_likelihood(
    vae: object, x: torch.Tensor, num_samples: int, batch_size: int = 100, seed: int | None = 0
) -> torch.Tensor:
    """log p(x) = log Σ_c p(x, y=c), each p(x, y=c) estimated by importance sampling with ``num_samples``
    draws from q(z | x, y=c): the label summed exactly, z sampled. In expectation a lower bound that tightens
    to log p(x) as ``num_samples`` grows.

    :returns: ``(N,)`` estimates, in nats.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"`num_samples` must be a positive integer, got {num_samples!r}")
    _check(vae, x, None)
    parts = []
    for start in range(0, len(x), batch_size):
        with seeded(_batch_seed(seed, start), x.device):
            w = log_weights_by_label(vae, x[start : start + batch_size], num_samples)  # (C, S, n)
        parts.append(torch.logsumexp(w.double().flatten(0, 1), 0) - math.log(num_samples))
    return torch.cat(parts)


@torch.no_grad()
def label_elbos(vae: object, x: torch.Tensor, labels: torch.Tensor, seed: int | None = 0) -> dict[str, torch.Tensor]:
    """Per image, one z draw per class: the ELBO with the true label given (``"labelled"``), and with the
    label summed out under q(y|x), Σ_c q(c|x) [log p(x, z_c, c) − log q(z_c|x, c) − log q(c|x)]
    (``"unlabelled"``, what ``TraceEnum_ELBO`` maximises).

    :returns: ``{"labelled": (N,), "unlabelled": (N,)}``, in nats.
    """
    _check(vae, x, labels)
    with seeded(seed, x.device):
        w = log_weights_by_label(vae, x, 1)[:, 0].double()  # (C, N)
    labelled = w.gather(0, labels.to(w.device).long().unsqueeze(0))[0]
    if _conditional(vae):  # no classifier: the ELBO of x given its label only
        return {"labelled": labelled}
    log_q = torch.log_softmax(vae.classifier(vae.encoder_input(x)).double(), -1).T  # type: ignore[attr-defined]
    unlabelled = (log_q.exp() * (w - log_q)).sum(0)
    return {"labelled": labelled, "unlabelled": unlabelled}


def _conditional(vae: object) -> bool:
    """A conditional VAE (every label given, no classifier), rather than M2."""
    return getattr(vae, "classifier", None) is None


@torch.no_grad()
def evaluate_labels(
    vae: object,
    x: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (5000,),
    *,
    seed: int = 0,
    batch_size: int = 100,
) -> dict:
    """All held-out numbers of an M2 model, in the layout of :func:`pyro_vae.evaluate.evaluate`: the test
    accuracy, the ELBO with the label given and with it summed out, and −log p(x) for each K with the label
    summed exactly over the classes (each K scored from the first K draws of one pass), per image, each with
    its standard error over images. For a conditional VAE (no classifier): the ELBO and −log p(x | y) at the true
    labels, and ``"given_label": True``.

    :returns: ``{"accuracy": {"mean", "se"}, "elbo": {"labelled": ..., "unlabelled": ...}, "nll": {"<K>": ...}}``.
    """
    from pyro_vae.evaluate.report import bits_per_dim, check_arguments

    ks = check_arguments(ks, batch_size=batch_size, elbo_particles=1, seed=seed)
    _check(vae, x, labels)
    dims = math.prod(x.shape[1:])
    conditional = _conditional(vae)
    result: dict = {"num_points": len(x), "dims": dims, "seed": seed, "elbo": {}, "nll": {}}
    if conditional:
        result["given_label"] = True  # the −log p(x | y) rows
    else:
        result["accuracy"] = accuracy(vae, x, labels)
    start = time.perf_counter()
    parts: dict[str, list[torch.Tensor]] = {"labelled": [], "unlabelled": []}
    for first in range(0, len(x), 10 * batch_size):
        chunk = slice(first, first + 10 * batch_size)
        for name, v in label_elbos(vae, x[chunk], labels[chunk], _batch_seed(seed, first)).items():
            parts[name].append(v)
    for name, given in (("labelled", "the true label given"), ("unlabelled", "the label summed out under q(y|x)")):
        if name not in parts or not parts[name]:
            continue
        result["elbo"][name] = {
            "neg_elbo": Estimate.of(-torch.cat(parts[name])).to_dict(),
            "label": given,
            "seconds": time.perf_counter() - start,
        }
    start = time.perf_counter()
    largest = max(ks)
    sums: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for first in range(0, len(x), batch_size):
        with seeded(_batch_seed(seed, first), x.device):
            w = log_weights_by_label(vae, x[first : first + batch_size], largest).double()  # (C, S, n)
        if conditional:  # log p(x | y) at the true label: its importance weights alone
            y = labels[first : first + batch_size].to(w.device).long()
            w = w.gather(0, y.reshape(1, 1, -1).expand(1, w.shape[1], -1))
        for k in ks:
            sums[k].append(torch.logsumexp(w[:, :k].flatten(0, 1), 0) - math.log(k))
    for k in ks:
        nll = Estimate.of(-torch.cat(sums[k]))
        result["nll"][str(k)] = {**nll.to_dict(), "bits_per_dim": bits_per_dim(nll.mean, dims)}
    result["nll_seconds"] = time.perf_counter() - start
    return result


__all__ = ["accuracy", "evaluate_labels", "label_elbos", "label_summed_log_likelihood", "log_weights_by_label"]
