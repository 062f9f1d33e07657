"""Checkpoints: written atomically, loaded without running code, and complete enough to resume
a run exactly.

A checkpoint holds only tensors and plain Python values (dicts, lists, numbers, strings), so it
loads with ``torch.load(weights_only=True)``: a crafted file cannot execute code. What it holds:
model, optimiser and Pyro param-store state (param-store constraints by name), the run's config,
the epoch and global step, the position inside an interrupted epoch, the RNG states (Python, NumPy,
torch CPU and CUDA, the data generator), and the best validation loss so far.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro.distributions import constraints

from pyro_vae.config import TrainConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.files import write_atomic

if TYPE_CHECKING:
    from pyro_vae.models import VAE

FORMAT_VERSION = 2
# format 1 (before resume): no RNG states or position; loads for evaluation, cannot resume
READABLE_FORMATS = (1, 2)
# settings that decide the shape of the model: a checkpoint only fits a run that agrees on them
MODEL_FIELDS = (
    "model",
    "inference",
    "latents",
    "batch_norm",
    "net",
    "z_dim",
    "hidden",
    "decoder_hidden",
    "conv_channels",
    "conv_strides",
    "conv_kernel",
    "conv_depth",
    "prior",
    "likelihood",
    "likelihood_scale",
    "mixture_components",
    "guide",
    "flows",
    "flow_hidden",
)


class CheckpointError(PyroVAEError):
    """A checkpoint is missing, unreadable, unsafe, or made for another model."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(state, f))


def _constraint_name(c: constraints.Constraint) -> str:
    for name in dir(constraints):
        if getattr(constraints, name) is c:
            return name
    raise CheckpointError(f"a Pyro param has the constraint {c!r}, which has no name a safe checkpoint can store")


def param_store_state(exclude: torch.nn.Module | None = None) -> dict[str, Any]:
    """Pyro's param store as tensors and constraint names (``get_state`` pickles constraint objects).

    :param exclude: a module whose own parameters are left out (a VAE registered for ``SVI``: its
        weights are saved once, in the model's ``state_dict``).
    """
    store = pyro.get_param_store()
    own = {id(p) for p in exclude.parameters()} if exclude is not None else set()
    names = [k for k, v in store._params.items() if id(v) not in own]
    return {
        "params": {k: store._params[k].detach().clone() for k in names},
        "constraints": {k: _constraint_name(store._constraints[k]) for k in names},
    }


def restore_param_store(state: dict[str, Any]) -> None:
    store = pyro.get_param_store()
    store.clear()
    for name, unconstrained in state["params"].items():
        constraint = getattr(constraints, state["constraints"][name])
        store.setdefault(name, torch.distributions.transform_to(constraint)(unconstrained), constraint)


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random state that decides what happens next."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": None if generator is None else generator.get_state(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state["data"] is not None:
        generator.set_state(state["data"])


def _tuples(x: Any) -> Any:
    # random.setstate wants the nested tuples that getstate gave
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def training_state(
    vae: VAE,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    step: int,
    *,
    generator: torch.Generator | None = None,
    position: dict[str, Any] | None = None,
    best: float | None = None,
    data: dict[str, Any] | None = None,
    custom: dict[str, str] | None = None,
    averaged: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds.

    :param epoch: epochs completed.
    :param position: inside an interrupted epoch: its permutation, the batches done and the loss so far.
    :param best: the best validation loss so far (for ``best.pt``).
    :param data: the run's data record (source, shape, fingerprints).
    :param custom: the parts passed as modules, ``{part: "module.Class"}``.
    :param averaged: with ``ema``: the model's state with the moving average of the weights, which
        evaluation loads (``model`` holds the raw weights that training resumes from).
    """
    return {
        "format_version": FORMAT_VERSION,
        "model": vae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "param_store": param_store_state(exclude=vae),
        "epoch": epoch,
        "step": step,
        "position": position,
        "best": best,
        "rng": rng_state(generator),
        "event_shape": list(vae.event_shape),
        "config": config.to_dict(),
        "data": data,
        "custom": custom or {},
        # M2's number of labels, which the model's shape depends on (None for the other models)
        "classes": getattr(vae, "classes", None),
        **({"averaged_model": averaged} if averaged is not None else {}),
    }


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely: tensors and plain values only, else a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"refused {path}: it holds Python objects that could run code when loaded ({reason[:160]}); "
                "load only checkpoints written by pyro_vae from a source you trust"
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt ({type(exc).__name__}: {reason[:160]}); "
            "use another checkpoint of the run (checkpoints/last.pt, best.pt or epochNNNN.pt)"
        ) from None
    missing = {"format_version", "model", "config", "event_shape"} - set(state if isinstance(state, dict) else {})
    if missing:
        raise CheckpointError(f"{path} is not a pyro_vae checkpoint (no {', '.join(sorted(missing))})")
    if (
        not isinstance(state["model"], dict)
        or not isinstance(state["config"], dict)
        or not isinstance(state.get("averaged_model", {}), dict)
    ):
        raise CheckpointError(f"{path} is damaged: its model or config entry is not a mapping")
    if state["format_version"] not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, this pyro_vae reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}"
        )
    return state


RESUME_KEYS = ("optimizer", "param_store", "epoch", "step", "position", "best", "rng")


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``state`` holds everything resuming needs."""
    if state["format_version"] < 2:
        raise CheckpointError(f"{path} predates resuming (format 1): it can be evaluated, not resumed")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is damaged: it lacks {', '.join(missing)}, which resuming needs; resume from another "
            "checkpoint of the run (copy checkpoints/epochNNNN.pt to checkpoints/last.pt)"
        )
    rng = state["rng"]
    if not isinstance(state["optimizer"], dict) or not isinstance(rng, dict) or not {"python", "torch"} <= set(rng):
        raise CheckpointError(f"{path} is damaged: its optimizer or RNG state is incomplete; use another checkpoint")


def checkpoint_config(state: dict[str, Any], path: str | Path) -> TrainConfig:
    """The settings a checkpoint was saved with."""
    return TrainConfig.from_dict(state["config"], source=str(path))


def check_compatible(saved: TrainConfig, config: TrainConfig, path: str | Path) -> None:
    """Raise a one-line :class:`CheckpointError` naming the first model setting in which the checkpoint's
    settings ``saved`` differ from the run's ``config``."""
    for name in MODEL_FIELDS:
        a, b = getattr(saved, name), getattr(config, name)
        if a != b:
            raise CheckpointError(
                f"checkpoint {path} was saved with {name}={a!r} but the run asks for {name}={b!r}; "
                "use the checkpoint's own settings or a checkpoint of this model"
            )


def check_belongs(
    state: dict[str, Any],
    saved: TrainConfig,
    config: TrainConfig,
    run_json: dict[str, Any],
    path: str | Path,
    run_dir: str | Path,
) -> None:
    """Refuse a checkpoint of another run: a different model, different custom parts or other data.

    :param saved: the checkpoint's settings; :param config: the run's (both parsed once by the caller).
    """
    try:
        check_compatible(saved, config, path)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} is not a checkpoint of {run_dir}: {exc}") from None
    if list(state["event_shape"]) != list((run_json.get("data") or {}).get("event_shape", state["event_shape"])):
        raise CheckpointError(f"{path} is not a checkpoint of {run_dir}: it models data of another shape")
    if (state.get("custom") or {}) != (run_json.get("custom") or {}):
        raise CheckpointError(f"{path} is not a checkpoint of {run_dir}: it was made with other custom parts")
    ours, theirs = run_json.get("data") or {}, state.get("data") or {}
    for key in ("train_fingerprint", "test_fingerprint"):
        if ours.get(key) and theirs.get(key) and ours[key] != theirs[key]:
            raise CheckpointError(f"{path} is not a checkpoint of {run_dir}: it was trained on other data")


def load_model_state(vae: VAE, state: dict[str, Any], path: str | Path, key: str = "model") -> None:
    """``load_state_dict`` with a one-line error naming missing, unexpected or mis-shaped entries.

    :param key: ``"model"`` (the raw weights) or ``"averaged_model"`` (their moving average, with ``ema``).
    """
    own = vae.state_dict()
    theirs = state[key]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in theirs and theirs[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else ""]
        parts.append(f"shape {shapes[0]}" if shapes else "")
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: {'; '.join(p for p in parts if p)}; "
            "it was made for another architecture or prior"
        )
    vae.load_state_dict(theirs)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The run's ``checkpoints/last.pt``, or else its newest epoch checkpoint."""
    folder = Path(run_dir, "checkpoints")
    if (folder / "last.pt").is_file():
        return folder / "last.pt"
    found = sorted(folder.glob("epoch*.pt"))
    if not found:
        raise CheckpointError(f"no checkpoint in {folder}; is {run_dir} a run folder of pyro-vae-train?")
    return found[-1]


def write_epoch_checkpoint(
    folder: Path, epoch: int, state: dict[str, Any], *, improved: bool, keep: int | None, main: bool = True
) -> None:
    """``epochNNNN.pt`` written atomically; ``last.pt`` and (when the selection loss improved)
    ``best.pt`` as atomic hard links to it; older epoch files pruned to ``keep``.

    :param main: whether this process writes (under torchrun every rank builds the state, rank 0 writes).
    """
    if not main:
        return
    path = folder / f"epoch{epoch:04d}.pt"
    save_checkpoint(path, state)
    link_atomic(path, folder / "last.pt")
    if improved:
        link_atomic(path, folder / "best.pt")
    if keep is not None:
        for old in sorted(folder.glob("epoch*.pt"))[:-keep]:
            old.unlink()  # best.pt and last.pt keep their own link to the data


def link_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to ``src`` by an atomic rename (a copy where hard links are not possible)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system: a second atomic write
        save_checkpoint(dst, torch.load(src, weights_only=True))
        return
    os.replace(tmp, dst)
