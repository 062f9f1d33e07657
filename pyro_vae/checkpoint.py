"""Checkpoints: written atomically, and loadable back into a ready VAE."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.config import TrainConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.model import VAE, build_vae

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename, so an
    interrupted write never replaces a good checkpoint with a broken one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def training_state(
    vae: VAE, optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int, step: int
) -> dict[str, Any]:
    """Everything a checkpoint holds: model, optimiser and Pyro param-store state, position, config."""
    return {
        "format_version": FORMAT_VERSION,
        "model": vae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "param_store": pyro.get_param_store().get_state(),
        "epoch": epoch,
        "step": step,
        "event_shape": list(vae.event_shape),
        "config": config.to_dict(),
    }


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest epoch checkpoint of a run folder."""
    found = sorted(Path(run_dir, "checkpoints").glob("epoch*.pt"))
    if not found:
        raise PyroVAEError(f"no checkpoint in {Path(run_dir, 'checkpoints')}; is {run_dir} a run folder of train.py?")
    return found[-1]


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[VAE, TrainConfig, dict[str, Any]]:
    """Rebuild the trained VAE of a run folder.

    :param run_dir: folder written by :func:`pyro_vae.train`.
    :param checkpoint: a particular checkpoint file; default the newest.
    :param device: where to put the model.
    :returns: ``(vae, config, checkpoint_dict)``; the VAE is in eval mode.
    """
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise PyroVAEError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    config = TrainConfig.from_dict(state["config"])
    vae = build_vae(
        state["event_shape"],
        config.net,
        config.z_dim,
        config.hidden,
        config.prior,
        config.likelihood,
        config.likelihood_scale,
    )
    vae.load_state_dict(state["model"])
    pyro.get_param_store().set_state(state["param_store"])
    return vae.to(device).eval(), config, state
