"""M2 (Kingma et al. 2014) as a Pyro model and guide: Pyro's enumeration against the sum over labels written
out by hand (float64, the same z draws), the labelled ELBO and the classifier term against their formulas,
Pyro's own SVI loop training every parameter, and the parts it works with."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate

from pyro_vae.errors import ConfigError
from pyro_vae.models.m2 import SemiSupervisedVAE, build_m2

C = 3


@pytest.fixture
def setup():
    pyro.set_rng_seed(0)
    vae = build_m2((1, 6, 6), classes=C, z_dim=2, hidden=(12,)).double()
    for p in vae.parameters():  # away from the initialisation, so no term is trivially small
        p.data.add_(0.3 * torch.randn_like(p))
    x = torch.bernoulli(torch.full((7, 1, 6, 6), 0.4, dtype=torch.float64))
    return vae, x


def _by_hand(vae: SemiSupervisedVAE, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(x | z, y) + log p(z) + log p(y) − log q(z | x, y) per image, from torch's own densities."""
    loc, scale = vae.encoder(x, y)
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    logits = vae.decoder(z, y)
    log_px = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((-1, -2, -3))
    return log_px + log_pz - math.log(C) - log_q


def test_enumerated_loss_is_the_sum_over_labels_written_out(setup):
    vae, x = setup
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    guide = config_enumerate(vae.guide)
    pyro.set_rng_seed(1)
    loss = elbo.differentiable_loss(vae.model, guide, x)
    pyro.set_rng_seed(1)  # the same z draws: the guide's only random choice under enumeration
    trace = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(x)
    z = trace.nodes["z"]["value"]  # (C, N, z_dim): one draw per label and image
    assert z.shape == (C, len(x), 2)
    labels = torch.arange(C).reshape(C, 1).expand(C, len(x))
    q_y = torch.log_softmax(vae.classifier(x), -1).T  # (C, N)
    per_label = _by_hand(vae, x, z, labels)  # (C, N)
    want = -(q_y.exp() * (per_label - q_y)).sum()
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-9)


def test_labelled_loss_is_the_elbo_with_the_label_observed(setup):
    vae, x = setup
    y = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    pyro.set_rng_seed(2)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, config_enumerate(vae.guide), x, y)
    pyro.set_rng_seed(2)
    z = poutine.trace(vae.guide).get_trace(x, y).nodes["z"]["value"]
    torch.testing.assert_close(loss, -_by_hand(vae, x, z, y).sum(), rtol=1e-12, atol=1e-9)


def test_classifier_term_is_the_negative_log_probability_of_the_label(setup):
    vae, x = setup
    y = torch.tensor([2, 1, 0, 0, 1, 2, 2])
    logits = vae.classifier(x)
    want = -torch.log_softmax(logits, -1).gather(-1, y[:, None]).sum()
    torch.testing.assert_close(vae.classifier_loss(x, y), want, rtol=1e-12, atol=0)
    assert torch.equal(vae.classify(x), logits.argmax(-1))


def test_pyros_own_svi_trains_every_parameter_and_learns_the_labels():
    """Two well-separated classes of images; 4 labelled, 60 unlabelled: the plain Pyro loop."""
    pyro.set_rng_seed(0)
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(2, 1, 6, 6)
    base[0, :, :3] = 0.9
    base[1, :, 3:] = 0.9
    truth = torch.randint(2, (64,), generator=g)
    x = torch.bernoulli((base[truth] + 0.05).clamp(0, 1), generator=g)
    vae = build_m2((1, 6, 6), classes=2, z_dim=2, hidden=(16,))
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(vae.model, config_enumerate(vae.guide), pyro.optim.Adam({"lr": 1e-2}), elbo)
    labelled = torch.tensor([0, 1, 2, 3])
    for _ in range(300):
        svi.step(x[4:])
        svi.step(x[labelled], truth[labelled])
    moved = [n for n, p in vae.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert sorted(moved) == sorted(before)
    accuracy = (vae.classify(x[4:]) == truth[4:]).float().mean()
    assert accuracy >= 0.8  # chance is 0.5


@pytest.mark.parametrize(
    "kw",
    [
        dict(net="conv", conv=__import__("pyro_vae.parts.nets", fromlist=["ConvSpec"]).ConvSpec((4, 4), (1, 2), 3)),
        dict(likelihood="discretized-logistic"),
        dict(likelihood="continuous-bernoulli"),
        dict(prior="mog"),
        dict(prior="laplace"),
    ],
    ids=["conv", "discretized-logistic", "continuous-bernoulli", "mog", "laplace"],
)
def test_the_parts_it_works_with(kw):
    vae = build_m2((1, 8, 8), classes=4, z_dim=3, hidden=(16,), **kw)
    kind = vae.data_kind
    x = {"binary": torch.bernoulli(torch.full((5, 1, 8, 8), 0.5)), "unit": torch.rand(5, 1, 8, 8),
         "byte": torch.randint(0, 256, (5, 1, 8, 8)).float()}[kind]  # fmt: skip
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    for y in (None, torch.tensor([0, 1, 2, 3, 0])):
        loss = elbo.differentiable_loss(vae.model, config_enumerate(vae.guide), x, *([] if y is None else [y]))
        assert torch.isfinite(loss)
        loss.backward()
    assert vae.sample(4).shape == (4, 1, 8, 8) and vae.reconstruct(x).shape == (5, 1, 8, 8)
    pictures = vae.sample(4, y=torch.arange(4))
    assert pictures.min() >= 0 and pictures.max() <= 1


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("enumerated", [True, False])
def test_the_split_first_layer_is_the_network_on_the_joined_input(net, enumerated):
    """q(z|x,y) computes its first layer as (x's part) + (the label's part); the same network on the joined
    input [x, one-hot y] written out gives the same loc, scale and gradients, in float64."""
    from pyro_vae.models.m2 import _with_label, _with_planes

    torch.manual_seed(0)
    classes, shape = 4, (2, 8, 8)
    vae = build_m2(shape, classes=classes, net=net, z_dim=3, hidden=(16,)).double()
    enc = vae.encoder
    assert enc._split_at() is not None
    x = torch.rand(5, *shape, dtype=torch.float64)
    y = torch.arange(classes)[:, None] if enumerated else torch.tensor([0, 3, 1, 1, 2])
    got = enc(x, y)
    joined = _with_planes(x, y, classes) if net == "conv" else _with_label(x.flatten(-3), y, classes)
    point = 3 if net == "conv" else 1
    loc, scale = enc.encoder(joined.reshape(-1, *joined.shape[-point:]))
    want = loc.reshape(*joined.shape[:-point], -1), scale.reshape(*joined.shape[:-point], -1)
    assert got[0].shape == want[0].shape == ((classes, 5, 3) if enumerated else (5, 3))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(got[0])
    grads_got = torch.autograd.grad(((got[0] + got[1]) * w).sum(), list(enc.parameters()))
    grads_want = torch.autograd.grad(((want[0] + want[1]) * w).sum(), list(enc.parameters()))
    for a, b in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_decode_mean_sums_the_labels_out_with_their_prior():
    vae = build_m2((1, 4, 4), classes=3, z_dim=2, hidden=(8,))
    z = torch.randn(5, 2)
    each = torch.stack([vae.decode_labelled(z, torch.full((5,), c)) for c in range(3)])
    torch.testing.assert_close(vae.decode_mean(z), each.mean(0))


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(classes=1), "`classes` must be a number of labels from 2"),
        (dict(classes=True), "`classes` must be a number of labels from 2"),
        (dict(classes=10, prior="vamp"), "`prior=vamp`"),
        (dict(classes=10, z_dim=0), "`z_dim` must be a positive integer"),
        (dict(classes=10, hidden=(0,)), "`hidden` must be positive widths"),
    ],
)
def test_impossible_settings_are_refused_in_one_line(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_m2((1, 4, 4), **kw)


def test_the_label_prior_is_a_buffer_that_moves_with_the_model():
    vae = build_m2((1, 4, 4), classes=3, z_dim=2, hidden=(8,)).double()
    assert vae.label_logits.dtype == torch.float64 and "label_logits" in dict(vae.named_buffers())
    d = dist.Categorical(logits=vae.label_logits)
    torch.testing.assert_close(d.probs, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_the_labelled_subset_is_balanced_seeded_and_refuses_what_cannot_be():
    from pyro_vae.models.m2 import balanced_subset

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    a = balanced_subset(labels, 10, seed=3)
    assert torch.bincount(labels[a]).tolist() == [4, 3, 3]  # 10 = 3 each, the first class one more
    assert torch.equal(a, balanced_subset(labels, 10, seed=3)) and not torch.equal(a, balanced_subset(labels, 10, 4))
    assert len(a.unique()) == 10 and torch.equal(a, a.sort().values)
    for n, message in ((2, "from 3 .one per class."), (101, "to 100"), (70, "class 2, which has 20")):
        with pytest.raises(ConfigError, match=message):
            balanced_subset(labels, n)


def test_the_classifier_term_through_svi_is_the_weighted_cross_entropy(setup):
    from pyro.infer import Trace_ELBO

    vae, x = setup
    y = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    loss = Trace_ELBO().differentiable_loss(vae.model_classify, vae.guide_classify, x, y, 7.5)
    torch.testing.assert_close(loss, 7.5 * vae.classifier_loss(x, y), rtol=1e-12, atol=0)


def _linear_gaussian_m2(classes=3, d=4, z_dim=2, sigma=0.5, overdispersion=1.2):
    """x | z, y ~ N(W z + b_y, σ² I), z ~ N(0, I), y uniform: p(x) = (1/C) Σ_c N(x; b_c, W Wᵀ + σ² I), exactly.
    W has orthogonal columns, so the exact posterior of z is diagonal; the guide has the exact posterior mean
    and a scale ``overdispersion`` times the exact one (so the weights vary, with a finite variance)."""
    from torch import nn

    from pyro_vae.models.m2 import Classifier, LabelledDecoder, LabelledEncoder
    from pyro_vae.parts.likelihoods import NormalLikelihood
    from pyro_vae.parts.nets import GaussianHead
    from pyro_vae.parts.priors import StandardNormalPrior

    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, z_dim, dtype=torch.float64))
    w = q * torch.tensor([2.0, 1.0], dtype=torch.float64)[:z_dim]  # orthogonal columns of norms 2 and 1
    b = 3 * torch.randn(d, classes, dtype=torch.float64)
    post_var = 1 / (1 + (w * w).sum(0) / sigma**2)  # (z_dim,): diagonal, as WᵀW is
    a = post_var[:, None] * w.T / sigma**2  # E[z | x, c] = A (x − b_c)
    encoder = LabelledEncoder(GaussianHead(d + classes, z_dim), classes, event_dims=1).double()
    decoder = LabelledDecoder(nn.Linear(z_dim + classes, d, bias=False).double(), classes)
    with torch.no_grad():
        encoder.encoder.loc.weight.copy_(torch.cat([a, -a @ b], 1))
        encoder.encoder.loc.bias.zero_()
        encoder.encoder.scale.weight.zero_()
        target = overdispersion * post_var.sqrt()
        encoder.encoder.scale.bias.copy_(torch.log(torch.expm1(target)))  # softplus^-1 (the head adds 1e-5)
        decoder.decoder.weight.copy_(torch.cat([w, b], 1))
    classifier = Classifier(nn.Identity(), d, classes).double()
    vae = SemiSupervisedVAE(encoder, decoder, classifier, StandardNormalPrior(z_dim), NormalLikelihood(sigma),
                            (d,), classes).double()  # fmt: skip
    cov = w @ w.T + sigma**2 * torch.eye(d, dtype=torch.float64)
    mixture = [torch.distributions.MultivariateNormal(b[:, c], cov) for c in range(classes)]

    def exact(x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(torch.stack([m.log_prob(x) for m in mixture]), 0) - math.log(classes)

    return vae, exact


def test_log_px_with_the_label_summed_matches_the_exact_linear_gaussian_marginal():
    from pyro_vae.evaluate.labels import label_summed_log_likelihood

    vae, exact = _linear_gaussian_m2()
    g = torch.Generator().manual_seed(1)
    y = torch.randint(3, (40,), generator=g)
    z = torch.randn(40, 2, generator=g, dtype=torch.float64)
    x = vae.decoder(z, y).detach() + 0.5 * torch.randn(40, 4, generator=g, dtype=torch.float64)
    want = exact(x)
    # the spread of the estimator, per image, from independent repeats: the tolerance is 4 of its s.e.
    runs = torch.stack([label_summed_log_likelihood(vae, x, 2000, seed=s) for s in range(8)])
    se = runs.std(0) / math.sqrt(len(runs))
    got = runs.mean(0)
    assert ((got - want).abs() <= 4 * se + 1e-3).all(), (got - want).abs().max()


def test_accuracy_and_the_label_elbos_against_their_definitions(setup):
    from pyro_vae.evaluate.labels import accuracy, label_elbos, label_summed_log_likelihood

    vae, x = setup
    y = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    hits = (vae.classify(x) == y).double()
    got = accuracy(vae, x, y)
    assert got["mean"] == pytest.approx(hits.mean().item()) and got["se"] == pytest.approx(
        (hits.std() / math.sqrt(len(hits))).item()
    )
    pyro.set_rng_seed(0)
    elbos = label_elbos(vae, x, y, seed=5)
    assert elbos["labelled"].shape == (7,) and elbos["unlabelled"].shape == (7,)
    # in expectation ELBO_u <= log p(x), and the labelled ELBO <= log p(x, y) <= log p(x): on average over the
    # images both lie below the log-likelihood at many samples, by far more than their noise here
    lp = label_summed_log_likelihood(vae, x, 500, seed=1)
    assert elbos["unlabelled"].mean() < lp.mean() - 1 and elbos["labelled"].mean() < lp.mean() - 1
    with pytest.raises(ConfigError, match="one integer label per image"):
        accuracy(vae, x, y[:3])


def test_parallel_and_sequential_enumeration_agree(setup):
    """The two enumeration strategies draw z in different orders, so they agree in expectation: the mean loss
    over 300 seeds each, within 4 standard errors of the difference."""
    vae, x = setup
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    losses = {}
    for strategy in ("parallel", "sequential"):
        guide = config_enumerate(vae.guide, strategy)
        values = []
        for seed in range(300):
            pyro.set_rng_seed(seed)
            values.append(elbo.loss(vae.model, guide, x))
        losses[strategy] = torch.tensor(values, dtype=torch.float64)
    a, b = losses["parallel"], losses["sequential"]
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * se
    assert a.std() > 0  # the draws do vary: the check is not comparing constants


def test_class_conditional_pictures_have_a_row_per_image_and_per_class():
    from pyro_vae.pictures import label_figures

    vae = build_m2((1, 8, 8), classes=4, z_dim=2, hidden=(16,))
    x = torch.bernoulli(torch.full((10, 1, 8, 8), 0.4))
    labels = torch.arange(10) % 4
    torch.manual_seed(5)
    state = torch.get_rng_state()
    figures = label_figures(vae, x, labels, "m2", seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left as it was
    assert sorted(figures) == ["analogies.png", "samples_by_class.png"]
    for fig in figures.values():
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    # 8 analogy rows of 1 + 4 tiles, and 4 class rows of 8 draws (8x8 tiles, 2-pixel gutters)
    grid = figures["analogies.png"].axes[0].get_images()[0].get_array()
    assert grid.shape[:2] == (8 * 10 + 2, 5 * 10 + 2)
    grid = figures["samples_by_class.png"].axes[0].get_images()[0].get_array()
    assert grid.shape[:2] == (4 * 10 + 2, 8 * 10 + 2)


def test_conditional_vae_log_px_given_y_matches_the_exact_linear_gaussian():
    """The conditional VAE's −log p(x | y) from evaluate_labels against N(x; b_y, W Wᵀ + σ² I), exactly."""
    from pyro_vae.evaluate.labels import evaluate_labels
    from pyro_vae.models.m2 import ConditionalVAE

    m2, _ = _linear_gaussian_m2()
    vae = ConditionalVAE(m2.encoder, m2.decoder, m2.prior, m2.likelihood, (4,), 3).double()
    w, b = m2.decoder.decoder.weight[:, :2], m2.decoder.decoder.weight[:, 2:]
    cov = w @ w.T + 0.25 * torch.eye(4, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    y = torch.randint(3, (30,), generator=g)
    x = (b[:, y].T + torch.randn(30, 2, generator=g, dtype=torch.float64) @ w.T).detach()
    x = x + 0.5 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    exact = torch.stack(
        [torch.distributions.MultivariateNormal(b[:, c], cov).log_prob(xi) for xi, c in zip(x, y, strict=True)]
    )
    runs = torch.tensor([evaluate_labels(vae, x, y, [1000], seed=s)["nll"]["1000"]["mean"] for s in range(6)])
    se = runs.std() / math.sqrt(len(runs))
    assert abs(runs.mean() - (-exact.mean())) <= 4 * se + 1e-3, (runs.mean(), -exact.mean(), se)
    result = evaluate_labels(vae, x, y, [10], seed=0)
    assert result["given_label"] and "accuracy" not in result and list(result["elbo"]) == ["labelled"]


def test_conditional_vae_is_x_given_y_with_no_label_site():
    from pyro_vae.models.m2 import ConditionalVAE

    vae = build_m2((1, 6, 6), classes=C, z_dim=2, hidden=(12,), conditional=True)
    assert isinstance(vae, ConditionalVAE) and vae.classifier is None
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4))
    y = torch.tensor([0, 1, 2, 0, 1])
    trace = poutine.trace(vae.model).get_trace(x, y)
    assert {n for n, s in trace.nodes.items() if s["type"] == "sample"} == {"z", "x"}
    with pytest.raises(ConfigError, match="pass y, one label per image"):
        vae.model(x)
    with pytest.raises(ConfigError, match="has no classifier"):
        vae.classify(x)
    assert vae.reconstruct(x, y).shape == x.shape and vae.sample(3, torch.tensor([0, 1, 2])).shape == (3, 1, 6, 6)
