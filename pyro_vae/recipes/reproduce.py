"""``python -m pyro_vae reproduce NAME``: from a recipe's settings to one row beside the paper's number.

Train the recipe (within a time budget if one is given; an unfinished run in the folder is resumed),
score it with the recipe's protocol (K importance samples over the whole split, its ``best`` or
``last`` checkpoint), and write one row: the measured figure ± s.e. (−log p(x) in nats, or test accuracy
in percent for a semi-supervised recipe), the reference, the difference, epochs run against the
recipe's, wall time and device. A run stopped by its budget is labelled
budget-limited, never a reproduction; a run folder whose settings differ from the recipe is refused.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pyro_vae.errors import ConfigError
from pyro_vae.recipes import Recipe, differences, get_recipe

ROW_FILE = "reproduce.json"
EVAL_SEED = 0  # the seed of the protocol's draws: rows re-scored later give the same figures


@dataclass
class Row:
    """One results-table row.

    :param metric: ``"nll"``: ``value`` is −log p(x) in nats at K importance samples; ``"accuracy"``: test
        accuracy in percent.
    :param status: ``"full recipe"`` when every epoch of the recipe was trained, else
        ``"budget-limited"``: such a row is never a reproduction of the paper's figure.
    :param difference: measured minus reference, in the metric's unit (``None`` for a model-family recipe).
    :param train_seconds: the run's training time over all its sessions (epochs and checkpoints).
    """

    recipe: str
    metric: str
    value: float
    se: float
    k: int
    num_points: int
    reference: float | None
    difference: float | None
    status: str
    epochs_run: int
    epochs_recipe: int
    scored_epoch: int
    checkpoint: str
    train_seconds: float
    eval_seconds: float
    device: str
    run_dir: str

    @property
    def full(self) -> bool:
        return self.status == "full recipe"


def make_row(recipe: Recipe, result: dict, *, epochs_run: int, train_seconds: float, run_dir: str) -> Row:
    """The row for ``result`` (an :func:`pyro_vae.evaluate.evaluate` result with the recipe's K, or an
    :func:`pyro_vae.evaluate.labels.evaluate_labels` one for an accuracy recipe)."""
    if recipe.metric == "accuracy":
        value, se = 100 * float(result["accuracy"]["mean"]), 100 * float(result["accuracy"]["se"])
    else:
        nll = result["nll"][str(recipe.k)]
        value, se = float(nll["mean"]), float(nll["se"])
    reference = recipe.reference
    full = epochs_run >= recipe.epochs
    return Row(
        recipe=recipe.name,
        metric=recipe.metric,
        value=value,
        se=se,
        k=recipe.k,
        num_points=int(result["num_points"]),
        reference=reference,
        difference=None if reference is None else value - reference,
        status="full recipe" if full else "budget-limited",
        epochs_run=epochs_run,
        epochs_recipe=recipe.epochs,
        scored_epoch=int(result["epoch"]),
        checkpoint=Path(result["checkpoint"]).name,
        train_seconds=train_seconds,
        eval_seconds=float(result.get("nll_seconds", 0.0))
        + sum(float(e.get("seconds", 0.0)) for e in result.get("elbo", {}).values()),
        device=str(result["device"]),
        run_dir=run_dir,
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def format_rows(rows: list[Row]) -> str:
    """Rows as an aligned text table; budget-limited rows say so in their status column."""
    head = (
        "recipe",
        "result",
        "s.e.",
        "K",
        "reference",
        "difference",
        "epochs",
        "train",
        "eval",
        "device",
        "status",
    )
    table = [head]
    for r in rows:
        status = (
            r.status if r.full else f"budget-limited ({r.epochs_run} of {r.epochs_recipe} epochs): not a reproduction"
        )
        unit = " %" if r.metric == "accuracy" else " nats"
        table.append(
            (
                r.recipe,
                f"{r.value:.2f}{unit}",
                f"{r.se:.2f}",
                str(r.k),
                "-" if r.reference is None else f"{r.reference:.2f}",
                "-" if r.difference is None else f"{r.difference:+.2f}",
                f"{r.epochs_run}/{r.epochs_recipe}",
                _minutes(r.train_seconds),
                _minutes(r.eval_seconds),
                r.device,
                status,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


def format_list() -> str:
    """``reproduce --list``: each recipe with its reference number, epochs and data; a recipe file that fails
    its checks is named below the table with its problem, and the others are listed as usual."""
    from pyro_vae.recipes import recipe_problems, recipes

    table = [("recipe", "reference", "epochs", "K", "what")]
    for r in recipes().values():
        unit = " %" if r.metric == "accuracy" else ""
        ref = "- (model family)" if r.family else f"{r.reference:.2f}{unit}"
        table.append((r.name, ref, str(r.epochs), str(r.k), r.source["title"]))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4] for row in table]
    return "\n".join(lines + [f"skipped: {problem}" for problem in recipe_problems().values()])


def default_out(name: str) -> Path:
    """Where ``reproduce NAME`` keeps its run when no ``--out`` is given: the same folder every time, so
    running the command again resumes or re-scores it."""
    return Path("runs") / f"reproduce-{name}"


def check_run_is_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse a run folder whose settings differ from the recipe's, or that trained on data it was
    handed rather than on the recipe's dataset: its row would carry the recipe's name falsely."""
    from pyro_vae.runs import RunError, read_run_config, read_run_json

    config = read_run_config(run_dir)
    diffs = differences(config, recipe)
    if diffs:
        shown = ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise RunError(
            f"{run_dir} was not trained with recipe {recipe.name} ({shown}), so it cannot be labelled as it; "
            f"pass another `out`"
        )
    record = read_run_json(run_dir).get("data") or {}
    if record.get("source") == "memory":
        raise RunError(f"{run_dir} was trained on data handed to train(), not on {recipe.settings['dataset']}")


def epochs_done(run_dir: Path) -> int:
    """Epochs the run has finished, from its ``metrics.csv``."""
    from pyro_vae.runs import read_metrics

    rows = read_metrics(run_dir)
    return int(rows[-1]["epoch"]) if rows else 0


def _check_minutes(minutes: float | None) -> None:
    if minutes is not None and (
        isinstance(minutes, bool)
        or not isinstance(minutes, (int, float))
        or not (math.isfinite(minutes) and minutes > 0)
    ):
        raise ConfigError(f"`minutes` must be a finite number of minutes > 0, got {minutes!r}; e.g. `minutes=60`")


def _protocol_checkpoint(run_dir: Path, recipe: Recipe) -> Path:
    from pyro_vae.runs import latest_checkpoint

    if recipe.checkpoint == "best":
        best = run_dir / "checkpoints" / "best.pt"
        if best.is_file():
            return best
    return latest_checkpoint(run_dir)


def _stored_result(run_dir: Path, checkpoint: Path, epoch: int, recipe: Recipe) -> dict | None:
    """An earlier evaluation in ``eval.json`` made with the recipe's protocol, if any."""
    from pyro_vae.runs import read_results

    path = run_dir / "eval.json"
    if not path.is_file():
        return None
    for entry in read_results(path):
        same = (
            entry.get("checkpoint") == str(checkpoint.resolve())
            and entry.get("epoch") == epoch
            and entry.get("split") == recipe.split
            and entry.get("limit") is None
            and entry.get("seed") == EVAL_SEED
            and entry.get("elbo_particles") == 1
            and str(recipe.k) in entry.get("nll", {})
            and (recipe.metric != "accuracy" or "accuracy" in entry)
        )
        if same:
            return entry
    return None


def score(
    run_dir: Path,
    recipe: Recipe,
    *,
    device: str = "auto",
    data_dir: str | None = None,
    progress: bool = True,
    say=print,
) -> dict:
    """The recipe's protocol on the run: K importance samples over the whole split with its checkpoint,
    added to the run's ``eval.json`` (an earlier evaluation of the same checkpoint is reused)."""
    from pyro_vae.distributed import resolve_device
    from pyro_vae.evaluate import evaluate
    from pyro_vae.runs import load_run_and_data, read_checkpoint, record_results

    checkpoint = _protocol_checkpoint(run_dir, recipe)
    epoch = int(read_checkpoint(checkpoint)["epoch"])
    stored = _stored_result(run_dir, checkpoint, epoch, recipe)
    if stored is not None:
        say(f"{run_dir}: reusing the K = {recipe.k} evaluation of {checkpoint.name} (epoch {epoch}) in eval.json")
        return stored
    loaded = load_run_and_data(
        run_dir, split=recipe.split, checkpoint=checkpoint, device=resolve_device(device), data_dir=data_dir
    )
    say(f"scoring {checkpoint.name} (epoch {epoch}): K = {recipe.k} over {len(loaded.x)} {recipe.split} images")
    if hasattr(loaded.vae, "classify"):  # M2: accuracy, both ELBOs, log p(x) with the label summed exactly
        from pyro_vae.evaluate.labels import evaluate_labels

        labels = loaded.labels.to(loaded.x.device)
        result = evaluate_labels(loaded.vae, loaded.x, labels, [recipe.k], seed=EVAL_SEED, batch_size=100)
    else:
        result = evaluate(loaded.vae, loaded.x, [recipe.k], seed=EVAL_SEED, batch_size=100, progress=progress)
    result = {
        "run_dir": str(run_dir.resolve()),
        "checkpoint": str(checkpoint.resolve()),
        "epoch": epoch,
        "split": recipe.split,
        "limit": None,
        "elbo_particles": 1,
        "device": loaded.x.device.type,
        "processes": 1,
        **result,
    }
    return record_results(run_dir / "eval.json", result)


def reproduce(
    name: str,
    *,
    minutes: float | None = None,
    data_dir: str | None = None,
    download: bool = True,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    train: bool = True,
    progress: bool = True,
    say=print,
) -> Row:
    """Train recipe ``name`` and score it with its protocol; the row is also written to ``OUT/reproduce.json``.

    :param minutes: training budget of this call, in wall-clock minutes (the run ends after the first
        epoch past it); ``None`` trains to the recipe's last epoch.
    :param out: the run folder (default ``runs/reproduce-NAME``). A folder holding an unfinished run of
        this recipe is resumed; one holding a finished run is only scored; one holding a run with other
        settings is refused.
    :param train: ``False`` scores the run as it stands, without training.
    """
    from pyro_vae.files import write_atomic
    from pyro_vae.runs import check_out_dir, read_metrics
    from pyro_vae.training import resume
    from pyro_vae.training import train as train_run

    recipe = get_recipe(name)
    _check_minutes(minutes)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ConfigError("reproduce runs in one process; train the recipe under torchrun with --config instead")
    run_dir = Path(out) if out is not None else default_out(name)
    if (run_dir / "config.json").is_file():
        check_run_is_recipe(run_dir, recipe)
        done = epochs_done(run_dir)
        if train and done < recipe.epochs:
            budget = f" for {minutes:g} minutes" if minutes is not None else " to the recipe's last epoch"
            say(f"{run_dir} holds recipe {name} after {done} of {recipe.epochs} epochs: resuming{budget}")
            resume(run_dir, epochs=recipe.epochs, progress=progress, time_limit=minutes)
    else:
        if not train:
            raise ConfigError(f"{run_dir} holds no run to score; drop `train=False` to train recipe {name} there")
        check_out_dir(run_dir)
        overrides = {"out": str(run_dir), "device": device, "time_limit": minutes, "progress": progress}
        if data_dir is not None:
            overrides["data_dir"] = data_dir
        if not download:
            overrides["download"] = False
        config = recipe.config(**overrides)
        train_run(config)
    started = time.perf_counter()
    result = score(run_dir, recipe, device=device, data_dir=data_dir, progress=progress, say=say)
    rows = read_metrics(run_dir)
    train_seconds = sum(r["seconds"] + (r.get("checkpoint_seconds") or 0.0) for r in rows)
    row = make_row(recipe, result, epochs_run=epochs_done(run_dir), train_seconds=train_seconds, run_dir=str(run_dir))
    record = {"row": asdict(row), "recipe": recipe.source, "scored_in_seconds": time.perf_counter() - started}
    text = json.dumps(record, indent=2) + "\n"
    write_atomic(run_dir / ROW_FILE, lambda f: f.write(text.encode()))
    return row


__all__ = ["ROW_FILE", "Row", "default_out", "format_list", "format_rows", "make_row", "reproduce", "score"]
