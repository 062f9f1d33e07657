"""The estimators, from the Pyro traces of a model/guide pair: the ELBO split into its terms, and the
importance-sampled log-likelihood. :mod:`pyro_vae.evaluate` describes both."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import kl_divergence
from tqdm import tqdm

from pyro_vae.distributed import derive_seed, gather_cat, gather_objects, shard
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models import VAE

# decoder outputs per chunk of the IS estimator (samples x images x pixels): 2**22 (16 MB of float32)
# was fastest on a 2-core CPU, 1.75x faster than 2**26, whose chunks overflow the caches
DEFAULT_CHUNK_ELEMENTS = 2**22

# the most importance samples per image an evaluation takes: K (or ELBO draws) = 10^6 over 10,000 images is about
# 200 times the K = 5000 pass, already days on a CPU
MAX_K = 10**6

# ELBO draws x images x pixels per pass of elbo_terms (256 MB of float32)
ELBO_CHUNK_ELEMENTS = 2**26


@dataclass
class Estimate:
    """A per-data-point average and its standard error over data points."""

    mean: float
    se: float

    @classmethod
    def of(cls, values: torch.Tensor) -> Estimate:
        v = values.double()
        se = v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
        return cls(v.mean().item(), se)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with the torch RNG (CPU and ``device``) seeded, restoring the caller's state after."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _max_plate_nesting(vae: VAE, x: torch.Tensor) -> int:
    # a dry run on one data point, with the RNG put back so it does not shift the real draws
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        guide_tr = poutine.trace(vae.guide).get_trace(x[:1])
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x[:1])
    dims = [-f.dim for tr in (guide_tr, model_tr) for s in tr.nodes.values() for f in s.get("cond_indep_stack", ())]
    return max(dims, default=0)


def _particle_traces(
    vae: VAE, x: torch.Tensor, num_samples: int, dim: int, latents: dict[str, torch.Tensor] | None = None
) -> tuple[poutine.Trace, poutine.Trace]:
    """Guide and model traces with ``num_samples`` draws per data point, in a plate at ``dim``.

    ``latents`` (site -> value shaped ``(num_samples, N, ...)``) replaces the guide's draws."""
    with pyro.plate("particles", num_samples, dim=dim):
        if latents is None:
            guide_tr = poutine.trace(vae.guide).get_trace(x)
            model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        else:
            guide_tr = poutine.trace(poutine.condition(vae.guide, data=latents)).get_trace(x)
            model_tr = poutine.trace(poutine.condition(vae.model, data=latents)).get_trace(x)
    return prune_subsample_sites(model_tr), prune_subsample_sites(guide_tr)


def _my_batches(n: int, batch_size: int) -> range:
    """The first indices of the batches this process scores: all of them, or under torchrun this rank's
    contiguous share of them (disjoint across ranks, together all)."""
    mine = shard(-(-n // batch_size))
    return range(mine.start * batch_size, min(mine.stop * batch_size, n), batch_size)


def _batch_seed(seed: int | None, start: int) -> int | None:
    # each batch's draws depend on the seed and its first index only, so a sharded evaluation draws
    # exactly what a single process draws for the same images
    return None if seed is None else derive_seed(seed, start)


def prepare_inputs(vae: VAE, x: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
    """``x`` as the evaluation functions score it, or one line on what is wrong with it.

    The images must be a tensor shaped ``(N, *vae.event_shape)`` with N >= 1, and ``batch_size`` >= 1.
    Floating images move to the model's device and dtype (a float64 array from NumPy scores as the
    float32 model computes; a float64 model scores float32 data in float64); integer images (uint8)
    keep their values and become that floating dtype, as do bool images (0 and 1).
    """
    if not _count(batch_size):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    event_shape = getattr(vae, "event_shape", None)  # a model of your own may leave it out: no shape check
    if not torch.is_tensor(x):
        shape = "N, ..." if event_shape is None else f"N, {_shape(event_shape)}"
        raise DataError(f"the images must be a torch tensor shaped ({shape}), got {type(x).__name__}")
    if x.dim() == 0:
        raise DataError("the images are a single number; pass a batch of images shaped (N, ...)")
    if event_shape is not None and (tuple(x.shape[1:]) != tuple(event_shape) or x.dim() != len(event_shape) + 1):
        raise DataError(
            f"the images have shape {tuple(x.shape)}; this model scores (N, {_shape(event_shape)}): "
            "reshape them, or use a model built for their shape"
        )
    if len(x) == 0:
        raise DataError("no images to score (N = 0); pass at least one")
    if x.is_complex():
        raise DataError(f"the images are {x.dtype}; pass real numbers (a float, uint8 or bool tensor)")
    param = next(vae.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    return x


def sample_counts(num_samples: int | Sequence[int]) -> list[int]:
    """K, or several K, as a sorted list of distinct ints; a ``ValueError`` unless each is an integer >= 1."""
    given = [num_samples] if isinstance(num_samples, (numbers.Number, str)) else list(num_samples)
    if not given or not all(_count(k) for k in given):
        raise ValueError(f"numbers of samples must be integers >= 1, got {num_samples}")
    return sorted({int(k) for k in given})


def _count(n: object) -> bool:
    """A positive integer (NumPy's too), not a bool."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool) and int(n) >= 1


def _shape(event_shape: Sequence[int]) -> str:
    return ", ".join(str(d) for d in event_shape)


@contextmanager
def _checked_once(vae: VAE, x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Check the data (:func:`prepare_inputs`, and against the likelihood) once, then run without Pyro's
    per-distribution checks, which would repeat that check on every chunk (a large share of a CPU step)."""
    x = prepare_inputs(vae, x, batch_size)
    vae.check_data(x)
    with pyro.validation_enabled(False), vae.registration(False):
        yield x


def _log_prob(site: dict) -> torch.Tensor:
    # unscaled: evaluation scores the model itself, whatever poutine.scale training used
    return site["fn"].log_prob(site["value"])


def log_importance_weights(
    vae: VAE, x: torch.Tensor, num_samples: int, latents: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """log p(x, z_s) − log q(z_s|x) for ``num_samples`` draws z_s ~ q(z|x) per data point.

    :param x: data ``(N, *event_shape)``.
    :param latents: optional draws to score instead of sampling (``{"z": (S, N, z_dim)}``).
    :returns: ``(S, N)`` log weights.
    """
    dim = -1 - _max_plate_nesting(vae, x)
    model_tr, guide_tr = _particle_traces(vae, x, num_samples, dim, latents)
    return _log_weights(model_tr, guide_tr, len(x))


def _log_weights(model_tr: poutine.Trace, guide_tr: poutine.Trace, n: int) -> torch.Tensor:
    log_w = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for name, site in tr.nodes.items():
            if site["type"] == "sample":
                log_w = log_w + sign * _per_point(_log_prob(site), n, name)
    assert isinstance(log_w, torch.Tensor)
    return log_w


def _per_point(lp: torch.Tensor, n: int, name: str = "site") -> torch.Tensor:
    """Check that a site's log-prob is one number per draw and data point: ``(S, N)``."""
    if lp.dim() != 2 or lp.shape[1] != n:
        raise ValueError(
            f"sample site {name!r} has log-prob shape {tuple(lp.shape)}, expected (samples, {n}); "
            "per-data-point evaluation needs every sample site inside pyro.plate('data') with .to_event() "
            "over the rest"
        )
    return lp


@torch.no_grad()
def elbo_terms(
    vae: VAE,
    x: torch.Tensor,
    *,
    analytic_kl: bool,
    num_particles: int = 1,
    batch_size: int = 1000,
    seed: int | None = 0,
    per_site: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Per-data-point ELBO terms: E_q[log p(x|z)] and KL(q(z|x) || p(z)).

    :param analytic_kl: closed-form KL for each latent site where torch knows one
        (as ``TraceMeanField_ELBO``), else the Monte-Carlo log q − log p (as ``Trace_ELBO``).
    :param num_particles: z draws per data point, averaged.
    :param per_site: if given, filled with each latent site's ``(N,)`` KL term (per layer of a hierarchy).
    :returns: ``(reconstruction, kl, kl_kinds)``: ``(N,)`` tensors in nats, ELBO = reconstruction − kl,
        and for each latent site how its KL was computed, e.g. ``["z: analytic"]``.

    The draws of each batch are seeded from ``seed`` and the batch's first index. Under torchrun every
    rank scores its share of the batches and the per-point values are gathered: each rank returns the
    whole result, equal to one process's.
    """
    recon, kl, kinds = [], [], {}
    sites: dict[str, list[torch.Tensor]] = {}
    if not _count(num_particles) or num_particles > MAX_K:
        raise ConfigError(f"num_particles must be an integer from 1 to {MAX_K:,}, got {num_particles!r}")
    with _checked_once(vae, x, batch_size) as x:
        dim = -1 - _max_plate_nesting(vae, x)
        dims = math.prod(x.shape[1:])
        for start in _my_batches(len(x), batch_size):
            xb = x[start : start + batch_size]
            # draws x images x pixels per pass stay under ELBO_CHUNK_ELEMENTS: many draws run in several
            # passes (summed, then averaged) instead of one allocation the size of all of them
            per_pass = max(1, ELBO_CHUNK_ELEMENTS // (len(xb) * dims))
            r = kl_b = torch.zeros((), device=x.device)
            site_sums: dict[str, torch.Tensor] = {}
            with seeded(_batch_seed(seed, start), x.device):
                for first in range(0, num_particles, per_pass):
                    n = min(per_pass, num_particles - first)
                    model_tr, guide_tr = _particle_traces(vae, xb, n, dim)
                    r_p, per_name = _elbo_pass(model_tr, guide_tr, len(xb), analytic_kl, kinds, x.device)
                    r = r + r_p.sum(0)
                    for name, term in per_name.items():
                        site_sums[name] = site_sums.get(name, 0.0) + term.sum(0)
            for name, total in site_sums.items():
                kl_b = kl_b + total
                sites.setdefault(name, []).append(total / num_particles)
            recon.append(r / num_particles)
            kl.append(kl_b / num_particles)
    if per_site is not None:
        # every rank gathers the same sites, a rank without batches too
        names = next((n for n in gather_objects(list(sites)) if n), [])
        for name in names:
            per_site[name] = gather_cat(_cat(sites.get(name, []), x.device))
        kinds = next((k for k in gather_objects(kinds) if k), kinds)
    return gather_cat(_cat(recon, x.device)), gather_cat(_cat(kl, x.device)), [f"{k}: {v}" for k, v in kinds.items()]


def _elbo_pass(
    model_tr: poutine.Trace,
    guide_tr: poutine.Trace,
    n: int,
    analytic_kl: bool,
    kinds: dict[str, str],
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One pass of draws: log p(x|z) ``(S, N)`` and each latent site's KL term ``(S, N)``; ``kinds``
    gets how each site's KL was computed."""
    r = torch.zeros((), device=device)
    terms: dict[str, torch.Tensor] = {}
    guide_order = [name for name, s in guide_tr.nodes.items() if s["type"] == "sample"]
    model_latents: list[str] = []
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            r = r + _per_point(_log_prob(site), n, name)
            continue
        q = guide_tr.nodes[name]
        term, kinds[name] = None, "Monte-Carlo"
        # a closed form conditions on the sites p(z) depends on; it is unbiased only if the guide drew
        # them before z (the tower rule), so every site above z in the model must come first in the guide
        in_order = all(guide_order.index(m) < guide_order.index(name) for m in model_latents)
        model_latents.append(name)
        if analytic_kl and not in_order:
            kinds[name] = "Monte-Carlo (the guide draws it before its parents)"
        elif analytic_kl:
            try:
                term, kinds[name] = kl_divergence(q["fn"], site["fn"]), "analytic"
            except NotImplementedError:
                kinds[name] = "Monte-Carlo (no closed form)"
        if term is None:
            term = _log_prob(q) - _log_prob(site)
        terms[name] = _per_point(term, n, name)
    return r, terms


def _cat(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    # a rank with no batch (fewer batches than ranks) contributes nothing
    return torch.cat(parts) if parts else torch.zeros(0, device=device)


@torch.no_grad()
def importance_log_likelihood(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int | Sequence[int] = 5000,
    *,
    batch_size: int = 100,
    sample_chunk: int | None = None,
    seed: int | None = 0,
    latents: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[int, torch.Tensor]:
    """Importance-sampled log p(x) per data point, for one or several K, from one pass of samples.

    :param x: data ``(N, *event_shape)`` on the model's device.
    :param num_samples: K, or several K; each estimate uses the first K draws.
    :param batch_size: data points per chunk.
    :param sample_chunk: draws per chunk; default: ``chunk_elements`` decoder outputs per chunk.
    :param seed: seeds the draws (restoring the caller's RNG after): each batch's from ``seed`` and its
        first index, so the draws for an image do not depend on how the work is split; None uses the
        global RNG.
    :param latents: pre-drawn latents ``{"z": (K_max, N, z_dim)}`` to score instead of sampling.
    :returns: ``{K: (N,) tensor}`` of log p̂(x) in nats.

    Under torchrun every rank scores its own contiguous share of the batches (no image twice, none
    left out) and the per-image values are gathered, so each rank returns the whole result, equal to
    one process's, in about 1/N of the time.
    """
    ks = sample_counts(num_samples)
    k_max = ks[-1]
    per_point = math.prod(vae.event_shape)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    x = prepare_inputs(vae, x, batch_size)
    starts = _my_batches(len(x), batch_size)
    share = starts.stop - starts.start if len(starts) else 0
    bar = tqdm(total=share, unit="img", desc=f"log p(x), K={k_max}", disable=not progress, leave=False)
    with _checked_once(vae, x, batch_size) as x:
        dim = -1 - _max_plate_nesting(vae, x)
        for start in starts:
            xb = x[start : start + batch_size]
            with seeded(_batch_seed(seed, start), x.device):
                chunk = sample_chunk or max(1, chunk_elements // (len(xb) * per_point))
                acc = torch.full((len(xb),), -math.inf, device=x.device)
                done = 0
                for k in ks:
                    while done < k:
                        s = min(chunk, k - done)
                        lat = None
                        if latents is not None:
                            lat = {n: v[done : done + s, start : start + len(xb)] for n, v in latents.items()}
                        model_tr, guide_tr = _particle_traces(vae, xb, s, dim, lat)
                        acc = torch.logaddexp(acc, _log_weights(model_tr, guide_tr, len(xb)).logsumexp(0))
                        done += s
                    out[k].append(acc - math.log(k))
            bar.update(len(xb))
    bar.close()
    return {k: gather_cat(_cat(v, x.device)) for k, v in out.items()}
