"""SVI training: ``train(config) -> TrainResult`` and ``resume(run_dir) -> TrainResult``.

The objective is Pyro's own ``Trace_ELBO`` (Monte-Carlo KL) or ``TraceMeanField_ELBO``
(closed-form KL where one exists), or the importance-weighted bound
(:class:`pyro_vae.objectives.IWAE_ELBO`), differentiated with autograd and stepped with
``torch.optim.Adam`` over the VAE's parameters, the pattern of Pyro's
``examples/svi_torch.py``. The loop adds no host-device synchronisation of its
own: the loss is summed on the device and read every ``log_every`` steps.

A run survives interruption: SIGINT/SIGTERM finish the current step and write
``checkpoints/last.pt``; :func:`resume` continues from it with every random state restored,
so the finished run is the same, to the last digit on the CPU, as one never interrupted.
A non-finite loss or gradient stops the run at the next check with the last good state saved.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from tqdm import tqdm

from pyro_vae.checkpoint import (
    check_compatible,
    check_resumable,
    latest_checkpoint,
    load_model_state,
    read_checkpoint,
    restore_param_store,
    restore_rng,
    rng_state,
    save_checkpoint,
    training_state,
)
from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, ResidentBatches, StreamedBatches, fixed, from_raw, load_source, prepare
from pyro_vae.errors import ConfigError, DataError, PyroVAEError
from pyro_vae.images import save_learning_curve, save_reconstructions, save_samples
from pyro_vae.model import VAE, build_vae_from_config
from pyro_vae.objectives import kl_weight, make_elbo
from pyro_vae.priors import has_closed_form_kl
from pyro_vae.resources import available_bytes, check_fits, training_bytes
from pyro_vae.runs import (
    RunError,
    check_out_dir,
    check_same_data,
    custom_parts,
    data_record,
    make_run_dir,
    missing_parts,
    read_metrics,
    read_run_json,
    write_metrics,
)


class Interrupted(PyroVAEError):
    """SIGINT or SIGTERM stopped the run after a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteLoss(PyroVAEError):
    """The loss or a gradient became NaN or infinite; the last good state was saved."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when torch sees a GPU, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no GPU; use --device cpu or --device auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown --device {name!r}; choose one of auto, cpu, cuda")
    return torch.device(name)


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


def describe_objective(vae: VAE, config: TrainConfig) -> str:
    """What the run optimises, e.g. "KL: analytic" or "KL: Monte-Carlo, prior has no closed form"."""
    if config.elbo == "iwae":
        text = f"objective: IWAE bound, K={config.particles} (KL inside the importance weights)"
    elif config.elbo == "mc":
        text = "KL: Monte-Carlo (Trace_ELBO)"
    elif has_closed_form_kl(vae.prior, config.z_dim):
        text = "KL: analytic"
    else:
        text = f"KL: Monte-Carlo, prior {config.prior!r} has no closed form"
    if config.beta != 1 or config.kl_schedule != "constant":
        text += f"; KL weight {config.kl_schedule} up to beta={config.beta:g}"
    return text


@dataclass
class TrainResult:
    """What :func:`train` and :func:`resume` return: the trained model, per-epoch metrics, the run folder."""

    vae: VAE
    config: TrainConfig
    metrics: list[dict[str, float]]
    run_dir: Path


def _default_out(config: TrainConfig) -> str:
    return f"runs/{config.dataset}-{config.net}-{config.elbo}-{datetime.now():%Y%m%d-%H%M%S}"


def check_image_data(data: ImageData) -> None:
    """Refuse data that cannot be trained on, with one line naming the problem and the fix."""
    for name, x in (("training", data.train), ("test", data.test)):
        if len(x) == 0:
            raise DataError(f"the {name} set is empty; check --limit-train/--limit-test and the data folder")
    if data.train.dtype != torch.uint8:
        raise DataError(
            f"training images must be uint8 intensities 0..255, got {data.train.dtype}; pass raw pixels and "
            "pyro_vae prepares them for the likelihood"
        )
    if data.train.dim() < 2:
        raise DataError(f"training images must be shaped (N, ...), got {tuple(data.train.shape)}")
    if data.test.shape[1:] != data.train.shape[1:]:
        raise DataError(
            f"test images are shaped {tuple(data.test.shape[1:])} but training images {tuple(data.train.shape[1:])}"
        )


@dataclass
class _Run:
    """The live state of a training run: what the loop reads and what checkpoints save."""

    config: TrainConfig
    vae: VAE
    elbo: Any
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    batches: ResidentBatches
    val: torch.Tensor | None
    test: torch.Tensor
    run_dir: Path
    data_record: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, str] = field(default_factory=dict)
    metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.config.epochs * len(self.batches)

    def weight(self, step: int) -> float:
        c = self.config
        return kl_weight(
            step,
            len(self.batches),
            self.total_steps,
            beta=c.beta,
            schedule=c.kl_schedule,
            warmup=c.warmup,
            warmup_unit=c.warmup_unit,
            cycles=c.cycles,
        )

    def state(self, epoch: int, step: int, position: dict | None = None, best: float | None = None) -> dict:
        return training_state(
            self.vae,
            self.optimizer,
            self.config,
            epoch,
            step,
            generator=self.generator,
            position=position,
            best=best,
            data=self.data_record,
            custom=self.custom,
        )


def _setup(config: TrainConfig, data: ImageData | None, vae: VAE | None = None, *, new_run: bool = True) -> _Run:
    """Everything before the first step: validate settings, output folder and data, load, build.
    Raises before anything is written, so a bad input never leaves a half-made run folder."""
    config.validate()
    if vae is None:
        named = [p for p, v in (("net", config.net), ("prior", config.prior), ("likelihood", config.likelihood))]
        custom_named = [p for p in named if getattr(config, p) == "custom"]
        if custom_named:
            raise ConfigError(
                f"--{custom_named[0]} custom needs your module: train(config, vae=build_vae(..., "
                f"{custom_named[0]}=<module>)), or name a built-in {custom_named[0]}"
            )
    device = resolve_device(config.device)
    if config.bf16 and device.type != "cuda":
        raise ConfigError("--bf16 autocast is for CUDA; drop it on the CPU")
    config = replace(config, device=device.type, out=config.out or _default_out(config))
    if new_run:
        check_out_dir(config.out)  # type: ignore[arg-type]
    from_memory = data is not None
    if data is None:
        config = replace(config, data_dir=str(Path(config.data_dir).resolve()))
        if config.cache_dir is not None:
            config = replace(config, cache_dir=str(Path(config.cache_dir).resolve()))
        raw = load_source(config.dataset, config.data_options(), config.patches)
        event_shape = raw.train.shape[1:]
    else:
        raw, event_shape = None, data.event_shape
    pyro.set_rng_seed(config.seed)
    if vae is None:
        points = config.batch_size * (config.particles if config.elbo == "iwae" else 1)
        with torch.device("meta"):
            sketch = build_vae_from_config(event_shape, config)
        hidden = " ".join(map(str, config.hidden))
        sizes = f"--z-dim {config.z_dim}, --hidden {hidden}, --batch-size {config.batch_size}"
        if config.elbo == "iwae":
            sizes += f", --particles {config.particles}"
        check_fits(
            training_bytes(sketch, event_shape, config.z_dim, points),
            device,
            f"a {config.net} VAE for {tuple(event_shape)} data with {sizes}",
            "lower them",
        )
        vae = build_vae_from_config(event_shape, config)
        custom: dict[str, str] = {}
    else:
        if not isinstance(vae, VAE):
            raise ConfigError(f"vae= must be a pyro_vae.VAE (build one with build_vae or VAE(...)), got {type(vae)}")
        if tuple(vae.event_shape) != tuple(event_shape):
            raise ConfigError(f"the VAE models data shaped {tuple(vae.event_shape)}, the data are {tuple(event_shape)}")
        custom = custom_parts(vae, config)
        config = replace(
            config,
            # one custom network: the other is still rebuilt from the name
            net="custom" if {"encoder", "decoder"} <= set(custom) else config.net,
            prior="custom" if "prior" in custom else config.prior,
            likelihood="custom" if "likelihood" in custom else config.likelihood,
        )
    kind = vae.data_kind
    if raw is not None:
        data = from_raw(config.dataset, raw, kind, config.test_binarization_seed, config.limit_train, config.limit_test)
    assert data is not None
    if data.kind != kind:
        raise ConfigError(
            f"the data were prepared as {data.kind!r} but --likelihood {config.likelihood} expects {kind!r}; "
            f"load them with load_data(..., kind={kind!r})"
        )
    check_image_data(data)
    train_images, val = data.train, None
    if data.valid is not None:  # the dataset's own validation split chooses best.pt
        if config.validation:
            raise ConfigError(
                f"{config.dataset} has its own validation split ({len(data.valid)} images) for best.pt; "
                "drop --validation"
            )
        val = fixed(data.valid, kind, config.test_binarization_seed + 1, data.binary)
    elif config.validation:
        if config.validation >= len(data.train):
            raise ConfigError(
                f"--validation {config.validation} leaves no training images out of {len(data.train)}; lower it"
            )
        train_images = data.train[: -config.validation]
        # held out once, binarized once with a seed of its own, like the test set
        g = torch.Generator().manual_seed(config.test_binarization_seed + 1)
        val = prepare(data.train[-config.validation :], kind, g, data.binary)
    if config.batch_size > len(train_images):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {len(train_images)} training images; lower it"
        )
    vae.check_data(data.test, "test images")
    vae.to(device)
    if config.compile:
        vae.encoder.compile()  # in place: state_dict keys stay as they are
        vae.decoder.compile()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    stream = _streamed(config.data_placement, train_images, device)
    if stream:
        batches: ResidentBatches = StreamedBatches(
            train_images, config.batch_size, generator, kind, data.binary, device=device
        )
    else:
        batches = ResidentBatches(
            torch.as_tensor(train_images).to(device), config.batch_size, generator, kind, data.binary
        )
    return _Run(
        config=config,
        vae=vae,
        elbo=make_elbo(config.elbo, config.particles),
        optimizer=torch.optim.Adam(vae.parameters(), lr=config.lr),
        generator=generator,
        batches=batches,
        val=None if val is None else val.to(device),
        test=data.test.to(device),
        run_dir=Path(config.out),  # type: ignore[arg-type]
        data_record=data_record(data, config, from_memory),
        custom=custom,
    )


# resident data may take at most this share of the device's free memory; the rest is for the model
RESIDENT_SHARE = 0.5


def _streamed(placement: str, images: torch.Tensor, device: torch.device) -> bool:
    """Whether the training images stream from host memory (``"auto"``: when they would take more
    than half of the device's free memory)."""
    if placement != "auto":
        return placement == "stream"
    if device.type == "cpu":
        return False  # host memory is the device's: a memory map is paged in as it is read
    return images.numel() * images.element_size() > RESIDENT_SHARE * available_bytes(device)


def train(config: TrainConfig, data: ImageData | None = None, vae: VAE | None = None) -> TrainResult:
    """Train a VAE with SVI and write the run folder.

    :param config: all settings; validated, with the data and the output folder, before anything
        is written.
    :param data: images to use instead of loading ``config.dataset`` (tests, notebooks, your own data).
        The run records their name, shape and fingerprints; resume and evaluation then need them back.
    :param vae: your own :class:`VAE` (e.g. ``build_vae(shape, prior=MyPrior(...))``) instead of one
        built from the config's names. Parts the names would not rebuild are recorded as custom in
        ``config.json``; :func:`pyro_vae.load_run` and :func:`resume` then ask for them back.
    :returns: the trained VAE, its config (device and folder resolved) and metrics.
    :raises Interrupted: SIGINT/SIGTERM stopped it; ``checkpoints/last.pt`` holds the state.
    :raises NonFiniteLoss: the loss went NaN/Inf; the last good state is saved.
    """
    run = _setup(config, data, vae)
    make_run_dir(run.run_dir)
    objective = describe_objective(run.vae, run.config)
    versions = {"torch": torch.__version__, "pyro": pyro.__version__}
    record = {
        **run.config.to_dict(),
        "objective": objective,
        "versions": versions,
        "data": run.data_record,
        "custom": run.custom,
    }
    (run.run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    write_metrics(run.run_dir, [])
    tqdm.write(objective)
    return _fit(run, epoch=0, step=0, position=None, best=None)


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    progress: bool | None = None,
    data: ImageData | None = None,
    **parts: torch.nn.Module,
) -> TrainResult:
    """Continue a run from ``checkpoints/last.pt`` (written each epoch and on SIGINT/SIGTERM) with
    everything that decides the future restored: model, optimiser and param store, the position in
    the epoch and the KL schedule, and every random state.

    :param epochs: train to this many epochs in all (default: the run's own ``epochs``).
    :param progress: override the run's progress-bar setting.
    :param data: the same images the run was started with, when it was not loaded by name; data
        whose fingerprint differs from the run's record are refused.
    :param parts: the custom modules the run was trained with (``prior=...`` etc.), freshly built.
    """
    saved = read_run_json(run_dir)
    config = TrainConfig.from_dict(saved, source=str(Path(run_dir, "config.json")))
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"--epochs must be a positive integer, got {epochs}")
    config = replace(
        config,
        epochs=config.epochs if epochs is None else epochs,
        progress=config.progress if progress is None else progress,
        out=str(run_dir),
    )
    record, custom = saved.get("data") or {}, saved.get("custom") or {}
    missing_parts(custom, parts, run_dir, "resume")
    if record.get("source") == "memory" and data is None:
        raise RunError(
            f"{run_dir} was trained on in-memory data ({record.get('name')}, shape {record.get('event_shape')}); "
            "pass the same data back: resume(run, data=...)"
        )
    metrics = read_metrics(Path(run_dir))  # a damaged log stops here, before any work
    path = latest_checkpoint(run_dir)
    state = read_checkpoint(path)
    check_resumable(state, path)
    check_compatible(state, config, path)
    if state["epoch"] >= config.epochs and state["position"] is None:
        raise ConfigError(
            f"{run_dir} has already trained {state['epoch']} of {config.epochs} epochs; "
            f"pass --epochs N with N > {state['epoch']} to go on"
        )
    if config.kl_schedule == "cyclical" and config.epochs != TrainConfig.from_dict(state["config"]).epochs:
        raise ConfigError("--epochs cannot change on resume with --kl-schedule cyclical: the cycles span the run")
    vae = None
    if custom:
        vae = build_vae_from_config(state["event_shape"], config, **parts)
    run = _setup(config, data, vae, new_run=False)
    where = "the data passed in" if data is not None else config.data_dir
    for which in ("train", "test"):
        check_same_data(record, run.data_record[f"{which}_fingerprint"], which, where, run_dir)
    # the CPU copy read above is enough: each load below copies onto the model's device
    load_model_state(run.vae, state, path)
    run.optimizer.load_state_dict(state["optimizer"])
    restore_param_store(state["param_store"])
    restore_rng(state["rng"], run.generator)
    run.metrics = [m for m in metrics if m["epoch"] <= state["epoch"]]
    write_metrics(run.run_dir, run.metrics)
    where = f"epoch {state['epoch'] + 1}" + (f", step {state['position']['batch'] + 1}" if state["position"] else "")
    tqdm.write(f"resuming {run_dir} from {path.name} at {where}")
    return _fit(run, epoch=state["epoch"], step=state["step"], position=state["position"], best=state["best"])


class _StopRequests:
    """SIGINT/SIGTERM set a flag that the loop reads after each step (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
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


def _fit(run: _Run, *, epoch: int, step: int, position: dict | None, best: float | None) -> TrainResult:
    config, vae = run.config, run.vae
    device = next(vae.parameters()).device
    shown = run.test[:8]  # the same test images in every epoch's picture
    with _StopRequests() as stop:
        while epoch < config.epochs:
            vae.train()
            if position is None:
                perm, start, carried, elapsed = run.batches.permutation(), 0, 0.0, 0.0
            else:
                perm, start = position["perm"].to(device), position["batch"]
                carried, elapsed = position["total"], position["seconds"]
                position = None
            bar = tqdm(
                total=len(perm),
                initial=min(start * config.batch_size, len(perm)),
                desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="img",
                unit_scale=True,
                disable=not config.progress,
                leave=False,
            )
            t0 = time.perf_counter()
            snapshot = _snapshot(run, start, step, carried)

            def on_check(done: int, at_step: int, total: float, start: int = start) -> None:
                nonlocal snapshot
                snapshot = _snapshot(run, start + done, at_step, total)

            progress = run_epoch(
                vae,
                run.elbo,
                run.optimizer,
                run.batches.batches(perm, start),
                step=step,
                weight=run.weight,
                bar=bar,
                log_every=config.log_every,
                bf16=config.bf16,
                clip=config.clip_grad,
                should_stop=stop.requested,
                on_check=on_check,
                total=torch.tensor(carried, device=device),
            )
            bar.close()
            seconds = elapsed + time.perf_counter() - t0
            if progress.nonfinite:
                _stop_nonfinite(run, epoch, perm, snapshot, best)
            step = progress.step
            done = start + progress.batches
            if progress.stopped and done < len(run.batches):
                at = {"perm": perm.cpu(), "batch": done, "total": progress.total.item(), "seconds": seconds}
                _interrupt(run, stop.signum, epoch, step, at, best)  # type: ignore[arg-type]
            epoch += 1
            train_loss = progress.total.item() / len(perm)
            vae.eval()
            val_loss = heldout_loss(vae, run.elbo, run.val, config.eval_batch_size) if run.val is not None else math.nan
            test_loss = heldout_loss(vae, run.elbo, run.test, config.eval_batch_size)
            selection = val_loss if run.val is not None else test_loss
            improved = best is None or selection < best
            best = selection if improved else best
            t_ckpt = time.perf_counter()
            _write_checkpoints(run, epoch, step, best, improved)
            checkpoint_seconds = time.perf_counter() - t_ckpt
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "test_loss": test_loss,
                "seconds": seconds,
                "checkpoint_seconds": checkpoint_seconds,
            }
            run.metrics.append(row)
            write_metrics(run.run_dir, run.metrics)
            _save_pictures(run, shown, epoch)
            val_text = f"  val {val_loss:.2f}" if run.val is not None else ""
            # 8-bit data (CIFAR-10's convention): bits per dimension, C x H x W of them
            bpd = ""
            if vae.data_kind == "byte":
                bpd = f" ({test_loss / (math.prod(vae.event_shape) * math.log(2)):.3f} bits/dim)"
            tqdm.write(
                f"epoch {epoch}: train {train_loss:.2f}{val_text}  test {test_loss:.2f} nats/image{bpd}  "
                f"{seconds:.1f}s ({len(perm) / seconds:.0f} img/s)"
            )
            if stop.requested() and epoch < config.epochs:
                _interrupt(run, stop.signum, epoch, step, None, best, saved=True)  # type: ignore[arg-type]
    return TrainResult(vae, config, run.metrics, run.run_dir)


def _save_pictures(run: _Run, shown: torch.Tensor, epoch: int) -> None:
    """Reconstructions and prior samples. Drawn with a forked RNG and a fixed seed: every epoch shows
    the same z, and the pictures never shift the training's random stream (exact resume)."""
    device = next(run.vae.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(run.config.seed)
        images = run.run_dir / "images"
        save_reconstructions(
            _unit(shown, run.vae.data_kind),
            run.vae.reconstruct(shown),
            images / f"reconstructions_epoch{epoch:04d}.png",
            epoch=epoch,
        )
        save_samples(run.vae.sample(64), images / f"samples_epoch{epoch:04d}.png", epoch=epoch)
    save_learning_curve(run.metrics, run.run_dir / "learning_curve.png")


def _unit(x: torch.Tensor, kind: str) -> torch.Tensor:
    # pictures show [0, 1]; 8-bit data are scaled down
    return x / 255 if kind == "byte" else x


def _interrupt(
    run: _Run, signum: int, epoch: int, step: int, position: dict | None, best: float | None, saved: bool = False
) -> None:
    last = run.run_dir / "checkpoints" / "last.pt"
    if not saved:
        save_checkpoint(last, run.state(epoch, step, position, best))
    name = signal.Signals(signum).name
    where = f"epoch {epoch + 1}, step {position['batch']}" if position else f"the end of epoch {epoch}"
    raise Interrupted(
        f"stopped by {name} at {where}; saved {last}; resume with: pyro-vae-train --resume {run.run_dir}", signum
    )


@dataclass
class _Snapshot:
    """The state at the last check that found everything finite."""

    batch: int
    step: int
    total: float
    model: dict
    optimizer: dict
    rng: dict


def _snapshot(run: _Run, batch: int, step: int, total: float) -> _Snapshot:
    return _Snapshot(
        batch,
        step,
        total,
        {k: v.detach().clone() for k, v in run.vae.state_dict().items()},
        copy.deepcopy(run.optimizer.state_dict()),
        copy.deepcopy(rng_state(run.generator)),
    )


def _restore(run: _Run, snap: _Snapshot) -> None:
    run.vae.load_state_dict(snap.model)
    run.optimizer.load_state_dict(snap.optimizer)
    restore_rng(snap.rng, run.generator)


def _stop_nonfinite(run: _Run, epoch: int, perm: torch.Tensor, snap: _Snapshot, best: float | None) -> None:
    """Go back to the last good check, replay step by step to find the first bad step, save the
    state just before it, name the term that went non-finite, and stop."""
    _restore(run, snap)
    batch, step, total = snap.batch, snap.step, snap.total
    x: torch.Tensor | None = None
    while batch < len(run.batches):
        before = _snapshot(run, batch, step, total)
        x = next(run.batches.batches(perm, batch))
        p = run_epoch(
            run.vae,
            run.elbo,
            run.optimizer,
            [x],
            step=step,
            weight=run.weight,
            clip=run.config.clip_grad,
            total=torch.tensor(total, device=x.device),
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
    save_checkpoint(last, run.state(epoch, step, position, best))
    what = _nonfinite_term(run, x, step) if x is not None else "the loss or a gradient (not reproduced on replay)"
    raise NonFiniteLoss(
        f"{what} became non-finite at epoch {epoch + 1}, step {batch + 1}; saved the last good state to {last}; "
        f"try a lower --lr (now {run.config.lr:g}), --clip-grad 100, or a KL warm-up (--kl-schedule linear --warmup 1)"
    )


@torch.no_grad()
def _nonfinite_term(run: _Run, x: torch.Tensor, step: int) -> str:
    """Which ELBO term is NaN/Inf for batch ``x`` with the same z draws as the failed step."""
    vae = run.vae
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


def _write_checkpoints(run: _Run, epoch: int, step: int, best: float | None, improved: bool) -> None:
    """``epochNNNN.pt`` written atomically; ``last.pt`` and (when the selection loss improved)
    ``best.pt`` as atomic hard links to it; older epoch files pruned to ``keep_checkpoints``."""
    folder = run.run_dir / "checkpoints"
    path = folder / f"epoch{epoch:04d}.pt"
    save_checkpoint(path, run.state(epoch, step, None, best))
    _link(path, folder / "last.pt")
    if improved:
        _link(path, folder / "best.pt")
    if run.config.keep_checkpoints is not None:
        for old in sorted(folder.glob("epoch*.pt"))[: -run.config.keep_checkpoints]:
            old.unlink()  # best.pt and last.pt keep their own link to the data


def _link(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system: a second atomic write
        save_checkpoint(dst, torch.load(src, weights_only=True))
        return
    os.replace(tmp, dst)


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
