"""Recipes: named settings files, one per published set-up (or model family), shipped with the package.

Each ``<name>.json`` beside this module is a ``--config`` settings file (the names of
:class:`~pyro_vae.config.TrainConfig`) with one extra key, ``recipe``, that names its source: the paper,
the table and its number, the data and binarization, the architecture and optimiser, the evaluation
protocol (``k`` importance samples on ``split`` with the ``best`` or ``last`` checkpoint), and what this
toolkit does differently. Adding a recipe is adding one file; :func:`recipes` finds it.

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
        """The published −log p(x) in nats, or ``None`` for a model-family recipe (no paper number)."""
        return self.source.get("reference")

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


def _read(path: Path) -> Recipe:
    d = json.loads(path.read_text())
    source = d.pop("recipe")
    missing = [key for key in REQUIRED if key not in source]
    if missing:
        raise ConfigError(f"recipe file {path} lacks {', '.join(missing)} in its recipe block")
    return Recipe(path.stem, d, source)


@cache
def recipes() -> dict[str, Recipe]:
    """Every shipped recipe by name: the papers' first, then the model families, each sorted."""
    found = [_read(p) for p in sorted(RECIPE_DIR.glob("*.json"))]
    return {r.name: r for r in sorted(found, key=lambda r: (r.family, r.name))}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is refused with the list."""
    known = recipes()
    if name not in known:
        raise ConfigError(
            f"unknown recipe {name!r}; choose one of {', '.join(known)} (python -m pyro_vae reproduce --list)"
        )
    return known[name]


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


__all__ = ["FREE_SETTINGS", "RECIPE_DIR", "Recipe", "differences", "get_recipe", "recipes"]
