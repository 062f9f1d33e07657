"""Flow guides (pyro_vae.parts.guides) against independent references: the change-of-variables formula
with an autograd Jacobian, a 2-D density that integrates to one, scoring without an inverse pass, and a
linear-Gaussian model whose exact posterior is correlated, so a diagonal guide's best gap is known."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vae import VAE, StandardNormalPrior, build_vae, load_run, resume, train
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import elbo_terms, evaluate, importance_log_likelihood
from pyro_vae.parts.guides import GUIDES, FlowPosterior, GaussianPosterior, build_guide
from pyro_vae.parts.likelihoods import NormalLikelihood

from conftest import run_cli, tiny_config

FLOWS = ["iaf", "householder"]


def _flow(kind, z_dim=3, context_dim=4, seed=0, flows=3):
    torch.manual_seed(seed)
    flow = FlowPosterior(kind, z_dim, context_dim, flows, hidden=(16,)).double()
    with torch.no_grad():  # larger weights than the initialisation: a flow far from the identity
        for p in flow.parameters():
            p.mul_(4)
    return flow


@pytest.mark.parametrize("kind", FLOWS)
def test_the_log_density_is_the_change_of_variables_formula(kind):
    flow = _flow(kind)
    g = torch.Generator().manual_seed(1)
    loc, scale = torch.randn(3, dtype=torch.float64, generator=g), torch.rand(3, dtype=torch.float64, generator=g) + 0.3
    context = torch.randn(4, dtype=torch.float64, generator=g)
    for _ in range(5):
        z0 = loc + scale * torch.randn(3, dtype=torch.float64, generator=g)
        d = flow(loc, scale, context)

        def forward(v, d=d):
            for t in d.transforms:
                v = t(v)
            return v

        jac = torch.autograd.functional.jacobian(forward, z0)  # independent of the transforms' log-dets
        base = torch.distributions.Normal(loc, scale).log_prob(z0).sum()
        expected = base - torch.linalg.slogdet(jac)[1]
        z = forward(z0)  # the last forward pass: what the cache holds, as after the guide's rsample
        torch.testing.assert_close(d.log_prob(z), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", FLOWS)
def test_a_two_dimensional_flow_density_integrates_to_one(kind):
    flow = _flow(kind, z_dim=2, context_dim=2, seed=2)
    d = flow(
        torch.tensor([0.3, -0.2], dtype=torch.float64),
        torch.tensor([0.8, 0.5], dtype=torch.float64),
        torch.tensor([0.5, -1.0], dtype=torch.float64),
    )
    h = 0.02
    grid = torch.arange(-12, 12, h, dtype=torch.float64) + h / 2
    zz = torch.cartesian_prod(grid, grid)
    mass = sum(d.log_prob(chunk).exp().sum().item() for chunk in zz.split(100_000)) * h * h
    assert abs(mass - 1) < 2e-3, mass


def test_the_iaf_guide_scores_its_own_samples_without_an_inverse_pass(monkeypatch):
    from pyro.distributions.transforms.affine_autoregressive import AffineAutoregressive

    def no_inverse(self, y):
        raise AssertionError("the guide's sample was scored through the IAF inverse")

    monkeypatch.setattr(AffineAutoregressive, "_inverse", no_inverse)
    vae = build_vae((1, 6, 6), "mlp", 4, (16,), guide="iaf", flows=3)
    x = torch.bernoulli(torch.full((7, 1, 6, 6), 0.3))
    Trace_ELBO(num_particles=3, vectorize_particles=True).loss(vae.model, vae.guide, x)
    importance_log_likelihood(vae, x, [1, 10])
    elbo_terms(vae, x, analytic_kl=True, num_particles=2)


# ---------------------------------------------------------------- a correlated posterior, known exactly

Z, D, SIGMA = 2, 3, 0.3


class LinearEncoder(nn.Module):
    """body: a linear map of x (the context of a flow); head: loc linear in the features, a scale that
    may be any constant: the exact posterior's mean is linear in x and its covariance constant."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(D, 6)
        self.loc = nn.Linear(6, Z)
        self.raw_scale = nn.Parameter(torch.zeros(Z))
        self.head = self

    def forward(self, features):  # the head
        if features.shape[-1] == D:  # called on x: body then head
            features = self.body(features)
        loc = self.loc(features)
        return loc, nn.functional.softplus(self.raw_scale).expand_as(loc) + 1e-4


def _linear_gaussian_vae(guide, w, b):
    decoder = nn.Linear(Z, D)
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
    decoder.requires_grad_(False)  # the model is fixed and exact; only the guide learns
    encoder = LinearEncoder()
    if guide == "gaussian":
        posterior = GaussianPosterior()
    else:
        posterior = build_guide(guide, Z, 6, flows=2, hidden=(32,))
    return VAE(encoder, decoder, StandardNormalPrior(Z), NormalLikelihood(SIGMA), (D,), posterior)


def _trained_gap(guide, w, b, x, exact, steps=800):
    torch.manual_seed(0)
    pyro.clear_param_store()
    vae = _linear_gaussian_vae(guide, w, b)
    svi = SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(num_particles=8, vectorize_particles=True)
    )
    for step in range(steps):
        if step == int(0.8 * steps):
            svi.optim = pyro.optim.Adam({"lr": 0.002})
        svi.step(x)
    recon, kl, _ = elbo_terms(vae, x, analytic_kl=False, num_particles=4000, seed=1)
    gap = exact - (recon - kl)
    return gap.mean().item(), gap.std().item() / math.sqrt(len(gap))


def test_a_diagonal_guide_leaves_the_closed_form_gap_and_flows_close_most_of_it():
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I): the posterior is N(m(x), Σ) with Σ = (I + WᵀW/σ²)⁻¹, the
    same for every x. The best diagonal Gaussian has precisions Λ_ii (Λ = Σ⁻¹) and leaves
    KL = ½(Σ log Λ_ii − log det Λ) between the ELBO and log p(x) at every x."""
    w = torch.tensor([[1.0, 0.9], [0.8, 1.0], [0.5, 0.6]])
    b = torch.tensor([0.1, -0.2, 0.3])
    precision = torch.eye(Z) + w.T @ w / SIGMA**2
    closed_form = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()
    assert closed_form > 0.5  # a strongly correlated posterior: a gap worth closing
    g = torch.Generator().manual_seed(3)
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D))
    torch.manual_seed(3)
    x = marginal.sample((256,))
    exact = marginal.log_prob(x)
    del g
    gauss, gauss_se = _trained_gap("gaussian", w, b, x, exact)
    # the optimum is reached up to the optimiser's noise: within 0.02 nats (plus the estimate's error)
    assert abs(gauss - closed_form) < 0.02 + 4 * gauss_se, (gauss, closed_form)
    for kind in FLOWS:
        flow, flow_se = _trained_gap(kind, w, b, x, exact)
        assert flow < 0.2 * closed_form, (kind, flow, closed_form)
        assert flow > -4 * flow_se  # an ELBO never exceeds log p(x)


# ---------------------------------------------------------------- the guide with everything else


def test_every_guide_is_one_registry_entry():
    assert list(GUIDES) == ["gaussian", "iaf", "householder"]


@pytest.mark.parametrize("guide", FLOWS)
@pytest.mark.parametrize("elbo", ["mc", "analytic", "iwae"])
def test_a_flow_guide_trains_with_each_objective_and_resumes_exactly(tmp_path, tiny_data, guide, elbo):
    kw = dict(guide=guide, elbo=elbo, flows=2, flow_hidden=(16,), **({"particles": 3} if elbo == "iwae" else {}))
    whole = train(tiny_config(tmp_path, **kw), data=tiny_data)
    first = train(tiny_config(tmp_path, "half", epochs=1, **kw), data=tiny_data)
    again = resume(first.run_dir, epochs=2, data=tiny_data)
    assert [m["train_loss"] for m in again.metrics] == [m["train_loss"] for m in whole.metrics]
    assert type(load_run(whole.run_dir)[0].posterior) is FlowPosterior


def test_analytic_elbo_with_a_flow_says_its_kl_is_monte_carlo(tmp_path, idx_root, capsys):
    from pyro_vae.cli import train_main

    code, out, err = run_cli(
        train_main,
        [
            "--data-dir",
            str(idx_root),
            "--no-download",
            "--epochs",
            "1",
            "--z-dim",
            "3",
            "--hidden",
            "16",
            "--guide",
            "householder",
            "--elbo",
            "analytic",
            "--batch-size",
            "32",
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "KL: Monte-Carlo, guide 'householder' (a flow) has no closed form" in out


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(flows=4), "`flows` and `flow_hidden` shape a flow guide; with `guide=gaussian` they do nothing"),
        (dict(flow_hidden=(8,)), "`flows` and `flow_hidden` shape a flow guide"),
        (dict(guide="iaf", flows=0), "`flows` must be from 1 to 64, got 0"),
        (dict(guide="iaf", flow_hidden=(0,)), "`flow_hidden` must be one or more positive integers"),
        (dict(guide="iaf", model="ladder"), "`guide=iaf` is for the one-layer VAE"),
        (dict(guide="planar"), "unknown `guide='planar'`; choose one of gaussian, iaf, householder"),
    ],
)
def test_guide_settings_that_cannot_work_are_refused_before_any_work(tmp_path, tiny_data, settings, message):
    with pytest.raises(ConfigError) as info:
        train(tiny_config(tmp_path, **settings), data=tiny_data)
    assert str(info.value).startswith(message)
    assert not (tmp_path / "run").exists()


class ScaledGaussian(nn.Module):
    """A posterior family of one's own: a diagonal Gaussian with a learned common widening."""

    needs_context = False

    def __init__(self):
        super().__init__()
        self.log_widen = nn.Parameter(torch.zeros(()))

    def forward(self, loc, scale, context=None):
        return pyro.distributions.Normal(loc, scale * self.log_widen.exp()).to_event(1)


def test_a_guide_of_your_own_trains_and_must_be_passed_back(tmp_path, tiny_data):
    vae = build_vae(tiny_data.event_shape, "mlp", 3, (24,), guide=ScaledGaussian())
    result = train(tiny_config(tmp_path), data=tiny_data, vae=vae)
    assert result.vae.posterior.log_widen.item() != 0  # it learned
    with pytest.raises(Exception, match="posterior"):
        load_run(result.run_dir)
    vae = load_run(result.run_dir, posterior=ScaledGaussian())[0]
    assert vae.posterior.log_widen.item() == result.vae.posterior.log_widen.item()
    assert evaluate(vae, tiny_data.test[:8], [1, 5], batch_size=4)["nll"]["5"]["mean"] > 0


def test_a_run_folder_whose_settings_name_another_guide_is_refused_by_evaluate_and_resume(tmp_path, capsys):
    """config.json edited to name another guide than the checkpoint's: both evaluate and resume say so."""
    import json

    from pyro_vae.runs import CheckpointError, load_run_and_data

    from conftest import make_tiny_data

    data = make_tiny_data()
    run = train(tiny_config(tmp_path, epochs=1, guide="iaf", flows=1, flow_hidden=(8,)), data=data).run_dir
    settings = json.loads((run / "config.json").read_text())
    settings["guide"] = "householder"
    (run / "config.json").write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match="saved with guide='iaf' but the run asks for guide='householder'"):
        load_run_and_data(run, data=data)
    with pytest.raises(CheckpointError, match="guide='iaf'"):
        resume(run, epochs=2, data=data)
