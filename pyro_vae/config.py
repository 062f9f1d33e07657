"""Training configuration: one typed dataclass, the single source of defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pyro_vae.errors import ConfigError
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.objectives import OBJECTIVES, SCHEDULES
from pyro_vae.priors import PRIORS

DATASETS = ("mnist", "fashion-mnist")
NETS = ("mlp", "conv")
DEVICES = ("auto", "cpu", "cuda")
ELBOS = tuple(OBJECTIVES)
PRIOR_NAMES = tuple(PRIORS)
LIKELIHOOD_NAMES = tuple(LIKELIHOODS)


@dataclass
class TrainConfig:
    """Every setting of a training run; ``config.json`` in the run folder is this, resolved."""

    dataset: str = "mnist"  # "mnist" | "fashion-mnist"; pixels are binarized for the Bernoulli likelihood
    data_dir: str = "./data"  # torchvision layout: <data_dir>/MNIST/raw/*-ubyte(.gz)
    download: bool = True  # fetch missing files through torchvision; off for air-gapped machines
    net: str = "mlp"  # "mlp" | "conv": the encoder/decoder pair; shapes come from the data
    z_dim: int = 50  # latent size; 50 as in Pyro's VAE example
    hidden: tuple[int, ...] = (400,)  # MLP hidden widths in encoder order; the decoder mirrors them
    prior: str = "normal"  # p(z), see pyro_vae.priors.PRIORS
    likelihood: str = "bernoulli"  # p(x|z), see pyro_vae.likelihoods.LIKELIHOODS; decides the data prep
    likelihood_scale: float = 0.1  # fixed (normal, laplace) or initial (normal-image/-pixel) scale on [0, 1]
    epochs: int = 10
    batch_size: int = 128  # 128 reaches a lower 10-epoch test loss than 256 on MNIST (measured, README)
    lr: float = 1e-3  # Adam step size
    clip_grad: float | None = None  # clip the gradient norm to this; None leaves gradients alone
    elbo: str = "mc"  # "mc": Trace_ELBO; "analytic": TraceMeanField_ELBO (closed-form KL); "iwae": L_K
    particles: int = 5  # K of the importance-weighted bound (--elbo iwae)
    beta: float = 1.0  # KL weight; a reconstruction factor alpha is the same objective as beta = 1/alpha
    kl_schedule: str = "constant"  # "constant" | "linear" warm-up | "cyclical"; scales the KL up to beta
    warmup: float = 0  # linear warm-up length, in warmup_unit
    warmup_unit: str = "epochs"  # "epochs" | "steps"
    cycles: int = 4  # cyclical schedule: cycles over the whole run
    device: str = "auto"  # "auto" picks CUDA when torch sees a GPU
    compile: bool = False  # torch.compile the encoder and decoder (benchmark before turning on)
    bf16: bool = False  # CUDA only: bfloat16 autocast for the networks; densities stay float32
    seed: int = 0  # seeds initialisation, z draws, shuffling and the dynamic binarization
    test_binarization_seed: int = 0  # apart from `seed` so held-out numbers compare across runs
    limit_train: int | None = None  # first N training images only: quick runs and tests
    limit_test: int | None = None  # first N test images only
    validation: int = 0  # last N training images held out to pick best.pt; 0 picks on the test loss
    eval_batch_size: int = 1000  # held-out loss is computed in chunks this large
    log_every: int = 50  # steps between reading the loss back from the device (each read syncs)
    keep_checkpoints: int | None = None  # keep only the newest N epoch checkpoints; None keeps all
    progress: bool = True  # tqdm bar with loss and images/s
    out: str | None = None  # run folder; default runs/<dataset>-<net>-<elbo>-<timestamp>

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first impossible setting; return ``self``."""
        _choice("dataset", self.dataset, DATASETS)
        _choice("net", self.net, NETS)
        _choice("elbo", self.elbo, ELBOS)
        _choice("prior", self.prior, PRIOR_NAMES)
        _choice("likelihood", self.likelihood, LIKELIHOOD_NAMES)
        _choice("kl_schedule", self.kl_schedule, SCHEDULES)
        _choice("warmup_unit", self.warmup_unit, ("epochs", "steps"))
        _choice("device", self.device, DEVICES)
        for name in ("z_dim", "epochs", "batch_size", "eval_batch_size", "log_every", "particles", "cycles"):
            _positive(name, getattr(self, name))
        for name in ("limit_train", "limit_test", "keep_checkpoints"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(
                f"--hidden must be one or more positive widths, got {list(self.hidden)}; e.g. --hidden 400"
            )
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}; e.g. --lr 1e-3")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ConfigError(f"--clip-grad must be > 0, got {self.clip_grad}")
        if self.validation < 0:
            raise ConfigError(f"--validation must be >= 0, got {self.validation}")
        if not self.beta >= 0:
            raise ConfigError(f"--beta must be >= 0, got {self.beta}")
        if not self.warmup >= 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.likelihood_scale > 0:
            raise ConfigError(f"--likelihood-scale must be > 0, got {self.likelihood_scale}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown settings {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {_flag(name)} {value!r}; choose one of {', '.join(choices)}")


def _positive(name: str, value: int) -> None:
    if not value > 0:
        raise ConfigError(f"{_flag(name)} must be a positive integer, got {value}")


__all__ = ["DATASETS", "DEVICES", "ELBOS", "LIKELIHOOD_NAMES", "NETS", "PRIOR_NAMES", "SCHEDULES", "TrainConfig"]
