"""The rules a :class:`~pyro_vae.config.TrainConfig` must meet: each impossible setting is refused in one
line that names it, before anything is loaded or written."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from pyro_vae.errors import ConfigError
from pyro_vae.objectives import OBJECTIVES, SCHEDULES
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.nets import NETWORKS
from pyro_vae.parts.priors import PRIORS

if TYPE_CHECKING:
    from pyro_vae.config import TrainConfig

DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "cifar10", "folder")  # see pyro_vae.data.DATASETS
DEVICES = ("auto", "cpu", "cuda")
PLACEMENTS = ("auto", "resident", "stream")
MODELS = ("vae", "ladder", "m2", "cvae")
INFERENCES = ("ladder", "bottom-up")
WARMUP_UNITS = ("epochs", "steps")
ELBOS = tuple(OBJECTIVES)
PRIOR_NAMES = tuple(PRIORS)
NETS = tuple(NETWORKS)
LIKELIHOOD_NAMES = tuple(LIKELIHOODS)
GUIDE_NAMES = tuple(GUIDES)


def _check_guide(c: TrainConfig) -> None:
    if not 1 <= c.flows <= 64:
        raise ConfigError(f"`flows` must be from 1 to 64, got {c.flows}")
    if c.guide == "gaussian" and (c.flows != 2 or tuple(c.flow_hidden) != (256,)):
        raise ConfigError(
            "`flows` and `flow_hidden` shape a flow guide; with `guide=gaussian` they do nothing: drop them"
        )
    if c.guide != "gaussian" and c.model == "ladder":
        raise ConfigError(
            f"`guide={c.guide}` is for the one-layer VAE: the ladder's posterior is already a top-down "
            "hierarchy of Gaussians merged with the data, with no flow built in; use `model=vae`"
        )


def validate(c: TrainConfig) -> TrainConfig:
    """Raise :class:`ConfigError` naming the first impossible setting; return ``c``."""
    check_types(c)
    _choice("dataset", c.dataset, DATASETS)
    _choice("model", c.model, MODELS)
    _choice("inference", c.inference, INFERENCES)
    _choice("net", c.net, NETS, custom=True)
    if c.free_bits and c.elbo == "iwae":
        raise ConfigError("`free_bits` applies to the ELBO's KL term; the IWAE bound has none: drop one of them")
    _choice("elbo", c.elbo, ELBOS)
    _choice("prior", c.prior, PRIOR_NAMES, custom=True)
    _choice("likelihood", c.likelihood, LIKELIHOOD_NAMES, custom=True)
    _choice("guide", c.guide, GUIDE_NAMES, custom=True)
    _choice("kl_schedule", c.kl_schedule, SCHEDULES)
    _choice("warmup_unit", c.warmup_unit, WARMUP_UNITS)
    _choice("device", c.device, DEVICES)
    _choice("data_placement", c.data_placement, PLACEMENTS)
    for name in ("image_size", "patches", "conv_depth"):
        if getattr(c, name) is not None:
            _positive(name, getattr(c, name))
            _not_huge(name, getattr(c, name))
    if c.channels is not None and c.channels not in (1, 3):
        raise ConfigError(f"`channels` must be 1 or 3, got {c.channels}")
    if not (math.isfinite(c.test_fraction) and 0 < c.test_fraction < 1):
        raise ConfigError(f"`test_fraction` must be between 0 and 1, got {c.test_fraction}; e.g. 0.1")
    for name in ("decoder_hidden", "conv_channels", "conv_strides", "latents", "lr_milestones", "flow_hidden"):
        value = getattr(c, name)
        if value is not None and (not value or any(v <= 0 for v in value)):
            raise ConfigError(f"{_named(name)} must be one or more positive integers, got {list(value)}")
        for v in value or ():
            _not_huge(name, v)
    if len(c.conv_channels) != len(c.conv_strides):
        raise ConfigError(
            f"`conv_channels` and `conv_strides` need one value per layer, got {len(c.conv_channels)} "
            f"and {len(c.conv_strides)}"
        )
    if c.conv_kernel < 1 or c.conv_kernel % 2 == 0:
        raise ConfigError(f"`conv_kernel` must be odd (3, 5, ...), got {c.conv_kernel}")
    for name in (
        "z_dim",
        "epochs",
        "batch_size",
        "eval_batch_size",
        "log_every",
        "particles",
        "cycles",
        "select_every",
    ):
        _positive(name, getattr(c, name))
        _not_huge(name, getattr(c, name))
    for name in ("limit_train", "limit_test", "keep_checkpoints", "threads", "select_k"):
        if getattr(c, name) is not None:
            _positive(name, getattr(c, name))
            _not_huge(name, getattr(c, name))
    _check_guide(c)
    _check_labels(c)
    if not (c.ar_kernel % 2 == 1 and 3 <= c.ar_kernel <= 15):
        raise ConfigError(f"`ar_kernel` must be an odd width from 3 to 15, got {c.ar_kernel}; e.g. `ar_kernel=3`")
    if not (math.isfinite(c.ar_dropout) and 0 <= c.ar_dropout < 1):
        raise ConfigError(f"`ar_dropout` must be a share from 0 up to, not including, 1, got {c.ar_dropout}; e.g. 0.25")
    if not 1 <= c.mixture_components <= 100:
        raise ConfigError(f"`mixture_components` must be from 1 to 100, got {c.mixture_components}")
    if c.mixture_components != 10 and c.likelihood not in ("discretized-mixture", "autoregressive-mixture"):
        raise ConfigError(
            "`mixture_components` applies to `likelihood=discretized-mixture` and `autoregressive-mixture` "
            f"only, not `likelihood={c.likelihood}`: drop it"
        )
    for name in ("seed", "test_binarization_seed", "split_seed"):
        check_seed(_named(name), getattr(c, name))
    if not c.hidden or any(h <= 0 for h in c.hidden):
        raise ConfigError(f"`hidden` must be one or more positive widths, got {list(c.hidden)}; e.g. `hidden=400`")
    for h in c.hidden:
        _not_huge("hidden", h)
    if not c.data_dir:
        raise ConfigError("`data_dir` is empty; pass the folder holding the data, e.g. `data_dir=./data`")
    if c.out is not None and not str(c.out).strip():
        raise ConfigError("`out` is empty; pass a folder name, or leave `out` out for runs/<name>-<time>")
    _finite_positive("lr", c.lr, "e.g. `lr=1e-3`")
    _finite_positive("lr_gamma", c.lr_gamma, "e.g. `lr_gamma=0.5`")
    if c.lr_milestones is not None:
        if list(c.lr_milestones) != sorted(set(c.lr_milestones)):
            raise ConfigError(
                f"`lr_milestones` must be increasing epochs, got {list(c.lr_milestones)}; e.g. `lr_milestones=200 350`"
            )
        if c.cuda_graphs:
            raise ConfigError(
                "`lr_milestones` cannot change the step size of a captured `cuda_graphs` step; drop one of them"
            )
    if c.clip_grad is not None:
        _finite_positive("clip_grad", c.clip_grad, "e.g. `clip_grad=100`")
    if c.clip_relative is not None:
        if not (math.isfinite(c.clip_relative) and c.clip_relative > 1):
            raise ConfigError(
                f"`clip_relative` must be a multiple of the running gradient norm above 1, got {c.clip_relative!r}; "
                "e.g. `clip_relative=2`"
            )
        if c.clip_grad is not None:
            raise ConfigError("`clip_grad` and `clip_relative` both clip the gradient; choose one")
        if c.cuda_graphs:
            raise ConfigError("`clip_relative` clips outside the captured `cuda_graphs` step; drop one of them")
    if not (math.isfinite(c.ema) and 0 <= c.ema < 1):
        raise ConfigError(f"`ema` must be a decay from 0 (off) up to, not including, 1, got {c.ema}; e.g. `ema=0.999`")
    if c.ema and c.cuda_graphs:
        raise ConfigError("`ema` updates the average outside the captured `cuda_graphs` step; drop one of them")
    if c.time_limit is not None:
        _finite_positive("time_limit", c.time_limit, "minutes, e.g. `time_limit=10`")
    _finite_positive("likelihood_scale", c.likelihood_scale, "e.g. `likelihood_scale=0.1`")
    if c.validation < 0:
        raise ConfigError(f"`validation` must be >= 0, got {c.validation}")
    for name, example in (
        ("beta", "e.g. `beta=1`"),
        ("warmup", "e.g. `warmup=5`"),
        ("free_bits", "e.g. 0.1"),
        ("weight_decay", "e.g. `weight_decay=0.01`"),
    ):
        value = getattr(c, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{_named(name)} must be a finite number >= 0, got {value}; {example}")
    _check_schedule(c)
    return c


def _check_labels(c: TrainConfig) -> None:
    if c.model not in ("m2", "cvae"):
        return
    model = f"`model={c.model}`"
    if c.model == "m2":
        if c.labels is None:
            raise ConfigError("`model=m2` trains on a labelled share of the images: pass `labels=N`, e.g. `labels=100`")
        _positive("labels", c.labels)
        if not c.validation and c.dataset != "folder":  # an image folder may hold its own valid/
            raise ConfigError(
                "`model=m2` keeps best.pt by accuracy on labelled held-out images: pass `validation=N`, "
                "e.g. `validation=10000` for MNIST"
            )
        if c.elbo != "mc":
            raise ConfigError(
                f"`model=m2` sums the label out with TraceEnum_ELBO, whose KL for z is Monte-Carlo; "
                f"`elbo={c.elbo}` does not apply: drop it"
            )
        _finite_positive("classifier_weight", c.classifier_weight, "e.g. `classifier_weight=0.1`")
    if c.elbo == "iwae":
        raise ConfigError(f"{model} is built for the ELBO (`elbo=mc` or `analytic`), not `elbo=iwae`")
    if c.prior == "vamp":
        raise ConfigError(
            f"`prior=vamp` reads the encoder at pseudo-inputs, which in {model} would need labels too; "
            "choose another prior"
        )
    if c.free_bits:
        raise ConfigError(f"`free_bits` is not built for {model}: drop it")
    if c.guide != "gaussian":
        raise ConfigError(f"`guide={c.guide}` is for `model=vae`; the q(z|x,y) of {model} is Gaussian: drop it")
    if c.cuda_graphs:
        raise ConfigError(f"`cuda_graphs` captures the one-set ELBO step; {model} reads labels: drop it")


def _named(name: str) -> str:
    # a setting as messages name it; the command line shows it as its flag (pyro_vae.errors.as_flags)
    return f"`{name}`"


def _choice(name: str, value: str, choices: tuple[str, ...], custom: bool = False) -> None:
    # "custom" marks a part passed as a module (train(config, vae=...)); it is not offered as a flag
    if value not in choices and not (custom and value == "custom"):
        raise ConfigError(f"unknown `{name}={value!r}`; choose one of {', '.join(choices)}")


def _check_schedule(c: TrainConfig) -> None:
    """Every step size the schedule reaches can train (below 1e30: float32 weights moved that far overflow their
    squares), and with the weight decay keeps lr·λ < 1 (a step scales weights by 1 − lr·λ); refused up front."""
    for k in range(len(c.lr_milestones or ()) + 1):
        step = math.exp(math.log(c.lr) + k * math.log(c.lr_gamma))  # in logs: a huge lr_gamma**k cannot overflow
        if not step < 1e30 or step * c.weight_decay >= 1:
            why = f"and lr·λ = {step * c.weight_decay:g} ≥ 1 with `weight_decay`" if step < 1e30 else "unusable"
            raise ConfigError(f"the step size reaches {step:g} (`lr` × `lr_gamma`^{k}), {why}; lower them")


def _positive(name: str, value: int) -> None:
    if not value > 0:
        raise ConfigError(f"{_named(name)} must be a positive integer, got {value}")


# no tensor dimension, batch or count can be larger than this (torch indexes with 64-bit integers,
# and no memory holds 2**40 float32 values); larger values are refused by name before any estimate
MAX_SIZE = 2**40


def _not_huge(name: str, value: int) -> None:
    if value > MAX_SIZE:
        raise ConfigError(f"`{name}={value:.3g}` is beyond any memory (at most 2**40); lower it")


def _finite_positive(name: str, value: float, example: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{_named(name)} must be a finite number > 0, got {value}; {example}")


# pyro.set_rng_seed seeds NumPy too, which takes seeds in [0, 2**32)
MAX_SEED = 2**32 - 1


def check_seed(flag: str, value: int) -> None:
    """Refuse a seed that Python, NumPy and torch cannot all take."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{flag} must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {value}")


def check_types(config: TrainConfig) -> None:
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
        if f.name in _tuple_fields(config) and ok and value is not None:
            ok = all(isinstance(h, int) and not isinstance(h, bool) for h in value)
        if not ok:
            want = (
                "a list of integers"
                if f.name == "hidden"
                else " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            )
            raise ConfigError(f"{_named(f.name)} must be {want}, got {value!r}")


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
    "tuple[int, ...] | None": (tuple, list, type(None)),
}


def _tuple_fields(config: TrainConfig) -> tuple[str, ...]:
    # the settings that hold several integers: tuples here, lists in JSON
    return tuple(f.name for f in dataclasses.fields(config) if str(f.type).startswith("tuple"))
