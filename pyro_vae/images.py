"""PNG grids of images (reconstructions, prior samples)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def save_reconstructions(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path) -> None:
    """One row of originals above one row of their reconstructions; images ``(n, C, H, W)`` in [0, 1]."""
    rows = torch.cat([originals, reconstructions]).float().cpu()
    save_image(make_grid(rows, nrow=len(originals), padding=2, pad_value=0.5), path)


def save_samples(samples: torch.Tensor, path: str | Path, nrow: int = 8) -> None:
    """A square-ish grid of samples ``(n, C, H, W)`` in [0, 1]."""
    save_image(make_grid(samples.float().cpu(), nrow=nrow, padding=2, pad_value=0.5), path)
