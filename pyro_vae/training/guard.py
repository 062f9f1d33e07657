"""The non-finite guard: when the loss or a gradient norm turns NaN or Inf (a flag read every
``log_every`` steps), go back to the last check that found everything finite, replay step by step to
find the first bad step, save the state just before it, name the ELBO term that failed, and stop."""

from __future__ import annotations

import copy
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro import poutine

from pyro_vae.errors import PyroVAEError
from pyro_vae.runs.checkpoint import restore_rng, rng_state, save_checkpoint
from pyro_vae.training.loop import run_epoch

if TYPE_CHECKING:
    from pyro_vae.training.setup import Run


class NonFiniteLoss(PyroVAEError):
    """The loss or a gradient became NaN or infinite; the last good state was saved."""


@dataclass
class _Snapshot:
    """The state at the last check that found everything finite."""

    batch: int
    step: int
    total: float
    model: dict
    optimizer: dict
    rng: dict


def snapshot(run: Run, batch: int, step: int, total: float) -> _Snapshot:
    return _Snapshot(
        batch,
        step,
        total,
        {k: v.detach().clone() for k, v in run.vae.state_dict().items()},
        copy.deepcopy(run.optimizer.state_dict()),
        copy.deepcopy(rng_state(run.generator)),
    )


def _restore(run: Run, snap: _Snapshot) -> None:
    run.vae.load_state_dict(snap.model)
    run.optimizer.load_state_dict(snap.optimizer)
    restore_rng(snap.rng, run.generator)


def stop_nonfinite(run: Run, epoch: int, perm: torch.Tensor, snap: _Snapshot, best: float | None) -> None:
    """Go back to the last good check, replay step by step to find the first bad step, save the
    state just before it, name the term that went non-finite, and stop."""
    _restore(run, snap)
    batch, step, total = snap.batch, snap.step, snap.total
    x: torch.Tensor | None = None
    while batch < len(run.batches):
        before = snapshot(run, batch, step, total)
        x = next(run.batches.batches(perm, batch))
        p = run_epoch(
            run.vae,
            run.elbo,
            run.optimizer,
            [x],
            step=step,
            weight=run.weight,
            clip=run.config.clip_grad,
            total=torch.tensor(total if run.world.main else 0.0, device=x.device),
            objective=run.objective,
            grad_scale=float(run.world.size),
        )
        if p.nonfinite:
            _restore(run, before)
            break
        batch, step, total = batch + 1, p.step, p.total.item()
    else:  # not reproduced (non-deterministic kernels): keep the last good check
        _restore(run, snap)
        batch, step, total, x = snap.batch, snap.step, snap.total, None
    last = run.run_dir / "checkpoints" / "last.pt"
    position = {"perm": perm.cpu(), "batch": batch, "total": total, "seconds": 0.0}
    state = run.state(epoch, step, position, best)  # every rank builds it (a collective); rank 0 writes
    if run.world.main:
        save_checkpoint(last, state)
    what = _nonfinite_term(run, x, step) if x is not None else "the loss or a gradient (not reproduced on replay)"
    c = run.config
    lr = c.lr_at(epoch)  # the step size in force, after the schedule's milestones
    now = f"now {lr:g}" + (f", `lr={c.lr:g}` scheduled by `lr_gamma={c.lr_gamma:g}`" if lr != c.lr else "")
    decay = f", or a lower `weight_decay` (now {c.weight_decay:g}: each step scales the weights by 1 − lr·λ)"
    raise NonFiniteLoss(
        f"{what} became non-finite at epoch {epoch + 1}, step {batch + 1}; saved the last good state to {last}; "
        f"try a lower step size ({now}), `clip_grad=100`, a KL warm-up (`kl_schedule=linear` `warmup=1`)"
        + (decay if c.weight_decay else "")
    )


@torch.no_grad()
def _nonfinite_term(run: Run, x: torch.Tensor, step: int) -> str:
    """Which ELBO term is NaN/Inf for batch ``x`` with the same z draws as the failed step."""
    vae = run.vae
    if len(x) == 0:
        return "the loss or a gradient on another rank"
    vae.kl_weight = run.weight(step)
    with pyro.validation_enabled(False), vae.registration(False):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    recon = sum(s["fn"].log_prob(s["value"]).sum() for s in model_tr.nodes.values() if s.get("is_observed"))
    kl = sum(
        guide_tr.nodes[n]["fn"].log_prob(s["value"]).sum() - s["fn"].log_prob(s["value"]).sum()
        for n, s in model_tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and n in guide_tr.nodes
    )
    bad = [name for name, v in (("the reconstruction term", recon), ("the KL term", kl)) if not torch.isfinite(v)]
    if not bad:
        return "a gradient (the loss itself was finite)"
    return " and ".join(bad)


class StopRequests:
    """SIGINT/SIGTERM set a flag that the loop reads after each step (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def requested(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
