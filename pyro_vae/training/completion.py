"""Training and scoring the image-completion CVAE (:mod:`pyro_vae.models.completion`) as Pyro's tutorial does:
the baseline network first (its cross-entropy on the hidden pixels, Adam), then the CVAE by ``SVI`` with
``Trace_ELBO`` and ``pyro.optim.Adam``, each stopped early when its validation loss has not improved for
``patience`` epochs, and the best epoch's weights kept. ``train_completion(config) -> result``."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.errors import ConfigError
from pyro_vae.models.completion import CompletionVAE, conditional_log_likelihood, quadrant_mask


@dataclass
class CompletionConfig:
    """Every setting of one completion run; ``completion.json`` in the output folder holds it with the scores."""

    #: the quadrants shown (1: bottom-left, 2: left half, 3: all but bottom-right), as in Pyro's tutorial
    quadrants: int = 1
    #: the root holding MNIST/raw (torchvision's layout); nothing is downloaded
    data_dir: str = "./data"
    #: the output folder: weights and scores, one pair per quadrant count
    out: str = "runs/completion"
    #: the tutorial's networks: z 200, hidden 500, 500, batch 128, Adam 1e-3
    z_dim: int = 200
    hidden: tuple[int, ...] = (500, 500)
    batch_size: int = 128
    lr: float = 1e-3
    #: the tutorial's ceiling; early stopping usually ends each phase well before it
    epochs: int = 101
    #: epochs without a better validation loss before a phase stops (the tutorial's 3)
    patience: int = 3
    #: the last N training images choose the epochs (the tutorial chose on the test set)
    validation: int = 10_000
    #: importance samples per test image for log p(y | x)
    k: int = 100
    seed: int = 0
    #: CPU threads (None: torch's default)
    threads: int | None = None
    #: minutes for both phases together (the baseline stops after a third of them); the best weights so far
    #: are then scored
    time_limit: float | None = None
    #: smoke runs: only the first N training and test images
    limit_train: int | None = None
    limit_test: int | None = None
    #: filled in by the run: what each phase did
    log: list[str] = field(default_factory=list, repr=False)

    def validate(self) -> CompletionConfig:
        quadrant_mask(self.quadrants)
        for name in ("z_dim", "batch_size", "epochs", "patience", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"`{name}` must be a whole number of at least 1, got {v!r}")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"`hidden` must be one or more layer widths of at least 1, got {self.hidden!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"`lr` must be a positive step size, got {self.lr!r}; e.g. `lr=1e-3`")
        for name in ("threads", "limit_train", "limit_test"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"`{name}` must be a whole number of at least 1, got {v!r}")
        if self.time_limit is not None and not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise ConfigError(f"`time_limit` must be a positive number of minutes, got {self.time_limit!r}")
        if isinstance(self.validation, bool) or not isinstance(self.validation, int) or self.validation < 1:
            raise ConfigError(
                f"`validation` must be a number of training images of at least 1, got {self.validation!r}"
            )
        return self


def _data(config: CompletionConfig) -> dict:
    """(shown, hidden) grey levels in [0, 1] for the train, validation and test images, and the mask."""
    from pyro_vae.data.idx import load_raw

    x_train, _, x_test, _ = load_raw("mnist", config.data_dir, download=False)
    x_train = x_train[: config.limit_train] if config.limit_train else x_train
    x_test = x_test[: config.limit_test] if config.limit_test else x_test
    if config.validation >= len(x_train):
        raise ConfigError(f"`validation={config.validation}` leaves no training images of {len(x_train)}; lower it")
    mask = quadrant_mask(config.quadrants, *x_train.shape[-2:])
    cut = len(x_train) - config.validation

    def split(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = images.flatten(1).float() / 255
        return flat[:, mask].contiguous(), flat[:, ~mask].contiguous()

    return {"train": split(x_train[:cut]), "val": split(x_train[cut:]), "test": split(x_test), "mask": mask}


def _phase(
    name: str,
    step: Callable[[torch.Tensor, torch.Tensor], float],
    heldout: Callable[[torch.Tensor, torch.Tensor], float],
    data: dict,
    module: torch.nn.Module,
    config: CompletionConfig,
    deadline: float,
    generator: torch.Generator,
) -> dict:
    """Epochs of ``step`` over the training pairs until validation (``heldout``, per image) stops improving
    for ``patience`` epochs, the epochs run out or the deadline passes; the best epoch's weights are loaded."""
    shown, hidden = data["train"]
    best, best_state, best_epoch, waited, epoch, stopped = math.inf, None, 0, 0, 0, False
    ended = "epochs"  # why the phase ended: its epochs ran out, "patience", "time limit" or "interrupted"
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(shown), generator=generator)
        total = 0.0
        try:
            for at in range(0, len(order), config.batch_size):
                i = order[at : at + config.batch_size]
                total += step(shown[i], hidden[i])
        except KeyboardInterrupt:  # the best epoch so far is kept and scored; no later phase runs
            print(f"{name}: stopped by Ctrl-C in epoch {epoch}; keeping epoch {best_epoch}", flush=True)
            stopped, ended = True, "interrupted"
            break
        val = _per_image(heldout, *data["val"], config.batch_size)
        line = (f"{name} epoch {epoch}: train {total / len(shown):.2f}  val {val:.2f} nats/image  "
                f"{time.perf_counter() - t0:.1f}s")  # fmt: skip
        print(line, flush=True)
        config.log.append(line)
        if val < best:
            best, best_state, best_epoch, waited = val, copy.deepcopy(module.state_dict()), epoch, 0
        else:
            waited += 1
        if waited >= config.patience or time.monotonic() > deadline:
            ended = "patience" if waited >= config.patience else "time limit"
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    return {"epochs": epoch, "best_epoch": best_epoch, "val": best, "ended": ended, "stopped": stopped}


def _per_image(loss: Callable[[torch.Tensor, torch.Tensor], float], shown, hidden, batch: int) -> float:
    return sum(loss(shown[at : at + batch], hidden[at : at + batch]) for at in range(0, len(shown), batch)) / len(shown)


def _mean_se(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    se = (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else 0.0
    return {"mean": values.mean().item(), "se": se}


def train_completion(config: CompletionConfig) -> dict:
    """Train the baseline, then the CVAE, then score both on the test images; writes ``completion-qN.pt`` (the
    weights) and ``completion-qN.json`` (the settings and scores) in ``config.out``.

    :returns: the scores, −log p(y | x) in nats per image ± s.e.: ``baseline`` (its cross-entropy), ``elbo``
        (the CVAE's −ELBO, K draws) and ``nll`` (importance-sampled, K draws), with each phase's epochs.
    """
    config.validate()
    out = Path(config.out)
    stem = f"completion-q{config.quadrants}"
    if (out / f"{stem}.json").exists() or (out / f"{stem}.pt").exists():
        raise ConfigError(f"{out / stem}.* exists; pass another `out` or remove it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"`out={out}` is a file; pass a folder")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    data = _data(config)  # every check before anything is written
    out.mkdir(parents=True, exist_ok=True)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start, budget = time.monotonic(), (config.time_limit * 60 if config.time_limit else math.inf)
    cvae = CompletionVAE(data["mask"], config.z_dim, config.hidden)

    cvae.baseline.requires_grad_(True)
    adam = torch.optim.Adam(cvae.baseline.parameters(), lr=config.lr)

    def baseline_step(x: torch.Tensor, y: torch.Tensor) -> float:
        adam.zero_grad()
        loss = cvae.baseline_loss(x, y).sum()
        (loss / len(x)).backward()
        adam.step()
        return loss.item()

    def baseline_heldout(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return cvae.baseline_loss(x, y).sum().item()

    # the baseline may take a third of the time limit, the CVAE the rest
    phases = {"baseline": _phase("baseline", baseline_step, baseline_heldout, data, cvae.baseline, config,
                                 start + budget / 3, generator)}  # fmt: skip
    cvae.baseline.requires_grad_(False)

    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": config.lr}), Trace_ELBO())
    if not phases["baseline"]["stopped"]:
        phases["cvae"] = _phase("cvae", svi.step, svi.evaluate_loss, data, cvae, config, start + budget, generator)
    cvae.eval()
    torch.save(cvae.state_dict(), out / f"{stem}.pt")

    shown, hidden = data["test"]
    with torch.no_grad():
        base = torch.cat([cvae.baseline_loss(shown[at : at + 1000], hidden[at : at + 1000])
                          for at in range(0, len(shown), 1000)])  # fmt: skip
    scores = conditional_log_likelihood(cvae, shown, hidden, config.k, seed=config.seed)
    result = {
        "baseline": _mean_se(base),
        "elbo": _mean_se(-scores["elbo"]),
        "nll": _mean_se(-scores["log_likelihood"]),
        "k": config.k,
        "test_images": len(shown),
        "phases": phases,
    }
    record = {"config": {k: v for k, v in dataclasses.asdict(config).items() if k != "log"}, "result": result}
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    return result


__all__ = ["CompletionConfig", "train_completion"]
