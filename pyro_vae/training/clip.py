"""Gradient clipping relative to the gradient's own running size: a spike is cut to a multiple of the recent
norms, so one setting fits datasets whose gradient norms differ by orders of magnitude (an absolute
``clip_grad`` that suits 3-channel 8-bit tiles, norm about 2.5e6, never acts on 1-channel ones, about 0.6e6).

Before each optimiser step, with n_t the gradient norm and m the running mean of the clipped norms:

    threshold_t = factor · m̂_{t−1},   m̂_{t−1} = m_{t−1} / (1 − β^{t−1})   (bias-corrected, as Adam's moments)
    g ← g · min(1, threshold_t / n_t)
    m_t = β · m_{t−1} + (1 − β) · min(n_t, threshold_t)

The first step has no running mean and is not clipped. A non-finite norm leaves the gradient and the mean
alone (the non-finite guard then sees it). The mean and the step count live in the optimiser's state
(``"clip_mean"``, ``"clip_steps"`` of the first parameter), so checkpoints, an exact resume and the guard's
snapshots carry them with no code of their own.
"""

from __future__ import annotations

import math

import torch

MEAN_KEY = "clip_mean"
STEPS_KEY = "clip_steps"
#: the running mean's decay: about the last 100 steps
DECAY = 0.99


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def threshold(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """The norm above which the next step's gradient is cut (``inf`` before the first step)."""
    params = _params(optimizer)
    state = optimizer.state.get(params[0], {}) if params else {}
    steps = state.get(STEPS_KEY, 0)
    if not steps:
        return math.inf
    return factor * state[MEAN_KEY] / (1.0 - DECAY**steps)


def attach_relative_clip(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Before each of ``optimizer``'s steps, cut the gradient norm to ``factor`` times its running mean.

    :param factor: the multiple of the running mean a norm may reach, above 1; 2 cuts spikes and leaves the
        ordinary step-to-step spread alone.
    """
    if not (math.isfinite(factor) and factor > 1.0):
        raise ValueError(f"the relative clip's factor must be above 1, got {factor}")

    seen: list[float] = []  # this step's kept norm, recorded after the step: Adam initialises its state
    # only where a parameter's state is empty, so nothing may be written there before its first step

    @torch.no_grad()
    def clip(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        seen.clear()
        grads = [p.grad for p in _params(opt) if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
        if not math.isfinite(norm):
            return
        limit = threshold(opt, factor)
        if norm > limit:
            torch._foreach_mul_(grads, limit / norm)
        seen.append(min(norm, limit))

    @torch.no_grad()
    def record(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        if not seen:
            return
        state = opt.state[_params(opt)[0]]
        state[MEAN_KEY] = DECAY * state.get(MEAN_KEY, 0.0) + (1.0 - DECAY) * seen.pop()
        state[STEPS_KEY] = state.get(STEPS_KEY, 0) + 1

    optimizer.register_step_pre_hook(clip)
    optimizer.register_step_post_hook(record)


__all__ = ["attach_relative_clip", "threshold"]
