"""Where one training step's time goes beyond the plain-PyTorch floor.

Seven variants of the same step (MLP 784-400-50, the same batch, forward, backward, ``torch.optim.Adam``),
each adding one layer of what this library's step does to the one before, timed interleaved in one
process; the difference between neighbours is that layer's cost:

1. ``floor``: the benchmark's ``pytorch`` row: hand-written loss, closed-form KL;
2. ``mc-kl``: the same with the Monte-Carlo KL, log q(z|x) − log p(z) at the drawn z, the arithmetic
   ``Trace_ELBO`` does;
3. ``distributions``: the same densities through torch distribution objects
   (``Normal(...).to_event(1)``, ``Bernoulli(logits=...).to_event(3)``), no Pyro;
4. ``pyro-no-plate``: the model and guide run by Pyro (``Trace_ELBO``'s traces, the sync-free loss) with
   the sites outside any plate: Pyro's tracing, replay and per-site bookkeeping;
5. ``pyro-classic``: the library's model and guide, in ``pyro.plate("data")``, with torch's classes and
   Pyro's own ``get_importance_trace``: this library's step before the lean hot path;
6. ``ours``: the library's step as :func:`pyro_vae.training.run_epoch` runs it: lean distributions
   (:mod:`pyro_vae.parts.lean`), the ``"data"`` plate without its subsample site
   (:class:`pyro_vae.models.DataPlate`), and traces built without copies;
7. ``ours-analytic``: the same with ``TraceMeanField_ELBO``: the floor's closed-form KL, through Pyro's
   traces (against ``ours``, the closed form's cost over the Monte-Carlo arithmetic).

The two ends, ``floor`` and ``ours`` (and ``ours-analytic``), are then profiled: aten operators per step
and their own time (torch.profiler), and the Python functions' own time per step by where they live
(cProfile).
"""

from __future__ import annotations

import copy
import cProfile
import pstats
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer.enum import get_importance_trace

VARIANTS = ("floor", "mc-kl", "distributions", "pyro-no-plate", "pyro-classic", "ours", "ours-analytic")
LAYERS = {
    "mc-kl": "Monte-Carlo KL arithmetic (log q - log p at z) instead of the closed form",
    "distributions": "torch distribution objects (Normal/Bernoulli .to_event) around the same densities",
    "pyro-no-plate": "Pyro's traces: guide traced, model replayed, per-site messengers and log densities",
    "pyro-classic": "the 'data' plate (its subsample site, broadcasting every site) and Pyro's trace copies",
    "ours": "lean distributions, plate without subsample site, copy-free traces (negative: time removed)",
    "ours-analytic": "ours with TraceMeanField_ELBO: the floor's closed-form KL instead of the Monte-Carlo one",
}


def _classic(vae: Any) -> Any:
    """The same VAE (same weights) with torch's own distribution classes in its parts."""
    old = copy.deepcopy(vae)
    prior = old.prior
    old.posterior.forward = lambda loc, scale, context=None: dist.Normal(loc, scale).to_event(1)
    old.likelihood.forward = lambda logits, event_dim: dist.Bernoulli(logits=logits).to_event(event_dim)
    old.prior.forward = lambda: dist.Normal(prior.loc, prior.scale).to_event(1)
    old.data_plate = lambda x: pyro.plate("data", x.shape[0], device=x.device)
    return old


def _loss_functions(vae: Any, elbo: Any) -> dict[str, tuple[Any, Callable[[torch.Tensor], torch.Tensor]]]:
    from pyro_vae.objectives import make_elbo

    enc, dec = vae.encoder, vae.decoder
    analytic = make_elbo("analytic")
    z_dim = vae.prior.loc.shape[-1]

    def floor(x: torch.Tensor) -> torch.Tensor:
        loc, scale = enc(x)
        z = loc + scale * torch.randn_like(loc)
        recon = F.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")
        return recon + 0.5 * (scale.square() + loc.square() - 1 - 2 * scale.log()).sum()

    def mc_kl(x: torch.Tensor) -> torch.Tensor:
        loc, scale = enc(x)
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        recon = F.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")
        # log q(z|x) - log p(z) with z = loc + scale * eps: the 0.5 log 2 pi terms cancel
        return recon + (0.5 * z.square() - 0.5 * eps.square() - scale.log()).sum()

    def distributions(x: torch.Tensor) -> torch.Tensor:
        loc, scale = enc(x)
        q = dist.Normal(loc, scale).to_event(1)
        z = q.rsample()
        p = dist.Normal(torch.zeros(z_dim), torch.ones(z_dim)).to_event(1).expand(z.shape[:1])
        lik = dist.Bernoulli(logits=dec(z)).to_event(len(vae.event_shape))
        return -(lik.log_prob(x).sum() + p.log_prob(z).sum() - q.log_prob(z).sum())

    classic = _classic(vae)

    def model_no_plate(x: torch.Tensor) -> None:
        z = pyro.sample("z", classic.prior().expand(x.shape[:1]))
        pyro.sample("x", classic.likelihood(dec(z), len(vae.event_shape)), obs=x)

    def guide_no_plate(x: torch.Tensor) -> None:
        loc, scale = enc(x)
        pyro.sample("z", classic.posterior(loc, scale))

    class PyrosTraces(type(elbo)):  # the sync-free loss on Pyro's own get_importance_trace
        def differentiable_loss(self, model, guide, *args, **kwargs):
            loss, surrogate = 0.0, 0.0
            for _ in range(self.num_particles):
                model_tr, guide_tr = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
                lp, sp = self._differentiable_loss_particle(model_tr, guide_tr)
                loss, surrogate = loss + lp / self.num_particles, surrogate + sp / self.num_particles
            return loss + (surrogate - surrogate.detach())

    pyros = PyrosTraces()
    return {
        "floor": (vae, floor),
        "mc-kl": (vae, mc_kl),
        "distributions": (vae, distributions),
        "pyro-no-plate": (vae, lambda x: pyros.differentiable_loss(model_no_plate, guide_no_plate, x)),
        "pyro-classic": (classic, lambda x: pyros.differentiable_loss(classic.model, classic.guide, x)),
        "ours": (vae, lambda x: elbo.differentiable_loss(vae.model, vae.guide, x)),
        "ours-analytic": (vae, lambda x: analytic.differentiable_loss(vae.model, vae.guide, x)),
    }


def step_breakdown(cfg: Any, progress: bool = False) -> dict[str, Any]:
    """Time the :data:`VARIANTS` of one CPU training step, interleaved, in a process of its own (beside
    ``cfg.load`` competing ones): ``cfg.repeats`` rounds of ``cfg.steps`` steps (default 50) of each, on
    MNIST batches binarized as training does, with ``cfg.threads`` threads. Returns ms/step (median over
    rounds) of each variant and the median per-round difference of each over the one before (its layer's
    cost).

    :param cfg: a :class:`~pyro_vae.benchmark.BenchmarkConfig`.
    """
    from pyro_vae.benchmark.run import _in_child, _start_load, _stop_load
    from pyro_vae.data import DataOptions, load_source
    from pyro_vae.errors import ConfigError

    if cfg.device == "cuda":
        raise ConfigError("the step breakdown times the CPU step; drop `device=cuda`")
    load_source("mnist", DataOptions(data_dir=cfg.data_dir, download=False))  # missing data: one line, here
    if progress:
        print(f"timing {len(VARIANTS)} variants of one step, {cfg.repeats} interleaved rounds ...", flush=True)
    load = _start_load(cfg.load)
    try:
        result = _in_child(
            _breakdown, cfg.data_dir, cfg.batch_size, cfg.steps or 50, cfg.repeats, cfg.threads, cfg.seed
        )
    finally:
        _stop_load(load)
    result["load"] = cfg.load
    return result


def _breakdown(
    data_dir: str, batch_size: int, steps: int, rounds: int, threads: int | None, seed: int
) -> dict[str, Any]:
    from pyro_vae.data import ResidentBatches, load_data
    from pyro_vae.models import build_vae
    from pyro_vae.objectives import make_elbo
    from pyro_vae.training import make_optimizer

    if threads is not None:
        torch.set_num_threads(threads)
    pyro.set_rng_seed(seed)
    data = load_data("mnist", data_dir, download=False, limit_train=max(batch_size * steps, 1000), limit_test=10)
    vae = build_vae(data.event_shape)
    elbo = make_elbo("mc")
    batches = list(ResidentBatches(data.train, batch_size, torch.Generator().manual_seed(seed)))
    variants = _loss_functions(vae, elbo)
    optimizers = {name: make_optimizer(m.parameters(), 1e-3) for name, (m, _) in variants.items()}

    def run(name: str, n: int) -> float:
        module, loss_fn = variants[name]
        optimizer = optimizers[name]
        total = torch.zeros(())
        start = time.perf_counter()
        with pyro.validation_enabled(False), module.registration(False):
            for i in range(n):
                loss = loss_fn(batches[i % len(batches)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
        return (time.perf_counter() - start) / n * 1e3

    for name in VARIANTS:
        run(name, 5)  # warm-up: allocator, lazy initialisation
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name in VARIANTS:
            times[name].append(run(name, steps))
    rows = []
    for i, name in enumerate(VARIANTS):
        prev = VARIANTS[i - 1] if i else None
        rows.append(
            {
                "variant": name,
                "ms_per_step": statistics.median(times[name]),
                "over_previous_ms": statistics.median(a - b for a, b in zip(times[name], times[prev], strict=True))
                if prev
                else 0.0,
                "over_floor": statistics.median(a / b for a, b in zip(times[name], times["floor"], strict=True)),
                "layer": LAYERS.get(name, "hand-written loss, closed-form KL, no Pyro"),
            }
        )
    profiles = {name: _profile(lambda n, name=name: run(name, n), max(steps, 50)) for name in PROFILED}
    # ours against the classic step: the time the lean hot path removed
    removed = statistics.median(a - b for a, b in zip(times["pyro-classic"], times["ours"], strict=True))
    return {
        "batch_size": batch_size,
        "steps": steps,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "classic_minus_ours_ms": removed,
        "round_ms": times,
        "profile": profiles,
    }


# the two ends of the breakdown, profiled operator by operator and function by function
PROFILED = ("floor", "ours", "ours-analytic")

# where a Python function's own time is counted: the first group whose marker is in its file's path
_GROUPS = (
    ("pyro/poutine", "Pyro's messengers and traces"),
    ("pyro/infer", "Pyro's ELBO code"),
    ("pyro/", "Pyro, other"),
    ("torch/distributions", "torch's distribution classes"),
    ("torch/optim", "torch's optimiser"),
    ("torch/nn", "torch.nn modules"),
    ("pyro_vae", "this library: model, guide, parts, loss"),
)


def _profile(run: Callable[[int], float], steps: int) -> dict[str, Any]:
    """Operators per step and their own CPU time (torch.profiler), and the Python functions' own time per
    step grouped by :data:`_GROUPS` (cProfile), for ``steps`` steps of ``run``. A function's own time
    includes the tensor arithmetic it writes as operators (``a + b``: cProfile sees no call there); calls
    such as ``torch.relu`` are C functions of their own and are left out, as are the backward pass and
    the optimiser's kernels: those are the aten time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(steps)
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    aten_us = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::"))
    profiler = cProfile.Profile()
    profiler.enable()
    run(steps)
    profiler.disable()
    python: Counter[str] = Counter()
    for (filename, _, _), (_, _, own, _, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        path = filename.replace("\\", "/")
        group = next((g for marker, g in _GROUPS if marker in path), None)
        if group is not None:
            python[group] += own
    return {
        "aten_ops_per_step": ops / steps,
        "aten_self_ms_per_step": aten_us / 1e3 / steps,
        "python_ms_per_step": {g: python[g] * 1e3 / steps for _, g in _GROUPS},
    }


def format_breakdown(result: dict[str, Any]) -> str:
    """The breakdown as a text table."""
    lines = [
        f"one training step, batch {result['batch_size']}, {result['threads']} thread(s), "
        f"{result['rounds']} interleaved rounds of {result['steps']} steps (medians), "
        + (f"{result['load']} competing process(es)" if result.get("load") else "idle machine"),
        "",
        f"{'variant':15s} {'ms/step':>8s} {'+ms':>7s} {'/floor':>7s}  what the step adds",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['variant']:15s} {r['ms_per_step']:8.2f} {r['over_previous_ms']:+7.2f} {r['over_floor']:7.3f}  "
            + r["layer"]
        )
    lines.append(f"\nclassic step - ours: {result['classic_minus_ours_ms']:.2f} ms per step removed")
    profiles = result.get("profile")
    if profiles:
        names = list(profiles)
        lines += ["", f"{'profile, per step':54s} " + " ".join(f"{n:>8s}" for n in names)]
        for key, label in (("aten_ops_per_step", "aten operators"), ("aten_self_ms_per_step", "aten own time, ms")):
            lines.append(f"  {label:52s} " + " ".join(f"{profiles[n][key]:8.2f}" for n in names))
        for _, group in _GROUPS:
            values = [profiles[n]["python_ms_per_step"][group] for n in names]
            lines.append(f"  {'Python, ' + group + ', ms':52s} " + " ".join(f"{v:8.3f}" for v in values))
    return "\n".join(lines)
