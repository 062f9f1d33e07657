"""Code each rank of a test's process group runs (``python tests/dist_workers.py NAME OUT``), with the
environment torchrun would give it: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
Each worker writes what it saw to ``OUT/rank{r}.pt`` for the test to compare."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pyro_vae import TrainConfig, build_vae, distributed
from pyro_vae.evaluate import elbo_terms, importance_log_likelihood
from pyro_vae.objectives import SyncFreeTrace_ELBO
from pyro_vae.training import resume, train
from pyro_vae.training.loop import ELBOLoss, run_epoch

from conftest import make_tiny_data

# the step test: a fixed global batch, a model with learned prior and likelihood parameters
STEP_SHAPE = (1, 4, 4)


def step_model(prior: str, likelihood: str):
    pyro.set_rng_seed(0)
    return build_vae(STEP_SHAPE, z_dim=3, hidden=(8,), prior=prior, likelihood=likelihood)


def step_batch(likelihood: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(10, *STEP_SHAPE, generator=g)
    return torch.bernoulli(x, generator=g) if likelihood == "bernoulli" else x


def step_seed(rank: int) -> int:
    return 100 + rank


def elbo_of(name: str):
    return TraceMeanField_ELBO() if name == "analytic" else Trace_ELBO()


def cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        net="mlp", z_dim=2, hidden=(16,), batch_size=16, epochs=3, lr=1e-2, progress=False, device="cpu", log_every=2
    )
    return TrainConfig(out=str(out), **{**base, **kw})


def step(out: Path, w: distributed.World, elbo: str, prior: str, likelihood: str, steps: str) -> dict:
    vae = step_model(prior, likelihood)
    x = step_batch(likelihood)[distributed.shard(10)]
    objective = torch.nn.parallel.DistributedDataParallel(ELBOLoss(vae, elbo_of(elbo)))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    torch.manual_seed(step_seed(w.rank))
    run_epoch(vae, None, optimizer, [x] * int(steps), objective=objective, grad_scale=float(w.size))
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def fit(out: Path, w: distributed.World, mode: str) -> dict:
    data = make_tiny_data()
    if mode == "straight":
        train(cfg(out / "straight"), data=data)
    elif mode == "interrupted":
        calls = {"n": 0}
        original = SyncFreeTrace_ELBO.differentiable_loss

        def interrupting(self, *args):
            calls["n"] += 1
            # 6 steps an epoch + 1 test-loss call: epoch 2, step 2, on one rank only; every rank must stop
            if calls["n"] == 9 and w.rank == 1:
                signal.raise_signal(signal.SIGTERM)
            return original(self, *args)

        SyncFreeTrace_ELBO.differentiable_loss = interrupting  # type: ignore[method-assign]
        try:
            train(cfg(out / "split"), data=data)
        except Exception as exc:
            SyncFreeTrace_ELBO.differentiable_loss = original  # type: ignore[method-assign]
            return {"error": type(exc).__name__, "message": str(exc)}
    elif mode == "resume":
        resume(out / "split", data=data)
    elif mode == "die":
        original = SyncFreeTrace_ELBO.differentiable_loss
        calls = {"n": 0}

        def dies(self, *args):
            calls["n"] += 1
            if calls["n"] == 4 and w.rank == 1:
                os._exit(3)  # a rank killed mid-run
            return original(self, *args)

        SyncFreeTrace_ELBO.differentiable_loss = dies  # type: ignore[method-assign]
        try:
            train(cfg(out / "dies", epochs=50), data=data)
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
    return {}


def evaluation(out: Path, w: distributed.World) -> dict:
    vae = step_model("normal", "bernoulli")
    x = torch.bernoulli(torch.rand(25, *STEP_SHAPE, generator=torch.Generator().manual_seed(2)))
    sites: dict = {}
    result = {"ll": importance_log_likelihood(vae, x, [1, 10, 30], batch_size=4, seed=3, sample_chunk=7)}
    result["elbo"] = elbo_terms(vae, x, analytic_kl=True, batch_size=3, seed=4, per_site=sites)
    result["sites"] = sites
    return result


def collectives(out: Path, w: distributed.World) -> dict:
    """The library's collectives, many times, with DDP holding the group's threads alive past
    ``destroy_process_group`` as training does; the process ends right after the last one."""
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))  # noqa: F841
    lingering, sums, gathered = 0, [], []
    for i in range(200):
        s = distributed.all_sum(torch.full((3,), float(w.rank + i)))
        lingering += s._use_count() > 1  # the worker thread still holds the collective's tensor
        sums.append(s[0].item())
        parts = distributed._all_gather(torch.tensor([w.rank * 1000 + i]))
        lingering += sum(p._use_count() > 1 for p in parts)
        gathered.append(distributed.gather_objects({"rank": w.rank, "i": i}))
    cat = distributed.gather_cat(torch.arange(w.rank + 2))
    return {"lingering": lingering, "sums": sums, "gathered": gathered, "cat": cat}


def main() -> None:
    name, out, *rest = sys.argv[1:]
    w = distributed.init("cpu", timeout_s=60)
    try:
        workers = {"step": step, "fit": fit, "evaluation": evaluation, "collectives": collectives}
        result = workers[name](Path(out), w, *rest)
    finally:
        distributed.shutdown()
    torch.save(result, Path(out) / f"rank{w.rank}.pt")


if __name__ == "__main__":
    main()
