"""What an evaluation reports: :func:`evaluate` gathers both ELBOs with their terms, the active units
and -log p(x) for each K, and :func:`format_table` prints them; the arguments are checked here, before
any pass over the data, so a library call is refused as the command line is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from pyro_vae.config import check_seed
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate.estimators import (
    MAX_K,
    Estimate,
    _count,
    elbo_terms,
    importance_log_likelihood,
    prepare_inputs,
    sample_counts,
)
from pyro_vae.models import VAE

# Burda et al. (2016): a latent unit u is active when Cov_x(E_q[u | x]) exceeds this
ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def active_units(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> dict[str, dict[str, int]]:
    """Active units per latent layer (Burda et al., 2016): the units whose posterior mean varies over
    the data, Var_x(E_q[u | x]) > 0.01. For a hierarchy the means of each layer are taken with the
    layers they depend on at their means (:meth:`pyro_vae.models.HierarchicalVAE.posterior_means`).

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


def check_arguments(ks: object, *, batch_size: object, elbo_particles: object, seed: object) -> list[int]:
    """Refuse what :func:`evaluate` cannot do, before any pass over the data; returns the sorted K."""
    for name, value in (("batch_size", batch_size), ("elbo_particles", elbo_particles)):
        if not _count(value) or int(value) > MAX_K:  # type: ignore[call-overload]
            raise ConfigError(f"`{name}` must be an integer from 1 to {MAX_K:,}, got {value!r}")
    try:
        counts = sample_counts(ks)  # type: ignore[arg-type]
    except ValueError:
        counts = []
    if not counts or counts[-1] > MAX_K:
        raise ConfigError(f"`ks` must be sample counts from 1 to {MAX_K:,}, got {ks!r}; e.g. `ks=5000`")
    check_seed("`seed`", seed)  # type: ignore[arg-type]
    return counts


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

    :param ks: the numbers of importance samples K, each scored from the first K draws of one pass.
    :param seed: seeds every draw; the caller's random state is left as it was.
    :param batch_size: images per chunk of the importance-sampling pass.
    :param elbo_particles: z draws per image for the ELBO rows.
    :param progress: a progress bar over the importance-sampling pass.
    :returns: ``{"elbo": {"mc": ..., "analytic": ...}, "nll": {"<K>": {"mean", "se", "bits_per_dim"}},
        "active_units": ..., ...}``.

    >>> import torch
    >>> from pyro_vae import build_vae
    >>> from pyro_vae.evaluate import evaluate
    >>> vae = build_vae((1, 8, 8), z_dim=2, hidden=(16,))
    >>> x = torch.bernoulli(torch.full((20, 1, 8, 8), 0.3))
    >>> result = evaluate(vae, x, [1, 100])
    >>> sorted(result["nll"]), sorted(result["elbo"])
    (['1', '100'], ['analytic', 'mc'])
    >>> result["nll"]["100"]["mean"] <= result["nll"]["1"]["mean"] + 4 * result["nll"]["1"]["se"]
    True
    """
    ks = check_arguments(ks, batch_size=batch_size, elbo_particles=elbo_particles, seed=seed)  # before any pass
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
    if "accuracy" in result:  # M2: its classifier q(y|x), as a share of images labelled right
        a = result["accuracy"]
        rows.append(("accuracy of q(y|x)", f"{a['mean']:.4f}", f"{a['se']:.4f}", "share of images"))
    for name, e in result["elbo"].items():
        if "label" in e:  # M2: the label given, or summed out
            rows.append((f"-ELBO, {e['label']}", f"{e['neg_elbo']['mean']:.3f}", f"{e['neg_elbo']['se']:.3f}", ""))
            continue
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
        given = " | y" if result.get("given_label") else ""
        rows.append(
            (f"-log p(x{given}), IS K={k}", f"{e['mean']:.3f}", f"{e['se']:.3f}", f"{e['bits_per_dim']:.4f} bits/dim")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows)
