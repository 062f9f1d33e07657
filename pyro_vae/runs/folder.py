"""Run folders: where a run may be written, what it records about its data and parts, its
``config.json`` and its metrics file.

A run records what it was trained on in ``config.json`` under ``"data"``: the dataset (or
``"memory"`` for ``train(config, data=...)``), the absolute data folder, the shape, the data kind,
and SHA-256 fingerprints of the training images and of the prepared held-out set. Evaluation and
resume recompute the fingerprint of what they load and refuse other data with one line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError, DataError, PyroVAEError
from pyro_vae.files import write_atomic
from pyro_vae.models.build import build_vae_from_config

METRICS_FIELDS = ("epoch", "train_loss", "val_loss", "test_loss", "seconds", "checkpoint_seconds")
# columns that only some runs have (`model=m2`: the share of held-out images whose label q(y|x) gets right;
# `select_k`: the validation images' −log p(x), on the epochs it was estimated)
OPTIONAL_METRICS = ("val_accuracy", "test_accuracy", "val_nll")
# the parts a user may pass as modules instead of names
PARTS = ("encoder", "decoder", "prior", "likelihood", "posterior")


class RunError(PyroVAEError):
    """A run folder is missing, damaged, or does not match what is asked of it."""


# ---------------------------------------------------------------------------------------------
# where a run may be written


def check_out_dir(out: str | os.PathLike) -> Path:
    """Refuse an ``--out`` that cannot take a new run, without creating anything.

    A new run needs a folder that does not exist yet or is empty, whose nearest existing
    ancestor is a writable folder.
    """
    text = str(out)
    if not text.strip():
        raise ConfigError("`out` is empty; pass a folder name, or leave `out` out for runs/<name>-<time>")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"`out={path}` is a file, not a folder; pass a new folder name")
    if path.is_dir():
        if (path / "config.json").exists():
            raise ConfigError(f"{path} already holds a run (config.json); pass a new `out`, or --resume {path}")
        if any(path.iterdir()):
            raise ConfigError(
                f"`out={path}` is not empty; a new run needs a new or empty folder (its files would mix "
                "with or overwrite what is there); pass another `out`"
            )
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"`out={path}` lies below {parent}, which is a file; pass a folder elsewhere")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"`out={path}`: cannot write in {parent} (permission denied); pass a folder you can write")
    return path


def make_run_dir(out: str | os.PathLike) -> Path:
    """Create the run folder with ``checkpoints/`` and ``images/`` after :func:`check_out_dir`; if
    that fails, remove whatever this call created."""
    path = check_out_dir(out)
    created: list[Path] = []
    p = path
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        for d in reversed(created):  # outermost first
            d.mkdir()
        for sub in ("checkpoints", "images"):
            (path / sub).mkdir(exist_ok=True)
            created.insert(0, path / sub)
        fd, probe = tempfile.mkstemp(dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                pass
        raise ConfigError(f"cannot create run folder {path}: {exc.strerror or exc}; pass another `out`") from None
    return path


# what a run folder holds before its first checkpoint
_RUN_FILES = ("config.json", "metrics.csv", "learning_curve.png", "labelled.json")


def discard_unstarted_run(path: Path, existed: bool) -> None:
    """Remove a run folder that stopped before its first checkpoint (nothing to resume from): the files a
    run writes, and the folder itself unless it was there before. A folder with ``checkpoints/last.pt`` is
    left as it is, for ``--resume``."""
    import shutil

    if (path / "checkpoints" / "last.pt").exists():
        return
    for name in _RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for sub in ("checkpoints", "images"):
        shutil.rmtree(path / sub, ignore_errors=True)
    if not existed:
        try:
            path.rmdir()
        except OSError:
            pass  # something else was put there meanwhile: leave it


# ---------------------------------------------------------------------------------------------
# what a run was trained on


def fingerprint(t: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def data_record(data: Any, config: TrainConfig, from_memory: bool) -> dict[str, Any]:
    """What ``config.json`` says about the data: source, shape, kind and fingerprints."""
    record: dict[str, Any] = {
        "source": "memory" if from_memory else "dataset",
        "name": data.name,
        "event_shape": list(data.event_shape),
        "kind": data.kind,
        "train_size": len(data.train),
        "test_size": len(data.test),
        "train_fingerprint": fingerprint(data.train),
        "test_fingerprint": fingerprint(data.test),
    }
    if not from_memory:
        record["data_dir"] = str(Path(config.data_dir).resolve())
    return record


def check_same_data(saved: dict[str, Any] | None, fp: str, which: str, where: str, run: str | Path) -> None:
    """Refuse data whose fingerprint differs from the run's record (``which``: ``train``/``test``)."""
    if not saved:
        return  # runs from before data records: nothing to compare
    want = saved.get(f"{which}_fingerprint")
    if want is not None and want != fp:
        raise DataError(
            f"the {which} data loaded from {where} differ from what {run} was trained on "
            f"({saved.get('name')}, {saved.get(f'{which}_size')} images, fingerprint {want}; these have {fp}); "
            "point `data_dir` at the run's data, or pass the same data"
        )


def custom_parts(vae: nn.Module, config: TrainConfig) -> dict[str, str]:
    """The parts of ``vae`` that the names in ``config`` would not rebuild: ``{part: "module.Class"}``."""
    custom: dict[str, str] = {}
    names = {
        "encoder": config.net,
        "decoder": config.net,
        "prior": config.prior,
        "likelihood": config.likelihood,
        "posterior": config.guide,
    }
    named = dc_replace(
        config,
        net=config.net if config.net != "custom" else "mlp",
        prior=config.prior if config.prior != "custom" else "normal",
        likelihood=config.likelihood if config.likelihood != "custom" else "bernoulli",
        guide=config.guide if config.guide != "custom" else "gaussian",
    )
    try:
        with torch.device("meta"):
            reference = build_vae_from_config(vae.event_shape, named)  # type: ignore[arg-type]
    except Exception:  # names that cannot be built for this shape: every part is the user's
        reference = None
    for part in PARTS:
        mine = getattr(vae, part)
        ref = None if reference is None else getattr(reference, part)
        same = (
            names[part] != "custom"
            and ref is not None
            and type(mine) is type(ref)
            and {k: tuple(v.shape) for k, v in mine.state_dict().items()}
            == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        )
        if not same:
            custom[part] = f"{type(mine).__module__}.{type(mine).__qualname__}"
    return custom


def missing_parts(custom: dict[str, str], given: dict[str, nn.Module | None], run: str | Path, call: str) -> None:
    """One line naming the custom parts a run needs passed back in."""
    missing = [p for p in custom if given.get(p) is None]
    if missing:
        args = ", ".join(f"{p}=<your {custom[p]}>" for p in missing)
        raise RunError(
            f"{run} was trained with custom {', '.join(missing)} ({', '.join(custom[p] for p in missing)}), "
            f"which a run folder cannot rebuild; pass the same module(s) back in: {call}({run}, {args})"
        )


# ---------------------------------------------------------------------------------------------
# config.json and metrics.csv


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``config.json`` as a dict, with one-line errors for a missing or damaged file."""
    path = Path(run_dir, "config.json")
    if not Path(run_dir).is_dir():
        raise RunError(f"no run folder {run_dir}; pass a folder written by pyro-vae-train")
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run folder (no config.json); pass a folder of pyro-vae-train")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is damaged (not JSON: {exc}); restore it from a checkpoint's config") from None
    if not isinstance(saved, dict):
        raise RunError(f"{path} is damaged (a JSON {type(saved).__name__}, not an object of settings)")
    return saved


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The settings a run folder was trained with."""
    return TrainConfig.from_dict(read_run_json(run_dir), source=str(Path(run_dir, "config.json")))


def write_metrics(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """``metrics.csv``, replaced atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    fields = METRICS_FIELDS + tuple(k for k in OPTIONAL_METRICS if any(k in row for row in rows))
    writer.writerow(fields)
    for row in rows:
        values = [row.get(k, math.nan) for k in fields]
        writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in values])
    text = buf.getvalue()
    write_atomic(run_dir / "metrics.csv", lambda f: f.write(text.encode()))


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` (none if it is absent); a damaged file is a one-line :class:`RunError`."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            records = list(reader)
        if "epoch" not in fields:
            raise ValueError(f"header {fields}")
        for line, r in enumerate(records, start=2):
            row: dict[str, float] = {}
            for k in METRICS_FIELDS + tuple(k for k in OPTIONAL_METRICS if k in fields):
                v = r.get(k)
                if v is None:
                    raise ValueError(f"line {line} has no {k}")
                row[k] = int(v) if k == "epoch" else float(v) if v != "" else math.nan
            rows.append(row)
    except (ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is damaged ({exc}); restore it, or move it away to resume with a fresh log") from None
    return rows
