"""Held-out evaluation from the Pyro traces of a model/guide pair.

* :func:`elbo_terms`: the ELBO per data point, split into the expected
  reconstruction log-likelihood and the KL term, with the KL either Monte-Carlo
  (as ``Trace_ELBO``) or closed-form where one exists (as ``TraceMeanField_ELBO``).
* :func:`importance_log_likelihood`: log p(x) ≈ logsumexp_k [log p(x, z_k) − log q(z_k|x)] − log K,
  z_k ~ q(z|x), vectorised over data points and samples and streamed over chunks of
  samples, so K = 5000 fits in memory. Every requested K is read off one pass over
  the samples (the first K of them), so K = 1, 50, 1000, 5000 cost one K = 5000 pass.
  For a given K the expectation of the estimate is the IWAE bound L_K.

Both work for any model whose data points sit in ``pyro.plate("data")`` and whose
guide has a sample site for each latent site of the model: the samples get an
extra ``pyro.plate("particles")`` to the left of the model's plates.
"""

from __future__ import annotations

import math
import numbers
import time
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
    if not _count(num_particles):
        raise ConfigError(f"num_particles must be a positive integer, got {num_particles!r}")
    with _checked_once(vae, x, batch_size) as x:
        dim = -1 - _max_plate_nesting(vae, x)
        for start in _my_batches(len(x), batch_size):
            xb = x[start : start + batch_size]
            with seeded(_batch_seed(seed, start), x.device):
                model_tr, guide_tr = _particle_traces(vae, xb, num_particles, dim)
            r = kl_b = torch.zeros((), device=x.device)
            guide_order = [n for n, s in guide_tr.nodes.items() if s["type"] == "sample"]
            model_latents: list[str] = []
            for name, site in model_tr.nodes.items():
                if site["type"] != "sample":
                    continue
                if site["is_observed"]:
                    r = r + _per_point(_log_prob(site), len(xb), name)
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
                term = _per_point(term, len(xb), name)
                kl_b = kl_b + term
                sites.setdefault(name, []).append(term.mean(0))
            recon.append(r.mean(0))
            kl.append(kl_b.mean(0))
    if per_site is not None:
        # every rank gathers the same sites, a rank without batches too
        names = next((n for n in gather_objects(list(sites)) if n), [])
        for name in names:
            per_site[name] = gather_cat(_cat(sites.get(name, []), x.device))
        kinds = next((k for k in gather_objects(kinds) if k), kinds)
    return gather_cat(_cat(recon, x.device)), gather_cat(_cat(kl, x.device)), [f"{k}: {v}" for k, v in kinds.items()]


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


# Burda et al. (2016): a latent unit u is active when Cov_x(E_q[u | x]) exceeds this
ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def active_units(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> dict[str, dict[str, int]]:
    """Active units per latent layer (Burda et al., 2016): the units whose posterior mean varies over
    the data, Var_x(E_q[u | x]) > 0.01. For a hierarchy the means of each layer are taken with the
    layers they depend on at their means (:meth:`HierarchicalVAE.posterior_means`).

    :returns: ``{site: {"active": n, "units": d}}``.
    """
    x = prepare_inputs(vae, x, batch_size)
    chunks: list[list[torch.Tensor]] = []
    with vae.registration(False):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            chunks.append([m.double() for m in vae.posterior_means(xb)])
    names = vae.latent_sites
    out = {}
    for i, name in enumerate(names):
        m = torch.cat([c[i] for c in chunks])
        var = m.var(0) if len(m) > 1 else torch.zeros(m.shape[-1], dtype=m.dtype)
        out[name] = {"active": int((var > ACTIVE_UNIT_THRESHOLD).sum()), "units": int(m.shape[-1])}
    return out


def bits_per_dim(nats_per_point: float, dims: int) -> float:
    """Convert −log p(x) in nats per data point to bits per dimension."""
    return nats_per_point / (dims * math.log(2))


def evaluate(
    vae: VAE,
    x: torch.Tensor,
    ks: Sequence[int] = (5000,),
    *,
    seed: int = 0,
    batch_size: int = 100,
    elbo_particles: int = 1,
    progress: bool = False,
) -> dict:
    """All held-out numbers for ``x``: both ELBOs with their terms, and −log p(x) for each K.

    Values are per data point, in nats, each with its standard error over data points;
    ``bits_per_dim`` divides −log p(x) by the number of dimensions times ln 2.
    """
    ks = sample_counts(ks)  # refused before the ELBO passes, not after them
    x = prepare_inputs(vae, x, batch_size)
    dims = math.prod(vae.event_shape)
    result: dict = {"num_points": len(x), "dims": dims, "seed": seed, "elbo": {}, "nll": {}}
    for name, analytic in (("mc", False), ("analytic", True)):
        start = time.perf_counter()
        sites: dict[str, torch.Tensor] = {}
        recon, kl, kinds = elbo_terms(
            vae,
            x,
            analytic_kl=analytic,
            num_particles=elbo_particles,
            batch_size=10 * batch_size,
            seed=seed,
            per_site=sites,
        )
        result["elbo"][name] = {
            "neg_elbo": Estimate.of(kl - recon).to_dict(),
            "reconstruction": Estimate.of(recon).to_dict(),
            "kl": Estimate.of(kl).to_dict(),
            "kl_per_site": {k: Estimate.of(v).to_dict() for k, v in sites.items()},
            "kl_kind": kinds,
            "seconds": time.perf_counter() - start,
        }
    result["active_units"] = active_units(vae, x, batch_size=10 * batch_size)
    start = time.perf_counter()
    ll = importance_log_likelihood(vae, x, ks, batch_size=batch_size, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    for k, v in ll.items():
        nll = Estimate.of(-v)
        result["nll"][str(k)] = {**nll.to_dict(), "bits_per_dim": bits_per_dim(nll.mean, dims)}
    result["nll_seconds"] = seconds
    return result


def _elbo_label(name: str, kinds: Sequence[str]) -> str:
    """What an ELBO row computed: the analytic row says when its KL fell back to Monte-Carlo."""
    if name == "mc":
        return "Trace_ELBO (Monte-Carlo KL)"
    if all(k.endswith(": analytic") for k in kinds):
        return "TraceMeanField_ELBO (closed-form KL)"
    if any(k.endswith(": analytic") for k in kinds):
        return "TraceMeanField_ELBO (closed-form KL where one exists, else Monte-Carlo)"
    return "TraceMeanField_ELBO (Monte-Carlo KL: no closed form)"


def format_table(result: dict) -> str:
    """The evaluation as an aligned text table."""
    rows = [("quantity", "nats/point", "s.e.", "")]
    for name, e in result["elbo"].items():
        label = _elbo_label(name, e["kl_kind"])
        rows.append((f"-ELBO, {label}", f"{e['neg_elbo']['mean']:.3f}", f"{e['neg_elbo']['se']:.3f}", ""))
        rows.append(("  reconstruction E[log p(x|z)]", f"{e['reconstruction']['mean']:.3f}", "", ""))
        rows.append((f"  KL ({', '.join(e['kl_kind'])})", f"{e['kl']['mean']:.3f}", "", ""))
        per_site = e.get("kl_per_site", {})
        if len(per_site) > 1:  # a hierarchy: the KL of each layer
            rows += [(f"    KL {k}", f"{v['mean']:.3f}", f"{v['se']:.3f}", "") for k, v in per_site.items()]
    if "active_units" in result:
        units = ", ".join(f"{k} {v['active']}/{v['units']}" for k, v in result["active_units"].items())
        rows.append((f"active units (Var_x E_q[u] > {ACTIVE_UNIT_THRESHOLD})", "", "", units))
    for k, e in result["nll"].items():
        rows.append((f"-log p(x), IS K={k}", f"{e['mean']:.3f}", f"{e['se']:.3f}", f"{e['bits_per_dim']:.4f} bits/dim"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows)


# the most importance samples per image an evaluation takes: K = 10^6 over 10,000 images is about
# 200 times the K = 5000 pass, already days on a CPU
MAX_K = 10**6
