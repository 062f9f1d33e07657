"""Speed benchmark, side by side in one run: this library's training path against the
conventional Pyro loop and a plain-PyTorch floor, on the same device, architecture (MLP
784-400-50), batch size and number of steps; and the batched importance-sampled evaluation
against a per-image loop.

Each path runs in a process of its own (``spawn``), so its peak memory is its own and no state
(thread pools, the param store, compiled kernels) leaks from one path to the next. The repeats are
interleaved, one round over all paths at a time, and each ratio is the median of its per-round
ratios: a machine whose speed drifts over minutes (shared CPUs, clocks) then shifts every path alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pyro
import torch

from pyro_vae.benchmark.baselines import ExampleVAE, conventional_loop, pyro_example_loop, pytorch_loop, svi_loop
from pyro_vae.benchmark.config import PATH_NOTES, REFERENCES, ROW_GUIDES, BenchmarkConfig
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.files import write_atomic


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _path_worker(name: str, cfg: BenchmarkConfig, conn) -> None:
    """One row, in its own process: set up and warm up, then time one repeat per ``"repeat"``
    message; on ``"finish"`` score the test set and report."""
    from pyro_vae.data import ResidentBatches, load_data
    from pyro_vae.evaluate import elbo_terms
    from pyro_vae.models import build_vae
    from pyro_vae.objectives import make_elbo
    from pyro_vae.training import make_optimizer, resolve_device, run_epoch

    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        device = resolve_device(cfg.device)
        pyro.set_rng_seed(cfg.seed)
        pyro.clear_param_store()
        data = load_data("mnist", cfg.data_dir, download=False, limit_train=cfg.limit_train, limit_test=cfg.limit_test)
        steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        steps = cfg.steps or steps_per_epoch
        vae = build_vae(data.event_shape, guide=ROW_GUIDES.get(name, "gaussian")).to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if name == "conventional":
            step = conventional_loop(vae, cfg, device)
        elif name == "pyro-example":
            vae = ExampleVAE(data.event_shape).to(device)
            step = pyro_example_loop(vae, data.train, device, cfg.batch_size)
        else:
            images = data.train.to(device)
            generator = torch.Generator(device=device).manual_seed(cfg.seed)
            batches = ResidentBatches(images, cfg.batch_size, generator)
            optimizer = make_optimizer(vae.parameters(), 1e-3)  # the floor and ours alike: the same update
            if name == "pytorch":
                step = pytorch_loop(vae, optimizer, batches)
            elif name == "pyro-svi":
                step = svi_loop(vae, batches)
            else:
                elbo = make_elbo("analytic" if name.startswith("ours-analytic") else "mc")
                if name == "ours-mc-compile":
                    vae.encoder.compile()
                    vae.decoder.compile()
                if name in ("ours-mc-bf16", "ours-mc-graphs", "ours-analytic-graphs") and device.type != "cuda":
                    raise ConfigError(f"{name} needs CUDA")
                graph = None
                if name.endswith("-graphs"):
                    from pyro_vae.training.graphs import GraphStep

                    graph = GraphStep(vae, elbo, optimizer)

                def step(n: int) -> None:
                    done = 0
                    while done < n:  # whole passes of the permutation, as training runs them
                        progress = run_epoch(
                            vae,
                            elbo,
                            optimizer,
                            batches,
                            max_steps=n - done,
                            bf16=name == "ours-mc-bf16",
                            graph=graph,
                        )
                        done += progress.batches

        step(cfg.warmup_steps)
        conn.send("ready")
        times = []
        while conn.recv() == "repeat":
            _sync(device)
            start = time.perf_counter()
            step(steps)
            _sync(device)
            times.append(time.perf_counter() - start)
            conn.send(times[-1])
        per_step = statistics.median(times) / steps
        vae.eval()
        recon, kl, _ = elbo_terms(vae, data.test.to(device), analytic_kl=True, seed=cfg.seed)
        neg_elbo = (kl - recon).double()
        conn.send(
            {
                "path": name,
                "steps_timed": steps,
                "repeat_seconds": times,
                "seconds_per_epoch": per_step * steps_per_epoch,
                "images_per_second": cfg.batch_size / per_step,
                "peak_memory_mb": _peak_memory_mb(device),
                "memory_kind": "CUDA max allocated" if device.type == "cuda" else "process peak RSS",
                "test_neg_elbo": neg_elbo.mean().item(),
                "test_neg_elbo_se": (neg_elbo.std() / math.sqrt(len(neg_elbo))).item(),
                "epochs_trained": (cfg.warmup_steps + len(times) * steps) / steps_per_epoch,
            }
        )
    except PyroVAEError as exc:  # a user error: the parent prints it as one line
        conn.send(f"error: {exc}")
    except BaseException as exc:  # report, so the parent fails with the reason instead of hanging
        conn.send(f"error: {type(exc).__name__}: {exc}")
        raise


def _run_eval(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Images per second of the batched IS estimator against one image at a time."""
    from pyro_vae.data import heldout_images
    from pyro_vae.evaluate import importance_log_likelihood, log_importance_weights
    from pyro_vae.models import build_vae
    from pyro_vae.training import resolve_device

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    pyro.set_rng_seed(cfg.seed)
    x, _ = heldout_images("mnist", cfg.data_dir, download=False, limit=max(cfg.eval_images, cfg.eval_loop_images))
    x = x.to(device)
    vae = build_vae(x.shape[1:]).to(device).eval()

    xb = x[: cfg.eval_images]
    importance_log_likelihood(vae, xb[:2], cfg.eval_k, seed=cfg.seed)  # warm-up
    _sync(device)
    start = time.perf_counter()
    importance_log_likelihood(vae, xb, cfg.eval_k, seed=cfg.seed)
    _sync(device)
    batched = time.perf_counter() - start

    # the straightforward loop: one image at a time, its K samples in one vectorised trace
    xl = x[: cfg.eval_loop_images]
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), pyro.validation_enabled(False):
        for i in range(len(xl)):
            log_w = log_importance_weights(vae, xl[i : i + 1], cfg.eval_k)
            (log_w.logsumexp(0) - math.log(cfg.eval_k)).item()
    _sync(device)
    loop = time.perf_counter() - start
    return {
        "k": cfg.eval_k,
        "batched_images": len(xb),
        "batched_seconds": batched,
        "batched_images_per_second": len(xb) / batched,
        "loop_images": len(xl),
        "loop_seconds": loop,
        "loop_images_per_second": len(xl) / loop,
        "speedup": (len(xb) / batched) / (len(xl) / loop),
    }


def _busy(seconds: float) -> None:
    """A competing job: single-thread matrix products until killed (or ``seconds`` pass)."""
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a)


def _start_load(n: int) -> list[Any]:
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_busy, args=(24 * 3600.0,), daemon=True) for _ in range(n)]
    for proc in procs:
        proc.start()
    return procs


def _stop_load(procs: list[Any]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join()


def _expect(message: Any, name: str) -> Any:
    if isinstance(message, str) and message.startswith("error:"):
        raise ConfigError(f"benchmark path {name} failed: {message[7:]}")
    return message


def _receive(conn: Any, proc: Any, name: str) -> Any:
    """The row worker's next message; a worker that died (killed, or ended by its runtime) is an error, not a
    wait that never ends."""
    while not conn.poll(1.0):
        if not proc.is_alive():
            raise PyroVAEError(f"benchmark path {name} died (exit code {proc.exitcode}) before it answered")
    return conn.recv()


def _in_child(fn, *args):
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise PyroVAEError(f"the benchmark's {fn.__name__.strip('_')} process died before it answered") from None


def _device_name(device: torch.device, threads: int | None = None) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")), platform.processor()
    )
    return f"CPU: {model}, {threads or torch.get_num_threads()} threads"


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def run_benchmark(cfg: BenchmarkConfig, progress: bool = True) -> dict[str, Any]:
    """Run every path and the evaluation timing; return the results as one JSON-ready dict."""
    from pyro_vae.training import resolve_device

    unknown = sorted(set(cfg.paths) - set(PATH_NOTES))
    if unknown:
        raise ConfigError(f"unknown benchmark paths {unknown}; choose from {', '.join(PATH_NOTES)}")
    device = resolve_device(cfg.device)
    from pyro_vae.data import DataOptions, load_source

    load_source("mnist", DataOptions(data_dir=cfg.data_dir, download=False))  # missing data: one line, here
    load = _start_load(cfg.load)
    try:
        result = _run_paths(cfg, progress)
    finally:
        _stop_load(load)
    result["device"] = _device_name(device, cfg.threads)
    return result


def _run_paths(cfg: BenchmarkConfig, progress: bool) -> dict[str, Any]:
    ctx = get_context("spawn")
    workers = []
    for name in cfg.paths:  # set up one at a time, so warm-ups do not compete
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_path_worker, args=(name, cfg, child))  # not daemonic: DataLoader workers
        proc.start()
        workers.append((name, proc, parent))
        _expect(_receive(parent, proc, name), name)
    round_times: list[dict[str, float]] = []
    for r in range(cfg.repeats):
        if progress:
            print(f"round {r + 1}/{cfg.repeats}: " + ", ".join(cfg.paths), flush=True)
        times = {}
        for name, proc, conn in workers:  # one repeat of every path, then the next round
            conn.send("repeat")
            times[name] = _expect(_receive(conn, proc, name), name)
        round_times.append(times)
    rows = []
    for name, proc, conn in workers:
        conn.send("finish")
        rows.append(_expect(_receive(conn, proc, name), name))
        proc.join()
    if progress:
        print("timing evaluation ...", flush=True)
    evaluation = _in_child(_run_eval, cfg)
    ratios = {}
    for ours in (p for p in cfg.paths if p.startswith("ours")):
        for ref in REFERENCES:
            if ref in cfg.paths:
                ratios[f"{ours}/{ref}"] = statistics.median(t[ours] / t[ref] for t in round_times)
    return {
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "config": dataclasses.asdict(cfg),
        "rows": rows,
        "ratios": ratios,
        "evaluation": evaluation,
    }


def format_results(result: dict[str, Any]) -> str:
    """The benchmark as a text table."""
    width = max([16, *(len(r["path"]) for r in result["rows"])])
    lines = [
        f"device: {result['device']}   torch {result['torch']}   pyro {result['pyro']}",
        f"batch {result['config']['batch_size']}, MLP 784-400-50, {result['config']['repeats']} interleaved repeats "
        "(medians; ratios are medians of per-round ratios)",
        "machine: "
        + (
            f"loaded: {n} competing single-thread process{'es' if n > 1 else ''} started by the benchmark"
            if (n := result["config"].get("load", 0))
            else "idle (no competing process started)"
        ),
        "",
        f"{'path':{width}s} {'img/s':>9s} {'s/epoch':>9s} {'peak MB':>9s} {'test -ELBO':>16s}  what",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['path']:{width}s} {r['images_per_second']:9.0f} {r['seconds_per_epoch']:9.2f} "
            f"{r['peak_memory_mb']:9.0f} {r['test_neg_elbo']:9.2f} ± {r['test_neg_elbo_se']:4.2f}  "
            f"{PATH_NOTES[r['path']]}"
        )
    lines.append("")
    ratio_width = max([28, *(len(k) for k in result["ratios"])])
    lines += [f"time ratio {k:{ratio_width}s} {v:.2f}" for k, v in result["ratios"].items()]
    if not result["ratios"]:  # e.g. --paths pytorch alone: nothing of ours beside a reference
        lines.append("time ratios: none (the rows include no `ours-*` row beside a reference row)")
    e = result["evaluation"]
    lines += [
        "",
        f"held-out IS, K={e['k']}: batched {e['batched_images_per_second']:.2f} img/s ({e['batched_images']} images), "
        f"per-image loop {e['loop_images_per_second']:.2f} img/s ({e['loop_images']} images), "
        f"speed-up {e['speedup']:.2f}x",
        f"test -ELBO after {result['rows'][0]['epochs_trained']:.2f} epochs each "
        "(closed-form KL, fixed test binarization)",
    ]
    return "\n".join(lines)


def save(result: dict[str, Any], path: str) -> None:
    """Write the benchmark's figures as JSON (atomically: a failed write leaves no half file)."""
    text = json.dumps(result, indent=2) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))
