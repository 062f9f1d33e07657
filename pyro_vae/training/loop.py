"""The training hot path, shared by :func:`pyro_vae.train` and the benchmark: SVI steps over
batches with no host sync of their own, and the held-out loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_vae.distributed import all_sum, shard, world
from pyro_vae.models import VAE
from pyro_vae.training.graphs import GraphStep


@torch.no_grad()
def heldout_loss(vae: VAE, elbo: Any, x: torch.Tensor, batch_size: int = 1000) -> float:
    """The objective's loss per data point (nats) over ``x`` with KL weight 1: the negative ELBO
    (one z draw per point) for ``Trace_ELBO``/``TraceMeanField_ELBO``, −L_K for the IWAE bound.

    Under torchrun each rank scores its own contiguous share of ``x`` and the sums are all-reduced.
    ``x`` is checked and converted as the evaluation functions do (``pyro_vae.evaluate.estimators.prepare_inputs``)."""
    from pyro_vae.evaluate import prepare_inputs

    x = prepare_inputs(vae, x, batch_size)
    total = torch.zeros((), device=x.device)
    mine = x[shard(len(x))]
    weight, vae.kl_weight = vae.kl_weight, 1.0
    try:
        with vae.registration(False):
            for start in range(0, len(mine), batch_size):
                total += elbo.differentiable_loss(vae.model, vae.guide, mine[start : start + batch_size])
    finally:
        vae.kl_weight = weight
    return all_sum(total).item() / len(x)


class ELBOLoss(torch.nn.Module):
    """The ELBO as an ``nn.Module``: ``forward(x)`` is the loss summed over the points of ``x``, so
    :class:`~torch.nn.parallel.DistributedDataParallel` can wrap it and average the gradients of every
    parameter of the VAE (networks, learned prior and likelihood) across ranks in its backward hooks,
    which ``SVI.step`` would bypass.

    :param vae: the model; its parameters are this module's.
    :param elbo: a Pyro ELBO (``Trace_ELBO``, ``TraceMeanField_ELBO``, ...).
    """

    def __init__(self, vae: VAE, elbo: Any) -> None:
        super().__init__()
        self.vae = vae
        self.elbo = elbo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = [p for p in self.vae.parameters() if p.requires_grad]
        # zero times one entry of each parameter: every parameter gets a gradient on every rank, so DDP's
        # all-reduce never waits for one that a custom part skipped, or that an empty share never reached
        touch = torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0
        if len(x) == 0:  # the last, short global batch has fewer images than ranks
            return touch
        return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x) + touch


@dataclass
class EpochProgress:
    """What :func:`run_epoch` did."""

    total: torch.Tensor  # summed loss of the steps taken, on the device
    step: int  # global step after the last step taken
    batches: int  # steps taken
    stopped: bool = False  # a stop was requested
    nonfinite: bool = False  # a NaN/Inf loss or gradient was seen since the last good check
    own: torch.Tensor | None = None  # this rank's own part of ``total`` (under torchrun; else ``total``)


def run_epoch(
    vae: VAE,
    elbo: Any,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[torch.Tensor],
    *,
    step: int = 0,
    weight: Callable[[int], float] | None = None,
    bar: Any = None,
    log_every: int = 50,
    max_steps: int | None = None,
    bf16: bool = False,
    clip: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_check: Callable[[int, int, float], None] | None = None,
    total: torch.Tensor | None = None,
    objective: Callable[[torch.Tensor], torch.Tensor] | None = None,
    grad_scale: float = 1.0,
    graph: GraphStep | None = None,
) -> EpochProgress:
    """SVI steps over ``batches``: the training hot path, shared by :func:`train` and the benchmark.

    Pyro's per-step distribution checks are off inside: the data were checked once up front, and
    each check costs ~20% of a CPU step and a device sync on CUDA. The loss is summed on the device
    (a NaN/Inf loss leaves the sum non-finite); the sum and the parameters' finiteness (which a bad
    gradient reaches through the optimiser) are read back only every ``log_every`` steps and at the
    end, so the loop never waits for the device in between.

    :param weight: the KL weight for a global step number (default 1).
    :param max_steps: stop after this many steps (benchmarks).
    :param bf16: CUDA autocast to bfloat16 for the networks; the densities stay float32.
    :param clip: clip the gradient norm to this value.
    :param should_stop: polled after each step; True ends the call (signals).
    :param on_check: called at each check that found everything finite, with (steps taken, global step,
        summed loss), to snapshot the last good state.
    :param total: the loss summed so far in this epoch (a resumed epoch), continued in float32 so the
        sum is the same, bit for bit, as an uninterrupted epoch's.
    :param objective: computes the loss of a batch instead of ``elbo`` (a DDP-wrapped :class:`ELBOLoss`).
    :param grad_scale: the loss is multiplied by this before the backward pass (the number of ranks).
    :param graph: replay this captured step for the batches of its shape (``--cuda-graphs``); other
        batches (the short last one) run eagerly.

    Under torchrun the checks all-reduce the summed loss, the non-finite flag and the stop request in
    one collective, so every rank stops at the same step; a stop is then seen at the next check, not
    the next step. ``EpochProgress.total`` is the sum over all ranks.
    """
    device = next(vae.parameters()).device
    params = [p for p in vae.parameters() if p.requires_grad]
    total = torch.zeros((), device=device) if total is None else total.clone()
    bad = torch.zeros((), dtype=torch.bool, device=device)
    seen_at_log, total_at_log, taken = 0, 0.0, 0
    distributed = world().distributed

    def check(stop: bool) -> tuple[bool, float, bool]:
        # one read-back (and, under torchrun, one all-reduce) per check: the loss so far, whether anything
        # went non-finite (a NaN/Inf gradient reaches the parameters through the optimiser, so checking them
        # covers the gradients without a norm on every step), and whether any rank was asked to stop
        # a NaN/Inf loss leaves the running sum non-finite, so the sum stands for a per-step flag
        flags = torch.stack([total, (bad | ~_all_finite(params)).float(), torch.tensor(float(stop), device=device)])
        now, nonfinite, stopped = all_sum(flags).tolist()
        return nonfinite > 0 or not math.isfinite(now), now, stopped > 0

    def summed(now: float) -> torch.Tensor:
        return torch.tensor(now, device=device)

    # this loop steps vae.parameters() itself, so the pyro.module registration (for SVI) is skipped
    with (
        pyro.validation_enabled(False),
        torch.autocast(device.type, torch.bfloat16, enabled=bf16),
        vae.registration(False),
    ):
        for x in batches:
            w = 1.0 if weight is None else weight(step)
            if graph is not None and graph.takes(x):
                loss = graph.step(x, w)
                if clip is not None:
                    bad |= graph.clip_bad
            else:
                vae.kl_weight = w
                if objective is None:
                    loss = elbo.differentiable_loss(vae.model, vae.guide, x).float()
                else:
                    loss = objective(x).float()
                # a captured graph owns the gradient tensors: zero them in place
                optimizer.zero_grad(set_to_none=graph is None)
                (loss * grad_scale if grad_scale != 1.0 else loss).backward()
                if clip is not None:
                    bad |= ~torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip))
                optimizer.step()
            total += loss.detach()
            step += 1
            taken += 1
            if bar is not None and not bar.disable:
                bar.update(len(x) * (world().size if distributed else 1))
            if taken % log_every == 0:
                nonfinite, now, stop = check(distributed and should_stop is not None and should_stop())
                if nonfinite:
                    return EpochProgress(summed(now), step, taken, nonfinite=True, own=total)
                if on_check is not None:
                    on_check(taken, step, now)
                if bar is not None and not bar.disable:
                    bar.set_postfix(loss=f"{(now - total_at_log) / max(bar.n - seen_at_log, 1):.2f}")
                    seen_at_log, total_at_log = bar.n, now
                if stop:
                    return EpochProgress(summed(now), step, taken, stopped=True, own=total)
            if not distributed and should_stop is not None and should_stop():
                nonfinite, now, _ = check(False)
                return EpochProgress(summed(now), step, taken, stopped=True, nonfinite=nonfinite, own=total)
            if max_steps is not None and taken >= max_steps:
                break
    nonfinite, now, _ = check(False)
    return EpochProgress(summed(now), step, taken, nonfinite=nonfinite, own=total)


def layer_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    """The weight matrices and kernels of ``module``'s linear and convolution layers (masked ones included):
    what ``weight_decay`` decays. Biases, norm parameters, prior parameters (a VampPrior's pseudo-inputs, a
    mixture's means and scales) and learned likelihood scales are left out.

    :param module: a VAE, or any module.
    """
    layers = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    return [m.weight for m in module.modules() if isinstance(m, layers) and isinstance(m.weight, torch.nn.Parameter)]


def make_optimizer(
    params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0, decayed: Iterable[torch.Tensor] = ()
) -> torch.optim.Optimizer:
    """The training loop's Adam. With every parameter a float tensor on the CPU it is torch's fused kernel
    (``fused=True``): the same update, one pass per tensor instead of about ten elementwise ops each, so a
    step of the MNIST MLP spends 0.5 ms in Adam instead of 2.0 (measured, README). Elsewhere torch's
    default (the multi-tensor kernels on CUDA), which the CUDA-graph capture was written for. A resumed run
    keeps the mode its checkpoint's optimiser state records.

    With ``weight_decay`` > 0 it is ``torch.optim.AdamW``: decoupled decay, ``θ ← θ (1 − lr·λ)`` before
    each Adam step, of the tensors in ``decayed`` (training passes :func:`layer_weights`); the other
    parameters get Adam's step alone. Decoupled, so the decay's strength does not depend on the loss being
    summed over the batch.

    :param params: the parameters to step.
    :param lr: the step size.
    :param weight_decay: λ, the decay per unit of step size; 0 (default) is plain Adam, one parameter group.
    :param decayed: the parameters (of ``params``) that ``weight_decay`` applies to.
    """
    params = list(params)
    cpu = bool(params) and all(p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) for p in params)
    fused = True if cpu else None
    if not weight_decay:
        # one group, as checkpoints written before weight decay existed hold
        return torch.optim.Adam(params, lr=lr, fused=fused)
    chosen = {id(p) for p in decayed}
    groups = [
        {"params": [p for p in params if id(p) in chosen], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in chosen], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=fused)


def _all_finite(params: list[torch.Tensor]) -> torch.Tensor:
    # a NaN or Inf entry makes its tensor's sum non-finite; one float64 pass per tensor instead of
    # isfinite's three (== itself, abs, != inf) and a reduction, and float64 cannot overflow here
    return torch.stack([p.detach().sum(dtype=torch.float64) for p in params]).isfinite().all()
