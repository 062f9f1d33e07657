"""Training objectives: the ELBO estimators, the importance-weighted bound, and the KL weight schedule.

Every objective has Pyro's ``differentiable_loss(model, guide, x)`` interface, so the training
loop treats them alike. β and warm-up act through ``vae.kl_weight``, which the model and guide
apply with ``poutine.scale``; nothing edits a loss by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.distributions import kl_divergence

from pyro_vae.errors import ConfigError

#: the objectives of `elbo`, by name
OBJECTIVES = {
    "mc": "Trace_ELBO: Monte-Carlo KL",
    "analytic": "TraceMeanField_ELBO: closed-form KL where the prior has one, Monte-Carlo otherwise",
    "iwae": "importance-weighted bound with K particles (RenyiELBO, alpha = 0), vectorised",
}
SCHEDULES = ("constant", "linear", "cyclical")


def _importance_trace(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict, score: bool = True):
    """Pyro's ``get_importance_trace`` for the common case, with less Python: the guide traced, the model
    replayed against it and traced, the plates' subsample sites dropped (in place: both traces are new, so
    Pyro's copies are not needed), and, with ``score``, log densities and score parts computed (without,
    the caller computes the ones it uses, through Pyro's memoised ``compute_log_prob``). With validation
    on, or a ``GuideMessenger`` guide, Pyro's own function runs, with its checks."""
    if is_validation_enabled() or isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):
        return elbo._get_trace(model, guide, args, kwargs)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    for trace in (guide_trace, model_trace):
        for name in [name for name, site in trace.nodes.items() if site_is_subsample(site)]:
            trace.remove_node(name)
    if score:
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
    return model_trace, guide_trace


def _traces(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict, score: bool = True):
    # Pyro's _get_traces, one particle at a time; vectorised particles keep Pyro's own path
    if elbo.vectorize_particles:
        yield from elbo._get_traces(model, guide, args, kwargs)
        return
    for _ in range(elbo.num_particles):
        yield _importance_trace(elbo, model, guide, args, kwargs, score)


def _log_prob_sum(trace, site) -> torch.Tensor:
    # the site's scaled and masked log density, summed, computed on first use by Pyro's own code
    if "log_prob_sum" not in site:
        trace.compute_log_prob(site_filter=lambda _, other: other is site)
    return site["log_prob_sum"]


def _entropy_term(trace, site) -> torch.Tensor:
    # the guide site's entropy term of its score parts (Pyro computes them for every site at once)
    if "score_parts" not in site:
        trace.compute_score_parts()
    return site["score_parts"].entropy_term


def _elbo_value(model_trace, guide_trace) -> torch.Tensor:
    # the ELBO's value, log p - log q summed over the sites, as Pyro's Trace_ELBO forms it
    elbo: torch.Tensor | float = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + sign * site["log_prob_sum"].detach()
    assert isinstance(elbo, torch.Tensor)
    return elbo


def _mean(terms: list[torch.Tensor], num_particles: int) -> torch.Tensor:
    # the particles' average as Pyro forms it, a sum of term / num_particles (vectorised particles: one
    # term, summed over all of them); one term of one particle, the training default, is itself
    if num_particles == 1 and len(terms) == 1:
        return terms[0]
    total = terms[0] / num_particles
    for term in terms[1:]:
        total = total + term / num_particles
    return total


def _add(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
    # a sum started from its first term, not from 0.0: one operator (and its backward) fewer
    return term if total is None else total + term


class SyncFreeTrace_ELBO(Trace_ELBO):
    """Pyro's ``Trace_ELBO`` with no host synchronisation in ``differentiable_loss``.

    Pyro's version reads every site's ``log_prob_sum`` back to the host (``torch_item``) to form the
    loss value, checks the surrogate loss for NaN, and reads it back once more: four or five waits for
    the device per step. Here the same traces (Pyro's ``_get_traces``) give the same surrogate loss,
    hence the same gradient, and the loss value stays on the device. Score-function terms (non-
    reparameterised sites) are handled as Pyro does. With Pyro's validation on, the per-site checks
    still run (and sync); training switches validation off. ``loss_and_grads`` (``SVI.step``) still
    returns a float: SVI reads it anyway.
    """

    def _particle(self, model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The surrogate loss (−surrogate ELBO) of one particle, and the loss's value where that differs from
        the surrogate's (score-function terms, or an entropy term that is not the site's log density); None
        where it does not. Formed as Σ log q − Σ log p, so that no negation is needed at the end."""
        log_p: torch.Tensor | None = None  # Σ log p over the model's sites
        log_q: torch.Tensor | None = None  # Σ of the guide's terms
        elbo: torch.Tensor | None = None
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                log_p = _add(log_p, site["log_prob_sum"])
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                if entropy_term is site["log_prob"]:  # reparameterised: the very sum the ELBO's value takes
                    log_q = _add(log_q, site["log_prob_sum"])
                else:
                    elbo = _elbo_value(model_trace, guide_trace) if elbo is None else elbo
                    if not is_identically_zero(entropy_term):
                        log_q = _add(log_q, entropy_term.sum())
                if not is_identically_zero(score_function_term):
                    elbo = _elbo_value(model_trace, guide_trace) if elbo is None else elbo
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    log_q = _add(log_q, -(log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum())
        loss = None if elbo is None else -elbo
        if log_q is None:
            if log_p is None:
                raise ValueError("neither the model nor the guide has a sample site: there is no ELBO to compute")
            return -log_p, loss
        return (log_q if log_p is None else log_q - log_p), loss

    def _differentiable_loss_particle(self, model_trace, guide_trace):  # type: ignore[override]
        # Pyro's interface (SVI.step's loss_and_grads): the loss value and the surrogate loss
        surrogate, loss = self._particle(model_trace, guide_trace)
        return (surrogate.detach() if loss is None else loss), surrogate

    def differentiable_loss(self, model, guide, *args, **kwargs):  # type: ignore[override]
        surrogates, values = [], []
        for model_trace, guide_trace in _traces(self, model, guide, args, kwargs):
            surrogate_particle, loss_particle = self._particle(model_trace, guide_trace)
            surrogates.append(surrogate_particle)
            values.append(loss_particle)
        # one particle (the training default): no division by 1, no running sum started from 0.0
        surrogate = _mean(surrogates, self.num_particles)
        # every term reparameterised: the surrogate's value is the loss, bit for bit
        if all(v is None for v in values):
            return surrogate
        loss = _mean(
            [s.detach() if v is None else v for s, v in zip(surrogates, values, strict=True)], self.num_particles
        )
        # the value of the loss, the gradient of the surrogate (s - s.detach() is exactly zero)
        return loss + (surrogate - surrogate.detach())


class SyncFreeTraceMeanField_ELBO(TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO`` (closed-form KL where torch has one, else Monte-Carlo) with no host
    synchronisation in ``differentiable_loss``: the same terms as Pyro's ``_differentiable_loss_particle``,
    the loss value kept on the device instead of read back with ``torch_item``, and no NaN check (the
    training loop checks finiteness on the device). Only the densities the loss uses are computed: the
    observed sites' and those of latents without a closed-form KL, not log q(z) and log p(z) beside a KL."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):  # type: ignore[override]
        log_p: torch.Tensor | None = None  # the observed sites' log densities, and log p of latents without a KL
        kl: torch.Tensor | None = None  # the closed-form KLs, and log q of latents without one
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                log_p = _add(log_p, _log_prob_sum(model_trace, model_site))
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl_qp = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                log_p = _add(log_p, _log_prob_sum(model_trace, model_site))
                kl = _add(kl, _entropy_term(guide_trace, guide_site).sum())
                continue
            kl_qp = scale_and_mask(kl_qp, scale=guide_site["scale"], mask=guide_site["mask"])
            if torch.is_tensor(kl_qp):
                kl = _add(kl, kl_qp.sum())
            # else the number zero (a site masked out): nothing to add
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites, as in Pyro
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                assert guide_site["infer"].get("is_auxiliary")
                kl = _add(kl, _entropy_term(guide_trace, guide_site).sum())
        if log_p is None and kl is None:
            raise ValueError("the model has no sample site with a term to score: there is no ELBO to compute")
        elbo = -kl if log_p is None else (log_p if kl is None else log_p - kl)  # type: ignore[operator]
        return -elbo.detach(), -elbo

    def differentiable_loss(self, model, guide, *args, **kwargs):  # type: ignore[override]
        if is_validation_enabled():
            return super().differentiable_loss(model, guide, *args, **kwargs)  # Pyro's checks, with their syncs
        traces = _traces(self, model, guide, args, kwargs, score=False)
        losses = [self._differentiable_loss_particle(mt, gt)[1] for mt, gt in traces]
        return _mean(losses, self.num_particles)


class IWAE_ELBO:
    """The importance-weighted bound (Burda et al., 2016), per data point,
    L_K = E[log (1/K) Σ_k p(x, z_k) / q(z_k|x)], with the K particles drawn in one vectorised
    ``pyro.plate("particles")`` to the left of the model's plates.

    This is the bound Pyro's ``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)``
    estimates, with the same draws (tested), but with Pyro's ``differentiable_loss`` interface and
    no host-device synchronisation. Site scales and masks (``poutine.scale``, e.g. β) apply as in Pyro.

    :param num_particles: K.
    :param max_plate_nesting: plates the model nests (this library's VAE: 1, ``"data"``).
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1) -> None:
        if num_particles < 1:
            raise ConfigError(f"`particles` must be a positive integer, got {num_particles}")
        self.num_particles = num_particles
        self.max_plate_nesting = max_plate_nesting

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        with pyro.plate("particles", self.num_particles, dim=-1 - self.max_plate_nesting):
            guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
        log_w = 0.0
        for tr, sign in ((prune_subsample_sites(model_tr), 1.0), (prune_subsample_sites(guide_tr), -1.0)):
            tr.compute_log_prob()  # site["log_prob"]: (K, N), with the site's scale and mask applied
            for site in tr.nodes.values():
                if site["type"] == "sample":
                    log_w = log_w + sign * site["log_prob"]
        assert isinstance(log_w, torch.Tensor)  # (K, N)
        return -(log_w.logsumexp(0) - math.log(self.num_particles)).sum()

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()


class FreeBitsELBO:
    """The ELBO with free bits (Kingma et al., 2016): each latent site (a layer of a hierarchy) pays at
    least ``free_bits`` nats per unit per data point of KL, −E[log p(x|z)] + Σ_layers max(KL_layer,
    λ · units · N), so a layer whose KL is below its floor gets no gradient pushing it lower (no
    posterior collapse for lack of signal). With ``free_bits = 0`` it is ``Trace_ELBO`` (or, with
    ``analytic``, ``TraceMeanField_ELBO``) for the same draws (tested). The KL weight of the model
    (``poutine.scale``) multiplies each layer's term; a masked site adds nothing.

    :param free_bits: λ, nats per latent unit and data point.
    :param analytic: closed-form KL where torch has one and the guide draws the site's parents first.
    """

    def __init__(self, free_bits: float, analytic: bool = False) -> None:
        if not (math.isfinite(free_bits) and free_bits >= 0):
            raise ConfigError(f"`free_bits` must be a finite number >= 0, got {free_bits}")
        self.free_bits = free_bits
        self.analytic = analytic

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        from torch.distributions import kl_divergence

        guide_tr = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
        model_tr = prune_subsample_sites(
            poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
        )
        guide_order = [n for n, s in guide_tr.nodes.items() if s["type"] == "sample"]
        loss = torch.zeros(())
        above: list[str] = []
        for name, site in model_tr.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                loss = loss - site["fn"].log_prob(site["value"]).sum() * site["scale"]
                continue
            q = guide_tr.nodes[name]
            in_order = all(guide_order.index(m) < guide_order.index(name) for m in above)
            above.append(name)
            if site.get("mask") is False:
                continue  # a KL weight of 0 masks the site
            term = None
            if self.analytic and in_order:
                try:
                    term = kl_divergence(q["fn"], site["fn"])
                except NotImplementedError:
                    term = None
            if term is None:
                term = q["fn"].log_prob(q["value"]) - site["fn"].log_prob(site["value"])
            kl = term.sum()
            floor = self.free_bits * site["fn"].event_shape.numel() * term.numel()
            loss = loss + torch.clamp(kl, min=floor) * site["scale"]
        return loss

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()


def make_elbo(name: str, particles: int = 5, free_bits: float = 0.0) -> ELBO | IWAE_ELBO | FreeBitsELBO:
    """``"mc"`` -> ``Trace_ELBO``; ``"analytic"`` -> ``TraceMeanField_ELBO``; ``"iwae"`` -> :class:`IWAE_ELBO`;
    with ``free_bits`` > 0, :class:`pyro_vae.objectives.FreeBitsELBO` (not for ``"iwae"``, whose bound has no
    KL term)."""
    if free_bits:
        if name == "iwae":
            raise ConfigError("`free_bits` applies to the ELBO's KL term; the IWAE bound has none: drop one of them")
        return FreeBitsELBO(free_bits, analytic=name == "analytic")
    if name == "mc":
        return SyncFreeTrace_ELBO()
    if name == "analytic":
        return SyncFreeTraceMeanField_ELBO()
    if name == "iwae":
        return IWAE_ELBO(particles)
    raise ConfigError(f"unknown `elbo={name!r}`; choose one of {', '.join(OBJECTIVES)}")


def kl_weight(
    step: int,
    steps_per_epoch: int,
    total_steps: int,
    *,
    beta: float = 1.0,
    schedule: str = "constant",
    warmup: float = 0,
    warmup_unit: str = "epochs",
    cycles: int = 4,
) -> float:
    """The KL weight for training step ``step`` (0-based).

    * ``constant``: β throughout.
    * ``linear``: rises linearly from 0 to β over the first ``warmup`` epochs (or steps), then β.
    * ``cyclical``: the run is cut into ``cycles`` equal cycles; in each the weight rises linearly
      from 0 to β over the first half and stays at β for the second (Fu et al., 2019).
    """
    if schedule == "constant":
        return beta
    if schedule == "linear":
        length = warmup * (steps_per_epoch if warmup_unit == "epochs" else 1)
        return beta if length <= 0 else beta * min(1.0, step / length)
    if schedule == "cyclical":
        period = total_steps / cycles
        phase = (step % period) / period
        return beta * min(1.0, phase / 0.5)
    raise ConfigError(f"unknown `kl_schedule={schedule!r}`; choose one of {', '.join(SCHEDULES)}")
