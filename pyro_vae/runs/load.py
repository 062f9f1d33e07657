"""Loading a run: its trained model (:func:`load_run`), or the model together with the held-out data it
must be scored on (:func:`load_run_and_data`). The run's settings are parsed once and passed on."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyro_vae.config import TrainConfig
from pyro_vae.data import load_source, prepare, split_of
from pyro_vae.errors import ConfigError
from pyro_vae.models import VAE, build_vae_from_config
from pyro_vae.runs.checkpoint import (
    check_belongs,
    checkpoint_config,
    latest_checkpoint,
    load_model_state,
    read_checkpoint,
    restore_param_store,
)
from pyro_vae.runs.folder import PARTS, RunError, check_same_data, fingerprint, missing_parts, read_run_json


def load_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    **parts: torch.nn.Module,
) -> tuple[VAE, TrainConfig, dict[str, Any]]:
    """Rebuild the trained VAE of a run folder, safely.

    :param run_dir: folder written by :func:`pyro_vae.train`.
    :param checkpoint: a particular checkpoint file; default ``checkpoints/last.pt``.
    :param device: where to put the model.
    :param parts: for a run trained with custom parts, the same modules again: ``prior=``,
        ``likelihood=``, ``encoder=``, ``decoder=`` (freshly built; their weights are loaded here).
    :returns: ``(vae, config, checkpoint_dict)``; the VAE is in eval mode.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise TypeError(f"load_run() got unknown parts {unknown}; the parts are {', '.join(PARTS)}")
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    state = read_checkpoint(path, device)
    config = checkpoint_config(state, path)
    return _model_of(state, config, path, run_dir, device, parts), config, state


def _model_of(
    state: dict[str, Any],
    config: TrainConfig,
    path: Path,
    run_dir: str | Path,
    device: str | torch.device,
    parts: dict[str, nn.Module],
) -> VAE:
    """The checkpoint's model (built from its own settings ``config``), on ``device``, in eval mode."""
    missing_parts(state.get("custom") or {}, parts, run_dir, "load_run")
    vae = build_vae_from_config(state["event_shape"], config, classes=state.get("classes"), **parts)
    # a run with `ema` is evaluated with its averaged weights, as its held-out losses and best.pt were
    load_model_state(vae, state, path, "averaged_model" if state.get("averaged_model") is not None else "model")
    restore_param_store(state["param_store"])
    return vae.to(device).eval()


@dataclass
class LoadedRun:
    """A trained run and its held-out data, prepared the way its likelihood needs.

    :param x: the split's data prepared for the run's likelihood (binarized with the run's seed for
        Bernoulli, [0, 1] or 8-bit values otherwise), float32, on the run's device.
    """

    vae: Any
    config: TrainConfig
    state: dict[str, Any]
    checkpoint: Path
    split: str
    x: torch.Tensor
    labels: torch.Tensor


def load_run_and_data(
    run_dir: str | Path,
    *,
    split: str = "test",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    data: Any = None,
    limit: int | None = None,
    **parts: nn.Module,
) -> LoadedRun:
    """Load a run's model and the held-out data it must be scored on, in one call: what evaluation
    and the notebooks use, so a run is never scored on data prepared for another likelihood.

    :param split: ``"test"`` (the run's held-out set, binarized once with its own seed where the
        likelihood is Bernoulli) or ``"train"`` (prepared once with the same seed).
    :param checkpoint: a checkpoint of this run (default its newest); one of another model or
        other data is refused.
    :param data_dir: where the data are now, if they moved (the fingerprints must still match).
    :param data: the :class:`pyro_vae.ImageData` a run trained on in-memory data needs back.
    :param limit: only the first ``limit`` points of the split.
    :param parts: the custom modules the run was trained with (``prior=...`` etc.).

    A run trained on in-memory images takes them back (a run of a named dataset finds its own):

    >>> import contextlib, io, tempfile, torch
    >>> from pyro_vae import ImageData, TrainConfig, load_run_and_data, train
    >>> images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    >>> labels = torch.arange(40) % 4
    >>> data = ImageData("noise", images[:32], labels[:32], (images[32:] > 127).float(), labels[32:])
    >>> out = tempfile.mkdtemp() + "/r"
    >>> config = TrainConfig(epochs=1, batch_size=16, z_dim=2, hidden=(8,), progress=False, out=out)
    >>> with contextlib.redirect_stdout(io.StringIO()):   # the epoch lines
    ...     result = train(config, data=data)
    >>> run = load_run_and_data(result.run_dir, data=data)
    >>> run.x.shape, run.labels.tolist(), run.state["epoch"]
    (torch.Size([8, 1, 8, 8]), [0, 1, 2, 3, 0, 1, 2, 3], 1)
    """
    if split not in ("test", "train", "valid"):
        raise ConfigError(f"unknown split {split!r}; choose test, train or valid")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"`limit` must be a positive number of images, got {limit}")
    saved = read_run_json(run_dir)
    config = TrainConfig.from_dict(saved, source=str(Path(run_dir, "config.json")))  # parsed once, passed on
    record = saved.get("data")
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    state = read_checkpoint(path, device)
    state_config = checkpoint_config(state, path)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise TypeError(f"load_run_and_data() got unknown parts {unknown}; the parts are {', '.join(PARTS)}")
    vae = _model_of(state, state_config, path, run_dir, device, parts)
    check_belongs(state, state_config, config, saved, path, run_dir)
    if record and record.get("source") == "memory":
        if data is None:
            raise RunError(
                f"{run_dir} was trained on in-memory data ({record.get('name')}, shape {record.get('event_shape')}); "
                "pass the same data back: load_run_and_data(run, data=...)"
            )
    if data is not None:
        where = "the data passed in"
        if split == "test":
            x, labels = data.test, data.test_labels
            check_same_data(record, fingerprint(x), "test", where, run_dir)
        else:
            check_same_data(record, fingerprint(data.train), "train", where, run_dir)
            g = torch.Generator().manual_seed(config.test_binarization_seed)
            x, labels = prepare(data.train, vae.data_kind, g, data.binary), data.train_labels
    else:
        options = config.data_options()
        if data_dir is not None:
            options = dc_replace(options, data_dir=str(Path(data_dir).resolve()))
        where = options.data_dir
        raw = load_source(config.dataset, options, config.patches)
        raw = dc_replace(
            raw, train=raw.train[: config.limit_train], train_labels=raw.train_labels[: config.limit_train]
        )
        if split == "train" and record:
            check_same_data(record, fingerprint(raw.train), "train", where, run_dir)
        x, labels = split_of(raw, split, vae.data_kind, config.test_binarization_seed)
        if split == "test":
            x, labels = x[: config.limit_test], labels[: config.limit_test]
            check_same_data(record, fingerprint(x), "test", where, run_dir)
    if limit is not None:
        x, labels = x[:limit], labels[:limit]
    vae.check_data(x, f"{split} images")
    return LoadedRun(vae, config, state, path, split, x.to(device), labels)
