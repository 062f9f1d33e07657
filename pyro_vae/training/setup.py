"""Everything before the first step: settings, output folder, data, model, optimiser and batches,
all checked before anything is written."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.config import TrainConfig
from pyro_vae.data import (
    ImageData,
    ResidentBatches,
    ShardedBatches,
    StreamedBatches,
    fixed,
    from_raw,
    load_source,
    prepare,
)
from pyro_vae.data.folder import cache_writes_after_checks
from pyro_vae.distributed import World, derive_seed, device_for, gather_objects, resolve_device, world
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models import VAE, build_vae_from_config
from pyro_vae.objectives import kl_weight, make_elbo
from pyro_vae.parts.guides import GaussianPosterior
from pyro_vae.parts.priors import has_closed_form_kl
from pyro_vae.resources import available_bytes, check_fits, set_threads, training_bytes
from pyro_vae.runs.checkpoint import rng_state, training_state
from pyro_vae.runs.folder import check_out_dir, custom_parts, data_record
from pyro_vae.training.average import attach_average, averaged
from pyro_vae.training.clip import attach_relative_clip
from pyro_vae.training.labels import (
    EnumeratedELBO,
    SemiSupervisedLoss,
    class_count,
    draw_labelled,
    read_labelled,
)
from pyro_vae.training.loop import layer_weights, make_optimizer


def describe_objective(vae: VAE, config: TrainConfig) -> str:
    """What the run optimises, e.g. "KL: analytic" or "KL: Monte-Carlo, prior has no closed form"."""
    if config.model == "cvae":
        text = f"conditional VAE: x given its label; {describe_objective(vae, replace(config, model='vae'))}"
    elif config.model == "m2":
        text = (
            f"M2: y enumerated where unlabelled (TraceEnum_ELBO), KL Monte-Carlo; {config.labels} labelled images, "
            f"classifier term alpha = {config.classifier_weight:g} N"
        )
    elif config.elbo == "iwae":
        text = f"objective: IWAE bound, K={config.particles} (KL inside the importance weights)"
    elif config.elbo == "mc":
        text = "KL: Monte-Carlo (Trace_ELBO)"
    elif not isinstance(getattr(vae, "posterior", None), GaussianPosterior):
        text = f"KL: Monte-Carlo, guide {config.guide!r} (a flow) has no closed form"
    elif has_closed_form_kl(vae.prior):
        text = "KL: analytic"
    else:
        text = f"KL: Monte-Carlo, prior {config.prior!r} has no closed form"
    if config.free_bits:
        text += f"; free bits {config.free_bits:g} nats per latent unit"
    if config.beta != 1 or config.kl_schedule != "constant":
        text += f"; KL weight {config.kl_schedule} up to beta={config.beta:g}"
    return text


def _default_out(config: TrainConfig) -> str:
    """``runs/<dataset>-<net>-<elbo>-<date>-<time>``, with ``-2``, ``-3``, ... when runs started in the
    same second (a notebook loop over settings) would otherwise share it."""
    base = f"runs/{config.dataset}-{config.net}-{config.elbo}-{datetime.now():%Y%m%d-%H%M%S}"
    out, n = base, 1
    while Path(out).exists():
        n += 1
        out = f"{base}-{n}"
    return out


def check_image_data(data: ImageData) -> None:
    """Refuse data that cannot be trained on, with one line naming the problem and the fix."""
    for name, x in (("training", data.train), ("test", data.test)):
        if not torch.is_tensor(x):
            fix = "torch.from_numpy(array)" if type(x).__module__ == "numpy" else "torch.as_tensor(...)"
            raise DataError(f"the {name} images must be a torch tensor, got {type(x).__name__}; wrap them: {fix}")
        if len(x) == 0:
            raise DataError(f"the {name} set is empty; check `limit_train`/`limit_test` and the data folder")
    if data.train.dtype != torch.uint8:
        raise DataError(
            f"training images must be uint8 intensities 0..255, got {data.train.dtype}; pass raw pixels and "
            "pyro_vae prepares them for the likelihood"
        )
    if data.train.dim() < 2:
        raise DataError(f"training images must be shaped (N, ...), got {tuple(data.train.shape)}")
    if data.test.shape[1:] != data.train.shape[1:]:
        raise DataError(
            f"test images are shaped {tuple(data.test.shape[1:])} but training images {tuple(data.train.shape[1:])}"
        )


@dataclass
class Run:
    """The live state of a training run: what the loop reads and what checkpoints save."""

    config: TrainConfig
    vae: VAE
    elbo: Any
    heldout_elbo: Any
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    batches: ResidentBatches
    val: torch.Tensor | None
    test: torch.Tensor
    run_dir: Path
    data_record: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, str] = field(default_factory=dict)
    metrics: list[dict[str, float]] = field(default_factory=list)
    world: World = field(default_factory=World)  # this process's rank under torchrun
    objective: Any = None  # the DDP-wrapped ELBOLoss of a distributed run, else None (the ELBO itself)
    # model=m2: the labelled set's loss, the indices kept labelled, and the held-out labels scored each epoch
    labelled: Any = None
    labelled_index: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def total_steps(self) -> int:
        return self.config.epochs * len(self.batches)

    def weight(self, step: int) -> float:
        c = self.config
        return kl_weight(
            step,
            len(self.batches),
            self.total_steps,
            beta=c.beta,
            schedule=c.kl_schedule,
            warmup=c.warmup,
            warmup_unit=c.warmup_unit,
            cycles=c.cycles,
        )

    def state(self, epoch: int, step: int, position: dict | None = None, best: float | None = None) -> dict:
        """The checkpoint's contents. Under torchrun a collective: every rank's random state is gathered
        (``rank_rng``, with the shared permutation RNG in ``order``), so resuming is exact."""
        ranks = gather_objects(rng_state(self.generator)) if self.world.distributed else None
        averaged_model = None
        with averaged(self.optimizer if self.config.ema else None) as swapped:
            if swapped:  # what evaluation loads; "model" stays the raw weights the optimiser steps
                averaged_model = {k: v.detach().clone() for k, v in self.vae.state_dict().items()}
        state = training_state(
            self.vae,
            self.optimizer,
            self.config,
            epoch,
            step,
            generator=self.generator,
            position=position,
            best=best,
            data=self.data_record,
            custom=self.custom,
            averaged=averaged_model,
        )
        if ranks is not None:
            assert isinstance(self.batches, ShardedBatches)
            state.update(world_size=self.world.size, rank_rng=ranks, order=self.batches.order.get_state())
        return state


def setup_run(config: TrainConfig, data: ImageData | None, vae: VAE | None = None, *, new_run: bool = True) -> Run:
    """Everything before the first step: validate settings, output folder and data, load, build.
    Raises before anything is written, so a bad input never leaves a half-made run folder (nor an image
    folder's cache: it is written only once every check has passed)."""
    with cache_writes_after_checks():
        return _setup_run(config, data, vae, new_run=new_run)


def _setup_run(config: TrainConfig, data: ImageData | None, vae: VAE | None, *, new_run: bool) -> Run:
    config.validate()
    if new_run:
        config.check_all_used()
    if vae is None:
        named = ["net", "prior", "likelihood", "guide"]
        custom_named = [p for p in named if getattr(config, p) == "custom"]
        if custom_named:
            raise ConfigError(
                f"`{custom_named[0]}=custom` needs your module: train(config, vae=build_vae(..., "
                f"{custom_named[0]}=<module>)), or name a built-in {custom_named[0]}"
            )
    device = device_for(resolve_device(config.device))
    set_threads(config.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    here = world()
    if config.bf16 and device.type != "cuda":
        raise ConfigError("`bf16` autocast is for CUDA; drop it on the CPU")
    if config.cuda_graphs:
        if device.type != "cuda":
            raise ConfigError("`cuda_graphs` needs CUDA; drop it on the CPU")
        if here.distributed:
            raise ConfigError("`cuda_graphs` is for one process; drop it under torchrun")
        if config.compile:
            raise ConfigError("`cuda_graphs` and `compile` both rewrite the step; pick one")
    out = config.out or _default_out(config)
    if here.distributed:  # rank 0's clock names the folder
        out = gather_objects(out)[0]
    config = replace(config, device=device.type, out=out)
    if new_run:
        check_out_dir(config.out)  # type: ignore[arg-type]
    from_memory = data is not None
    if data is None:
        config = replace(config, data_dir=str(Path(config.data_dir).resolve()))
        if config.cache_dir is not None:
            config = replace(config, cache_dir=str(Path(config.cache_dir).resolve()))
        raw = load_source(config.dataset, config.data_options(), config.patches)
        event_shape = raw.train.shape[1:]
    else:
        raw, event_shape = None, data.event_shape
    classes = None
    if config.model in ("m2", "cvae"):
        classes = class_count((raw or data).train_labels, config.dataset if raw is not None else data.name)
    pyro.set_rng_seed(config.seed)
    if vae is None:
        # M2 decodes every class of an unlabelled batch at once
        enumerated = classes if config.model == "m2" else 1
        points = config.batch_size * (config.particles if config.elbo == "iwae" else enumerated or 1)
        with torch.device("meta"):
            sketch = build_vae_from_config(event_shape, config, classes=classes)
        hidden = " ".join(map(str, config.hidden))
        sizes = f"`z_dim={config.z_dim}`, `hidden={hidden}`, `batch_size={config.batch_size}`"
        if config.elbo == "iwae":
            sizes += f", `particles={config.particles}`"
        check_fits(
            training_bytes(sketch, event_shape, config.z_dim, points),
            device,
            f"a {config.net} VAE for {tuple(event_shape)} data with {sizes}",
            "lower them",
        )
        vae = build_vae_from_config(event_shape, config, classes=classes)
        custom: dict[str, str] = {}
    else:
        if not isinstance(vae, VAE):
            raise ConfigError(f"vae= must be a pyro_vae.VAE (build one with build_vae or VAE(...)), got {type(vae)}")
        if tuple(vae.event_shape) != tuple(event_shape):
            raise ConfigError(f"the VAE models data shaped {tuple(vae.event_shape)}, the data are {tuple(event_shape)}")
        custom = custom_parts(vae, config)
        config = replace(
            config,
            # one custom network: the other is still rebuilt from the name
            net="custom" if {"encoder", "decoder"} <= set(custom) else config.net,
            prior="custom" if "prior" in custom else config.prior,
            likelihood="custom" if "likelihood" in custom else config.likelihood,
            guide="custom" if "posterior" in custom else config.guide,
        )
    if getattr(vae, "inference", None) == "bottom-up" and config.elbo == "analytic":
        raise ConfigError(
            "`elbo=analytic` with `inference=bottom-up` would be biased: the guide draws z_1 before z_2, so "
            "KL(q(z_1|x) || p(z_1|z_2)) at a z_2 drawn from z_1 is not an unbiased KL term; use `elbo=mc` or "
            "`inference=ladder`"
        )
    kind = vae.data_kind
    if raw is not None:
        data = from_raw(config.dataset, raw, kind, config.test_binarization_seed, config.limit_train, config.limit_test)
    assert data is not None
    if data.kind != kind:
        raise ConfigError(
            f"the data were prepared as {data.kind!r} but `likelihood={config.likelihood}` expects {kind!r}; "
            f"load them with load_data(..., kind={kind!r})"
        )
    check_image_data(data)
    train_images, val = data.train, None
    if data.valid is not None:  # the dataset's own validation split chooses best.pt
        if config.validation:
            raise ConfigError(
                f"{config.dataset} has its own validation split ({len(data.valid)} images) for best.pt; "
                "drop `validation`"
            )
        val = fixed(data.valid, kind, config.test_binarization_seed + 1, data.binary)
    elif config.validation:
        if config.validation >= len(data.train):
            raise ConfigError(
                f"`validation={config.validation}` leaves no training images out of {len(data.train)}; lower it"
            )
        train_images = data.train[: -config.validation]
        # held out once, binarized once with a seed of its own, like the test set
        g = torch.Generator().manual_seed(config.test_binarization_seed + 1)
        val = prepare(data.train[-config.validation :], kind, g, data.binary)
    if config.model == "m2" and val is None:
        raise ConfigError(
            "`model=m2` keeps best.pt by accuracy on labelled held-out images: pass `validation=N`, or give the "
            "image folder a valid/ beside train/ and test/"
        )
    if config.select_k is not None and val is None:
        raise ConfigError(
            "`select_k` scores the validation images: pass `validation=N`, or use a dataset with its own split"
        )
    if config.batch_size > len(train_images):
        raise ConfigError(
            f"`batch_size={config.batch_size}` is larger than the {len(train_images)} training images; lower it"
        )
    if config.batch_size < here.size:
        raise ConfigError(
            f"`batch_size={config.batch_size}` is the global batch, split across {here.size} ranks; "
            f"pass at least {here.size}"
        )
    vae.check_data(data.test, "test images")
    vae.to(device)
    if config.compile:
        vae.encoder.compile()  # in place: state_dict keys stay as they are
        vae.decoder.compile()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    stream = _streamed(config.data_placement, train_images, device)
    if here.distributed:
        # the model was initialised alike on every rank (and DDP broadcasts rank 0's anyway); from here on
        # each rank draws its own z and binarization, while the data order comes from the shared seed
        torch.manual_seed(derive_seed(config.seed, here.rank))
        generator.manual_seed(derive_seed(config.seed, here.rank))
        batches: ResidentBatches = ShardedBatches(
            train_images,
            config.batch_size,
            generator,
            kind,
            data.binary,
            device=device,
            rank=here.rank,
            world_size=here.size,
            seed=config.seed,
        )
    elif stream:
        batches = StreamedBatches(train_images, config.batch_size, generator, kind, data.binary, device=device)
    else:
        batches = ResidentBatches(
            torch.as_tensor(train_images).to(device), config.batch_size, generator, kind, data.binary
        )
    run = Run(
        config=config,
        vae=vae,
        elbo=make_elbo(config.elbo, config.particles, config.free_bits),
        heldout_elbo=make_elbo(config.elbo, config.particles),  # the real bound, free bits or not
        optimizer=make_optimizer(vae.parameters(), config.lr, config.weight_decay, layer_weights(vae)),
        generator=generator,
        batches=batches,
        val=None if val is None else val.to(device),
        test=data.test.to(device),
        run_dir=Path(config.out),  # type: ignore[arg-type]
        data_record=data_record(data, config, from_memory),
        custom=custom,
        world=here,
    )
    if config.ema:  # the average rides in the optimiser's state: checkpoints and resume carry it
        attach_average(run.optimizer, config.ema)
    if config.clip_relative is not None:  # its running mean rides in the optimiser's state, as the average
        attach_relative_clip(run.optimizer, config.clip_relative)
    if config.model in ("m2", "cvae"):
        _attach_labels(run, data, len(train_images), new_run)
    return run


def _attach_labels(run: Run, data: ImageData, train_size: int, new_run: bool) -> None:
    """M2: the labelled set (drawn for a new run, read back from the run folder on resume), its loss, and the
    labels of the held-out images that choose best.pt. The validation images are never labelled for training.
    A conditional VAE: every training image is labelled, and its step is the ELBO of a batch given its labels."""
    config, device = run.config, run.test.device
    labels = data.train_labels[:train_size]
    conditional = config.model == "cvae"
    if conditional:
        index = torch.arange(train_size)
    elif new_run:
        index = draw_labelled(labels, config.labels, config.seed)  # type: ignore[arg-type]
        run.labelled_index = index
    else:
        index = run.labelled_index = read_labelled(run.run_dir, labels)
    if not conditional:
        run.elbo = run.heldout_elbo = EnumeratedELBO()
    run.labelled = SemiSupervisedLoss(
        run.vae,  # type: ignore[arg-type]
        data.train[index].to(device),
        labels[index],
        batch_size=config.batch_size,
        train_size=train_size,
        classifier_weight=config.classifier_weight,
        generator=run.generator,
        kind=run.vae.data_kind,
        binary=data.binary,
        seed=config.seed,
        conditional=conditional,
        elbo=run.elbo if conditional else None,
    )
    own = data.valid is not None and data.valid_labels is not None and not config.validation
    run.val_labels = (data.valid_labels if own else data.train_labels[train_size:]).to(device)  # type: ignore[union-attr]
    run.test_labels = data.test_labels.to(device)


# resident data may take at most this share of the device's free memory; the rest is for the model
RESIDENT_SHARE = 0.5


def _streamed(placement: str, images: torch.Tensor, device: torch.device) -> bool:
    """Whether the training images stream from host memory (``"auto"``: when they would take more
    than half of the device's free memory)."""
    if placement != "auto":
        return placement == "stream"
    if device.type == "cpu":
        return False  # host memory is the device's: a memory map is paged in as it is read
    return images.numel() * images.element_size() > RESIDENT_SHARE * available_bytes(device)


# below this many optimiser steps a VAE has barely left its initialisation: grey pictures, high losses
FEW_STEPS = 200


def late_milestones_note(milestones: tuple[int, ...] | None, epochs: int) -> str | None:
    """One line when step-size milestones lie at or past the last epoch: they change nothing in this run, and
    apply only if it is resumed past them (a schedule written for a longer run, trained in parts)."""
    late = [m for m in milestones or () if m >= epochs]
    if not late:
        return None
    return (
        f"note: the step-size milestones {' '.join(map(str, late))} lie at or past the last epoch ({epochs}); "
        "the step size changes there only if the run is resumed past them"
    )


def few_steps_note(total: int, per_epoch: int, epochs: int) -> str | None:
    """One line when a run is too short to learn much, saying how short and what to change."""
    if total >= FEW_STEPS:
        return None
    return (
        f"note: this run takes only {total} optimiser steps ({epochs} epochs of {per_epoch}); after fewer than "
        f"{FEW_STEPS} a VAE has barely moved from its start (grey pictures, high losses): raise the epochs, "
        "lower the batch size or give it more images"
    )
