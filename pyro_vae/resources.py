"""The machine a run meets: sizes that cannot fit are refused before allocating anything (the model is
built on torch's ``meta`` device, shapes only, to count its parameters and one data point's activations);
the CPU threads are chosen from the CPUs the process may use; and other processes' load is watched."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae.errors import ConfigError

GB = 1024**3


def available_bytes(device: torch.device) -> int:
    """Memory free for a run on ``device``: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: do not refuse


def _activation_numel(encoder: nn.Module, decoder: nn.Module, event_shape: Sequence[int], z_dim: int) -> int:
    """Elements of every layer output for one data point through encoder and decoder (meta tensors)."""
    total = [0]

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        outs = output if isinstance(output, tuple | list) else (output,)
        total[0] += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))

    leaves = [m for net in (encoder, decoder) for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, *event_shape, device="meta"))
            decoder(torch.zeros(1, z_dim, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total[0] + math.prod(event_shape) + 4 * z_dim


def training_bytes(vae_on_meta: nn.Module, event_shape: Sequence[int], z_dim: int, points: int) -> int:
    """About the memory one training step needs: parameters, gradients and two Adam moments, plus
    the forward activations of ``points`` data points (×3 for the backward pass), in float32."""
    params = sum(p.numel() for p in vae_on_meta.parameters()) + sum(b.numel() for b in vae_on_meta.buffers())
    try:
        acts = _activation_numel(vae_on_meta.encoder, vae_on_meta.decoder, event_shape, z_dim)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):  # a model whose decoder takes another input: weights only
        acts = 0
    pseudo = getattr(vae_on_meta.prior, "pseudo_inputs", None)
    if isinstance(pseudo, torch.Tensor):  # VampPrior runs the encoder on every pseudo-input each step
        points += len(pseudo)
    return 4 * (4 * params + 3 * acts * points)


def check_fits(needed: int, device: torch.device, what: str, fix: str, available: int | None = None) -> None:
    """Raise a one-line :class:`ConfigError` when ``needed`` bytes exceed the free memory."""
    free = available_bytes(device) if available is None else available
    if needed > free:
        raise ConfigError(
            f"{what} needs about {needed / GB:,.1f} GB, more than the {free / GB:,.1f} GB free on {device.type}; {fix}"
        )


def _cgroup_cpus(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``); None where there is none."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may actually run on: its affinity mask, capped by its cgroup's quota (a
    container given 2 CPUs of a 64-core host can use 2, though ``os.cpu_count()`` says 64); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def check_count(name: str, n: int | None, what: str = "threads") -> None:
    """Refuse more ``what`` than this machine has CPUs: each is a thread or a process that needs a core, and
    OpenMP allocates per thread (a billion of them end the process from inside the runtime)."""
    cpus = os.cpu_count() or 1
    if n is not None and n > cpus:
        raise ConfigError(
            f"`{name}={n:.3g}` asks for more {what} than the {cpus} CPUs of this machine; pass at most {cpus}"
        )


def set_threads(threads: int | None, processes_here: int = 1) -> int:
    """Set torch's intra-op threads: ``threads`` when given; else, unless ``OMP_NUM_THREADS`` is set (then
    torch's count, which follows it, is kept), the usable CPUs shared among the ``processes_here``
    processes of this job on this machine (torchrun's local ranks). Returns the count.

    On a CPU that other jobs also use, fewer threads are often much faster (threads that wait for a
    busy core stall the others): pass ``threads=1`` there."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"`threads` must be a positive integer, got {threads!r}")
    check_count("threads", threads)
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = threads if threads is not None else max(1, usable_cpus() // max(1, processes_here))
    torch.set_num_threads(n)
    return n


def _busy_seconds(cpus: set[int], stat: str = "/proc/stat") -> float | None:
    """Seconds the given CPUs have spent busy since boot (user, nice, system, irq, softirq and steal
    time in ``/proc/stat``); None where that file is not there."""
    try:
        with open(stat) as f:
            lines = f.read().splitlines()
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in fields] + [0] * 8
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy / tick


class SharedCpuWatch:
    """How many of this process's CPUs other processes keep busy: the busy time of the CPUs it may run on
    (its affinity) minus its own CPU time, over wall time, since the watch started.

    :param stat: the kernel's CPU counters (a test passes its own file).
    """

    def __init__(self, stat: str = "/proc/stat") -> None:
        try:
            self.cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = set(range(os.cpu_count() or 1))
        self.stat = stat
        self._start = self._read()

    def _read(self) -> tuple[float, float | None, float]:
        own = os.times()
        return time.perf_counter(), _busy_seconds(self.cpus, self.stat), own.user + own.system

    def others(self) -> float | None:
        """CPUs' worth of other processes' work on this process's CPUs since the start; None if unknown."""
        (t0, busy0, own0), (t1, busy1, own1) = self._start, self._read()
        if busy0 is None or busy1 is None or t1 - t0 < 1.0:  # too short an interval to say
            return None
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / (t1 - t0))

    def note(self, threads: int, what: str) -> str | None:
        """A one-line note when other processes kept at least half a CPU busy while this one ran ``threads``
        threads on a machine of ``usable_cpus()``: they then wait on each other for the cores."""
        others = self.others()
        cpus = min(len(self.cpus), usable_cpus())
        if others is None or threads < 2 or others < 0.5:
            return None
        fewer = max(1, min(threads - 1, round(cpus - others)))
        return (
            f"note: other processes kept about {others:.1f} of this machine's {cpus} CPUs busy during {what}; "
            f"{threads} threads then wait on each other for the cores: `threads={fewer}` is often several "
            "times faster on a shared CPU"
        )
