"""The reference loops the benchmark times ours against, each rebuilt as its authors run it: Pyro's
``examples/vae/vae.py`` (its own model and cached-tensor DataLoader), Pyro's tutorial loop, ``SVI.step``
on our pieces, and a plain-PyTorch floor with no Pyro at all. Each returns ``step(n)``: run n steps."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pyro
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pyro_vae.benchmark.config import BenchmarkConfig


def binarize_sample(x: torch.Tensor) -> torch.Tensor:
    # a module-level function so DataLoader workers can pickle the transform
    return torch.bernoulli(x)


def conventional_loop(vae, cfg: BenchmarkConfig, device: torch.device):
    """Pyro's tutorial: torchvision dataset, ToTensor, DataLoader(shuffle=True), SVI.step per batch."""
    import torchvision.transforms as T
    from pyro.infer import SVI, Trace_ELBO
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import MNIST

    dataset = MNIST(cfg.data_dir, train=True, download=False, transform=T.Compose([T.ToTensor(), binarize_sample]))
    if cfg.limit_train is not None:
        dataset = Subset(dataset, range(cfg.limit_train))
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )

    # vae.model / vae.guide register their modules with pyro.module, as the tutorial's do
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def step(n: int) -> None:
        done = 0
        while done < n:
            for x, _ in loader:
                svi.step(x.to(device))
                done += 1
                if done == n:
                    return

    return step


class ExampleVAE(torch.nn.Module):
    """The model of Pyro's ``examples/vae/vae.py``, rebuilt: MLP 784-400-50 with softplus units, an
    exponentiated encoder scale, a decoder that outputs probabilities (sigmoid, nudged off 0 and 1),
    ``pyro.module`` registration, and the ``"data"`` plate."""

    def __init__(self, event_shape, z_dim: int = 50, hidden: int = 400) -> None:
        super().__init__()
        pixels = math.prod(event_shape)
        self.z_dim, self.pixels, self.event_shape = z_dim, pixels, torch.Size(event_shape)
        self.enc_hidden = torch.nn.Linear(pixels, hidden)
        self.enc_loc = torch.nn.Linear(hidden, z_dim)
        self.enc_log_scale = torch.nn.Linear(hidden, z_dim)
        self.dec_hidden = torch.nn.Linear(z_dim, hidden)
        self.dec_out = torch.nn.Linear(hidden, pixels)
        self.encoder = torch.nn.ModuleList([self.enc_hidden, self.enc_loc, self.enc_log_scale])
        self.decoder = torch.nn.ModuleList([self.dec_hidden, self.dec_out])

    def model(self, x: torch.Tensor) -> None:
        import pyro.distributions as dist

        pyro.module("decoder", self.decoder)
        x = x.reshape(-1, self.pixels)
        with pyro.plate("data", x.shape[0]):
            loc = x.new_zeros((x.shape[0], self.z_dim))
            z = pyro.sample("latent", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            probs = torch.sigmoid(self.dec_out(F.softplus(self.dec_hidden(z))))
            probs = (probs + 1e-7) * (1 - 2e-7)  # the example's fudge against probabilities of exactly 0 or 1
            # grey values in [0, 1] as Bernoulli observations, as the example does
            pyro.sample("obs", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        import pyro.distributions as dist

        pyro.module("encoder", self.encoder)
        x = x.reshape(-1, self.pixels)
        with pyro.plate("data", x.shape[0]):
            hidden = F.softplus(self.enc_hidden(x))
            loc, scale = self.enc_loc(hidden), torch.exp(self.enc_log_scale(hidden))
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))

    # what pyro_vae.evaluate.elbo_terms asks of a model, to score the test set alike for every row
    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        pass

    def registration(self, enabled: bool):
        from contextlib import nullcontext

        return nullcontext()


class CachedImages(torch.utils.data.Dataset):
    """The example's cached dataset: all images as one float tensor in [0, 1], on the training device,
    served one index at a time to the DataLoader."""

    def __init__(self, images: torch.Tensor, device: torch.device) -> None:
        self.images = (images.float() / 255).reshape(len(images), -1).to(device)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def pyro_example_loop(vae: ExampleVAE, images: torch.Tensor, device: torch.device, batch_size: int):
    """Pyro's ``examples/vae/vae.py`` training loop: the cached-tensor DataLoader (shuffle, no workers,
    as the example sets them), ``SVI.step`` with ``Trace_ELBO`` and ``pyro.optim.Adam`` (lr 1e-3), the
    float loss of every step added up on the host."""
    from pyro.infer import SVI, Trace_ELBO
    from torch.utils.data import DataLoader

    loader = DataLoader(CachedImages(images, device), batch_size=batch_size, shuffle=True, num_workers=0)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())

    def step(n: int) -> None:
        done, epoch_loss = 0, 0.0
        while done < n:
            for x in loader:
                epoch_loss += svi.step(x)
                done += 1
                if done == n:
                    return

    return step


def svi_loop(vae, batches):
    """What a Pyro user writes with this library's pieces: ``SVI.step`` on the resident batches."""
    from pyro.infer import SVI, Trace_ELBO

    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def step(n: int) -> None:
        done = 0
        while done < n:
            for x in batches:
                svi.step(x)  # returns a float: one host sync per step, as SVI always does
                done += 1
                if done == n:
                    return

    return step


def pytorch_loop(vae, optimizer: torch.optim.Optimizer, batches):
    """The floor: the same networks and data pipeline, the loss written by hand, no Pyro."""

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        loc, scale = vae.encoder(x)
        z = loc + scale * torch.randn_like(loc)
        recon = F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
        kl = 0.5 * (scale.square() + loc.square() - 1 - 2 * scale.log()).sum()
        return recon + kl

    device = next(vae.parameters()).device

    def step(n: int) -> None:
        done = 0
        total = torch.zeros((), device=device)  # summed on the device, as the training loop does
        while done < n:
            for x in batches:
                loss = loss_fn(x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
                done += 1
                if done == n:
                    return

    return step
