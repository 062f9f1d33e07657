"""Training configuration: one typed dataclass, the single source of defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pyro_vae.errors import ConfigError
from pyro_vae.objectives import OBJECTIVES, SCHEDULES
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.nets import NETWORKS
from pyro_vae.parts.priors import PRIORS

DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "cifar10", "folder")  # see pyro_vae.data.DATASETS
DEVICES = ("auto", "cpu", "cuda")
PLACEMENTS = ("auto", "resident", "stream")
MODELS = ("vae", "ladder")
INFERENCES = ("ladder", "bottom-up")
WARMUP_UNITS = ("epochs", "steps")
ELBOS = tuple(OBJECTIVES)
PRIOR_NAMES = tuple(PRIORS)
NETS = tuple(NETWORKS)
LIKELIHOOD_NAMES = tuple(LIKELIHOODS)
GUIDE_NAMES = tuple(GUIDES)


def setting(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A field of :class:`TrainConfig` with its one description: ``help`` (the command line's text for
    its flag) and, for a choice, its ``choices``. The command line is built from these."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Every setting of a training run; ``config.json`` in the run folder is this, resolved."""

    #: a name of pyro_vae.data.DATASETS; pixels are prepared for the likelihood
    dataset: str = setting("mnist", "the dataset", choices=DATASETS)
    #: the dataset's root (torchvision layout), or the image folder for "folder"
    data_dir: str = setting("./data", "root in torchvision's layout, <dir>/MNIST/raw/")
    #: fetch missing files through torchvision; off for air-gapped machines
    download: bool = setting(True, "fail instead of downloading missing files")
    #: folder: resize the shorter side, centre-crop S x S; None: keep sizes
    image_size: int | None = setting(None, "folder: resize the shorter side, centre-crop S x S")
    #: folder: 1 (grayscale) or 3 (RGB); None: 1 only if every image is grayscale
    channels: int | None = setting(None, "folder: 1 (grayscale) or 3 (RGB)", choices=(1, 3))
    #: folder without train/ and test/: share held out, by a hash of each path
    test_fraction: float = setting(0.1, "folder: held-out share")
    #: seed of that held-out split; apart from `seed` so the split stays put
    split_seed: int = setting(0, "folder: seed of the held-out split")
    #: cut every image into non-overlapping P x P tiles (texture datasets)
    patches: int | None = setting(None, "cut every image into non-overlapping P x P tiles")
    #: folder: where decoded arrays are cached; None: beside the images
    cache_dir: str | None = setting(None, "folder: where decoded images are cached")
    #: "resident" on the device, "stream" from host memory, "auto": by size
    data_placement: str = setting(
        "auto", "training images on the device, or streamed from host memory", choices=PLACEMENTS
    )
    #: "vae": one latent layer; "ladder": a hierarchy z_1 ... z_L (pyro_vae.models.hierarchy)
    model: str = setting("vae", "one latent layer, or a hierarchy", choices=MODELS)
    #: --model ladder: "ladder" (merged top-down) or "bottom-up" q(z_1|x) q(z_2|z_1) ...
    inference: str = setting(
        "ladder", "`model=ladder`: merged top-down (ladder) or q(z1|x) q(z2|z1) ...", choices=INFERENCES
    )
    #: --model ladder: units per layer, z_1 first; None: 64 32 16 8 4
    latents: tuple[int, ...] | None = setting(None, "`model=ladder`: units per layer, z1 first")
    #: --model ladder: batch norm in the deterministic layers (the ladder paper's)
    batch_norm: bool = setting(False, "`model=ladder`: batch norm in the deterministic layers")
    #: nats per latent unit each layer keeps for free (Kingma et al. 2016); 0: off
    free_bits: float = setting(0.0, "nats per latent unit each layer keeps free")
    #: "mlp" | "conv": the encoder/decoder pair; shapes come from the data ("custom": yours)
    net: str = setting("mlp", "encoder/decoder pair", choices=NETS)
    #: latent size; 50 as in Pyro's VAE example
    z_dim: int = setting(50, "latent size")
    #: MLP hidden widths in encoder order; the decoder mirrors them
    hidden: tuple[int, ...] = setting((400,), "MLP hidden widths")
    #: MLP decoder widths from z outwards; None mirrors `hidden`
    decoder_hidden: tuple[int, ...] | None = setting(None, "MLP decoder widths from z out")
    #: conv filters per layer (seed 000's stack)
    conv_channels: tuple[int, ...] = setting((32, 64, 64, 64), "conv filters")
    #: one stride per conv layer
    conv_strides: tuple[int, ...] = setting((1, 2, 2, 1), "conv strides")
    #: odd, so "same" padding exists
    conv_kernel: int = setting(3, "conv kernel size, odd")
    #: shortcut: N stride-2 layers doubling from 32 filters, then a dense layer of hidden[-1] units;
    #: overrides conv_channels/conv_strides (large images, seed 001)
    conv_depth: int | None = setting(None, "N stride-2 layers doubling from 32 filters + dense")
    #: p(z), see pyro_vae.parts.priors.PRIORS ("custom": a module passed to train(vae=...))
    prior: str = setting("normal", "p(z)", choices=PRIOR_NAMES)
    #: p(x|z), see pyro_vae.parts.likelihoods.LIKELIHOODS; decides the data prep
    likelihood: str = setting("bernoulli", "p(x|z)", choices=LIKELIHOOD_NAMES)
    #: fixed (normal, laplace) or initial (normal-image/-pixel) scale on [0, 1]
    likelihood_scale: float = setting(0.1, "fixed scale of normal/laplace, initial scale of normal-image/-pixel")
    #: q(z|x), see pyro_vae.parts.guides.GUIDES ("custom": a module passed to train(vae=...))
    guide: str = setting("gaussian", "q(z|x): the posterior family", choices=GUIDE_NAMES)
    #: IAF used 2 to 8 steps on MNIST; each step adds a network of flow_hidden widths
    flows: int = setting(2, "steps of an iaf or householder `guide`")
    #: each flow step is an autoregressive network of these widths (IAF used one or two layers)
    flow_hidden: tuple[int, ...] = setting((256,), "hidden widths of each flow step's network")
    #: PixelCNN++ uses 10; more components model multi-modal pixels (edges) at a larger decoder head
    mixture_components: int = setting(
        10, "logistics per pixel of `likelihood=discretized-mixture` or `autoregressive-mixture` (1 to 100)"
    )
    #: passes over the training set; 10 reach about 102 nats on MNIST with the defaults
    epochs: int = setting(10, "passes over the training set")
    #: 128 reaches a lower 10-epoch test loss than 256 on MNIST (measured, README)
    batch_size: int = setting(128, "images per SVI step")
    #: Adam step size
    lr: float = setting(1e-3, "Adam learning rate")
    #: epochs after which the step size is multiplied by lr_gamma (torch's MultiStepLR by epoch; the
    #: papers' schedules: pythae's 200 350 500 ..., IWAE's 3**i stages)
    lr_milestones: tuple[int, ...] | None = setting(
        None, "epochs after which the learning rate is multiplied by `lr_gamma` (e.g. 200 350)"
    )
    #: factor applied at each milestone; 10**(-1/5) in pythae's, 10**(-1/7) in IWAE's
    lr_gamma: float = setting(0.1, "factor at each `lr_milestones` epoch")
    #: decoupled weight decay (AdamW) of the layers' weights, against overfitting a fixed training set
    #: (binarized MNIST); decoupled so its pull does not depend on the loss being summed over a batch
    weight_decay: float = setting(
        0.0, "decoupled (AdamW) weight decay of the weight matrices and kernels; 0 leaves them alone"
    )
    #: clip the gradient norm to this; None leaves gradients alone
    clip_grad: float | None = setting(None, "clip the gradient norm to this value")
    #: "mc": Trace_ELBO; "analytic": TraceMeanField_ELBO (closed-form KL); "iwae": L_K
    elbo: str = setting(
        "mc",
        "mc: Trace_ELBO; analytic: TraceMeanField_ELBO, closed-form KL; iwae: importance-weighted bound",
        choices=ELBOS,
    )
    #: K of the importance-weighted bound (--elbo iwae)
    particles: int = setting(5, "K for `elbo=iwae`")
    #: KL weight; a reconstruction factor alpha is the same objective as beta = 1/alpha
    beta: float = setting(1.0, "KL weight")
    #: "constant" | "linear" warm-up | "cyclical"; scales the KL up to beta
    kl_schedule: str = setting("constant", "KL weight schedule", choices=SCHEDULES)
    #: linear warm-up length, in warmup_unit
    warmup: float = setting(0, "linear warm-up length")
    #: "epochs" | "steps"
    warmup_unit: str = setting("epochs", "unit of `warmup`", choices=WARMUP_UNITS)
    #: cyclical schedule: cycles over the whole run
    cycles: int = setting(4, "cycles of the cyclical schedule")
    #: "auto" picks CUDA when torch sees a GPU
    device: str = setting("auto", "auto: CUDA when present", choices=DEVICES)
    #: None: the CPUs this process may use (affinity, cgroup quota), shared among torchrun's local ranks;
    #: 1 is often far faster on a CPU that other jobs also use
    threads: int | None = setting(None, "CPU threads (default: the CPUs this process may use)")
    #: torch.compile the encoder and decoder (benchmark before turning on)
    compile: bool = setting(False, "torch.compile the encoder and decoder")
    #: CUDA only: bfloat16 autocast for the networks; densities stay float32
    bf16: bool = setting(False, "CUDA: bfloat16 autocast for the networks, densities in float32")
    #: CUDA only: capture the whole SVI step once, replay it (launch-bound models)
    cuda_graphs: bool = setting(False, "CUDA: capture the whole SVI step as a CUDA graph and replay it")
    #: seeds initialisation, z draws, shuffling and the dynamic binarization
    seed: int = setting(0, "seed of init, z draws, shuffling, binarization")
    #: apart from `seed` so held-out numbers compare across runs
    test_binarization_seed: int = setting(0, "seed of the one fixed binarization of the test set")
    #: first N training images only: quick runs and tests
    limit_train: int | None = setting(None, "use only the first N training images")
    #: first N test images only
    limit_test: int | None = setting(None, "use only the first N test images")
    #: last N training images held out to pick best.pt; 0 picks on the test loss
    validation: int = setting(0, "hold out the last N training images to pick best.pt")
    #: held-out loss is computed in chunks this large
    eval_batch_size: int = setting(1000, "test images per chunk")
    #: steps between reading the loss back from the device (each read syncs)
    log_every: int = setting(50, "steps between loss read-outs")
    #: keep only the newest N epoch checkpoints; None keeps all
    keep_checkpoints: int | None = setting(None, "keep only the newest N epoch checkpoints (default: all)")
    #: minutes: end after the first epoch that passes it (runs on a budget)
    time_limit: float | None = setting(None, "minutes: end after the first epoch past it")
    #: tqdm bar with loss and images/s
    progress: bool = setting(True, "no progress bar")
    #: run folder; default runs/<dataset>-<net>-<elbo>-<timestamp>
    out: str | None = setting(None, "run folder (default runs/<dataset>-<net>-<elbo>-<date>-<time>)")

    def lr_at(self, epoch: int) -> float:
        """The step size of epoch ``epoch + 1`` (``epoch`` epochs done): ``lr`` times ``lr_gamma`` for every
        milestone already passed. A function of the epoch alone, so a resumed run needs no scheduler state."""
        passed = sum(1 for m in self.lr_milestones or () if epoch >= m)
        return self.lr * self.lr_gamma**passed

    def hierarchy(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``--model ladder``'s (latents, hidden): the given ones, or the ladder paper's MNIST set-up
        (64 32 16 8 4 / 512 256 128 64 32) when ``latents`` is not given and ``hidden`` is the default."""
        from pyro_vae.models.hierarchy import PAPER_HIDDEN, PAPER_LATENTS

        latents = tuple(self.latents) if self.latents is not None else PAPER_LATENTS
        hidden = tuple(self.hidden)
        if self.latents is None and hidden == (400,):
            hidden = PAPER_HIDDEN
        return latents, hidden

    def data_options(self) -> Any:
        """How to read the dataset: a :class:`pyro_vae.data.DataOptions` from these settings."""
        from pyro_vae.data.source import DataOptions

        return DataOptions(
            data_dir=self.data_dir,
            download=self.download,
            image_size=self.image_size,
            channels=self.channels,
            test_fraction=self.test_fraction,
            split_seed=self.split_seed,
            cache_dir=self.cache_dir,
        )

    def conv_spec(self) -> Any:
        """The conv stack of ``--net conv``: a :class:`pyro_vae.parts.nets.ConvSpec`."""
        from pyro_vae.parts.nets import ConvSpec

        if self.conv_depth is not None:
            return ConvSpec.doubling(self.conv_depth, self.hidden[-1], self.conv_kernel)
        return ConvSpec(tuple(self.conv_channels), tuple(self.conv_strides), self.conv_kernel)

    def check_all_used(self) -> TrainConfig:
        """Refuse a setting given a value that this run would silently ignore (a hierarchy option with
        ``model=vae``, a conv option with ``net=mlp``, ...), in one line naming it and what it needs.
        Checked for new runs only, so a run folder written before a rule was added still resumes."""
        from pyro_vae.usage import check_all_used

        check_all_used(self, {f.name: f.default for f in dataclasses.fields(self)})
        return self

    def _check_guide(self) -> None:
        if not 1 <= self.flows <= 64:
            raise ConfigError(f"`flows` must be from 1 to 64, got {self.flows}")
        if self.guide == "gaussian" and (self.flows != 2 or tuple(self.flow_hidden) != (256,)):
            raise ConfigError(
                "`flows` and `flow_hidden` shape a flow guide; with `guide=gaussian` they do nothing: drop them"
            )
        if self.guide != "gaussian" and self.model == "ladder":
            raise ConfigError(
                f"`guide={self.guide}` is for the one-layer VAE: the ladder's posterior is already a top-down "
                "hierarchy of Gaussians merged with the data, with no flow built in; use `model=vae`"
            )

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first impossible setting; return ``self``."""
        _check_types(self)
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("inference", self.inference, INFERENCES)
        _choice("net", self.net, NETS, custom=True)
        if self.free_bits and self.elbo == "iwae":
            raise ConfigError("`free_bits` applies to the ELBO's KL term; the IWAE bound has none: drop one of them")
        _choice("elbo", self.elbo, ELBOS)
        _choice("prior", self.prior, PRIOR_NAMES, custom=True)
        _choice("likelihood", self.likelihood, LIKELIHOOD_NAMES, custom=True)
        _choice("guide", self.guide, GUIDE_NAMES, custom=True)
        _choice("kl_schedule", self.kl_schedule, SCHEDULES)
        _choice("warmup_unit", self.warmup_unit, WARMUP_UNITS)
        _choice("device", self.device, DEVICES)
        _choice("data_placement", self.data_placement, PLACEMENTS)
        for name in ("image_size", "patches", "conv_depth"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
                _not_huge(name, getattr(self, name))
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"`channels` must be 1 or 3, got {self.channels}")
        if not (math.isfinite(self.test_fraction) and 0 < self.test_fraction < 1):
            raise ConfigError(f"`test_fraction` must be between 0 and 1, got {self.test_fraction}; e.g. 0.1")
        for name in ("decoder_hidden", "conv_channels", "conv_strides", "latents", "lr_milestones", "flow_hidden"):
            value = getattr(self, name)
            if value is not None and (not value or any(v <= 0 for v in value)):
                raise ConfigError(f"{_named(name)} must be one or more positive integers, got {list(value)}")
            for v in value or ():
                _not_huge(name, v)
        if len(self.conv_channels) != len(self.conv_strides):
            raise ConfigError(
                f"`conv_channels` and `conv_strides` need one value per layer, got {len(self.conv_channels)} "
                f"and {len(self.conv_strides)}"
            )
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ConfigError(f"`conv_kernel` must be odd (3, 5, ...), got {self.conv_kernel}")
        for name in ("z_dim", "epochs", "batch_size", "eval_batch_size", "log_every", "particles", "cycles"):
            _positive(name, getattr(self, name))
            _not_huge(name, getattr(self, name))
        for name in ("limit_train", "limit_test", "keep_checkpoints", "threads"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        self._check_guide()
        if not 1 <= self.mixture_components <= 100:
            raise ConfigError(f"`mixture_components` must be from 1 to 100, got {self.mixture_components}")
        if self.mixture_components != 10 and self.likelihood not in ("discretized-mixture", "autoregressive-mixture"):
            raise ConfigError(
                "`mixture_components` applies to `likelihood=discretized-mixture` and `autoregressive-mixture` "
                f"only, not `likelihood={self.likelihood}`: drop it"
            )
        for name in ("seed", "test_binarization_seed", "split_seed"):
            check_seed(_named(name), getattr(self, name))
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(
                f"`hidden` must be one or more positive widths, got {list(self.hidden)}; e.g. `hidden=400`"
            )
        for h in self.hidden:
            _not_huge("hidden", h)
        if not self.data_dir:
            raise ConfigError("`data_dir` is empty; pass the folder holding the data, e.g. `data_dir=./data`")
        if self.out is not None and not str(self.out).strip():
            raise ConfigError("`out` is empty; pass a folder name, or leave `out` out for runs/<name>-<time>")
        _finite_positive("lr", self.lr, "e.g. `lr=1e-3`")
        _finite_positive("lr_gamma", self.lr_gamma, "e.g. `lr_gamma=0.5`")
        if self.lr_milestones is not None:
            if list(self.lr_milestones) != sorted(set(self.lr_milestones)):
                raise ConfigError(
                    f"`lr_milestones` must be increasing epochs, got {list(self.lr_milestones)}; "
                    "e.g. `lr_milestones=200 350`"
                )
            if self.cuda_graphs:
                raise ConfigError(
                    "`lr_milestones` cannot change the step size of a captured `cuda_graphs` step; drop one of them"
                )
        if self.clip_grad is not None:
            _finite_positive("clip_grad", self.clip_grad, "e.g. `clip_grad=100`")
        if self.time_limit is not None:
            _finite_positive("time_limit", self.time_limit, "minutes, e.g. `time_limit=10`")
        _finite_positive("likelihood_scale", self.likelihood_scale, "e.g. `likelihood_scale=0.1`")
        if self.validation < 0:
            raise ConfigError(f"`validation` must be >= 0, got {self.validation}")
        for name, example in (
            ("beta", "e.g. `beta=1`"),
            ("warmup", "e.g. `warmup=5`"),
            ("free_bits", "e.g. 0.1"),
            ("weight_decay", "e.g. `weight_decay=0.01`"),
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{_named(name)} must be a finite number >= 0, got {value}; {example}")
        _check_schedule(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            if d[name] is not None:
                d[name] = list(d[name])
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
        for name in _TUPLE_FIELDS:
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        config = cls(**d)
        try:
            _check_types(config)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return config


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
        if f.name in _TUPLE_FIELDS and ok and value is not None:
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


# the settings that hold several integers: tuples here, lists in JSON
_TUPLE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if str(f.type).startswith("tuple"))

# what a run folder's config.json holds besides the settings
RUN_RECORD_KEYS = ("objective", "versions", "data", "custom", "world_size", "recipe")


__all__ = ["DATASETS", "DEVICES", "ELBOS", "LIKELIHOOD_NAMES", "NETS", "PRIOR_NAMES", "SCHEDULES", "TrainConfig"]
