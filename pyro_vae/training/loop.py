"""The training hot path, shared by :func:`pyro_vae.train` and the benchmark: SVI steps over
batches with no host sync of their own, and the held-out loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_vae.models import VAE


@torch.no_grad()
def heldout_loss(vae: VAE, elbo: Any, x: torch.Tensor, batch_size: int = 1000) -> float:
    """The objective's loss per data point (nats) over ``x`` with KL weight 1: the negative ELBO
    (one z draw per point) for ``Trace_ELBO``/``TraceMeanField_ELBO``, −L_K for the IWAE bound."""
    total = torch.zeros((), device=x.device)
    weight, vae.kl_weight = vae.kl_weight, 1.0
    try:
        with vae.registration(False):
            for start in range(0, len(x), batch_size):
                total += elbo.differentiable_loss(vae.model, vae.guide, x[start : start + batch_size])
    finally:
        vae.kl_weight = weight
    return total.item() / len(x)


@dataclass
class EpochProgress:
    """What :func:`run_epoch` did."""

    total: torch.Tensor  # summed loss of the steps taken, on the device
    step: int  # global step after the last step taken
    batches: int  # steps taken
    stopped: bool = False  # a stop was requested
    nonfinite: bool = False  # a NaN/Inf loss or gradient was seen since the last good check


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
) -> EpochProgress:
    """SVI steps over ``batches``: the training hot path, shared by :func:`train` and the benchmark.

    Pyro's per-step distribution checks are off inside: the data were checked once up front, and
    each check costs ~20% of a CPU step and a device sync on CUDA. The loss is summed on the device,
    and a NaN/Inf loss raises a flag on the device; the flag and the parameters' finiteness (which a
    bad gradient reaches through the optimiser) are read back only every ``log_every`` steps and at the
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
    """
    device = next(vae.parameters()).device
    params = [p for p in vae.parameters() if p.requires_grad]
    total = torch.zeros((), device=device) if total is None else total.clone()
    bad = torch.zeros((), dtype=torch.bool, device=device)
    seen_at_log, total_at_log, taken = 0, 0.0, 0
    # this loop steps vae.parameters() itself, so the pyro.module registration (for SVI) is skipped
    with (
        pyro.validation_enabled(False),
        torch.autocast(device.type, torch.bfloat16, enabled=bf16),
        vae.registration(False),
    ):
        for x in batches:
            vae.kl_weight = 1.0 if weight is None else weight(step)
            loss = elbo.differentiable_loss(vae.model, vae.guide, x).float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bad |= ~torch.isfinite(loss.detach())
            if clip is not None:
                bad |= ~torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip))
            optimizer.step()
            total += loss.detach()
            step += 1
            taken += 1
            if bar is not None and not bar.disable:
                bar.update(len(x))
            if taken % log_every == 0:
                # a NaN/Inf gradient reaches the parameters through the optimiser, so checking them here
                # (one pass per interval) covers the gradients without a norm on every step
                if (bad | ~_all_finite(params)).item():  # one sync per log interval
                    return EpochProgress(total, step, taken, nonfinite=True)
                now = total.item()
                if on_check is not None:
                    on_check(taken, step, now)
                if bar is not None and not bar.disable:
                    bar.set_postfix(loss=f"{(now - total_at_log) / (bar.n - seen_at_log):.2f}")
                    seen_at_log, total_at_log = bar.n, now
            if should_stop is not None and should_stop():
                return EpochProgress(
                    total, step, taken, stopped=True, nonfinite=bool((bad | ~_all_finite(params)).item())
                )
            if max_steps is not None and taken >= max_steps:
                break
    return EpochProgress(total, step, taken, nonfinite=bool((bad | ~_all_finite(params)).item()))


def _all_finite(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.isfinite(p).all() for p in params]).all()
