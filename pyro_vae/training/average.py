"""An exponential moving average of the weights (Polyak averaging, as in PixelCNN++ and VDVAE): the
held-out losses, ``best.pt``'s choice, the pictures and every evaluation use the averaged weights, while
the optimiser steps the raw ones.

After each optimiser step, for every parameter θ with its average θ̄:

    θ̄ ← d_t · θ̄ + (1 − d_t) · θ,   d_t = min(decay, (1 + t) / (10 + t))

where t is the number of steps taken before this one. The warm-up of d_t lets the average forget the
initial weights within the first hundreds of steps instead of the 1 / (1 − decay) a fixed decay needs.

The average lives in the optimiser's state (key ``"ema"`` beside Adam's moments, and ``"ema_steps"``),
so checkpoints, an exact resume and the non-finite guard's snapshots carry it with no code of their own.
Buffers (batch-norm statistics) are not averaged: the averaged model uses the current ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

STATE_KEY = "ema"
STEPS_KEY = "ema_steps"


def decay_at(decay: float, steps: int) -> float:
    """d_t for the update after ``steps`` earlier updates."""
    return min(decay, (1.0 + steps) / (10.0 + steps))


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def attach_average(optimizer: torch.optim.Optimizer, decay: float) -> None:
    """Keep the moving average of ``optimizer``'s parameters, updated after each of its steps.

    :param decay: the largest d_t, in (0, 1); 0.999 averages over about the last 1000 steps.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"the average's decay must be in (0, 1), got {decay}")

    @torch.no_grad()
    def update(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        params = [p for p in _params(opt) if p.requires_grad]
        if not params:
            return
        states = [opt.state[p] for p in params]
        for p, s in zip(params, states, strict=True):
            if STATE_KEY not in s:  # the average starts at the weights after the first step
                s[STATE_KEY], s[STEPS_KEY] = p.detach().clone(), 0
        steps = states[0][STEPS_KEY]
        torch._foreach_lerp_([s[STATE_KEY] for s in states], [p.detach() for p in params], 1.0 - decay_at(decay, steps))
        for s in states:
            s[STEPS_KEY] = steps + 1

    optimizer.register_step_post_hook(update)


def averaged_weights(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(parameter, its average)`` for every parameter that has one (none before the first step)."""
    return [(p, optimizer.state[p][STATE_KEY]) for p in _params(optimizer) if STATE_KEY in optimizer.state.get(p, {})]


@contextmanager
def averaged(optimizer: torch.optim.Optimizer | None) -> Iterator[bool]:
    """Inside, the parameters hold their averages (when the optimiser keeps them); after, the raw weights
    again, bit for bit. Yields whether averages were swapped in."""
    pairs = averaged_weights(optimizer) if optimizer is not None else []
    if not pairs:
        yield False
        return
    with torch.no_grad():
        raw = [p.detach().clone() for p, _ in pairs]
        for p, avg in pairs:
            p.copy_(avg)
    try:
        yield True
    finally:
        with torch.no_grad():
            for (p, _), r in zip(pairs, raw, strict=True):
                p.copy_(r)


__all__ = ["attach_average", "averaged", "averaged_weights", "decay_at"]
