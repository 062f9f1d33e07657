"""Priors, likelihoods and objectives swap without touching the rest."""

import json
import math
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae import (
    IWAE_ELBO,
    LIKELIHOODS,
    PRIORS,
    DiscretizedLogistic,
    TrainConfig,
    build_likelihood,
    build_prior,
    build_vae,
    kl_weight,
    load_run,
    resume,
    train,
)
from pyro_vae.cli import evaluate_main
from pyro_vae.data import ImageData, prepare
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import evaluate
from pyro_vae.objectives import SyncFreeTraceMeanField_ELBO
from pyro_vae.parts.nets import MLPEncoder
from pyro_vae.parts.priors import has_closed_form_kl
from pyro_vae.runs import RunError, load_run_and_data

from conftest import ROOT, make_tiny_data, tiny_config

SHAPE = (1, 4, 4)


def tiny_batch(kind: str, n: int = 6) -> torch.Tensor:
    images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return prepare(images, kind, torch.Generator().manual_seed(1))


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
@pytest.mark.parametrize("prior", list(PRIORS))
def test_every_prior_and_likelihood_trains_and_evaluates(prior, likelihood):
    vae = build_vae(SHAPE, "mlp", z_dim=2, hidden=(8,), prior=prior, likelihood=likelihood)
    x = tiny_batch(vae.likelihood.data_kind)
    vae.likelihood.check_data(x)
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for elbo in (Trace_ELBO(), TraceMeanField_ELBO(), IWAE_ELBO(3)):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {k for k, v in vae.named_parameters() if not torch.equal(before[k], v)}
    # the prior's and likelihood's own learned parameters get gradients too
    assert changed == set(before)
    out = evaluate(vae, x, [1, 4], seed=0)
    assert math.isfinite(out["nll"]["4"]["mean"]) and math.isfinite(out["elbo"]["analytic"]["neg_elbo"]["mean"])
    expected = "analytic" if has_closed_form_kl(vae.prior, 2) else "Monte-Carlo (no closed form)"
    assert out["elbo"]["analytic"]["kl_kind"] == [f"z: {expected}"]
    assert vae.sample(3).shape == (3, *SHAPE)


def test_which_priors_have_a_closed_form_kl():
    enc = MLPEncoder(SHAPE, 3, (8,))
    closed = {name for name in PRIORS if has_closed_form_kl(build_prior(name, 3, enc, SHAPE), 3)}
    assert closed == {"normal", "learned-normal", "laplace"}


@pytest.mark.parametrize("prior", ["normal", "learned-normal", "laplace"])
def test_closed_form_kl_agrees_with_monte_carlo(prior):
    torch.manual_seed(0)
    p_mod = build_prior(prior, 4, MLPEncoder(SHAPE, 4, (8,)), SHAPE)
    with torch.no_grad():
        for param in p_mod.parameters():  # a learned prior away from its initial value
            param.add_(0.3 * torch.randn_like(param))
    p = p_mod()
    q = dist.Normal(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([0.3, 1.5, 0.8, 1.0])).to_event(1)
    exact = kl_divergence(q, p)
    z = q.sample((200_000,))
    draws = q.log_prob(z) - p.log_prob(z)
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 4 * se, (exact.item(), draws.mean().item(), se.item())


@pytest.mark.parametrize(
    "loc,scale",
    [(0.3, 2.0), (127.2, 8.0), (250.0, 0.5), (10.0, 30.0), (-40.0, 3.0), (300.0, 0.2)],
)
def test_discretized_logistic_sums_to_one_over_256_values(loc, scale):
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    total = d.log_prob(torch.arange(256, dtype=torch.float64)).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("logit", [-8.0, -1.0, -1e-4, 0.0, 1e-3, 0.7, 5.0])
def test_continuous_bernoulli_density_integrates_to_one(logit):
    lik = build_likelihood("continuous-bernoulli", (1,))
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    d = lik(torch.full((1,), logit, dtype=torch.float64), 1)
    density = d.log_prob(x.unsqueeze(-1)).exp()
    assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["normal", "normal-image", "normal-pixel", "laplace"])
def test_real_valued_likelihoods_integrate_to_one(name):
    lik = build_likelihood(name, (1,), scale=0.2)
    x = torch.linspace(-5, 6, 400_001, dtype=torch.float64)
    d = lik(torch.full((1,), 0.4, dtype=torch.float64), 1)
    assert torch.trapezoid(d.log_prob(x.unsqueeze(-1)).exp(), x).item() == pytest.approx(1.0, abs=1e-6)


def test_bernoulli_sums_to_one():
    d = build_likelihood("bernoulli", (1,))(torch.tensor([[-3.0], [0.2], [40.0]]), 1)
    assert torch.allclose(d.log_prob(torch.zeros(1)).exp() + d.log_prob(torch.ones(1)).exp(), torch.ones(3))


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("bernoulli", [0.0, 0.5], "Bernoulli likelihood needs binary data (0 or 1), found 0.5; binarize"),
        (
            "continuous-bernoulli",
            [0.2, 1.5],
            "continuous Bernoulli likelihood needs data in [0, 1], found values in [0.2, 1.5]",
        ),
        ("continuous-bernoulli", [0.2, float("nan")], "continuous Bernoulli likelihood got NaN or Inf in the data"),
        ("normal", [0.2, float("inf")], "Normal likelihood got NaN or Inf in the data"),
        (
            "discretized-logistic",
            [0.0, 256.0],
            "discretized logistic likelihood needs data in [0, 255], found values in [0, 256]",
        ),
        ("discretized-logistic", [0.0, 12.5], "discretized logistic likelihood needs whole 8-bit values in the data"),
    ],
)
def test_bad_data_for_a_likelihood_is_refused_clearly(name, data, message):
    with pytest.raises(DataError) as info:
        build_likelihood(name, (2,)).check_data(torch.tensor(data))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_data_prepared_for_another_likelihood_is_refused(tmp_path):
    cfg = TrainConfig(
        likelihood="continuous-bernoulli", epochs=1, batch_size=16, progress=False, out=str(tmp_path / "r")
    )
    with pytest.raises(ConfigError, match="prepared as 'binary' but `likelihood=continuous-bernoulli` expects 'unit'"):
        train(cfg, data=make_tiny_data())
    assert not (tmp_path / "r").exists()


def test_kl_weight_schedules():
    kw = dict(steps_per_epoch=10, total_steps=100)
    assert kl_weight(37, **kw, beta=0.5) == 0.5
    lin = dict(**kw, beta=2.0, schedule="linear", warmup=2, warmup_unit="epochs")
    assert [kl_weight(s, **lin) for s in (0, 5, 10, 20, 99)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert kl_weight(3, **kw, schedule="linear", warmup=6, warmup_unit="steps") == 0.5
    cyc = dict(**kw, schedule="cyclical", cycles=4)  # 25 steps a cycle: ramp over 12.5, hold
    assert [kl_weight(s, **cyc) for s in (0, 5, 12, 13, 24, 25, 30)] == [0.0, 0.4, 0.96, 1.0, 1.0, 0.0, 0.4]


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0, 3.0])
def test_kl_weight_scales_the_latent_site_and_only_the_kl_term(weight):
    vae = build_vae(SHAPE, z_dim=3, hidden=(8,))
    x = tiny_batch("binary")
    vae.kl_weight = weight
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    for site in (model_tr.nodes["z"], guide_tr.nodes["z"]):
        if weight > 0:
            assert site["scale"] == weight
        else:  # poutine.scale takes only positive factors; weight 0 masks the site
            assert site["mask"] is False
    assert model_tr.nodes["x"]["scale"] == 1.0 and model_tr.nodes["x"]["mask"] is None
    pyro.set_rng_seed(3)
    loss = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    vae.kl_weight = 1.0
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    recon = model_tr.nodes["x"]["fn"].log_prob(x).sum()
    kl = kl_divergence(guide_tr.nodes["z"]["fn"], model_tr.nodes["z"]["fn"]).sum()
    torch.testing.assert_close(loss, -(recon - weight * kl), rtol=1e-6, atol=1e-4)


def test_training_applies_the_schedule_at_every_step(tmp_path, monkeypatch):
    seen = []
    original = SyncFreeTraceMeanField_ELBO.differentiable_loss

    def spy(self, model, guide, x):
        seen.append(model.__self__.kl_weight)
        return original(self, model, guide, x)

    monkeypatch.setattr(SyncFreeTraceMeanField_ELBO, "differentiable_loss", spy)
    cfg = TrainConfig(
        elbo="analytic",
        epochs=2,
        batch_size=32,
        z_dim=2,
        hidden=(8,),
        progress=False,
        out=str(tmp_path / "r"),
        beta=2.0,
        kl_schedule="linear",
        warmup=1,
        warmup_unit="epochs",
    )
    train(cfg, data=make_tiny_data())  # 96 images: 3 steps an epoch; each epoch ends with 1 test batch at weight 1
    train_weights = [w for i, w in enumerate(seen) if i not in (3, 7)]
    assert train_weights == [kl_weight(s, 3, 6, beta=2.0, schedule="linear", warmup=1) for s in range(6)]
    assert seen[3] == seen[7] == 1.0  # the held-out loss is the plain ELBO


@pytest.mark.parametrize("k", [1, 7])
def test_iwae_equals_pyro_renyi_elbo_with_the_same_draws(k):
    vae = build_vae(SHAPE, z_dim=3, hidden=(8,))
    x = tiny_batch("binary")
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(5)
    expected = renyi.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    ours = IWAE_ELBO(k).differentiable_loss(vae.model, vae.guide, x)
    assert ours.item() == pytest.approx(expected, rel=1e-6)
    if k == 1:
        pyro.set_rng_seed(5)
        assert ours.item() == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x), rel=1e-6)

    # and the same gradient as Pyro's surrogate; Pyro differentiates only when it sees param sites
    def model(x):
        pyro.module("vae", vae)
        vae.model(x)

    def guide(x):
        pyro.module("vae", vae)
        vae.guide(x)

    pyro.set_rng_seed(5)
    renyi.loss_and_grads(model, guide, x)
    pyro_grads = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    pyro.set_rng_seed(5)
    IWAE_ELBO(k).differentiable_loss(vae.model, vae.guide, x).backward()
    for a, b in zip(pyro_grads, [p.grad for p in vae.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_particles_setting_reaches_the_objective(tmp_path, monkeypatch):
    seen = []
    original = IWAE_ELBO.differentiable_loss

    def spy(self, model, guide, x):
        seen.append(self.num_particles)
        return original(self, model, guide, x)

    monkeypatch.setattr(IWAE_ELBO, "differentiable_loss", spy)
    cfg = TrainConfig(elbo="iwae", particles=3, epochs=1, batch_size=32, progress=False, out=str(tmp_path / "r"))
    train(cfg, data=make_tiny_data())
    assert set(seen) == {3}


def test_checkpoint_restores_the_prior_and_likelihood(tmp_path):
    data = make_tiny_data()
    cfg = TrainConfig(
        prior="mog",
        likelihood="bernoulli",
        epochs=1,
        batch_size=32,
        z_dim=2,
        hidden=(8,),
        progress=False,
        out=str(tmp_path / "r"),
    )
    result = train(cfg, data=data)
    vae, config, _ = load_run(result.run_dir)
    assert config.prior == "mog" and type(vae.prior) is type(result.vae.prior)
    torch.testing.assert_close(vae.prior.locs, result.vae.prior.locs)


def test_diagonal_gaussian_mixture_matches_mixture_same_family():
    from pyro_vae.parts.priors import DiagonalGaussianMixture

    g = torch.Generator().manual_seed(0)
    logits, locs = torch.randn(7, generator=g), torch.randn(7, 5, generator=g)
    scales = torch.rand(7, 5, generator=g) + 0.2
    ours = DiagonalGaussianMixture(logits.double(), locs.double(), scales.double())
    ref = dist.MixtureSameFamily(
        dist.Categorical(logits=logits.double()), dist.Normal(locs.double(), scales.double()).to_event(1)
    )
    z = 2 * torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z))
    torch.testing.assert_close(ours.expand((4,)).log_prob(z), ref.log_prob(z))
    # sampling: the sample mean matches the mixture mean within 4 standard errors
    draws = ours.sample((100_000,))
    mean = (torch.softmax(logits.double(), -1).unsqueeze(-1) * locs.double()).sum(0)
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - mean).abs() < 4 * se).all()


@pytest.mark.real_data
def test_train_and_evaluate_a_discretized_logistic_run(data_dir, tmp_path):
    import json

    run = tmp_path / "run"
    train_cmd = [sys.executable, "scripts/train.py", "--data-dir", data_dir, "--out", str(run), "--epochs", "1"]
    train_cmd += [
        "--limit-train",
        "500",
        "--limit-test",
        "100",
        "--no-progress",
        "--likelihood",
        "discretized-logistic",
    ]
    train_cmd += ["--elbo", "analytic", "--prior", "student-t"]
    proc = subprocess.run(train_cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "KL: Monte-Carlo, prior 'student-t' has no closed form" in proc.stdout
    cmd = [sys.executable, "scripts/evaluate.py", str(run), "--k", "5", "--limit", "20", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (out,) = json.loads((run / "eval.json").read_text())["evaluations"]
    assert out["elbo"]["analytic"]["kl_kind"] == ["z: Monte-Carlo (no closed form)"]
    # the table says what the analytic row computed: a Monte-Carlo fallback, not an exact KL
    assert "-ELBO, TraceMeanField_ELBO (Monte-Carlo KL: no closed form)" in proc.stdout
    assert "exact" not in proc.stdout and "closed-form KL)" not in proc.stdout
    # 8-bit data are discrete: each pixel's probability is at most 1, so −log p(x) ≥ 0
    assert 0 < out["nll"]["5"]["mean"] < math.inf


class LogisticPrior(nn.Module):
    """A few lines of torch/Pyro: independent logistic coordinates with a learned scale."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self):
        base = dist.Uniform(torch.zeros_like(self.log_scale), torch.ones_like(self.log_scale))
        transforms = [
            dist.transforms.SigmoidTransform().inv,
            dist.transforms.AffineTransform(0.0, self.log_scale.exp()),
        ]
        return dist.TransformedDistribution(base, transforms).to_event(1)


class TinyEncoder(nn.Module):
    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2 * z_dim))

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3


def test_custom_prior_trains_checkpoints_resumes_and_evaluates(tmp_path):
    data = make_tiny_data()
    pyro.set_rng_seed(0)  # the modules are built here, before train seeds: same seed, same start
    vae = build_vae((1, 8, 8), z_dim=3, hidden=(24,), prior=LogisticPrior(3))
    result = train(tiny_config(tmp_path), data=data, vae=vae)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["prior"] == "custom"
    assert saved["custom"] == {"prior": f"{__name__}.LogisticPrior"}
    assert not torch.equal(result.vae.prior.log_scale, torch.zeros(3))

    with pytest.raises(RunError) as info:
        load_run(result.run_dir)
    assert str(info.value) == (
        f"{result.run_dir} was trained with custom prior ({__name__}.LogisticPrior), which a run folder cannot "
        f"rebuild; pass the same module(s) back in: load_run({result.run_dir}, prior=<your {__name__}.LogisticPrior>)"
    )
    loaded, _, _ = load_run(result.run_dir, prior=LogisticPrior(3))
    assert torch.equal(loaded.prior.log_scale, result.vae.prior.log_scale)

    # resuming goes on exactly as one uninterrupted 3-epoch run
    pyro.set_rng_seed(0)
    straight = train(
        tiny_config(tmp_path, "straight", epochs=3),
        data=data,
        vae=build_vae((1, 8, 8), z_dim=3, hidden=(24,), prior=LogisticPrior(3)),
    )
    with pytest.raises(RunError):
        resume(result.run_dir, epochs=3, data=data)
    resumed = resume(result.run_dir, epochs=3, data=data, prior=LogisticPrior(3))
    assert [m["test_loss"] for m in resumed.metrics] == [m["test_loss"] for m in straight.metrics]

    run = load_run_and_data(result.run_dir, data=data, prior=LogisticPrior(3))
    out = evaluate(run.vae, run.x, (1, 10))
    assert out["elbo"]["analytic"]["kl_kind"] == ["z: Monte-Carlo (no closed form)"]
    assert out["nll"]["10"]["mean"] <= out["nll"]["1"]["mean"] + 3 * out["nll"]["1"]["se"]


def test_custom_encoder_and_likelihood_go_through(tmp_path):
    class GaussianLikelihood(nn.Module):
        data_kind = "unit"

        def __init__(self) -> None:
            super().__init__()
            self.log_scale = nn.Parameter(torch.tensor(-1.0))

        def forward(self, out, event_dim):
            return dist.Normal(torch.sigmoid(out), self.log_scale.exp()).to_event(event_dim)

    data = make_tiny_data()
    data = ImageData("tiny", data.train, data.train_labels, data.test.clone() * 0 + 0.25, data.test_labels, "unit")
    enc = TinyEncoder(3)
    _, dec = pyro_vae_networks()
    vae = build_vae((1, 8, 8), net=(enc, dec), z_dim=3, likelihood=GaussianLikelihood())
    result = train(tiny_config(tmp_path), data=data, vae=vae)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert set(saved["custom"]) == {"encoder", "likelihood"} and saved["net"] == "mlp"
    with pytest.raises(RunError, match="custom encoder, likelihood"):
        load_run(result.run_dir)
    loaded, _, _ = load_run(result.run_dir, encoder=TinyEncoder(3), likelihood=GaussianLikelihood())
    assert torch.equal(loaded.likelihood.log_scale, result.vae.likelihood.log_scale)
    assert loaded.reconstruct(data.test[:2]).shape == (2, 1, 8, 8)


def pyro_vae_networks():
    from pyro_vae.parts.nets import build_networks

    return build_networks("mlp", (1, 8, 8), 3, (24,))


def test_evaluate_command_asks_for_the_custom_part(tmp_path, capsys):
    data = make_tiny_data()
    vae = build_vae((1, 8, 8), z_dim=3, hidden=(24,), prior=LogisticPrior(3))
    run = train(tiny_config(tmp_path), data=data, vae=vae).run_dir
    code = evaluate_main([str(run), "--k", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "custom prior" in err and "prior=<your" in err


def test_each_kind_of_part_has_one_registry_that_builds_every_name():
    from torch import nn

    from pyro_vae import LIKELIHOODS, NETWORKS
    from pyro_vae.config import GUIDE_NAMES, LIKELIHOOD_NAMES, NETS, PRIOR_NAMES
    from pyro_vae.parts.guides import GUIDES
    from pyro_vae.parts.likelihoods import decoder_shape
    from pyro_vae.parts.registry import Registry

    # the command line offers exactly the registered names
    assert (tuple(PRIORS), tuple(LIKELIHOODS), tuple(NETWORKS), tuple(GUIDES)) == (
        PRIOR_NAMES,
        LIKELIHOOD_NAMES,
        NETS,
        GUIDE_NAMES,
    )
    shape = (1, 8, 8)
    encoder, _ = NETWORKS.build("mlp", shape, 3, (16,), None, None, shape)
    for name in PRIORS:
        assert isinstance(PRIORS.build(name, 3, encoder, shape), nn.Module) and PRIORS[name]
    for name in LIKELIHOODS:
        likelihood = LIKELIHOODS.build(name, shape, 0.1, 10)
        assert isinstance(likelihood, nn.Module) and LIKELIHOODS[name]
        for net in NETWORKS:  # every network outputs what every likelihood needs
            from pyro_vae.parts.nets import DEFAULT_CONV

            out = decoder_shape(likelihood, shape)
            enc, dec = NETWORKS.build(net, shape, 3, (16,), None, DEFAULT_CONV, out)
            assert enc(torch.zeros(2, *shape))[0].shape == (2, 3) and dec(torch.zeros(2, 3)).shape == (2, *out)
    for name in GUIDES:
        q = GUIDES.build(name, 3, 16, 2, (8,))
        d = q(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 16))
        assert d.event_shape == (3,) and d.rsample().shape == (2, 3) and GUIDES[name]
    # adding a part is one entry; a name twice, or an unknown name, is refused
    mine = Registry("prior")
    mine.add("half", "what it is", lambda z_dim: z_dim // 2)
    assert mine.build("half", 8) == 4 and dict(mine) == {"half": "what it is"}
    with pytest.raises(ValueError, match="registered already"):
        mine.add("half", "again", lambda z_dim: z_dim)
    with pytest.raises(ConfigError, match="unknown `prior='whole'`; choose one of half"):
        mine.build("whole", 8)
