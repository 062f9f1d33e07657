"""Training configuration: one typed dataclass, the single source of defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pyro_vae.config.checks import (
    DATASETS,
    DEVICES,
    ELBOS,
    GUIDE_NAMES,
    INFERENCES,
    LIKELIHOOD_NAMES,
    MODELS,
    NETS,
    PLACEMENTS,
    PRIOR_NAMES,
    SCHEDULES,
    WARMUP_UNITS,
    check_seed,
    check_types,
    validate,
)
from pyro_vae.errors import ConfigError


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
    #: "vae": one latent layer; "ladder": a hierarchy z_1 ... z_L (pyro_vae.models.hierarchy); "m2": the label as a
    #: discrete latent, summed out by enumeration where it is unknown; "cvae": x given its known label (models.m2)
    model: str = setting(
        "vae", "one latent layer, a hierarchy, M2 (semi-supervised) or a class-conditional VAE", choices=MODELS
    )
    #: --model m2: the labelled share of the training set, drawn with `seed`, the same number per class
    labels: int | None = setting(None, "`model=m2`: labelled training images, balanced over the classes")
    #: --model m2: alpha / N of Kingma et al.'s eq. 9 (they used 0.1); with 100 MNIST labels 10 kept the classifier
    #: on the labels where 0.1 and 1 let it drift (docs/howto/labels.md)
    classifier_weight: float = setting(10.0, "`model=m2`: alpha / N, the weight of the classifier term")
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
    #: a smaller causal neighbourhood tells each pixel less, so z must carry more (PixelVAE's trade-off)
    ar_kernel: int = setting(5, "`likelihood=autoregressive-mixture`: the causal neighbourhood's width (odd, 3 to 15)")
    #: hiding neighbours in training makes the head rely on z (Bowman et al.'s word dropout, for pixels)
    ar_dropout: float = setting(
        0.0, "`likelihood=autoregressive-mixture`: share of neighbour pixels hidden from the head in training"
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
    #: Polyak averaging (PixelCNN++, VDVAE): held-out losses that move by tenths of a bit/dim from epoch to
    #: epoch settle when scored with a moving average of the weights; 0.999 averages about the last 1000 steps
    ema: float = setting(
        0.0, "decay of the weights' moving average that held-out losses, best.pt and evaluation use; 0: off"
    )
    #: clip the gradient norm to this; None leaves gradients alone
    clip_grad: float | None = setting(None, "clip the gradient norm to this value")
    #: a clip that scales itself: the right absolute clip_grad differs by the gradient's size, which differs by
    #: dataset (about 2x the typical norm cuts spikes only); this cuts at a multiple of the running mean norm
    clip_relative: float | None = setting(
        None, "clip the gradient norm at this multiple of its running mean (e.g. 2); no scale to choose per dataset"
    )
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
    #: the validation ELBO and log p(x) can rank epochs differently by more than a nat: score by the latter
    select_k: int | None = setting(
        None, "keep best.pt by -log p(x), K importance samples on the validation images (default: by the ELBO)"
    )
    #: an estimate costs about K ELBO passes over the validation images: not every epoch
    select_every: int = setting(10, "`select_k`: epochs between the estimates (and the last epoch)")
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

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first impossible setting; return ``self``."""
        return validate(self)

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
            check_types(config)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return config


# the settings that hold several integers: tuples here, lists in JSON
_TUPLE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if str(f.type).startswith("tuple"))

# what a run folder's config.json holds besides the settings
RUN_RECORD_KEYS = ("objective", "versions", "data", "custom", "world_size", "recipe")


__all__ = [
    "DATASETS",
    "DEVICES",
    "ELBOS",
    "LIKELIHOOD_NAMES",
    "NETS",
    "PRIOR_NAMES",
    "SCHEDULES",
    "TrainConfig",
    "check_seed",
]
