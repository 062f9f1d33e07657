"""Training configuration: one typed dataclass, the single source of defaults."""

from __future__ import annotations

import dataclasses
import math
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
    net: str = "mlp"  # "mlp" | "conv": the encoder/decoder pair; shapes come from the data ("custom": yours)
    z_dim: int = 50  # latent size; 50 as in Pyro's VAE example
    hidden: tuple[int, ...] = (400,)  # MLP hidden widths in encoder order; the decoder mirrors them
    prior: str = "normal"  # p(z), see pyro_vae.priors.PRIORS ("custom": a module passed to train(vae=...))
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
        _check_types(self)
        _choice("dataset", self.dataset, DATASETS)
        _choice("net", self.net, NETS, custom=True)
        _choice("elbo", self.elbo, ELBOS)
        _choice("prior", self.prior, PRIOR_NAMES, custom=True)
        _choice("likelihood", self.likelihood, LIKELIHOOD_NAMES, custom=True)
        _choice("kl_schedule", self.kl_schedule, SCHEDULES)
        _choice("warmup_unit", self.warmup_unit, ("epochs", "steps"))
        _choice("device", self.device, DEVICES)
        for name in ("z_dim", "epochs", "batch_size", "eval_batch_size", "log_every", "particles", "cycles"):
            _positive(name, getattr(self, name))
            _not_huge(name, getattr(self, name))
        for name in ("limit_train", "limit_test", "keep_checkpoints"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("seed", "test_binarization_seed"):
            check_seed(_flag(name), getattr(self, name))
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(
                f"--hidden must be one or more positive widths, got {list(self.hidden)}; e.g. --hidden 400"
            )
        for h in self.hidden:
            _not_huge("hidden", h)
        if not self.data_dir:
            raise ConfigError("--data-dir is empty; pass the folder holding the data, e.g. --data-dir ../shared/data")
        if self.out is not None and not str(self.out).strip():
            raise ConfigError("--out is empty; pass a folder name, or leave --out out for runs/<name>-<time>")
        _finite_positive("lr", self.lr, "e.g. --lr 1e-3")
        if self.clip_grad is not None:
            _finite_positive("clip_grad", self.clip_grad, "e.g. --clip-grad 100")
        _finite_positive("likelihood_scale", self.likelihood_scale, "e.g. --likelihood-scale 0.1")
        if self.validation < 0:
            raise ConfigError(f"--validation must be >= 0, got {self.validation}")
        for name, example in (("beta", "e.g. --beta 1"), ("warmup", "e.g. --warmup 5")):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{_flag(name)} must be a finite number >= 0, got {value}; {example}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "settings") -> TrainConfig:
        """A config from a dict of settings (``config.json``): unknown names and wrong types are refused
        with one line naming ``source``; the bookkeeping a run folder adds (``objective``,
        ``versions``, ``data``, ``custom``) is ignored."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source} must hold a JSON object of settings, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if k not in RUN_RECORD_KEYS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown settings {unknown}; known: {sorted(known)}")
        if isinstance(d.get("hidden"), list):
            d["hidden"] = tuple(d["hidden"])
        config = cls(**d)
        try:
            _check_types(config)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choice(name: str, value: str, choices: tuple[str, ...], custom: bool = False) -> None:
    # "custom" marks a part passed as a module (train(config, vae=...)); it is not offered as a flag
    if value not in choices and not (custom and value == "custom"):
        raise ConfigError(f"unknown {_flag(name)} {value!r}; choose one of {', '.join(choices)}")


def _positive(name: str, value: int) -> None:
    if not value > 0:
        raise ConfigError(f"{_flag(name)} must be a positive integer, got {value}")


# no tensor dimension, batch or count can be larger than this (torch indexes with 64-bit integers,
# and no memory holds 2**40 float32 values); larger values are refused by name before any estimate
MAX_SIZE = 2**40


def _not_huge(name: str, value: int) -> None:
    if value > MAX_SIZE:
        raise ConfigError(f"{_flag(name)} {value:.3g} is beyond any memory (at most 2**40); lower it")


def _finite_positive(name: str, value: float, example: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{_flag(name)} must be a finite number > 0, got {value}; {example}")


# pyro.set_rng_seed seeds NumPy too, which takes seeds in [0, 2**32)
MAX_SEED = 2**32 - 1


def check_seed(flag: str, value: int) -> None:
    """Refuse a seed that Python, NumPy and torch cannot all take."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{flag} must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {value}")


def _check_types(config: TrainConfig) -> None:
    """Each setting has its field's type (settings files can hold anything)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kinds = _FIELD_TYPES[str(f.type)]
        ok = any(
            value is None
            if k is type(None)
            else isinstance(value, k) and not (isinstance(value, bool) and k is not bool)
            for k in kinds
        )
        if f.name == "hidden" and ok:
            ok = all(isinstance(h, int) and not isinstance(h, bool) for h in value)
        if not ok:
            want = (
                "a list of integers"
                if f.name == "hidden"
                else " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            )
            raise ConfigError(f"{_flag(f.name)} must be {want}, got {value!r}")


def _is(value: Any, kind: type) -> bool:
    if kind is type(None):
        return value is None
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)  # True is no number


# annotation text -> accepted Python types (an int is a valid float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "bool": (bool,),
    "int": (int,),
    "float": (float, int),
    "float | None": (float, int, type(None)),
    "int | None": (int, type(None)),
    "str | None": (str, type(None)),
    "tuple[int, ...]": (tuple, list),
}

# what a run folder's config.json holds besides the settings
RUN_RECORD_KEYS = ("objective", "versions", "data", "custom")


__all__ = ["DATASETS", "DEVICES", "ELBOS", "LIKELIHOOD_NAMES", "NETS", "PRIOR_NAMES", "SCHEDULES", "TrainConfig"]
