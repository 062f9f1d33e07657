"""Hierarchical VAEs against known answers: the ladder merge by hand, a 2-layer linear-Gaussian
hierarchy with an exact marginal, per-layer closed-form KL against Monte-Carlo, site order and shapes,
and training, resume and Pyro's SVI through the whole pipeline."""

import csv
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.distributions import MultivariateNormal

from pyro_vae import TrainConfig, train
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import elbo_terms, importance_log_likelihood
from pyro_vae.models import HierarchicalVAE, build_vae_from_config, precision_merge
from pyro_vae.parts.likelihoods import NormalLikelihood
from pyro_vae.parts.priors import StandardNormalPrior
from pyro_vae.training import resume

from conftest import make_tiny_data


def test_precision_merge_by_hand():
    # N(1, 1²) · N(3, 2²): precisions 1 and 1/4, variance 1 / 1.25 = 0.8, mean 0.8 (1 + 3/4) = 1.4
    loc, scale = precision_merge(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([2.0]))
    assert loc.item() == pytest.approx(1.4) and scale.item() == pytest.approx(math.sqrt(0.8))
    # equal precisions average; a very wide factor leaves the other unchanged
    loc, scale = precision_merge(torch.tensor(-2.0), torch.tensor(0.5), torch.tensor(4.0), torch.tensor(0.5))
    assert loc.item() == pytest.approx(1.0) and scale.item() == pytest.approx(0.5 / math.sqrt(2))
    loc, scale = precision_merge(torch.tensor(0.3), torch.tensor(0.1), torch.tensor(9.0), torch.tensor(1e4))
    assert loc.item() == pytest.approx(0.3, abs=1e-6) and scale.item() == pytest.approx(0.1, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# a 2-layer linear-Gaussian hierarchy: p(z2) = N(0, I), p(z1|z2) = N(A z2 + a, S1), p(x|z1) = N(W z1 + b, σ² I)
Z2, Z1, D, SIGMA = 1, 2, 3, 0.5


class Linear(nn.Module):
    """z -> (M z + m, fixed scale): a Gaussian layer with a closed form."""

    def __init__(self, m: torch.Tensor, c: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("m", m)
        self.register_buffer("c", c)
        self.register_buffer("s", scale)

    def forward(self, z):
        loc = z @ self.m.T + self.c
        return loc, self.s.expand(loc.shape)


class ExactishBottomUp(nn.Module):
    """q(z1|x) and q(z2|z1): the exact Gaussian conditionals' means, with their marginal standard
    deviations widened by 1.3 (a diagonal proposal wider than the correlated posterior)."""

    def __init__(self, A, a, s1, W, b):
        super().__init__()
        c1 = A @ A.T + torch.diag(s1**2)  # prior covariance of z1
        p1 = torch.linalg.inv(torch.linalg.inv(c1) + W.T @ W / SIGMA**2)
        self.register_buffer("gain1", p1 @ W.T / SIGMA**2)
        self.register_buffer("off1", p1 @ torch.linalg.inv(c1) @ a - self.gain1 @ b)
        self.register_buffer("std1", 1.3 * p1.diagonal().sqrt())
        p2 = torch.linalg.inv(torch.eye(Z2, dtype=A.dtype) + A.T @ torch.diag(s1**-2) @ A)
        gain2 = p2 @ A.T @ torch.diag(s1**-2)
        self.layers = nn.ModuleList([nn.Identity(), Linear(gain2, -gain2 @ a, 1.3 * p2.diagonal().sqrt())])

    def forward(self, x):
        loc = x @ self.gain1.T + self.off1
        return loc, self.std1.expand(loc.shape)


def linear_hierarchy(inference="bottom-up", n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    A, a = torch.randn(Z1, Z2, generator=g, dtype=torch.float64), torch.randn(Z1, generator=g, dtype=torch.float64)
    s1 = 0.5 + torch.rand(Z1, generator=g, dtype=torch.float64)
    W, b = torch.randn(D, Z1, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    decoder = nn.Linear(Z1, D).double()
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
    top_down = nn.ModuleList([Linear(A, a, s1)])
    if inference == "bottom-up":
        encoder = ExactishBottomUp(A, a, s1, W, b)
    else:
        from pyro_vae.models.hierarchy import LadderEncoder

        encoder = LadderEncoder((D,), (Z1, Z2), (8, 8)).double()
        with torch.no_grad():  # uninformative bottom-up scales: q leans on the (shared) top-down path
            for head in encoder.heads:
                head.scale.bias.fill_(2.0)
    vae = HierarchicalVAE(encoder, decoder, top_down, StandardNormalPrior(Z2), NormalLikelihood(SIGMA), (D,), inference)
    vae.double()
    cov_z1 = A @ A.T + torch.diag(s1**2)
    marginal = MultivariateNormal(W @ a + b, W @ cov_z1 @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))
    x = marginal.sample((n,))
    return vae, x, marginal.log_prob(x)


@pytest.mark.parametrize("inference", ["bottom-up", "ladder"])
def test_is_estimate_matches_the_exact_marginal_of_a_linear_hierarchy(inference):
    vae, x, exact = linear_hierarchy(inference)
    est = importance_log_likelihood(vae, x, 5000, seed=1, sample_chunk=1000)[5000]
    d = est - exact
    se = d.std().item() / math.sqrt(len(d))
    assert abs(d.mean().item()) < 4 * se + 2e-3, (d.mean().item(), se)


def test_elbo_lies_below_the_exact_marginal():
    vae, x, exact = linear_hierarchy()
    recon, kl, kinds = elbo_terms(vae, x, analytic_kl=False, num_particles=200, seed=2)
    gap = exact - (recon - kl)
    assert gap.mean().item() > 4 * gap.std().item() / math.sqrt(len(gap)) > 0
    assert kinds == ["z2: Monte-Carlo", "z1: Monte-Carlo"]


def test_bottom_up_guide_keeps_the_monte_carlo_kl_where_a_closed_form_would_be_biased():
    vae, x, _ = linear_hierarchy("bottom-up")
    _, _, kinds = elbo_terms(vae, x, analytic_kl=True, seed=0)
    assert kinds == ["z2: analytic", "z1: Monte-Carlo (the guide draws it before its parents)"]


def test_per_layer_closed_form_kl_matches_monte_carlo_within_its_standard_error():
    vae, x, _ = linear_hierarchy("ladder")
    analytic, mc = {}, {}
    elbo_terms(vae, x, analytic_kl=True, num_particles=400, seed=3, per_site=analytic)
    elbo_terms(vae, x, analytic_kl=False, num_particles=400, seed=4, per_site=mc)
    assert set(analytic) == {"z1", "z2"}
    for site in analytic:
        d = mc[site] - analytic[site]  # per image; each MC value averages 400 draws
        se = d.std().item() / math.sqrt(len(d))
        assert abs(d.mean().item()) < 4 * se + 1e-6, (site, d.mean().item(), se)


# ------------------------------------------------------------------------------------------------
# the library's ladder: site order, shapes, training


def ladder(inference="ladder", **kw) -> HierarchicalVAE:
    config = TrainConfig(model="ladder", inference=inference, latents=(6, 4, 2), hidden=(24, 16, 8), **kw)
    return build_vae_from_config((1, 8, 8), config)


@pytest.mark.parametrize("inference", ["ladder", "bottom-up"])
def test_site_order_and_shapes(inference):
    vae = ladder(inference)
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.5))
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    sites = lambda tr: [n for n, s in tr.nodes.items() if s["type"] == "sample" and n != "data"]  # noqa: E731
    assert sites(model) == ["z3", "z2", "z1", "x"]
    assert sites(guide) == (["z3", "z2", "z1"] if inference == "ladder" else ["z1", "z2", "z3"])
    for name, dim in (("z1", 6), ("z2", 4), ("z3", 2)):
        assert guide.nodes[name]["value"].shape == (5, dim)
        assert model.nodes[name]["fn"].event_shape == (dim,)
    assert vae.reconstruct(x).shape == (5, 1, 8, 8) and vae.sample(7).shape == (7, 1, 8, 8)
    assert [m.shape for m in vae.posterior_means(x)] == [(5, 6), (5, 4), (5, 2)]


def test_ladder_guide_merges_the_shared_top_down_path():
    vae = ladder()
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.5))
    guide = poutine.trace(vae.guide).get_trace(x)
    stats = vae.encoder.all(x)
    z3 = guide.nodes["z3"]["value"]
    p_loc, p_scale = vae.top_down[1](z3)
    q = guide.nodes["z2"]["fn"].base_dist
    loc, scale = precision_merge(*stats[1], p_loc, p_scale)
    assert torch.allclose(q.loc, loc) and torch.allclose(q.scale, scale)


@pytest.mark.parametrize(
    "elbo,inference", [("mc", "ladder"), ("analytic", "ladder"), ("iwae", "ladder"), ("mc", "bottom-up")]
)
def test_trains_and_resumes_exactly(tmp_path, elbo, inference):
    data = make_tiny_data()
    kw = dict(
        model="ladder",
        inference=inference,
        latents=(6, 3),
        hidden=(24, 12),
        elbo=elbo,
        batch_size=16,
        progress=False,
        log_every=2,
        kl_schedule="linear",
        warmup=1,
        **({"particles": 3} if elbo == "iwae" else {}),
    )
    straight = train(TrainConfig(epochs=3, out=str(tmp_path / "a"), **kw), data=data)
    first = train(TrainConfig(epochs=2, out=str(tmp_path / "b"), **kw), data=data)
    resume(first.run_dir, epochs=3, data=data)

    def rows(d):
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(open(d / "metrics.csv"))]

    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert straight.metrics[-1]["test_loss"] < straight.metrics[0]["test_loss"] + 5


def test_bottom_up_with_analytic_kl_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="would be biased"):
        train(
            TrainConfig(
                model="ladder",
                inference="bottom-up",
                latents=(4, 2),
                hidden=(8, 8),
                elbo="analytic",
                out=str(tmp_path / "r"),
                progress=False,
            ),
            data=make_tiny_data(),
        )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("prior", ["mog", "vamp", "learned-normal"])
def test_top_prior_is_swappable(tmp_path, prior):
    result = train(
        TrainConfig(
            model="ladder",
            latents=(4, 2),
            hidden=(16, 8),
            prior=prior,
            epochs=1,
            batch_size=16,
            progress=False,
            out=str(tmp_path / prior),
        ),
        data=make_tiny_data(),
    )
    assert result.vae.prior().event_shape == (2,)


def test_vamp_top_prior_needs_the_ladder():
    with pytest.raises(ConfigError, match="depends on x alone"):
        ladder("bottom-up", prior="vamp")


def test_plain_pyro_svi_trains_every_parameter_of_a_ladder():
    vae = ladder(prior="learned-normal", likelihood="normal-pixel")
    x = make_tiny_data().train.float() / 255
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi.step(x[:32])
    assert all(not torch.equal(before[k], v) for k, v in vae.named_parameters())


def test_active_units_count_the_units_whose_posterior_mean_varies():
    from pyro_vae import VAE
    from pyro_vae.evaluate import active_units, evaluate

    class Encoder(nn.Module):
        def forward(self, x):  # unit 0 follows the data (variance ~1), unit 1 barely (~1e-4), unit 2 not at all
            h = x.reshape(len(x), -1)[:, :3] * torch.tensor([1.0, 0.01, 0.0])
            return h, torch.ones_like(h)

    x = torch.randn(2000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    vae = VAE(Encoder(), nn.Linear(3, 4), StandardNormalPrior(3), NormalLikelihood(1.0), (4,))
    assert active_units(vae, x.reshape(2000, 4)) == {"z": {"active": 1, "units": 3}}
    h = ladder()
    xb = torch.bernoulli(torch.full((50, 1, 8, 8), 0.5))
    units = active_units(h, xb)
    assert list(units) == ["z1", "z2", "z3"] and [u["units"] for u in units.values()] == [6, 4, 2]
    means = h.posterior_means(xb)  # the same count, computed here from the means directly
    assert [u["active"] for u in units.values()] == [int((m.var(0) > 0.01).sum()) for m in means]
    out = evaluate(h, xb, [2])
    assert out["active_units"] == units and set(out["elbo"]["mc"]["kl_per_site"]) == {"z1", "z2", "z3"}


# ------------------------------------------------------------------------------------------------
# free bits and batch norm


def _same_draws(elbo, vae, x, seed=0):
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    grads = torch.autograd.grad(loss, [p for p in vae.parameters() if p.requires_grad], allow_unused=True)
    return loss.detach(), grads


@pytest.mark.parametrize("model", ["vae", "ladder"])
@pytest.mark.parametrize("analytic", [False, True])
def test_free_bits_zero_is_pyros_elbo(model, analytic):
    from pyro.infer import TraceMeanField_ELBO

    from pyro_vae.objectives import FreeBitsELBO

    config = TrainConfig(model=model, latents=(5, 3), hidden=(16, 8), z_dim=3)
    vae = build_vae_from_config((1, 8, 8), config)
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.4))
    vae.kl_weight = 0.7
    ref = TraceMeanField_ELBO() if analytic else Trace_ELBO()
    loss_a, grads_a = _same_draws(FreeBitsELBO(0.0, analytic=analytic), vae, x)
    loss_b, grads_b = _same_draws(ref, vae, x)
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_free_bits_floor_stops_the_kl_gradient():
    from pyro_vae.objectives import FreeBitsELBO

    vae = ladder()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.4))
    # a floor far above any KL: the loss is −log p(x|z) plus constants, so the gradient is the
    # reconstruction's alone
    loss, grads = _same_draws(FreeBitsELBO(50.0), vae, x, seed=3)
    pyro.set_rng_seed(3)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    recon = model.nodes["x"]["fn"].log_prob(model.nodes["x"]["value"]).sum()
    floors = 50.0 * (6 + 4 + 2) * 6
    assert torch.allclose(loss, -recon.detach() + floors, rtol=1e-6)
    ref = torch.autograd.grad(-recon, [p for p in vae.parameters() if p.requires_grad], allow_unused=True)
    for a, b in zip(grads, ref, strict=True):
        assert (a is None or torch.all(a == 0)) if b is None else torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_free_bits_and_batch_norm_train_and_resume(tmp_path):
    data = make_tiny_data()
    kw = dict(
        model="ladder",
        latents=(6, 3),
        hidden=(24, 12),
        batch_norm=True,
        free_bits=0.2,
        batch_size=16,
        progress=False,
        log_every=2,
    )
    straight = train(TrainConfig(epochs=3, out=str(tmp_path / "a"), **kw), data=data)
    assert any("running_mean" in k for k in straight.vae.state_dict())
    first = train(TrainConfig(epochs=2, out=str(tmp_path / "b"), **kw), data=data)
    resumed = resume(first.run_dir, epochs=3, data=data)
    assert [m["test_loss"] for m in resumed.metrics] == [m["test_loss"] for m in straight.metrics]
    # the held-out loss is the real ELBO, not the free-bits objective
    from pyro_vae.training import heldout_loss

    pyro.set_rng_seed(0)
    vae = straight.vae.eval()
    x = data.test
    mine = heldout_loss(vae, Trace_ELBO(), x)
    assert math.isfinite(mine) and mine > 0
    # importance sampling runs through the batch norm with particle dimensions (running statistics)
    est = importance_log_likelihood(vae, x, 7, seed=0)[7]
    assert est.shape == (len(x),) and torch.isfinite(est).all()


def test_free_bits_with_iwae_is_refused():
    with pytest.raises(ConfigError, match="IWAE bound has none"):
        TrainConfig(elbo="iwae", free_bits=0.1).validate()
