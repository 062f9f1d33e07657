"""Matplotlib figures for the notebooks: estimator convergence, learning curves, latent space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes

from pyro_vae.images import _grid
from pyro_vae.models import VAE


def _axes(ax: Axes | None, size: tuple[float, float] = (5, 4)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size)[1]


def plot_images(images: torch.Tensor, nrow: int = 8, ax: Axes | None = None, title: str | None = None) -> Axes:
    """A grid of images ``(n, C, H, W)`` in [0, 1]."""
    ax = _axes(ax, (6, 6))
    ax.imshow(_grid(images, nrow).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_nll_vs_k(result: Mapping, ax: Axes | None = None) -> Axes:
    """−log p(x) against K (log scale) with ±2 s.e. bars, and both −ELBO estimates for reference,
    from the dict :func:`pyro_vae.evaluate.evaluate` returns."""
    ax = _axes(ax)
    ks = sorted(int(k) for k in result["nll"])
    means = [result["nll"][str(k)]["mean"] for k in ks]
    errs = [2 * result["nll"][str(k)]["se"] for k in ks]
    ax.errorbar(ks, means, yerr=errs, marker="o", capsize=3, label="−log p(x), importance sampled")
    for name, style in (("mc", "--"), ("analytic", ":")):
        ax.axhline(result["elbo"][name]["neg_elbo"]["mean"], ls=style, color="gray", label=f"−ELBO ({name} KL)")
    ax.set_xscale("log")
    ax.set_xlabel("importance samples K")
    ax.set_ylabel("nats per image")
    ax.legend()
    return ax


def plot_learning_curves(runs: Mapping[str, Sequence[Mapping[str, float]]], ax: Axes | None = None) -> Axes:
    """Train (dashed) and test (solid) loss per epoch for each labelled run's metrics."""
    ax = _axes(ax)
    for i, (label, metrics) in enumerate(runs.items()):
        epochs = [m["epoch"] for m in metrics]
        color = f"C{i}"
        ax.plot(epochs, [m["train_loss"] for m in metrics], "--", color=color, label=f"{label} train")
        ax.plot(epochs, [m["test_loss"] for m in metrics], "-o", color=color, label=f"{label} test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("−ELBO, nats per image")
    ax.legend()
    return ax


@torch.no_grad()
def plot_latent_scatter(vae: VAE, x: torch.Tensor, labels: torch.Tensor, ax: Axes | None = None) -> Axes:
    """Posterior means of a 2-D latent (the decoder's input, z_1 of a hierarchy), coloured by label."""
    loc = vae.posterior_means(x)[0]
    if loc.shape[-1] != 2:
        raise ValueError(f"a latent scatter needs z_dim = 2, this model has {loc.shape[-1]}")
    ax = _axes(ax, (6, 5))
    points = ax.scatter(*loc.cpu().T, c=labels.cpu(), cmap="tab10", s=4, alpha=0.7)
    ax.figure.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("z₁ (posterior mean)")
    ax.set_ylabel("z₂ (posterior mean)")
    return ax


@torch.no_grad()
def plot_manifold(vae: VAE, n: int = 15, ax: Axes | None = None) -> Axes:
    """E[x|z] over an n x n grid of a 2-D latent plane, at the prior's Normal quantiles."""
    device = next(vae.parameters()).device
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z = torch.cartesian_prod(q.flip(0), q)[:, [1, 0]].to(device)  # rows: z₂ high to low; columns: z₁
    return plot_images(vae.decode_mean(z), nrow=n, ax=ax, title="decoded latent plane")


@torch.no_grad()
def interpolate(vae: VAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """E[x|z] along the straight line between the posterior means of two data points."""
    za, zb = vae.posterior_means(torch.stack([x_a, x_b]))[0]
    t = torch.linspace(0, 1, steps, device=za.device).unsqueeze(-1)
    return vae.decode_mean((1 - t) * za + t * zb)


def plot_estimator_variance(stats: Mapping[str, Mapping[str, float]], axes: Sequence[Axes] | None = None) -> None:
    """Bars of the loss and gradient variance of each ELBO estimator, on linear axes from zero, each
    bar labelled with its value."""
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(9, 3.5))[1]
    names = list(stats)
    for ax, key, label in zip(
        axes, ("loss_var", "grad_var"), ("Var[loss per image]", "total Var[gradient]"), strict=True
    ):
        values = [stats[n][key] for n in names]
        bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values])
        ax.set_ylim(0, 1.15 * max(values))
        ax.set_title(label)
    plt.tight_layout()


def plot_term_covariance(cov: Mapping[str, float], ax: Axes | None = None) -> Axes:
    """The per-image variance decomposition of :func:`pyro_vae.studies.elbo_term_covariance`:
    Var[MC ELBO] = Var r + Var k − 2 Cov(r, k), against Var[analytic ELBO] = Var r. Linear axis from 0."""
    ax = _axes(ax, (7, 3.5))
    labels = ["Var r", "Var k", "−2 Cov(r, k)", "Var(r − k)\nTrace_ELBO", "Var(r − KL)\nTraceMeanField"]
    values = [
        cov["var_reconstruction"],
        cov["var_mc_kl"],
        -2 * cov["cov_reconstruction_mc_kl"],
        cov["var_mc_elbo"],
        cov["var_analytic_elbo"],
    ]
    bars = ax.bar(labels, values, color=["C7", "C7", "C3", "C0", "C1"])
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("nats², per image")
    ax.set_title("r = log p(x|z), k = log q(z|x) − log p(z), same z")
    return ax
