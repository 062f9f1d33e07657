"""Running a training job: ``train`` and ``resume``, the epoch loop with its checkpoints, pictures,
clean stops and the non-finite guard."""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from tqdm import tqdm

from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData
from pyro_vae.distributed import (
    agreed,
    first_given,
    gather_objects,
    is_collective_failure,
    lost_contact,
)
from pyro_vae.errors import PyroVAEError
from pyro_vae.images import save_learning_curve, save_reconstructions, save_samples
from pyro_vae.models import VAE
from pyro_vae.resources import SharedCpuWatch
from pyro_vae.runs.checkpoint import (
    save_checkpoint,
    write_epoch_checkpoint,
)
from pyro_vae.runs.folder import (
    discard_unstarted_run,
    make_run_dir,
    write_metrics,
)
from pyro_vae.training.average import averaged
from pyro_vae.training.graphs import GraphStep
from pyro_vae.training.guard import StopRequests, snapshot, stop_nonfinite
from pyro_vae.training.labels import labelled_heldout_loss, save_labelled
from pyro_vae.training.loop import ELBOLoss, heldout_loss, run_epoch
from pyro_vae.training.resume import prepare_resume
from pyro_vae.training.setup import Run, describe_objective, few_steps_note, late_milestones_note, setup_run


class Interrupted(PyroVAEError):
    """SIGINT or SIGTERM stopped the run after a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class TrainResult:
    """What :func:`train` and :func:`resume` return: the trained model, per-epoch metrics, the run folder."""

    vae: VAE
    config: TrainConfig
    metrics: list[dict[str, float]]
    run_dir: Path


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

    A run on images of your own (uint8 ``(N, C, H, W)``; the test set prepared for the likelihood):

    >>> import tempfile, torch
    >>> from pyro_vae import ImageData, TrainConfig, train
    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    >>> labels = torch.zeros(64, dtype=torch.long)
    >>> data = ImageData("noise", images[:48], labels[:48], (images[48:] > 127).float(), labels[48:])
    >>> out = tempfile.mkdtemp() + "/run"
    >>> result = train(TrainConfig(epochs=2, batch_size=16, z_dim=2, hidden=(8,), progress=False, out=out), data=data)
    ... # doctest: +ELLIPSIS
    KL: ...
    >>> [row["epoch"] for row in result.metrics]
    [1, 2]
    >>> sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    ['best.pt', 'epoch0001.pt', 'epoch0002.pt', 'last.pt']
    """
    with agreed("the run"):  # under torchrun: a rank that refuses stops every rank, with its own message
        run = setup_run(config, data, vae)
    objective = describe_objective(run.vae, run.config)
    existed = run.run_dir.exists()
    try:
        with agreed("to create the run folder"):
            if run.world.main:
                make_run_dir(run.run_dir)
                versions = {"torch": torch.__version__, "pyro": pyro.__version__}
                record = {
                    **run.config.to_dict(),
                    "objective": objective,
                    "versions": versions,
                    "data": run.data_record,
                    "custom": run.custom,
                    "world_size": run.world.size,
                }
                (run.run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
                if run.labelled_index is not None:
                    save_labelled(run.run_dir, run.labelled_index, run.labelled.labels)
                write_metrics(run.run_dir, [])
                tqdm.write(objective + (f"; {run.world.size} processes (torchrun)" if run.world.distributed else ""))
                for note in (
                    few_steps_note(run.total_steps, len(run.batches), run.config.epochs),
                    late_milestones_note(run.config.lr_milestones, run.config.epochs),
                ):
                    if note:
                        tqdm.write(note)
        return _fit(run, epoch=0, step=0, position=None, best=None)
    except BaseException:
        if run.world.main:  # stopped before its first checkpoint (a closed pipe, say): leave no half-made folder
            discard_unstarted_run(run.run_dir, existed)
        raise


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    progress: bool | None = None,
    time_limit: float | str | None = "keep",
    data: ImageData | None = None,
    **parts: torch.nn.Module,
) -> TrainResult:
    """Continue a run from ``checkpoints/last.pt`` (written each epoch and on SIGINT/SIGTERM) with
    everything that decides the future restored: model, optimiser and param store, the position in
    the epoch and the KL schedule, and every random state.

    :param epochs: train to this many epochs in all (default: the run's own ``epochs``).
    :param progress: override the run's progress-bar setting.
    :param time_limit: minutes this continuation may train (``None``: no limit; default ``"keep"``,
        the run's own ``time_limit``, counted afresh from the resume).
    :param data: the same images the run was started with, when it was not loaded by name; data
        whose fingerprint differs from the run's record are refused.
    :param parts: the custom modules the run was trained with (``prior=...`` etc.), freshly built.
    """
    with agreed("to resume"):
        run, state = prepare_resume(run_dir, epochs, progress, data, parts, time_limit)
    return _fit(run, epoch=state["epoch"], step=state["step"], position=state["position"], best=state["best"])


def _fit(run: Run, *, epoch: int, step: int, position: dict | None, best: float | None) -> TrainResult:
    if not run.world.distributed:
        run.objective = run.labelled  # M2's mixed step, else None: the ELBO itself
        return _epochs(run, epoch=epoch, step=step, position=position, best=best)
    if run.objective is None:
        # DDP over the ELBO as a module: its construction broadcasts rank 0's parameters and buffers, its
        # backward hooks average the gradients over the ranks, bucketed and overlapped with the backward pass
        device = next(run.vae.parameters()).device
        run.objective = torch.nn.parallel.DistributedDataParallel(
            run.labelled or ELBOLoss(run.vae, run.elbo), device_ids=[device.index] if device.type == "cuda" else None
        )
    try:
        return _epochs(run, epoch=epoch, step=step, position=position, best=best)
    except RuntimeError as exc:
        if not is_collective_failure(exc):
            raise
        last = run.run_dir / "checkpoints" / "last.pt"
        raise lost_contact(exc, str(last) if last.exists() else None) from None


def _epochs(run: Run, *, epoch: int, step: int, position: dict | None, best: float | None) -> TrainResult:
    config, vae, main = run.config, run.vae, run.world.main
    device = next(vae.parameters()).device
    shown = run.test[:8]  # the same test images in every epoch's picture
    # the loss is summed over each rank's share; DDP averages the gradients over the ranks, so scaling by
    # their number gives every rank the gradient of the sum over the global batch, as one process would
    # compute it: Adam then takes the same step (and --clip-grad clips the same norm)
    grad_scale = float(run.world.size)
    graph = None
    if config.cuda_graphs:
        graph = GraphStep(vae, run.elbo, run.optimizer, clip=config.clip_grad, bf16=config.bf16, say=tqdm.write)
    started = time.perf_counter()  # for --time-limit; rank 0's clock decides
    # on a CPU shared with other jobs, say once (after the first epoch) that fewer threads would be faster
    watch = SharedCpuWatch() if device.type == "cpu" and not run.world.distributed else None
    with StopRequests() as stop:
        while epoch < config.epochs:
            vae.train()
            for group in run.optimizer.param_groups:  # --lr-milestones: the step size is a function of the epoch
                group["lr"] = config.lr_at(epoch)
            if position is None:
                perm, start, carried, elapsed = run.batches.permutation(), 0, 0.0, 0.0
            else:
                perm, start = position["perm"].to(device), position["batch"]
                carried, elapsed = position["total"], position["seconds"]
                # each rank goes on from its own part of the sum, so the epoch's float32 additions come in the
                # order of a run never stopped; an older checkpoint has the sum alone, on rank 0
                ranks = position.get("rank_totals")
                carried = ranks[run.world.rank] if ranks and len(ranks) == run.world.size else carried if main else 0.0
                position = None
            bar = tqdm(
                total=len(perm),
                initial=min(start * config.batch_size, len(perm)),
                desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="img",
                unit_scale=True,
                disable=not (config.progress and main),
                leave=False,
            )
            t0 = time.perf_counter()
            if run.labelled is not None:  # its labelled batches follow the global step
                run.labelled.step = step
            snap = snapshot(run, start, step, carried)

            def on_check(done: int, at_step: int, total: float, start: int = start) -> None:
                nonlocal snap
                snap = snapshot(run, start + done, at_step, total)

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
                objective=run.objective,
                grad_scale=grad_scale,
                graph=graph,
            )
            bar.close()
            seconds = elapsed + time.perf_counter() - t0
            if progress.nonfinite:
                stop_nonfinite(run, epoch, perm, snap, best)
            step = progress.step
            done = start + progress.batches
            if progress.stopped and done < len(run.batches):
                at = {"perm": perm.cpu(), "batch": done, "total": progress.total.item(), "seconds": seconds}
                if run.world.distributed:  # a collective: every rank's own part of the sum, for an exact resume
                    at["rank_totals"] = gather_objects(float(progress.own.item()))
                _interrupt(run, first_given(stop.signum), epoch, step, at, best)
            epoch += 1
            train_loss = progress.total.item() / len(perm)
            vae.eval()
            with averaged(run.optimizer if config.ema else None):  # --ema: every held-out figure is the average's
                val_loss, test_loss = _heldout_losses(run)
                selection = val_loss if run.val is not None else test_loss
                scores = _accuracies(run)
                if scores:  # M2: best.pt is the epoch whose classifier labels the validation images best
                    selection = 1.0 - scores["val_accuracy"]
                if config.select_k is not None:  # best.pt by −log p(x), estimated every few epochs
                    selection = scores["val_nll"] = math.nan
                    if epoch % config.select_every == 0 or epoch == config.epochs:
                        selection = scores["val_nll"] = _validation_nll(run)
            improved = not math.isnan(selection) and (best is None or selection < best)
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
                **scores,
            }
            run.metrics.append(row)
            if main:
                write_metrics(run.run_dir, run.metrics)
                with averaged(run.optimizer if config.ema else None):
                    _save_pictures(run, shown, epoch)
            val_text = f"  val {val_loss:.2f}" if run.val is not None else ""
            if "val_accuracy" in scores:
                val_text += f"  accuracy val {scores['val_accuracy']:.4f} test {scores['test_accuracy']:.4f}"
            if not math.isnan(scores.get("val_nll", math.nan)):
                val_text += f" (-log p(x) {scores['val_nll']:.2f}, K={config.select_k})"
            # 8-bit data (CIFAR-10's convention): bits per dimension, C x H x W of them
            bpd = ""
            if vae.data_kind == "byte":
                bpd = f" ({test_loss / (math.prod(vae.event_shape) * math.log(2)):.3f} bits/dim)"
            _say(
                run,
                f"epoch {epoch}: train {train_loss:.2f}{val_text}  test {test_loss:.2f} nats/image{bpd}  "
                f"{seconds:.1f}s ({len(perm) / seconds:.0f} img/s)",
            )
            if watch is not None and (note := watch.note(torch.get_num_threads(), f"epoch {epoch}")):
                _say(run, note)
            watch = None
            # under torchrun a signal may have reached some ranks only: they decide together
            if config.time_limit is not None and first_given(time.perf_counter() - started) > 60 * config.time_limit:
                _say(run, f"time limit of {config.time_limit:g} minutes reached after epoch {epoch}")
                break
            signum = first_given(stop.signum)
            if signum is not None and epoch < config.epochs:
                _interrupt(run, signum, epoch, step, None, best, saved=True)
    return TrainResult(vae, config, run.metrics, run.run_dir)


def _heldout_losses(run: Run) -> tuple[float, float]:
    """The validation (NaN without one) and test loss per image; a conditional VAE's given the images' labels."""
    vae, elbo, size = run.vae, run.heldout_elbo, run.config.eval_batch_size
    if run.config.model == "cvae":
        val = math.nan if run.val is None else labelled_heldout_loss(vae, elbo, run.val, run.val_labels, size)
        return val, labelled_heldout_loss(vae, elbo, run.test, run.test_labels, size)
    val = math.nan if run.val is None else heldout_loss(vae, elbo, run.val, size)
    return val, heldout_loss(vae, elbo, run.test, size)


def _accuracies(run: Run) -> dict[str, float]:
    """M2: the share of validation and test images whose most probable label under q(y|x) is right."""
    if run.config.model != "m2":
        return {}
    assert run.val is not None and run.val_labels is not None and run.test_labels is not None
    size, out = run.config.eval_batch_size, {}
    for name, x, y in (("val", run.val, run.val_labels), ("test", run.test, run.test_labels)):
        right = sum(int((run.vae.classify(x[i : i + size]) == y[i : i + size]).sum()) for i in range(0, len(x), size))
        out[f"{name}_accuracy"] = right / len(x)
    return out


def _validation_nll(run: Run) -> float:
    """−log p(x) over the validation images, K = ``select_k`` importance samples, seeded by the run's seed and
    drawn in a forked RNG: the same draws every epoch, and the training's random stream untouched."""
    from pyro_vae.evaluate.estimators import importance_log_likelihood

    assert run.val is not None and run.config.select_k is not None
    k = run.config.select_k
    ll = importance_log_likelihood(run.vae, run.val, [k], batch_size=100, seed=run.config.seed)[k]
    return -ll.mean().item()


def _say(run: Run, text: str) -> None:
    if run.world.main:
        tqdm.write(text)


def _save_pictures(run: Run, shown: torch.Tensor, epoch: int) -> None:
    """Reconstructions and prior samples. Drawn with a forked RNG and a fixed seed: every epoch shows
    the same z, and the pictures never shift the training's random stream (exact resume)."""
    device = next(run.vae.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(run.config.seed)
        images = run.run_dir / "images"
        labels = () if run.config.model != "cvae" else (run.test_labels[: len(shown)],)  # x given its label
        save_reconstructions(
            _unit(shown, run.vae.data_kind),
            run.vae.reconstruct(shown, *labels),
            images / f"reconstructions_epoch{epoch:04d}.png",
            epoch=epoch,
            pictures=run.vae.pictures,
        )
        save_samples(
            run.vae.sample(64), images / f"samples_epoch{epoch:04d}.png", epoch=epoch, pictures=run.vae.pictures
        )
    save_learning_curve(run.metrics, run.run_dir / "learning_curve.png")


def _unit(x: torch.Tensor, kind: str) -> torch.Tensor:
    # pictures show [0, 1]; 8-bit data are scaled down
    return x / 255 if kind == "byte" else x


def _interrupt(
    run: Run, signum: int, epoch: int, step: int, position: dict | None, best: float | None, saved: bool = False
) -> None:
    last = run.run_dir / "checkpoints" / "last.pt"
    if not saved:
        _save(run, last, run.state(epoch, step, position, best))
    name = signal.Signals(signum).name
    where = f"epoch {epoch + 1}, step {position['batch']}" if position else f"the end of epoch {epoch}"
    raise Interrupted(
        f"stopped by {name} at {where}; saved {last}; resume with: pyro-vae-train --resume {run.run_dir}", signum
    )


def _write_checkpoints(run: Run, epoch: int, step: int, best: float | None, improved: bool) -> None:
    # every rank builds the state (a collective under torchrun); rank 0 writes it
    state = run.state(epoch, step, None, best)
    folder = run.run_dir / "checkpoints"
    write_epoch_checkpoint(
        folder, epoch, state, improved=improved, keep=run.config.keep_checkpoints, main=run.world.main
    )


def _save(run: Run, path: Path, state: dict) -> None:
    if run.world.main:
        save_checkpoint(path, state)
