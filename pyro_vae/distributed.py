"""Many processes, one run: torch.distributed as launched by ``torchrun``.

Each process (rank) drives one device. The process group is NCCL on CUDA and gloo on the CPU; every
collective has a timeout, so a rank that dies or hangs ends the job with an error, never a hang.
Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing here is used and a run is the
ordinary single-process one.

The helpers below are no-ops in a single process, so the training and evaluation code calls them
unconditionally.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pyro_vae.errors import ConfigError, PyroVAEError

# how long a collective waits for the other ranks before the job fails (NCCL's own default)
DEFAULT_TIMEOUT_S = 600.0


class RankFailure(PyroVAEError):
    """Another rank died, hung past the timeout, or refused the run; this rank stopped too.

    ``quiet``: rank 0 prints the refusal, so this rank says nothing (one line per job, not per rank)."""

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


@dataclass(frozen=True)
class World:
    """Where this process sits: its rank among ``size`` processes, and its device index on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def main_process() -> bool:
    """Rank 0 of a torchrun job, or a process on its own; true also after the group is gone (exit messages)."""
    return world().main if dist.is_available() and dist.is_initialized() else os.environ.get("RANK", "0") == "0"


def world() -> World:
    """The current process group's view of this process (a single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def check_timeout(timeout_s: float) -> None:
    """Refuse a ``--dist-timeout`` that is not a finite number of seconds > 0 (with or without torchrun, so
    a bad value never waits to surface until the job is launched on many machines)."""
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(
            f"`dist_timeout` must be a finite number of seconds > 0, got {timeout_s}; e.g. `dist_timeout=600`"
        )


def init(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...): NCCL when the run is on CUDA, gloo on the CPU, one device per rank.

    :param device: the run's ``--device``; ``"auto"`` is CUDA when torch sees a GPU.
    :param timeout_s: how long any collective waits for the other ranks.
    """
    check_timeout(timeout_s)
    if not launched():
        return World()
    if dist.is_initialized():
        return world()
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU: torch sees {torch.cuda.device_count()} on this node; "
                "lower --nproc-per-node to the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    kwargs: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)}
    if cuda:
        kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", **kwargs)
    return world()


_BROKEN = False  # a collective failed: another rank died or hung


def shutdown() -> None:
    """Leave the process group (at the end of a command). After a failed collective the group is left
    as it is: tearing down a gloo group whose peer died can abort the process (``terminate called without
    an active exception``) or hang, and this process is about to exit with its one-line error anyway."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if _BROKEN:
        # gloo's worker threads fail the collectives still queued and drop their tensors, which takes
        # the GIL: give them the time now rather than at interpreter exit (see _released)
        time.sleep(0.5)
        return
    dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when torch sees a GPU, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`device=cuda` asked for, but torch sees no GPU; use `device=cpu` or `device=auto`")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown `device={name!r}`; choose one of auto, cpu, cuda")
    return torch.device(name)


def device_for(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under torchrun on CUDA."""
    w = world()
    if device.type == "cuda" and w.distributed:
        return torch.device("cuda", w.local_rank)
    return device


def derive_seed(seed: int, index: int) -> int:
    """An independent seed for stream ``index`` of ``seed`` (a rank's own draws, a batch of an
    evaluation), the same in every run and on every machine."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] % 2**63)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the ranks (``t`` itself in one process)."""
    if not world().distributed:
        return t
    t = t.clone()
    with _released(t):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not world().distributed:
        return flag
    return bool(all_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order, on every rank."""
    w = world()
    if not w.distributed:
        return [obj]
    if dist.get_backend() != "gloo":
        out: list[Any] = [None] * w.size
        dist.all_gather_object(out, obj)
        return out
    # gloo: pickled bytes through tensors of our own, so that _released can see them let go
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).clone()  # no Python buffer
    sizes = [int(s) for s in _all_gather(torch.tensor([len(data)]))]
    padded = torch.zeros(max(sizes), dtype=torch.uint8)
    padded[: len(data)] = data
    parts = _all_gather(padded)
    return [pickle.loads(p[:s].numpy().tobytes()) for p, s in zip(parts, sizes, strict=True)]


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (same shape on all), in rank order."""
    parts = [torch.empty_like(t) for _ in range(world().size)]
    with _released(t, *parts):
        dist.all_gather(parts, t)
    return parts


@contextmanager
def _released(*tensors: torch.Tensor, wait_s: float = 10.0) -> Iterator[None]:
    """Run a gloo collective on ``tensors`` and return only once gloo's worker thread has dropped its
    references to them. The caller has the result before that thread lets go, and the thread's drop
    releases the tensors' Python objects, which takes the GIL. When that comes after the interpreter
    began to exit, the process aborts ("terminate called without an active exception",
    pytorch/pytorch#190489); DDP keeps the group's threads alive past ``destroy_process_group``, so
    this is how a command that ends right after a collective exits cleanly. NCCL has no such thread."""
    counts = [_use_count(t) for t in tensors]
    try:
        yield
    finally:  # also after a failed collective: the process is about to exit with its one-line error
        if dist.is_initialized() and dist.get_backend() == "gloo":
            deadline = time.monotonic() + wait_s
            while any(_use_count(t) > c for t, c in zip(tensors, counts, strict=True)):
                if time.monotonic() > deadline:
                    break
                time.sleep(1e-4)  # lets the worker thread take the GIL


def _use_count(t: torch.Tensor) -> int:
    """How many C++ references hold ``t`` (0 where torch does not say)."""
    count = getattr(t, "_use_count", None)
    return int(count()) if count is not None else 0


def first_given(value: Any) -> Any:
    """The first rank's ``value`` that is not None (a signal number that reached some ranks only)."""
    if not world().distributed:
        return value
    return next((v for v in gather_objects(value) if v is not None), None)


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def shard(n: int, pieces: int | None = None, index: int | None = None) -> slice:
    """The contiguous piece ``index`` of ``range(n)`` cut into ``pieces`` as even as can be (sizes
    differ by at most one): the pieces are disjoint and together cover the range. Default: this rank's."""
    w = world()
    pieces = w.size if pieces is None else pieces
    index = w.rank if index is None else index
    base, extra = divmod(n, pieces)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def gather_cat(values: torch.Tensor) -> torch.Tensor:
    """Every rank's ``values`` (1-D, pieces of different lengths allowed) concatenated in rank order."""
    w = world()
    if not w.distributed:
        return values
    sizes = [int(s) for s in gather_objects(len(values))]
    padded = torch.zeros(max(sizes), dtype=values.dtype, device=values.device)
    padded[: len(values)] = values
    parts = _all_gather(padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


@contextmanager
def agreed(what: str) -> Iterator[None]:
    """Run a block that may refuse (bad input) on some ranks only. Every rank learns whether any refused:
    rank 0 raises the first refusal (naming its rank), the others stop quietly, so the job prints one
    line and no rank waits for a missing one at the next collective."""
    w = world()
    if not w.distributed:
        yield
        return
    own: PyroVAEError | None = None
    try:
        yield
    except PyroVAEError as exc:
        own = exc
    refusals = [(r, m) for r, m in enumerate(gather_objects(None if own is None else str(own))) if m is not None]
    if not refusals:
        return
    rank, message = refusals[0]
    if w.main and own is not None and rank == 0:
        raise own
    if w.main:
        raise RankFailure(f"rank {rank} refused {what}: {message}")
    raise RankFailure(message, quiet=True)


def lost_contact(exc: BaseException, checkpoint: str | None) -> RankFailure:
    """The one-line error for a collective that failed: another rank died or hung past the timeout."""
    global _BROKEN
    _BROKEN = True
    where = f"; the last checkpoint is {checkpoint}" if checkpoint else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RankFailure(
        f"rank {world().rank} lost the other ranks (one died, or hung past `dist_timeout`): {first[:300]}{where}"
    )


# what the gloo and NCCL backends say when a peer is gone or a collective timed out
_LOST = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe", "peer")


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed collective (another rank died or hung), not an error of this rank's own."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return world().distributed and any(k in text for k in _LOST)
