"""Trained weights that ship with the package: for a recipe whose row is measured and whose model is small, the
model's weights (float32, nothing else) from the run that measured the row, checked by SHA-256 when loaded.

:func:`load_pretrained` gives the model; ``python -m pyro_vae evaluate --pretrained NAME`` scores it on the
recipe's held-out data with the recipe's protocol, so the table's number comes back with no training.
``index.json`` beside this module lists each file with its checksum, the run it came from and its figure.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.models import VAE, build_vae_from_config
from pyro_vae.recipes import get_recipe
from pyro_vae.runs.folder import RunError

WEIGHTS_DIR = Path(__file__).resolve().parent
INDEX = WEIGHTS_DIR / "index.json"


@dataclass(frozen=True)
class PretrainedModel:
    """One shipped model.

    :param name: the name to load it by (its recipe's).
    :param file: the weights file beside this module.
    :param sha256: the file's checksum; a file that differs is refused.
    :param event_shape: the shape of one data point.
    :param epoch: the training epoch the weights are from (the recipe's checkpoint choice).
    :param nll: the figure measured with these weights: ``{"k", "mean", "se", "num_points"}``, −log p(x) in nats.
    :param measured: when, on what and with which command it was measured.
    """

    name: str
    file: str
    sha256: str
    event_shape: tuple[int, ...]
    epoch: int
    nll: dict[str, Any]
    measured: str

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


@cache
def pretrained_models() -> dict[str, PretrainedModel]:
    """Every shipped model, by name."""
    entries = json.loads(INDEX.read_text())
    return {
        name: PretrainedModel(name=name, **{**e, "event_shape": tuple(e["event_shape"])})
        for name, e in sorted(entries.items())
    }


def _entry(name: str) -> PretrainedModel:
    models = pretrained_models()
    if name not in models:
        raise ConfigError(f"no shipped weights named {name!r}; choose one of {', '.join(models) or '(none)'}")
    return models[name]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_pretrained(name: str, device: str | torch.device = "cpu") -> VAE:
    """The shipped model ``name`` (a recipe's name), built from its recipe's settings, with the weights of the
    run that measured the recipe's row; in eval mode on ``device``.

    :raises ConfigError: no such name.
    :raises RunError: the weights file is missing or its checksum differs (a damaged install).

    >>> from pyro_vae import load_pretrained
    >>> vae = load_pretrained("vae-static-mnist")
    >>> tuple(vae.event_shape), vae.sample(2).shape
    ((1, 28, 28), torch.Size([2, 1, 28, 28]))
    """
    entry = _entry(name)
    if not entry.path.is_file():
        raise RunError(f"{entry.path} is missing; reinstall pyro_vae to get the shipped weights back")
    if file_sha256(entry.path) != entry.sha256:
        raise RunError(f"{entry.path} does not match its checksum (a damaged copy); reinstall pyro_vae")
    config = get_recipe(entry.name).config()
    vae = build_vae_from_config(entry.event_shape, config)
    state = torch.load(entry.path, map_location="cpu", weights_only=True)
    vae.load_state_dict(state)
    return vae.to(device).eval()


def write_pretrained(name: str, vae: VAE, *, epoch: int, nll: dict[str, Any], measured: str) -> PretrainedModel:
    """Ship ``vae``'s weights as ``name`` (a recipe's): the float32 state dict beside this module, and its entry
    in ``index.json``. For maintainers, after a recipe's row was measured (``scripts/ship_weights.py``)."""
    get_recipe(name)  # a recipe of that name must exist
    if not all(isinstance(nll.get(k), (int, float)) and math.isfinite(nll[k]) for k in ("mean", "se")):
        raise ConfigError(f"`nll` must hold the measured mean and se, got {nll}")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in vae.state_dict().items()}
    path = WEIGHTS_DIR / f"{name}.pt"
    torch.save(state, path)
    entries = json.loads(INDEX.read_text()) if INDEX.is_file() else {}
    entries[name] = {
        "file": path.name,
        "sha256": file_sha256(path),
        "event_shape": list(vae.event_shape),
        "epoch": epoch,
        "nll": nll,
        "measured": measured,
    }
    INDEX.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    pretrained_models.cache_clear()
    return pretrained_models()[name]


def evaluate_pretrained(
    name: str,
    *,
    data_dir: str | None,
    k: tuple[int, ...] | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    out: str | None = None,
    say: Callable[[str], Any] = print,
) -> dict:
    """Score the shipped model ``name`` on its recipe's held-out split with the recipe's K (or ``k``), print
    the table beside the figure measured when it was shipped, and add it to ``out`` if given.

    :returns: the result dict, as :func:`pyro_vae.evaluate.evaluate` gives it, with the shipped figure."""
    from pyro_vae.data import load_data
    from pyro_vae.evaluate import evaluate, format_table
    from pyro_vae.runs import results

    entry = _entry(name)
    recipe = get_recipe(name)
    if out is not None:
        results.check_results_file(Path(out))  # before the work, not after
    vae = load_pretrained(name, device)
    config = recipe.config()
    data = load_data(
        config.dataset,
        data_dir or config.data_dir,
        kind=vae.data_kind,
        download=False,
        test_binarization_seed=config.test_binarization_seed,
        limit_test=limit,
    )
    if recipe.split != "test":
        raise ConfigError(f"{name}'s protocol scores the {recipe.split} split; only test is built here")
    ks = tuple(k) if k else (recipe.k,)
    result = evaluate(vae, data.test.to(device), ks, seed=seed, batch_size=batch_size)
    result = {
        "pretrained": name,
        "checkpoint": entry.file,
        "epoch": entry.epoch,
        "split": "test",
        "limit": limit,
        "shipped": entry.nll,
        **result,
    }
    say(f"{name}: shipped weights (epoch {entry.epoch}), {len(data.test)} test images, {torch.device(device).type}")
    say(format_table(result))
    shipped = entry.nll
    say(
        f"measured when shipped: -log p(x) {shipped['mean']:.2f} ± {shipped['se']:.2f} nats, K={shipped['k']}, "
        f"{shipped['num_points']} test images ({entry.measured})"
    )
    if out is not None:
        results.record_results(Path(out), result)
        say(f"added to {out}")
    return result


__all__ = ["PretrainedModel", "evaluate_pretrained", "load_pretrained", "pretrained_models", "write_pretrained"]
