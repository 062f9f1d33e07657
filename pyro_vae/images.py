"""The run folder's pictures: labelled PNG grids of reconstructions and prior samples, large
enough to read (small images are upscaled with nearest-neighbour pixels), and the learning curve."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

DPI = 100
MIN_TILE_PIXELS = 96  # each image is drawn at least this many pixels wide


def as_images(x: torch.Tensor) -> torch.Tensor:
    """Any batch of data points as pictures ``(n, C, H, W)`` with C = 1 or 3: ``(n, C, H, W)`` as it
    is (C other than 1 or 3: the first channel, in grey), ``(n, H, W)`` as grey images, flat ``(n, D)``
    as a grey square when D is one, else as a one-pixel-high strip."""
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        x = x.reshape(len(x), 1, side, side) if side * side == x.shape[1] else x.reshape(len(x), 1, 1, -1)
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() > 4:
        x = x.reshape(len(x), -1, *x.shape[-2:])
    if x.shape[1] not in (1, 3):
        x = x[:, :1]
    return x


def _grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 0.5) -> torch.Tensor:
    """Data points in [0, 1] (:func:`as_images`) -> an ``(H', W', 3)`` array for imshow: ``nrow`` images
    to a row, 2-pixel grey gutters around each, grey images as RGB; the layout of torchvision's
    ``make_grid`` (tested against it), without importing torchvision (seconds) in every training process."""
    x = as_images(images.detach()).float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    if n == 1:  # one image: as it is, no gutter (as make_grid does)
        return x[0].permute(1, 2, 0)
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = torch.full((3, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        top, left = (i // cols) * (h + padding) + padding, (i % cols) * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = x[i]
    return grid.permute(1, 2, 0)


def _scale(images: torch.Tensor) -> int:
    return max(1, math.ceil(MIN_TILE_PIXELS / max(as_images(images).shape[-2:])))


def _figure(grids: Sequence[tuple[torch.Tensor, str]], scale: int, title: str, path: str | Path) -> None:
    heights = [g.shape[0] for g, _ in grids]
    width = max(g.shape[1] for g, _ in grids)
    fig_w = width * scale / DPI + 1.4
    fig_h = sum(heights) * scale / DPI + 0.6 + 0.25 * len(grids)
    from matplotlib.figure import Figure  # not pyplot: no backend is touched, nothing global kept

    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    axes = fig.subplots(len(grids), 1, height_ratios=heights, squeeze=False)
    for ax, (grid, label) in zip(axes[:, 0], grids, strict=True):
        ax.imshow(grid.numpy(), interpolation="nearest", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def save_reconstructions(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    path: str | Path,
    epoch: int | None = None,
    pictures: str = "mean",
) -> None:
    """Originals (top row) above their reconstructions (bottom row), labelled; images ``(n, C, H, W)``
    in [0, 1]. ``pictures``: ``"mean"`` (E[x|z]) or ``"draw"`` (x ~ p(x|z)), for the title."""
    n = len(originals)
    when = f"epoch {epoch}: " if epoch is not None else ""
    shown = "x ~ p(x | z = posterior mean)" if pictures == "draw" else "E[x | z = posterior mean]"
    _figure(
        [(_grid(originals, n), "test image"), (_grid(reconstructions, n), "reconstruction")],
        _scale(originals),
        f"{when}held-out images and {shown}",
        path,
    )


def save_samples(
    samples: torch.Tensor, path: str | Path, nrow: int = 8, epoch: int | None = None, pictures: str = "mean"
) -> None:
    """A grid of prior samples ``(n, C, H, W)`` in [0, 1], titled; ``pictures`` as in
    :func:`save_reconstructions`."""
    when = f"epoch {epoch}: " if epoch is not None else ""
    shown = "draws x ~ p(x | z)" if pictures == "draw" else "samples E[x | z]"
    _figure(
        [(_grid(samples, nrow), "")],
        _scale(samples),
        f"{when}{len(samples)} {shown}, z ~ p(z)",
        path,
    )


def save_learning_curve(metrics: Sequence[Mapping[str, float]], path: str | Path, unit: str = "nats/image") -> None:
    """Train, validation and test loss against the epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=DPI)
    ax = fig.subplots()
    epochs = [m["epoch"] for m in metrics]
    curves = (("train_loss", "train (mean over the epoch)"), ("val_loss", "validation"), ("test_loss", "test"))
    for key, label in curves:
        values = [m.get(key, math.nan) for m in metrics]
        if any(not math.isnan(v) for v in values):
            ax.plot(epochs, values, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss (−ELBO, {unit})")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
