"""Recipes: named settings files, one per published set-up (or model family), shipped with the package.

Each ``<name>.json`` beside this module is a ``--config`` settings file (the names of
:class:`~pyro_vae.config.TrainConfig`) with one extra key, ``recipe``, that names its source: the paper,
the table and its number, the data and binarization, the architecture and optimiser, the evaluation
protocol (``k`` importance samples on ``split`` with the ``best`` or ``last`` checkpoint; ``metric``
``"nll"``, the default, or ``"accuracy"`` for a semi-supervised model), and what this toolkit does
differently. Adding a recipe is adding one file; :func:`recipes` finds it. Recipes named ``NAME-*`` form
a series that ``reproduce NAME`` runs whole (``m2-mnist``: one recipe per label count).

A run is labelled as a recipe only when every setting that decides what it computes equals the
recipe's (:func:`differences`); where it runs, how often it logs, or how long it may take do not count.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parent

# settings that say where, how fast or how long a run happens, not what it computes: a run may differ
# from its recipe in these and still be labelled as it
FREE_SETTINGS = frozenset(
    {
        "data_dir",
        "download",
        "cache_dir",
        "data_placement",
        "device",
        "threads",
        "compile",
        "cuda_graphs",
        "progress",
        "out",
        "time_limit",
        "log_every",
        "eval_batch_size",
        "keep_checkpoints",
    }
)

# what every recipe's "recipe" block must say
REQUIRED = ("title", "paper", "table", "data", "architecture", "optimiser", "objective", "protocol", "differs")


@dataclass(frozen=True)
class Recipe:
    """One named set-up.

    :param name: the file's name without ``.json``.
    :param settings: the training settings the recipe fixes (everything else keeps its default).
    :param source: the ``recipe`` block: paper, table, reference number, protocol, differences.
    """

    name: str
    settings: dict[str, Any]
    source: dict[str, Any]

    @property
    def reference(self) -> float | None:
        """The published figure in the protocol's metric (−log p(x) in nats, or test accuracy in percent), or
        ``None`` for a model-family recipe (no paper number)."""
        return self.source.get("reference")

    @property
    def metric(self) -> str:
        """``"nll"`` (−log p(x) in nats, K importance samples) or ``"accuracy"`` (test accuracy in percent)."""
        return str(self.source["protocol"].get("metric", "nll"))

    @property
    def family(self) -> bool:
        """A model-family recipe: a common setting for the same-budget comparison, not a paper's."""
        return self.reference is None

    @property
    def k(self) -> int:
        return int(self.source["protocol"]["k"])

    @property
    def split(self) -> str:
        return str(self.source["protocol"]["split"])

    @property
    def checkpoint(self) -> str:
        """``"best"`` (``best.pt``, chosen on the validation split) or ``"last"``."""
        return str(self.source["protocol"]["checkpoint"])

    @property
    def epochs(self) -> int:
        return int(self.settings.get("epochs", TrainConfig.epochs))

    def config(self, **overrides: Any) -> TrainConfig:
        """The recipe's :class:`TrainConfig`, validated, with ``overrides`` (free settings only) applied."""
        fixed = sorted(set(overrides) - FREE_SETTINGS)
        if fixed:
            raise ConfigError(
                f"recipe {self.name} fixes {', '.join(fixed)}; a run with other values is not this recipe "
                f"(train it with --config and your changes instead)"
            )
        d = TrainConfig().to_dict()
        d.update(self.settings)
        d.update(overrides)
        return TrainConfig.from_dict(d, source=f"recipe {self.name}").validate()


# a recipe file is a page of settings; anything near this size is not one
MAX_RECIPE_BYTES = 2**20
CHECKPOINTS = ("best", "last")
SPLITS = ("test", "valid", "train")
METRICS = ("nll", "accuracy")


def _read(path: Path) -> Recipe:
    """One recipe file, checked whole before any work: JSON, the ``recipe`` block with every required key,
    a protocol that can be run, and settings that :class:`TrainConfig` accepts. A problem is one
    :class:`ConfigError` naming the file."""
    from pyro_vae.evaluate import MAX_K

    where = f"recipe file {path}"
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise ConfigError(
                f"{where} is over {MAX_RECIPE_BYTES:,} bytes, far beyond a settings file; fix or remove it"
            )
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{where} cannot be read as JSON ({type(exc).__name__}); fix or remove it") from None
    if not isinstance(d, dict) or not isinstance(d.get("recipe"), dict):
        raise ConfigError(f'{where} has no recipe block (a JSON object under "recipe"); see a shipped recipe')
    source = d.pop("recipe")
    missing = [key for key in REQUIRED if key not in source]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)} in its recipe block")
    reference = source.get("reference")
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, (int, float))):
        raise ConfigError(f"{where}: reference must be a number of nats or null, got {reference!r}")
    protocol = source["protocol"]
    k = protocol.get("k") if isinstance(protocol, dict) else None
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ConfigError(f"{where}: protocol k must be a number of importance samples from 1 to {MAX_K:,}, got {k!r}")
    if protocol.get("split") not in SPLITS or protocol.get("checkpoint") not in CHECKPOINTS:
        raise ConfigError(
            f"{where}: protocol split must be one of {', '.join(SPLITS)} and checkpoint one of "
            f"{', '.join(CHECKPOINTS)}, got {protocol.get('split')!r} and {protocol.get('checkpoint')!r}"
        )
    metric = protocol.get("metric", "nll")
    if metric not in METRICS:
        raise ConfigError(f"{where}: protocol metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "accuracy" and d.get("model") != "m2":
        raise ConfigError(f"{where}: protocol metric accuracy scores a classifier: the settings need model m2")
    if metric == "accuracy" and reference is not None and not 0 < reference <= 100:
        raise ConfigError(f"{where}: an accuracy reference is a percentage in (0, 100], got {reference!r}")
    recipe = Recipe(path.stem, d, source)
    try:
        recipe.config()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix(f'recipe {path.stem}: ')}") from None
    return recipe


@cache
def _load() -> tuple[dict[str, Recipe], dict[str, str]]:
    good, bad = [], {}
    for path in sorted(RECIPE_DIR.glob("*.json")):
        try:
            good.append(_read(path))
        except ConfigError as exc:
            bad[path.stem] = str(exc)
    return {r.name: r for r in sorted(good, key=lambda r: (r.family, r.name))}, bad


def recipes() -> dict[str, Recipe]:
    """Every recipe that passes its checks, by name: the papers' first, then the model families, each
    sorted. A file that fails them is left out here and named by :func:`recipe_problems`."""
    return _load()[0]


def recipe_problems() -> dict[str, str]:
    """The recipe files that fail their checks, by name, each with its one-line problem."""
    return _load()[1]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is refused with the list, a broken file with its problem."""
    known = recipes()
    if name in recipe_problems():
        raise ConfigError(recipe_problems()[name])
    if name not in known:
        raise ConfigError(
            f"unknown recipe {name!r}; choose one of {', '.join(known)} (python -m pyro_vae reproduce --list)"
        )
    return known[name]


def expand_names(name: str) -> list[str]:
    """The recipes ``reproduce NAME`` runs: ``families`` is every model family; a recipe's own name is that
    recipe; a name that prefixes recipes as ``NAME-*`` (and is none itself) is that series, in order of size
    (``m2-mnist``: 100, 600, 1000, 3000 labels)."""
    known = recipes()
    if name == "families":
        return [r.name for r in known.values() if r.family]
    if name not in known and name not in recipe_problems():
        series = [r for r in known.values() if r.name.startswith(f"{name}-")]
        if series:
            return [r.name for r in sorted(series, key=lambda r: (r.settings.get("labels") or 0, r.name))]
    return [get_recipe(name).name]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12)
    return a == b


def differences(config: TrainConfig, recipe: Recipe) -> list[str]:
    """The settings of ``config`` that decide what a run computes and differ from ``recipe``'s, as
    ``"lr 0.001 (recipe: 0.0001)"``; empty when the run is the recipe's."""
    want = recipe.config()
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in FREE_SETTINGS:
            continue
        mine, theirs = getattr(config, f.name), getattr(want, f.name)
        if not _same(mine, theirs):
            show = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
            out.append(f"{f.name} {show(mine)!r} (recipe: {show(theirs)!r})")
    return out


__all__ = [
    "FREE_SETTINGS",
    "RECIPE_DIR",
    "Recipe",
    "differences",
    "expand_names",
    "get_recipe",
    "recipe_problems",
    "recipes",
]
