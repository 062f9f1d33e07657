"""The run folder's pictures: the grid layout against torchvision's ``make_grid``, and a library import that
leaves torchvision and matplotlib for when they are needed (each costs seconds in every process)."""

import subprocess
import sys

import pytest
import torch
from torchvision.utils import make_grid

from pyro_vae.images import _grid, as_images, save_learning_curve, save_reconstructions, save_samples

from conftest import ROOT


@pytest.mark.parametrize(
    "n,nrow,shape",
    [(8, 8, (1, 28, 28)), (5, 2, (3, 7, 9)), (16, 8, (1, 4, 4)), (1, 8, (3, 5, 5)), (7, 3, (2, 6, 6)), (3, 1, (784,))],
)
def test_the_grid_is_torchvisions_make_grid(n, nrow, shape):
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(n)) * 1.2 - 0.1  # outside [0, 1] too
    ref = make_grid(as_images(x).clamp(0, 1), nrow=nrow, padding=2, pad_value=0.5).permute(1, 2, 0)
    assert torch.equal(_grid(x, nrow), ref)


def test_pictures_and_the_curve_are_written(tmp_path):
    x = torch.rand(4, 1, 8, 8)
    save_reconstructions(x, x, tmp_path / "r.png", epoch=1)
    save_samples(x, tmp_path / "s.png", nrow=2)
    save_learning_curve([{"epoch": 1, "train_loss": 3.0, "test_loss": 2.0}], tmp_path / "c.png")
    for name in ("r.png", "s.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_library_leaves_torchvision_and_matplotlib_unloaded():
    mods = "pyro_vae, pyro_vae.cli, pyro_vae.training, pyro_vae.evaluate"
    code = f"import sys, {mods}; print(sorted(m for m in ('torchvision', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
