"""The pictures of a trained run, without a notebook: ``python -m pyro_vae pictures RUN``.

Six PNG files, each with a title and labelled axes: prior samples, reconstructions of test images, the
latent plane, interpolations between test images, the test encodings coloured by label, and the KL and
activity of every latent unit. They work for every model family (one layer, ladder, flow guides), every
likelihood and colour data. What a picture shows of p(x|z) is the model's own choice
(:attr:`pyro_vae.models.VAE.pictures`): the mean E[x|z], or one draw x ~ p(x|z) for the autoregressive
likelihood; titles say which. Everything is drawn from a fixed seed, so the same run gives the same files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.config import DEVICES, check_seed, setting
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate.report import ACTIVE_UNIT_THRESHOLD
from pyro_vae.files import check_out_folder
from pyro_vae.images import DPI, _grid, _scale
from pyro_vae.models import VAE
from pyro_vae.parts.guides import GaussianPosterior

#: the files `pictures` writes, in this order
FILES = ("samples.png", "reconstructions.png", "latent_plane.png", "interpolations.png", "encodings.png", "kl.png")


@dataclass
class PicturesConfig:
    """What to draw, from which run, and where; :meth:`validate` refuses a bad value before any work."""

    #: the run folder that pyro-vae-train wrote
    run_dir: str = setting("", "run folder written by pyro-vae-train")
    #: apart from the run folder, so drawing never changes a run; None: RUN_DIR-pictures beside it
    out: str | None = setting(None, "folder for the PNG files (default: RUN_DIR-pictures, beside the run)")
    #: None: the run's newest checkpoint
    checkpoint: str | None = setting(None, "a checkpoint file of this run (default: its newest)")
    #: the data may have moved since training; their fingerprints must still match
    data_dir: str | None = setting(None, "data root, if the data moved (default: the run's `data_dir`)")
    #: the encodings, the principal plane and the unit statistics use this many test images
    limit: int = setting(2000, "test images for the encodings, the latent plane and the KL per unit")
    #: every draw (prior samples, draws of p(x|z), the images picked) follows from it
    seed: int = setting(0, "seed of every draw")
    device: str = setting("auto", "where to run the model", choices=DEVICES)

    def validate(self) -> PicturesConfig:
        """Refuse impossible values, each in one line naming the setting; returns ``self``."""
        if not self.run_dir:
            raise ConfigError("`run_dir` is empty; pass the run folder that pyro-vae-train wrote")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 2 <= self.limit <= 10**6:
            raise ConfigError(f"`limit` must be a number of images from 2 to 1000000, got {self.limit}")
        check_seed("`seed`", self.seed)
        if self.device not in DEVICES:
            raise ConfigError(f"unknown `device={self.device!r}`; choose one of {', '.join(DEVICES)}")
        return self

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(str(Path(self.run_dir)).rstrip("/") + "-pictures")


def draw_pictures(config: PicturesConfig) -> list[Path]:
    """Load ``config.run_dir`` with its held-out data and write the six pictures (:data:`pyro_vae.pictures.FILES`),
    and for an M2 run the two class-conditional ones of :func:`label_figures`; a conditional VAE's run gets those
    two only.

    :returns: the files written.
    """
    from pyro_vae.distributed import device_for, resolve_device
    from pyro_vae.runs import load_run_and_data

    config.validate()
    out = config.out_dir()
    check_out_folder(out)
    device = device_for(resolve_device(config.device))
    run = load_run_and_data(
        config.run_dir, checkpoint=config.checkpoint, device=device, data_dir=config.data_dir, limit=config.limit
    )
    title = f"{Path(config.run_dir).name}, epoch {run.state['epoch']}"
    if getattr(run.vae, "classes", None) and getattr(run.vae, "classifier", None) is None:
        # a conditional VAE: x given its label; pictures that encode x without one do not apply
        figures = label_figures(run.vae, run.x, run.labels, title, config.seed)
    else:
        figures = make_figures(run.vae, run.x, run.labels, title, config.seed)
        if hasattr(run.vae, "classify"):  # M2: the class-conditional pictures too
            figures.update(label_figures(run.vae, run.x, run.labels, title, config.seed))
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused or failed run leaves nothing
    paths = []
    for name, fig in figures.items():
        fig.savefig(out / name)
        paths.append(out / name)
    return paths


def make_figures(vae: VAE, x: torch.Tensor, labels: torch.Tensor, title: str, seed: int = 0) -> dict:
    """The six figures (matplotlib ``Figure`` objects, keyed by the file names of :data:`pyro_vae.pictures.FILES`)
    of ``vae`` on the held-out images ``x`` (prepared for its likelihood, as :func:`pyro_vae.load_run_and_data` gives
    them) with their ``labels``. Drawn from ``seed`` in a forked RNG: the caller's random state is left as
    it was."""
    device = x.device
    vae.eval()
    figures = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), vae.registration(False):
        torch.manual_seed(seed)
        shown = "x ~ p(x | z)" if vae.pictures == "draw" else "E[x | z]"
        figures.append(_samples(vae, title, shown))
        picked = torch.randperm(len(x))[: min(10, len(x))].to(device)
        figures.append(_reconstructions(vae, x[picked], title, shown))
        means = _decoder_latents(vae, x)
        figures.append(_latent_plane(vae, means, title, shown))
        figures.append(_interpolations(vae, x, picked, title, shown))
        figures.append(_encodings(means.cpu(), labels.cpu()[: len(means)], title))
        figures.append(_kl_per_unit(vae, x, title))
    return dict(zip(FILES, figures, strict=True))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # not pyplot: no backend is touched, nothing global kept

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _unit(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    # data as pictures in [0, 1]: 8-bit values scaled down
    return x.float() / 255 if vae.data_kind == "byte" else x.float()


def _image_axes(ax, grid: torch.Tensor, title: str, xlabel: str, ylabel: str) -> None:
    ax.imshow(grid.numpy(), interpolation="nearest", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)


def _grid_figure(images: torch.Tensor, nrow: int):
    grid = _grid(images, nrow)
    scale = _scale(images)
    return grid, _figure(grid.shape[1] * scale / DPI + 1.0, grid.shape[0] * scale / DPI + 1.0)


@torch.no_grad()
def _samples(vae: VAE, title: str, shown: str):
    images = vae.sample(64)
    grid, fig = _grid_figure(images, 8)
    _image_axes(fig.subplots(), grid, f"{title}: 64 samples {shown}, z ~ p(z)", "sample", "sample")
    return fig


@torch.no_grad()
def _reconstructions(vae: VAE, x: torch.Tensor, title: str, shown: str):
    n = len(x)
    images = torch.cat([_unit(vae, x), vae.reconstruct(x)])
    grid, fig = _grid_figure(images, n)
    label = shown.replace("| z", "| z = posterior mean")
    _image_axes(
        fig.subplots(), grid, f"{title}: test images (top) and {label} (bottom)", "test image", "image / reconstruction"
    )
    fig.axes[0].set_yticks([grid.shape[0] / 4, 3 * grid.shape[0] / 4], ["input", "reconstruction"], fontsize=8)
    return fig


@torch.no_grad()
def _decoder_latents(vae: VAE, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The posterior means of the latent the decoder reads (z, or z_1 of a hierarchy), ``(N, d)``."""
    return torch.cat([vae.posterior_means(x[i : i + batch])[0] for i in range(0, len(x), batch)])


def _plane(means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(centre, two axes as rows, axis names): the latent itself when it is 2-D, else the two principal
    axes of the posterior means, each scaled to one standard deviation of the means along it."""
    m = means.double()
    if m.shape[-1] == 2:
        return torch.zeros(2, dtype=m.dtype), torch.eye(2, dtype=m.dtype), ["z₁", "z₂"]
    centre = m.mean(0)
    _, s, v = torch.linalg.svd(m - centre, full_matrices=False)
    sd = s[:2] / math.sqrt(max(len(m) - 1, 1))
    axes = v[:2] * sd.clamp_min(1e-12).unsqueeze(-1)
    names = [f"principal axis {i + 1} of the posterior means (s.d. {sd[i]:.2g})" for i in range(2)]
    return centre, axes, names


@torch.no_grad()
def _latent_plane(vae: VAE, means: torch.Tensor, title: str, shown: str, n: int = 12):
    """A 2-D latent: the decoder over the prior's quantiles (from 20,000 prior draws, so any prior works).
    Larger latents: the decoder over the plane of the two principal axes of the test posterior means,
    from −2 to 2 standard deviations along each."""
    p = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    if means.shape[-1] == 2 and len(vae.latent_sites) == 1:
        draws = vae.prior().sample((20000,)).double().cpu()
        q = torch.stack([torch.quantile(draws[:, i], p) for i in range(2)])  # (2, n)
        z = torch.stack(torch.meshgrid(q[0], q[1].flip(0), indexing="xy"), -1).reshape(-1, 2)
        coords, names = q, ["z₁ (prior quantiles 5 % to 95 %)", "z₂ (prior quantiles 5 % to 95 %)"]
        where = "the prior's quantiles"
    else:
        centre, axes, names = _plane(means.cpu())
        a = torch.linspace(-2, 2, n, dtype=torch.float64)
        grid_a, grid_b = torch.meshgrid(a, a.flip(0), indexing="xy")
        z = centre + grid_a.reshape(-1, 1) * axes[0] + grid_b.reshape(-1, 1) * axes[1]
        coords = torch.stack([a, a])
        where = "a plane through the test encodings" if means.shape[-1] > 2 else "the posterior means"
    images = vae.decode_picture(z.to(means.device, means.dtype))
    grid, fig = _grid_figure(images, n)
    ax = fig.subplots()
    _image_axes(ax, grid, f"{title}: {shown} over {where}", names[0], names[1])
    cell_w, cell_h = grid.shape[1] / n, grid.shape[0] / n
    ticks = list(range(0, n, max(1, n // 4)))
    ax.set_xticks([(i + 0.5) * cell_w for i in ticks], [f"{coords[0][i]:.2g}" for i in ticks], fontsize=7)
    ax.set_yticks([(i + 0.5) * cell_h for i in ticks], [f"{coords[1].flip(0)[i]:.2g}" for i in ticks], fontsize=7)
    return fig


@torch.no_grad()
def _interpolations(vae: VAE, x: torch.Tensor, picked: torch.Tensor, title: str, shown: str, steps: int = 10):
    """Rows: the decoder along the straight line between the posterior means of two test images, the
    two images at its ends."""
    pairs = [(picked[i], picked[i + 1]) for i in range(0, min(len(picked) - 1, 8), 2)]
    if not pairs:  # one test image: from it to itself
        pairs = [(picked[0], picked[0])]
    rows = []
    t = torch.linspace(0, 1, steps, device=x.device).unsqueeze(-1)
    for a, b in pairs:
        za, zb = vae.posterior_means(x[torch.stack([a, b])])[0]
        line = vae.decode_picture((1 - t) * za + t * zb)
        rows.append(torch.cat([_unit(vae, x[a : a + 1]), line, _unit(vae, x[b : b + 1])]))
    grid, fig = _grid_figure(torch.cat(rows), steps + 2)
    xlabel = "test image a | z from a to b, in equal steps | test image b"
    _image_axes(fig.subplots(), grid, f"{title}: {shown} between posterior means", xlabel, "pair of test images")
    return fig


def _encodings(means: torch.Tensor, labels: torch.Tensor, title: str):
    """The test posterior means in 2-D (the latent itself, or its two principal axes), coloured by label."""
    centre, axes, names = _plane(means)
    if means.shape[-1] == 2:
        points = means.double()
    else:
        unit = axes / axes.norm(dim=-1, keepdim=True)
        points = (means.double() - centre) @ unit.T
        names = [n.replace(" (s.d.", ", projection (s.d.") for n in names]
    fig = _figure(6.4, 5.0)
    ax = fig.subplots()
    classes = labels.unique()
    if len(classes) > 1:
        dots = ax.scatter(*points.T.numpy(), c=labels.numpy(), cmap="tab10" if len(classes) <= 10 else "viridis", s=4)
        fig.colorbar(dots, ax=ax, label="label")
    else:
        ax.scatter(*points.T.numpy(), s=4, color="C0", label="no labels in these data")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel(names[0], fontsize=8)
    ax.set_ylabel(names[1], fontsize=8)
    ax.set_title(f"{title}: {len(points)} test encodings (posterior means)", fontsize=9)
    return fig


@torch.no_grad()
def unit_statistics(vae: VAE, x: torch.Tensor, draws: int = 16, batch: int = 500) -> list[dict]:
    """Per latent layer: the activity of each unit, Var_x(E_q[u | x]) (Burda et al., 2016), and, where the
    posterior and the prior both factorise over units, each unit's KL(q(u|x) ‖ p(u)) averaged over the
    images: closed-form where torch has it, else a Monte-Carlo estimate from ``draws`` draws per image.

    :returns: one dict per layer: ``site``, ``activity`` (tensor), ``kl`` (tensor, or ``None`` where a
        unit's KL is not defined: a mixture or VampPrior prior, a flow posterior, a layer of a hierarchy
        whose prior depends on the layer above), and ``why`` (the reason when it is ``None``).
    """
    sites = vae.latent_sites
    chunks = [[m.double() for m in vae.posterior_means(x[i : i + batch])] for i in range(0, len(x), batch)]
    out = []
    for k, site in enumerate(sites):
        m = torch.cat([c[k] for c in chunks])
        activity = m.var(0) if len(m) > 1 else torch.zeros(m.shape[-1], dtype=m.dtype)
        out.append({"site": site, "activity": activity.cpu(), "kl": None, "why": ""})
    if len(sites) > 1:
        out[0]["why"] = "a hierarchy's layers have priors that depend on the layer above"
        return out
    prior = vae.prior()
    base = getattr(prior, "base_dist", None)
    guide = getattr(vae, "posterior", None)
    if base is None or base.batch_shape[-1:] != torch.Size([out[0]["activity"].shape[-1]]):
        out[0]["why"] = f"the prior ({type(prior).__name__}) does not factorise over units"
        return out
    if type(guide) is not GaussianPosterior:
        out[0]["why"] = f"the posterior ({type(guide).__name__}) is not a diagonal Gaussian"
        return out
    total = torch.zeros_like(out[0]["activity"])
    for i in range(0, len(x), batch):
        if hasattr(vae, "classify"):  # M2: q(z | x, y) at the label its classifier gives
            loc, scale = vae.encoder(vae.encoder_input(x[i : i + batch]), vae.classify(x[i : i + batch]))
        else:
            loc, scale, _ = vae._encode(x[i : i + batch])
        q = torch.distributions.Normal(loc.double(), scale.double())
        p = _double(base)
        try:
            kl = torch.distributions.kl_divergence(q, p)
        except NotImplementedError:
            z = q.sample((draws,))
            kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
        total += kl.sum(0).cpu()
    out[0]["kl"] = total / len(x)
    return out


def _double(d: torch.distributions.Distribution) -> torch.distributions.Distribution:
    # the prior's factors in float64, so near-zero KLs do not drown in float32 round-off
    params = {k: getattr(d, k).double() for k in d.arg_constraints if isinstance(getattr(d, k, None), torch.Tensor)}
    return type(d)(**params, validate_args=False)


def _kl_per_unit(vae: VAE, x: torch.Tensor, title: str):
    stats = unit_statistics(vae, x)
    fig = _figure(8.0, 5.2)
    top, bottom = fig.subplots(2, 1, sharex=True)
    offset, ticks = 0, []
    for layer in stats:
        n = len(layer["activity"])
        pos = torch.arange(offset, offset + n).numpy()
        active = layer["activity"] > ACTIVE_UNIT_THRESHOLD
        colours = ["C0" if a else "C7" for a in active.tolist()]
        label = f"{layer['site']}: {int(active.sum())} of {n} active"
        bottom.bar(pos, layer["activity"].clamp_min(1e-8).numpy(), color=colours, label=label)
        if layer["kl"] is not None:
            top.bar(pos, layer["kl"].numpy(), color=colours)
            top.set_title(f"{title}: KL per unit, {float(layer['kl'].sum()):.2f} nats in all", fontsize=9)
        ticks.append(offset)
        offset += n
    if all(layer["kl"] is None for layer in stats):
        top.text(0.5, 0.5, f"no KL per unit: {stats[0]['why']}", ha="center", va="center", transform=top.transAxes)
        top.set_title(f"{title}: KL per unit", fontsize=9)
    top.set_ylabel("KL(q(u|x) ‖ p(u)), nats", fontsize=8)
    bottom.axhline(ACTIVE_UNIT_THRESHOLD, color="C3", ls="--", lw=1, label=f"active: above {ACTIVE_UNIT_THRESHOLD}")
    bottom.set_yscale("log")
    bottom.set_ylabel("Var_x E[u | x]", fontsize=8)
    bottom.set_xlabel("latent unit (grey: inactive)", fontsize=8)
    bottom.legend(fontsize=7, loc="upper right")
    return fig


@torch.no_grad()
def label_figures(vae: VAE, x: torch.Tensor, labels: torch.Tensor, title: str = "", seed: int = 0) -> dict:
    """The class-conditional pictures of a semi-supervised VAE (:class:`pyro_vae.models.m2.SemiSupervisedVAE`):
    ``"analogies.png"``, each row one test image's style z (the mean of q(z | x, y) at its true label) decoded
    with every class in turn; and ``"samples_by_class.png"``, one row per class of draws z ~ p(z). Drawn from
    ``seed`` in a forked RNG.

    :param x: held-out images, prepared for the likelihood; ``labels``: their true labels.
    """
    classes = vae.classes  # type: ignore[attr-defined]
    shown = "x ~ p(x | z, y)" if vae.pictures == "draw" else "E[x | z, y]"
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), vae.registration(False):
        torch.manual_seed(seed)
        picked = torch.randperm(len(x))[: min(8, len(x))].to(x.device)
        y = labels.to(x.device)[picked].long()
        style = vae.posterior_means(x[picked], y)[0]  # type: ignore[call-arg]
        every = torch.arange(classes, device=x.device)
        rows = [
            torch.cat([_unit(vae, x[i : i + 1]), vae.decode_labelled(s.expand(classes, -1), every)])  # type: ignore[attr-defined]
            for i, s in zip(picked, style, strict=True)
        ]
        grid, analogies = _grid_figure(torch.cat(rows), classes + 1)
        xlabel = f"the test image, then its style decoded as class 0 … {classes - 1}"
        _image_axes(analogies.subplots(), grid, f"{title}: {shown}, analogies", xlabel, "test image")
        z = vae.prior().sample((8,))
        drawn = torch.cat([vae.decode_labelled(z, torch.full((8,), c, device=z.device)) for c in range(classes)])  # type: ignore[attr-defined]
        grid, samples = _grid_figure(drawn, 8)
        _image_axes(samples.subplots(), grid, f"{title}: {shown}, z ~ p(z), one row per class", "draw of z",
                    f"class 0 (top) … {classes - 1}")  # fmt: skip
    return {"analogies.png": analogies, "samples_by_class.png": samples}


__all__ = ["FILES", "PicturesConfig", "draw_pictures", "label_figures", "make_figures", "unit_statistics"]
