"""SVI training: ``train(config) -> TrainResult``.

The objective is Pyro's own ``Trace_ELBO`` (Monte-Carlo KL) or ``TraceMeanField_ELBO``
(closed-form KL where one exists), or the importance-weighted bound
(:class:`pyro_vae.objectives.IWAE_ELBO`), differentiated with autograd and stepped with
``torch.optim.Adam`` over the VAE's parameters, the pattern of Pyro's
``examples/svi_torch.py``. The loop adds no host-device synchronisation of its
own: the loss is summed on the device and read every ``log_every`` steps.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.checkpoint import save_checkpoint, training_state
from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, ResidentBatches, from_raw, load_raw
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.images import save_reconstructions, save_samples
from pyro_vae.model import VAE, build_vae
from pyro_vae.objectives import kl_weight, make_elbo
from pyro_vae.priors import has_closed_form_kl

METRICS_FIELDS = ("epoch", "train_loss", "test_loss", "seconds")


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
    """What :func:`train` returns: the trained model, per-epoch metrics and the run folder."""

    vae: VAE
    config: TrainConfig
    metrics: list[dict[str, float]]
    run_dir: Path


def _default_out(config: TrainConfig) -> str:
    return f"runs/{config.dataset}-{config.net}-{config.elbo}-{datetime.now():%Y%m%d-%H%M%S}"


def _prepare_run_dir(out: str) -> Path:
    run_dir = Path(out)
    if (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir} already holds a run (config.json); pass a new --out folder")
    for sub in ("", "checkpoints", "images"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return run_dir


def train(config: TrainConfig, data: ImageData | None = None) -> TrainResult:
    """Train a VAE with SVI and write the run folder.

    :param config: all settings; validated first.
    :param data: images to use instead of loading ``config.dataset`` (tests, notebooks).
    :returns: the trained VAE, its config (device and folder resolved) and metrics.
    """
    config.validate()
    device = resolve_device(config.device)
    if config.bf16 and device.type != "cuda":
        raise ConfigError("--bf16 autocast is for CUDA; drop it on the CPU")
    config = replace(config, device=device.type, out=config.out or _default_out(config))
    raw = load_raw(config.dataset, config.data_dir, config.download) if data is None else None
    event_shape = raw[0].shape[1:] if raw is not None else data.event_shape  # type: ignore[union-attr]
    pyro.set_rng_seed(config.seed)
    vae = build_vae(
        event_shape, config.net, config.z_dim, config.hidden, config.prior, config.likelihood, config.likelihood_scale
    )
    kind = vae.likelihood.data_kind
    if raw is not None:
        data = from_raw(config.dataset, raw, kind, config.test_binarization_seed, config.limit_train, config.limit_test)
    assert data is not None
    if data.kind != kind:
        raise ConfigError(
            f"the data were prepared as {data.kind!r} but --likelihood {config.likelihood} expects {kind!r}; "
            f"load them with load_data(..., kind={kind!r})"
        )
    if config.batch_size > len(data.train):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {len(data.train)} training images; lower it"
        )
    vae.likelihood.check_data(data.test, "test images")
    data = data.to(device)
    vae.to(device)

    run_dir = _prepare_run_dir(config.out)
    objective = describe_objective(vae, config)
    versions = {"torch": torch.__version__, "pyro": pyro.__version__}
    (run_dir / "config.json").write_text(
        json.dumps({**config.to_dict(), "objective": objective, "versions": versions}, indent=2) + "\n"
    )
    tqdm.write(objective)
    elbo = make_elbo(config.elbo, config.particles)
    if config.compile:
        vae.encoder.compile()  # in place: state_dict keys stay as they are
        vae.decoder.compile()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batches = ResidentBatches(data.train, config.batch_size, generator, kind)
    total_steps = config.epochs * len(batches)
    # a fixed handful of test images, so every epoch's picture shows the same digits
    shown = data.test[:8]

    metrics: list[dict[str, float]] = []
    step = 0
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerow(METRICS_FIELDS)

    def weight(s: int) -> float:
        return kl_weight(
            s,
            len(batches),
            total_steps,
            beta=config.beta,
            schedule=config.kl_schedule,
            warmup=config.warmup,
            warmup_unit=config.warmup_unit,
            cycles=config.cycles,
        )

    for epoch in range(1, config.epochs + 1):
        vae.train()
        start = time.perf_counter()
        bar = tqdm(
            total=len(data.train),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="img",
            unit_scale=True,
            disable=not config.progress,
            leave=False,
        )
        total, step = run_epoch(
            vae,
            elbo,
            optimizer,
            batches,
            step=step,
            weight=weight,
            bar=bar,
            log_every=config.log_every,
            bf16=config.bf16,
        )
        train_loss = total.item() / len(data.train)
        seconds = time.perf_counter() - start
        bar.close()

        vae.eval()
        test_loss = heldout_loss(vae, elbo, data.test, config.eval_batch_size)
        if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
            raise PyroVAEError(
                f"loss became non-finite in epoch {epoch} (train {train_loss}, test {test_loss}); "
                f"lower --lr (now {config.lr}); the last good checkpoint is in {run_dir / 'checkpoints'}"
            )
        row = {"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss, "seconds": seconds}
        metrics.append(row)
        with open(run_dir / "metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow([row[k] for k in METRICS_FIELDS])
        _write_epoch_files(vae, optimizer, config, run_dir, epoch, step, shown)
        tqdm.write(
            f"epoch {epoch}: train {train_loss:.2f}  test {test_loss:.2f} nats/image  "
            f"{seconds:.1f}s ({len(data.train) / seconds:.0f} img/s)"
        )
    return TrainResult(vae, config, metrics, run_dir)


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
) -> tuple[torch.Tensor, int]:
    """SVI steps over ``batches``: the training hot path, shared by :func:`train` and the benchmark.

    Pyro's per-step distribution checks are off inside: the data were checked once up front, and
    each check costs ~20% of a CPU step and a device sync on CUDA. The loss is summed on the
    device; with a progress ``bar`` it is read back every ``log_every`` steps, else never.

    :param weight: the KL weight for a global step number (default 1).
    :param max_steps: stop after this many steps (benchmarks).
    :param bf16: CUDA autocast to bfloat16 for the networks; the densities stay float32.
    :returns: ``(summed loss, global step after the last one)``.
    """
    device = next(vae.parameters()).device
    total = torch.zeros((), device=device)
    seen_at_log, total_at_log = 0, 0.0
    with pyro.validation_enabled(False), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for i, x in enumerate(batches, 1):
            vae.kl_weight = 1.0 if weight is None else weight(step)
            loss = elbo.differentiable_loss(vae.model, vae.guide, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            step += 1
            if bar is not None and not bar.disable:
                bar.update(len(x))
                if i % log_every == 0:
                    now = total.item()  # the only sync in the loop, once per log interval
                    bar.set_postfix(loss=f"{(now - total_at_log) / (bar.n - seen_at_log):.2f}")
                    seen_at_log, total_at_log = bar.n, now
            if max_steps is not None and i >= max_steps:
                break
    return total, step


def _write_epoch_files(
    vae: VAE,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    run_dir: Path,
    epoch: int,
    step: int,
    shown: torch.Tensor,
) -> None:
    ckpt_dir = run_dir / "checkpoints"
    save_checkpoint(ckpt_dir / f"epoch{epoch:04d}.pt", training_state(vae, optimizer, config, epoch, step))
    if config.keep_checkpoints is not None:
        for old in sorted(ckpt_dir.glob("epoch*.pt"))[: -config.keep_checkpoints]:
            old.unlink()
    save_reconstructions(shown, vae.reconstruct(shown), run_dir / "images" / f"reconstructions_epoch{epoch:04d}.png")
    save_samples(vae.sample(64), run_dir / "images" / f"samples_epoch{epoch:04d}.png")
