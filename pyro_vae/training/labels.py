"""Training with labels as a latent (``model=m2``): the labelled set, drawn once and kept in the run folder,
and the objective of one step, which mixes a labelled batch into every unlabelled one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

from pyro_vae.data import prepare
from pyro_vae.distributed import shard
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.files import write_atomic
from pyro_vae.models.m2 import SemiSupervisedVAE, balanced_subset
from pyro_vae.runs.folder import RunError

LABELLED_FILE = "labelled.json"


class EnumeratedELBO:
    """``TraceEnum_ELBO`` with the guide's label site enumerated in parallel: an ELBO object with the
    ``differentiable_loss(model, guide, *args)`` of the other objectives, so the held-out loss and the loop
    take it as they take ``Trace_ELBO``. With ``y`` given, nothing is enumerated and it is the plain ELBO."""

    def __init__(self) -> None:
        # one enumerated dimension to the left of the "data" plate
        self.enumerated = TraceEnum_ELBO(max_plate_nesting=1)
        self.labelled = Trace_ELBO()

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if len(args) > 1 or "y" in kwargs:  # labelled: no discrete latent left, the plain ELBO
            elbo = self.labelled
        else:
            elbo, guide = self.enumerated, config_enumerate(guide, "parallel")
        if not torch.is_grad_enabled():  # held-out scoring: Pyro's TraceEnum differentiable loss needs autograd
            return torch.tensor(elbo.loss(model, guide, *args, **kwargs), device=args[0].device)
        return elbo.differentiable_loss(model, guide, *args, **kwargs)


def class_count(labels: torch.Tensor, dataset: str) -> int:
    """The number of classes C in the training labels, refusing data whose labels are all one value (a dataset
    whose files carry none, such as binarized-mnist, or a folder without one sub-folder per class)."""
    found = labels.unique()
    if len(found) < 2:
        raise DataError(
            f"{dataset} has no labels (every image is class {found.tolist()}); `model=m2` needs labelled data: "
            "mnist, fashion-mnist, cifar10, or a folder with one sub-folder per class"
        )
    return int(labels.max()) + 1


def draw_labelled(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The indices (into the training images, validation excluded) that keep their labels: ``n`` of them,
    balanced over the classes, drawn with ``seed``."""
    if n > len(labels):
        raise ConfigError(f"`labels={n}` is more than the {len(labels)} training images; lower it")
    return balanced_subset(labels, n, seed)


def save_labelled(run_dir: Path, index: torch.Tensor, labels: torch.Tensor) -> None:
    """``labelled.json``: which training images were labelled (``index``) and their ``labels``, so a resume
    or a reader uses the very same set."""
    record = {"index": index.tolist(), "labels": labels.tolist()}
    text = json.dumps(record) + "\n"
    write_atomic(run_dir / LABELLED_FILE, lambda f: f.write(text.encode()))


def read_labelled(run_dir: Path, labels: torch.Tensor) -> torch.Tensor:
    """The labelled indices of a run, checked against the training labels they were drawn from."""
    path = run_dir / LABELLED_FILE
    try:
        record = json.loads(path.read_text())
        index = torch.tensor(record["index"], dtype=torch.long)
        saved = torch.tensor(record["labels"], dtype=torch.long)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path} is missing or damaged ({exc}); a run needs its labelled set") from None
    if index.dim() != 1 or len(index) != len(saved) or (len(index) and int(index.max()) >= len(labels)):
        raise RunError(f"{path} does not fit the {len(labels)} training images; point at the run's own data")
    if not torch.equal(labels[index].cpu(), saved):
        raise RunError(f"{path} names images whose labels differ from these data's; point at the run's own data")
    return index


@torch.no_grad()
def labelled_heldout_loss(vae: Any, elbo: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """A conditional VAE's held-out loss per image: −ELBO of x given its label y (one z draw per image, KL weight
    1), as :func:`pyro_vae.training.loop.heldout_loss` for the other models; under torchrun each rank scores its
    share and the sums are all-reduced."""
    from pyro_vae.distributed import all_sum

    total = torch.zeros((), device=x.device)
    mine = shard(len(x))
    xs, ys = x[mine], y[mine]
    weight, vae.kl_weight = vae.kl_weight, 1.0
    try:
        with vae.registration(False):
            for start in range(0, len(xs), batch_size):
                part = slice(start, start + batch_size)
                total += elbo.differentiable_loss(vae.model, vae.guide, xs[part], ys[part])
    finally:
        vae.kl_weight = weight
    return all_sum(total).item() / len(x)


class SemiSupervisedLoss(torch.nn.Module):
    """One step of M2 (Kingma et al. 2014, eq. 9) as a loss: the unlabelled batch ``x`` with y summed out, a
    batch of the labelled set with y observed, and the classifier term on it.

    Each step's loss estimates J^α·B/N for a batch of B images out of N: the unlabelled ELBO of the batch, the
    labelled set's ELBO scaled by its share (B/N)·(N_l/B_l), and α·(B/N)·mean(−log q(y|x)) with α =
    ``classifier_weight``·N. The labelled batches cycle through the labelled set in an order drawn from the
    seed and the cycle's number, so the batch of any step is known without state (an exact resume).

    :param vae: the M2 model.
    :param images: the labelled images, uint8, on the training device.
    :param labels: their labels.
    :param batch_size: labelled images per step (at most all of them).
    :param train_size: N, the training images of an epoch.
    :param classifier_weight: α / N.
    :param generator: draws the binarization of the labelled batches (the run's generator).
    :param kind: the likelihood's data kind; ``binary``: the images are binary already.
    :param seed: orders the labelled batches.
    :param conditional: a conditional VAE's step instead: every image is labelled, and the loss is the ELBO of the
        step's labelled batch given its labels (its size is the unlabelled batch's; ``x`` only sets it).
    :param elbo: the ELBO of the conditional step (``Trace_ELBO`` or ``TraceMeanField_ELBO``).
    """

    def __init__(
        self,
        vae: SemiSupervisedVAE,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train_size: int,
        classifier_weight: float,
        generator: torch.Generator,
        kind: str,
        binary: bool,
        seed: int,
        conditional: bool = False,
        elbo: Any = None,
    ) -> None:
        super().__init__()
        self.vae = vae
        self.images, self.labels = images, labels.to(images.device)
        self.batch_size = min(batch_size, len(images))
        self.unlabelled_batch = batch_size  # the global unlabelled batch of a step (each rank takes a share)
        self.train_size = train_size
        self.classifier_weight = classifier_weight
        self.generator, self.kind, self.binary, self.seed = generator, kind, binary, seed
        self.conditional = conditional
        self.elbo = elbo if conditional else EnumeratedELBO()
        self.step = 0  # the global step of the next call; the loop sets it at each epoch's start

    def labelled_index(self, step: int) -> torch.Tensor:
        """The labelled images of global step ``step``: consecutive slices of per-cycle permutations."""
        n, b = len(self.images), self.batch_size
        first = step * b
        parts, taken = [], 0
        while taken < b:
            cycle, at = divmod(first + taken, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + cycle))
            piece = order[at : at + b - taken]
            parts.append(piece)
            taken += len(piece)
        return torch.cat(parts).to(self.images.device)

    def global_batch(self, step: int) -> int:
        """The size of global step ``step``'s unlabelled batch, all ranks together: the epoch's batches are
        full but the last, which takes the rest of the ``train_size`` images."""
        b = self.unlabelled_batch
        at = step % -(-self.train_size // b)
        return min(b, self.train_size - at * b)

    def epoch_index(self, step: int) -> torch.Tensor:
        """The conditional step's images: one pass over every image per epoch, in an order drawn from the seed and
        the epoch's number; under torchrun this rank's share of the step's batch."""
        n, b = len(self.images), self.batch_size
        per_epoch = -(-n // b)
        epoch, at = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        batch = order[at * b : (at + 1) * b]
        return batch[shard(len(batch))].to(self.images.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        index = None if self.conditional else self.labelled_index(self.step)
        self.step += 1
        if self.conditional:  # the epoch's batches, drawn here with their labels
            index = self.epoch_index(self.step - 1)
            x_l = prepare(self.images[index], self.kind, self.generator, self.binary)
            return self.elbo.differentiable_loss(vae.model, vae.guide, x_l, self.labels[index])
        assert index is not None
        index = index[shard(len(index))]  # under torchrun each rank takes its share, as of the unlabelled batch
        x_l = prepare(self.images[index], self.kind, self.generator, self.binary)
        y_l = self.labels[index]
        # the global batch's share of the training set (not this rank's): summed over the ranks, the labelled
        # terms then weigh what one process gives them on the whole batch
        share = self.global_batch(self.step - 1) / self.train_size
        loss = self.elbo.differentiable_loss(vae.model, vae.guide, x) if len(x) else x.new_zeros(())
        if len(index):
            scale = share * len(self.images) / self.batch_size
            loss = loss + scale * self.elbo.differentiable_loss(vae.model, vae.guide, x_l, y_l)
            alpha = self.classifier_weight * self.train_size
            loss = loss + alpha * share * vae.classifier_loss(x_l, y_l) / self.batch_size
        return loss


__all__ = [
    "EnumeratedELBO",
    "SemiSupervisedLoss",
    "class_count",
    "draw_labelled",
    "labelled_heldout_loss",
    "read_labelled",
    "save_labelled",
]
