"""Picking a run up again: its settings, checkpoint, data and random states, checked and restored."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, ShardedBatches
from pyro_vae.distributed import derive_seed
from pyro_vae.errors import ConfigError
from pyro_vae.models import build_vae_from_config
from pyro_vae.runs.checkpoint import (
    check_compatible,
    check_resumable,
    checkpoint_config,
    latest_checkpoint,
    load_model_state,
    read_checkpoint,
    restore_param_store,
    restore_rng,
)
from pyro_vae.runs.folder import RunError, check_same_data, missing_parts, read_metrics, read_run_json, write_metrics
from pyro_vae.training.graphs import make_capturable
from pyro_vae.training.setup import Run, setup_run


def prepare_resume(
    run_dir: str | Path,
    epochs: int | None,
    progress: bool | None,
    data: ImageData | None,
    parts: dict[str, torch.nn.Module],
    time_limit: float | str | None = "keep",
) -> tuple[Run, dict]:
    saved = read_run_json(run_dir)
    config = TrainConfig.from_dict(saved, source=str(Path(run_dir, "config.json")))
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"`epochs` must be a positive integer, got {epochs}")
    config = replace(
        config,
        epochs=config.epochs if epochs is None else epochs,
        progress=config.progress if progress is None else progress,
        time_limit=config.time_limit if time_limit == "keep" else time_limit,
        out=str(run_dir),
    )
    if config.time_limit is not None and (
        isinstance(config.time_limit, bool)
        or not isinstance(config.time_limit, (int, float))
        or not (math.isfinite(config.time_limit) and config.time_limit > 0)
    ):
        raise ConfigError(f"`time_limit` must be a finite number of minutes > 0, got {config.time_limit!r}")
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
    state_config = checkpoint_config(state, path)
    check_compatible(state_config, config, path)
    if state["epoch"] >= config.epochs and state["position"] is None:
        raise ConfigError(
            f"{run_dir} has already trained {state['epoch']} of {config.epochs} epochs; "
            f"pass `epochs=N` with N > {state['epoch']} to go on"
        )
    if config.kl_schedule == "cyclical" and config.epochs != state_config.epochs:
        raise ConfigError("`epochs` cannot change on resume with `kl_schedule=cyclical`: the cycles span the run")
    vae = None
    if custom:
        vae = build_vae_from_config(state["event_shape"], config, classes=state.get("classes"), **parts)
    run = setup_run(config, data, vae, new_run=False)
    where = "the data passed in" if data is not None else config.data_dir
    for which in ("train", "test"):
        check_same_data(record, run.data_record[f"{which}_fingerprint"], which, where, run_dir)
    # the CPU copy read above is enough: each load below copies onto the model's device
    load_model_state(run.vae, state, path)
    run.optimizer.load_state_dict(state["optimizer"])
    make_capturable(run.optimizer, config.cuda_graphs)
    restore_param_store(state["param_store"])
    restore_random(run, state)
    run.metrics = [m for m in metrics if m["epoch"] <= state["epoch"]]
    if run.world.main:
        write_metrics(run.run_dir, run.metrics)
        position = state["position"]
        where = f"epoch {state['epoch'] + 1}" + (f", step {position['batch'] + 1}" if position else "")
        tqdm.write(f"resuming {run_dir} from {path.name} at {where}")
    return run, state


def restore_random(run: Run, state: dict) -> None:
    """Every random state of the checkpoint, per rank under torchrun. Exact with the world size the run
    was saved with; with another, the data order and draws are fresh (and the run says so)."""
    ranks, size = state.get("rank_rng"), state.get("world_size", 1)
    if run.world.size == size:
        if ranks is None:
            restore_rng(state["rng"], run.generator)
        else:
            restore_rng(ranks[run.world.rank], run.generator)
            assert isinstance(run.batches, ShardedBatches)
            run.batches.order.set_state(state["order"])
        return
    if run.world.main:
        tqdm.write(
            f"note: the checkpoint was saved by {size} process(es), this job has {run.world.size}; the model and "
            "optimiser resume exactly, the data order and random draws start afresh"
        )
    seed = derive_seed(run.config.seed + state["step"], run.world.rank)
    torch.manual_seed(seed)
    run.generator.manual_seed(seed)
    if isinstance(run.batches, ShardedBatches):
        run.batches.order.manual_seed(run.config.seed + state["step"])
