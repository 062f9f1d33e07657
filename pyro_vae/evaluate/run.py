"""Scoring a trained run folder, as ``pyro-vae-evaluate`` does: its settings (:class:`EvalConfig`, whose
fields are the command's flags), their checks, and :func:`evaluate_run`, which loads the run, scores it
and adds the result to its ``eval.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.config import DEVICES, setting
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate.report import check_arguments, evaluate
from pyro_vae.resources import set_threads


@dataclass
class EvalConfig:
    """What to score and how; :meth:`validate` refuses a bad value before anything is loaded."""

    #: the run folder that pyro-vae-train wrote
    run_dir: str = setting("", "run folder written by pyro-vae-train")
    #: weights that ship with the package, by recipe name (pyro_vae.pretrained), instead of a run folder
    pretrained: str | None = setting(None, "score the shipped weights of this recipe instead of a run folder")
    #: several K cost one pass of the largest: the first K draws of it
    k: tuple[int, ...] = setting((5000,), "importance samples K, one or more")
    #: binarized-mnist has a validation split; the others test and train
    split: str = setting("test", "data to score; valid: binarized-mnist's", choices=("test", "train", "valid"))
    #: None: the run's newest checkpoint
    checkpoint: str | None = setting(None, "a checkpoint file of this run (default: its newest)")
    #: the data may have moved since training; their fingerprints must still match
    data_dir: str | None = setting(None, "data root, if the data moved (default: the run's `data_dir`)")
    #: a quick look before the full test set
    limit: int | None = setting(None, "score only the first N images")
    #: images per chunk of the IS pass; the ELBO passes take ten times as many
    batch_size: int = setting(100, "images per chunk")
    #: draws per image for the ELBO rows (the IS rows have K)
    elbo_particles: int = setting(1, "z draws per image for the ELBO")
    #: every draw of every batch follows from it, so a rerun gives the same figures
    seed: int = setting(0, "seed of every draw")
    device: str = setting("auto", "where to score", choices=DEVICES)
    #: None: the CPUs this process may use (affinity, cgroup quota), shared among torchrun's local ranks
    threads: int | None = setting(None, "CPU threads (default: the CPUs this process may use)")
    progress: bool = setting(True, "a progress bar over the IS pass")
    #: None: RUN_DIR/eval.json, which keeps every evaluation of the run
    out: str | None = setting(None, "JSON file to add the results to (default RUN_DIR/eval.json)")

    def validate(self) -> EvalConfig:
        """Refuse impossible values, each in one line naming the setting; returns ``self``."""
        if self.pretrained is not None:
            if self.run_dir:
                raise ConfigError("pass a run folder or `pretrained`, not both")
            if self.split != "test" or self.checkpoint is not None:
                raise ConfigError("shipped weights are scored on the test split of their recipe: drop `split` and "
                                  "`checkpoint`")  # fmt: skip
        elif not self.run_dir:
            raise ConfigError("no run folder given; pass RUN_DIR, a folder pyro-vae-train wrote, or `pretrained`")
        limit = self.limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"`limit` must be a positive number of images, got {self.limit}; leave it out for all")
        check_arguments(self.k, batch_size=self.batch_size, elbo_particles=self.elbo_particles, seed=self.seed)
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"`threads` must be a positive integer, got {self.threads}")
        return self


def evaluate_run(config: EvalConfig, *, say: Any = print) -> dict:
    """Score ``config.run_dir`` and add the result to its evaluation file.

    Under torchrun every rank scores its share of the images and gets the whole result; rank 0 alone
    prints the table and writes the file. The table is printed before the file is written, so the
    figures are on the screen should the write fail.

    :param say: where the table goes (``print``).
    :returns: the result dict, as added to ``eval.json``.
    """
    from pyro_vae.distributed import agreed, device_for, resolve_device, world
    from pyro_vae.evaluate.report import format_table
    from pyro_vae.runs import load_run_and_data, results

    config.validate()
    set_threads(config.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    out = Path(config.out) if config.out else Path(config.run_dir) / "eval.json"
    main = world().main
    with agreed("the evaluation"):
        device = device_for(resolve_device(config.device))
        loaded = load_run_and_data(
            config.run_dir,
            split=config.split,
            checkpoint=config.checkpoint,
            device=device,
            data_dir=config.data_dir,
            limit=config.limit,
        )
        if main:
            results.check_results_file(out)  # before the work, not after
    if hasattr(loaded.vae, "classify"):  # M2: accuracy, the two ELBOs, log p(x) with y summed exactly
        from pyro_vae.evaluate.labels import evaluate_labels

        if world().distributed:
            raise ConfigError("an M2 run is scored by one process; run the evaluation without torchrun")
        labels = loaded.labels.to(loaded.x.device)
        result = evaluate_labels(loaded.vae, loaded.x, labels, config.k, seed=config.seed, batch_size=config.batch_size)
    else:
        result = evaluate(
            loaded.vae,
            loaded.x,
            config.k,
            seed=config.seed,
            batch_size=config.batch_size,
            elbo_particles=config.elbo_particles,
            progress=config.progress and main,
        )
    result = {
        "run_dir": str(Path(config.run_dir).resolve()),
        "checkpoint": str(loaded.checkpoint.resolve()),
        "epoch": loaded.state["epoch"],
        "split": config.split,
        "limit": config.limit,
        "elbo_particles": config.elbo_particles,
        "device": device.type,
        "processes": world().size,
        **result,
    }
    if not main:
        return result
    say(
        f"{config.run_dir}  {loaded.checkpoint.name} (epoch {loaded.state['epoch']})  {config.split} split, "
        f"{len(loaded.x)} images, {device.type}"
    )
    say(format_table(result))
    try:
        results.record_results(out, result)
    except OSError as exc:
        raise ConfigError(
            f"could not add the results to {out} ({exc.strerror or exc}); the figures are printed above"
        ) from None
    say(f"IS evaluation took {result['nll_seconds']:.1f}s; added to {out}")
    return result
