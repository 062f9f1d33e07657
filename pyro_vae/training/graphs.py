"""The whole SVI step as one CUDA graph: Pyro's model and guide traces, the sync-free ELBO, the backward
pass and a capturable Adam, recorded once and replayed for every full batch.

A small VAE's step is a few hundred short kernels; launched one by one from Python they, not the
arithmetic, set its speed. Replaying a captured graph launches them all at once. What capture needs:

* a static batch shape: the full batches replay the graph, the last short batch of an epoch runs
  eagerly (with the same optimiser state and parameters);
* the KL weight as a device tensor, filled before each replay, so warm-up schedules work;
* graph-safe random numbers: the z draws use torch's default CUDA generator, whose Philox offset
  advances on every replay; the binarization happens before the graph, on the batch generator;
* no host reads inside the step: the sync-free ELBOs, Adam with ``capturable=True``, and Pyro's
  validation off.

When capture fails (a custom prior or likelihood that reads a value back to the host, say), training
goes on eagerly and the reason is printed once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_vae.models import VAE


def make_capturable(optimizer: torch.optim.Optimizer, on: bool = True) -> None:
    """Switch Adam-style optimisers to ``capturable=on``, with their step counters where that mode keeps
    them: on the parameter's device for capture, on the host otherwise. A state loaded from a checkpoint
    carries the mode of the run that saved it; a resumed run sets its own (a ``--cuda-graphs`` run resumed
    without the flag, or on the CPU, would otherwise step in a mode its device may not support)."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = on
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state and torch.is_tensor(state["step"]):
                where = p.device if on else torch.device("cpu")
                if state["step"].device != where:
                    state["step"] = state["step"].to(device=where, dtype=torch.float32)


class GraphStep:
    """One captured SVI step, replayed for every batch of the captured shape.

    :param vae: the model (on CUDA).
    :param elbo: a sync-free objective (:class:`~pyro_vae.objectives.SyncFreeTrace_ELBO`, ...).
    :param optimizer: Adam (made capturable here).
    :param clip: the gradient-norm clip, inside the graph.
    :param bf16: autocast the networks to bfloat16 inside the graph.
    :param warmup: eager steps on a side stream before capture (allocator, lazy initialisation).
    :param say: where the one-line fallback notice goes.
    """

    def __init__(
        self,
        vae: VAE,
        elbo: Any,
        optimizer: torch.optim.Optimizer,
        *,
        clip: float | None = None,
        bf16: bool = False,
        warmup: int = 3,
        say: Callable[[str], None] = print,
    ) -> None:
        self.vae, self.elbo, self.optimizer = vae, elbo, optimizer
        self.clip, self.bf16, self.warmup_steps, self.say = clip, bf16, warmup, say
        self.device = next(vae.parameters()).device
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.params = [p for p in vae.parameters() if p.requires_grad]
        self.weight = torch.ones((), device=self.device)  # the KL weight the graph reads
        self.clip_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.shape: torch.Size | None = None
        self.static_x: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self.warmed = 0
        make_capturable(optimizer)

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            loss = self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x).float()
        loss.backward()
        if self.clip is not None:
            self.clip_bad.copy_(~torch.isfinite(torch.nn.utils.clip_grad_norm_(self.params, self.clip)))
        self.optimizer.step()
        return loss.detach()

    def takes(self, x: torch.Tensor) -> bool:
        """Whether this batch goes through the graph (the captured shape, and capture did not fail)."""
        if self.failed is not None:
            return False
        if self.shape is None:
            self.shape = x.shape
        return x.shape == self.shape

    def step(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        """One SVI step on ``x`` with KL weight ``weight``: warm-up, capture, or replay. Returns the loss
        (a device tensor, valid until the next step)."""
        self.weight.fill_(weight)
        saved_weight, self.vae.kl_weight = self.vae.kl_weight, self.weight
        try:
            if self.warmed < self.warmup_steps:
                return self._warm(x)
            if self.graph is None:
                self._capture(x)
                if self.graph is None:  # fell back: this batch, eagerly
                    self.vae.kl_weight = weight
                    self.optimizer.zero_grad(set_to_none=False)
                    return self._eager(x)
            assert self.static_x is not None and self.loss is not None and self.graph is not None
            self.static_x.copy_(x)
            self.graph.replay()
            return self.loss
        finally:
            self.vae.kl_weight = saved_weight

    def _warm(self, x: torch.Tensor) -> torch.Tensor:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._eager(x)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.warmed += 1
        return loss

    def _capture(self, x: torch.Tensor) -> None:
        self.static_x = x.clone()
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients it owns
        try:
            with torch.cuda.graph(graph):
                self.loss = self._eager(self.static_x)
        except Exception as exc:  # any failure to capture falls back to eager steps
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.failed = first[:200]
            self.graph, self.loss, self.static_x = None, None, None
            for p in self.params:
                p.grad = None
            self.say(f"CUDA graphs: could not capture the step ({self.failed}); training eagerly")
            return
        self.graph = graph
