"""The 8-bit likelihoods whose parameters come from the decoder (pyro_vae.parts.discrete): exact sums
over all values, an independent float64 reference, float32 at extreme parameters, finite gradients at
the bounds, the decoder heads' shapes, χ² tests of the mixture's samples, and whole runs of each."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from pyro_vae import build_vae, load_run_and_data, resume, train
from pyro_vae.data import ImageData
from pyro_vae.evaluate import evaluate
from pyro_vae.parts.discrete import (
    INIT_SCALE,
    MAX_SCALE,
    MIN_SCALE,
    DecoderLogisticLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    DiscretizedMixtureLikelihood,
    bounded_scale,
    coupling_count,
)

from conftest import tiny_config

VALUES = torch.arange(256, dtype=torch.float64)


def reference_logistic_prob(k, loc, scale):
    """P(k) of the discretised logistic, written from its definition in float64 with NumPy: the CDF
    difference of the bin, the end bins taking the tails; right of the location as the difference of
    survival functions (the same number, without subtracting two values near 1)."""
    with np.errstate(over="ignore"):
        cdf = lambda t: 1 / (1 + np.exp(-(t - loc) / scale))  # noqa: E731
        sf = lambda t: 1 / (1 + np.exp((t - loc) / scale))  # noqa: E731
        left = np.where(k >= 255, 1.0, cdf(k + 0.5)) - np.where(k <= 0, 0.0, cdf(k - 0.5))
        right = np.where(k <= 0, 1.0, sf(k - 0.5)) - np.where(k >= 255, 0.0, sf(k + 0.5))
    return np.where(k < loc, left, right)


def reference_mixture_log_prob(x, logits, loc, scale, coeffs):
    """log p of one pixel ``x`` (C,) under the coupled mixture, from the definition, in float64 NumPy:
    component weights softmax(logits); in component m, channel c is a discretised logistic with
    location loc[m, c] + Σ_{j<c} coeffs[m, pair(c, j)] (x_j − 127.5)."""
    log_w = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
    terms = []
    for m in range(len(logits)):
        lp, k = log_w[m], 0
        for c in range(len(x)):
            mu = loc[m, c]
            for j in range(c):
                mu += coeffs[m, k] * (x[j] - 127.5)
                k += 1
            lp += math.log(reference_logistic_prob(np.array(x[c]), mu, scale[m, c]))
        terms.append(lp)
    return float(logsumexp(terms))


def _mixture(m, c, h=1, w=1, seed=0, dtype=torch.float64, extreme=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, h, w, generator=g, dtype=dtype) * (20 if extreme else 1)
    loc = torch.rand(m, c, h, w, generator=g, dtype=dtype) * (600 if extreme else 255) - (170 if extreme else 0)
    if extreme:  # the bounds the decoder can produce, and values in between
        choices = torch.tensor([MIN_SCALE, 0.3, 4.0, 60.0, MAX_SCALE], dtype=dtype)
        scale = choices[torch.randint(0, 5, (m, c, h, w), generator=g)]
    else:
        scale = torch.exp(torch.rand(m, c, h, w, generator=g, dtype=dtype) * 4)
    coeffs = torch.tanh(torch.randn(m, coupling_count(c), h, w, generator=g, dtype=dtype) * (3 if extreme else 1))
    return logits, loc, scale, coeffs


# ---------------------------------------------------------------- the scale bound


def test_the_scale_bound_starts_at_its_initial_scale_and_never_leaves_its_range():
    assert bounded_scale(torch.zeros(())).item() == pytest.approx(INIT_SCALE, rel=1e-5)
    raw = torch.tensor([-1e4, -50.0, -5.0, 0.0, 5.0, 50.0, 1e4])
    s = bounded_scale(raw)
    assert torch.all(s >= MIN_SCALE * (1 - 1e-6)) and torch.all(s <= MAX_SCALE * (1 + 1e-6))
    assert torch.all(s[1:] >= s[:-1])  # monotone
    assert s[0].item() == pytest.approx(MIN_SCALE, rel=1e-5) and s[-1].item() == pytest.approx(MAX_SCALE, rel=1e-5)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("scale", [MIN_SCALE, 0.2, INIT_SCALE, 90.0, MAX_SCALE])
@pytest.mark.parametrize("loc", [-400.0, 0.0, 3.3, 127.5, 254.9, 700.0])
def test_the_logistic_sums_to_one_over_256_values_at_every_scale_the_decoder_can_produce(loc, scale, dtype, tol):
    d = DiscretizedLogistic(torch.tensor(loc, dtype=dtype), torch.tensor(scale, dtype=dtype))
    total = torch.logsumexp(d.log_prob(VALUES.to(dtype)), 0).exp().item()
    assert abs(total - 1) < tol


@pytest.mark.parametrize("extreme", [False, True])
def test_a_gray_mixture_pixel_sums_to_one_over_256_values(extreme):
    logits, loc, scale, coeffs = _mixture(5, 1, seed=1, extreme=extreme)
    d = DiscretizedLogisticMixture(logits, loc, scale, coeffs)
    lp = d.log_prob(VALUES.view(256, 1, 1, 1))
    assert abs(torch.logsumexp(lp, 0).exp().item() - 1) < 1e-10


@pytest.mark.parametrize("extreme", [False, True])
def test_a_coupled_rgb_pixel_sums_to_one_over_all_256_cubed_values(extreme):
    logits, loc, scale, coeffs = _mixture(3, 3, seed=2, extreme=extreme)
    d = DiscretizedLogisticMixture(logits, loc, scale, coeffs)
    gb = torch.cartesian_prod(VALUES, VALUES)  # (65536, 2): green, blue
    parts = []
    for r in range(256):  # one red value at a time: 65,536 pixels per pass
        x = torch.cat([torch.full((len(gb), 1), float(r), dtype=torch.float64), gb], 1).view(-1, 3, 1, 1)
        parts.append(torch.logsumexp(d.log_prob(x), 0))
    assert abs(torch.logsumexp(torch.stack(parts), 0).exp().item() - 1) < 1e-9


# ---------------------------------------------------------------- against an independent reference


@pytest.mark.parametrize("channels", [1, 3])
def test_the_mixture_log_prob_equals_an_independent_float64_reference(channels):
    logits, loc, scale, coeffs = _mixture(4, channels, seed=3)
    d = DiscretizedLogisticMixture(logits, loc, scale, coeffs)
    g = torch.Generator().manual_seed(4)
    xs = torch.cat(
        [torch.randint(0, 256, (40, channels), generator=g), torch.tensor([[0] * channels, [255] * channels])]
    )
    ours = d.log_prob(xs.double().view(-1, channels, 1, 1))
    ref = [
        reference_mixture_log_prob(
            x.double().numpy(),
            logits[:, 0, 0].numpy(),
            loc[..., 0, 0].numpy(),
            scale[..., 0, 0].numpy(),
            coeffs[..., 0, 0].numpy(),
        )
        for x in xs
    ]
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_the_decoder_logistic_equals_the_reference_through_its_heads():
    lik = DecoderLogisticLikelihood((3, 2, 2))
    g = torch.Generator().manual_seed(5)
    out = torch.randn(4, 6, 2, 2, generator=g, dtype=torch.float64)
    out[:, 3:] *= 0.3  # scales of 8 to 30 pixels: every probability is a float64 number above 1e-300
    x = torch.randint(0, 256, (4, 3, 2, 2), generator=g).double()
    ours = lik(out, 3).log_prob(x)
    loc = 127.5 * (1 + out[:, :3].numpy())
    scale = bounded_scale(out[:, 3:]).numpy()
    ref = np.log(reference_logistic_prob(x.numpy(), loc, scale)).sum((1, 2, 3))
    torch.testing.assert_close(ours, torch.tensor(ref), rtol=1e-10, atol=1e-9)


# ---------------------------------------------------------------- float32 at extreme parameters


@pytest.mark.parametrize("seed", range(4))
def test_float32_matches_float64_at_extreme_parameters(seed):
    logits, loc, scale, coeffs = _mixture(6, 3, h=4, w=5, seed=seed, extreme=True)
    x = torch.randint(0, 256, (8, 3, 4, 5), generator=torch.Generator().manual_seed(seed)).double()
    x[0], x[1] = 0, 255  # the end bins
    lp64 = DiscretizedLogisticMixture(logits, loc, scale, coeffs).log_prob(x)
    lp32 = DiscretizedLogisticMixture(*(t.float() for t in (logits, loc, scale, coeffs))).log_prob(x.float())
    assert torch.isfinite(lp32).all()
    torch.testing.assert_close(lp32.double(), lp64, rtol=2e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["discretized-logistic", "discretized-mixture", "normal-decoder"])
def test_gradients_are_finite_at_the_bounds(name):
    vae = build_vae((3, 4, 4), "conv", 2, likelihood=name)
    shape = (5, *vae.likelihood.param_shape((3, 4, 4)))
    for fill in (-1e4, -60.0, 60.0, 1e4):  # every head saturated: scales at their bounds, far locations
        out = torch.full(shape, fill, requires_grad=True)
        x = torch.tensor([0.0, 255.0]).repeat(120).view(5, 3, 4, 4)
        if name == "normal-decoder":
            x = x / 255
        vae.likelihood(out, 3).log_prob(x).sum().backward()
        assert torch.isfinite(out.grad).all(), fill


# ---------------------------------------------------------------- decoder heads


@pytest.mark.parametrize("net", ["conv", "mlp"])
@pytest.mark.parametrize("shape", [(1, 7, 9), (3, 13, 11), (3, 32, 32)])
@pytest.mark.parametrize("name", ["discretized-logistic", "discretized-mixture", "normal-decoder"])
def test_the_decoder_outputs_the_likelihoods_parameters_at_odd_sizes(net, shape, name):
    vae = build_vae(shape, net, 4, (32,), likelihood=name)
    out = vae.decoder(torch.randn(2, 4))
    assert tuple(out.shape) == (2, *vae.likelihood.param_shape(shape))
    x = torch.randint(0, 256, (2, *shape)).float() / (255 if name == "normal-decoder" else 1)
    assert vae.likelihood(out, 3).log_prob(x).shape == (2,)
    assert vae.decode_mean(torch.randn(3, 4)).shape == (3, *shape)


def test_the_mixture_head_has_pixelcnn_plus_plus_layout():
    assert DiscretizedMixtureLikelihood((3, 8, 8), 10).param_shape((3, 8, 8)) == (100, 8, 8)
    assert DiscretizedMixtureLikelihood((1, 8, 8), 10).param_shape((1, 8, 8)) == (30, 8, 8)
    assert DecoderLogisticLikelihood((3, 8, 8)).param_shape((3, 8, 8)) == (6, 8, 8)


def test_the_mixture_refuses_what_it_cannot_model():
    with pytest.raises(ValueError, match="`likelihood=discretized-mixture` needs images shaped"):
        DiscretizedMixtureLikelihood((64,))
    with pytest.raises(ValueError, match="`mixture_components` must be an integer from 1 to 100"):
        DiscretizedMixtureLikelihood((3, 8, 8), 0)


# ---------------------------------------------------------------- samples against probabilities


def _chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    """χ² goodness of fit, cells with fewer than 5 expected draws merged into one."""
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return stats.chisquare(obs[keep], exp[keep] * obs.sum() / exp[keep].sum()).pvalue


def test_gray_mixture_samples_follow_its_256_probabilities():
    torch.manual_seed(6)
    logits, loc, scale, coeffs = _mixture(3, 1, seed=6)
    scale = scale * 8  # spread over many values
    d = DiscretizedLogisticMixture(logits, loc, scale, coeffs)
    n = 200_000
    draws = d.sample((n,)).view(-1).long()
    probs = d.log_prob(VALUES.view(256, 1, 1, 1)).exp().numpy()
    assert _chi2_pvalue(np.bincount(draws.numpy(), minlength=256), probs * n) > 1e-3


def test_coupled_rgb_samples_follow_the_joint_probabilities():
    """The coupling makes green and blue depend on red: check the joint on 4 x 4 x 4 coarse cells."""
    torch.manual_seed(7)
    logits, loc, scale, coeffs = _mixture(3, 3, seed=7)
    scale = scale * 10
    coeffs = coeffs.sign() * 0.8  # strong coupling
    d = DiscretizedLogisticMixture(logits, loc, scale, coeffs)
    gb = torch.cartesian_prod(VALUES, VALUES)
    cells = np.zeros(64)
    for r in range(256):
        x = torch.cat([torch.full((len(gb), 1), float(r), dtype=torch.float64), gb], 1)
        p = d.log_prob(x.view(-1, 3, 1, 1)).exp()
        idx = (r // 64) * 16 + (gb[:, 0] // 64).long() * 4 + (gb[:, 1] // 64).long()
        cells += np.bincount(idx.numpy(), weights=p.numpy(), minlength=64)
    n = 100_000
    s = d.sample((n,)).view(n, 3).long() // 64
    observed = np.bincount((s[:, 0] * 16 + s[:, 1] * 4 + s[:, 2]).numpy(), minlength=64)
    assert abs(cells.sum() - 1) < 1e-9
    assert _chi2_pvalue(observed, cells * n) > 1e-3


# ---------------------------------------------------------------- whole runs


def _unit_data(shape=(3, 8, 8)) -> ImageData:
    d = _byte_data(shape)
    return ImageData(d.name, d.train, d.train_labels, d.test / 255, d.test_labels, kind="unit")


def _byte_data(shape=(3, 8, 8), n_train=64, n_test=24, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    base = torch.rand(n, shape[0], 1, 1, generator=g) * 200
    noise = torch.randn(n, *shape, generator=g) * 20
    img = (base + noise).round().clamp(0, 255).to(torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    return ImageData(
        "tiny-bytes", img[:n_train], labels[:n_train], img[n_train:].float(), labels[n_train:], kind="byte"
    )


@pytest.mark.parametrize("name", ["discretized-logistic", "discretized-mixture", "normal-decoder"])
def test_a_run_of_each_new_likelihood_trains_resumes_evaluates_and_draws(tmp_path, name):
    data = _unit_data() if name == "normal-decoder" else _byte_data()
    config = tiny_config(
        tmp_path,
        likelihood=name,
        net="conv",
        z_dim=4,
        epochs=1,
        mixture_components=3 if name == "discretized-mixture" else 10,
    )
    first = train(config, data=data)
    assert (first.run_dir / "images").is_dir() and any((first.run_dir / "images").iterdir())
    again = resume(first.run_dir, epochs=2, data=data)
    assert [m["epoch"] for m in again.metrics] == [1, 2]
    run = load_run_and_data(first.run_dir, data=data)
    result = evaluate(run.vae, run.x, [1, 20], batch_size=8)
    nll = result["nll"]
    # the K = 20 bound is no worse than K = 1 on average
    assert math.isfinite(nll["20"]["mean"]) and nll["20"]["mean"] <= nll["1"]["mean"] + 3 * nll["1"]["se"]
    if name != "normal-decoder":  # a discrete likelihood: -log p(x) >= 0, and below 16 bits/dim here
        assert nll["20"]["mean"] > 0 and 0 < nll["20"]["bits_per_dim"] < 16


def test_the_new_likelihoods_start_near_the_no_latent_baseline_not_far_above_8_bits():
    """'A good start': before any training, the decoder's initial scale already gives photographs a
    bits/dim near what one logistic per channel fitted to them gives (here about 7.5)."""
    data = _byte_data(shape=(3, 16, 16), n_train=8, n_test=64)
    x = data.test.float()
    for name in ("discretized-logistic", "discretized-mixture"):
        torch.manual_seed(0)
        vae = build_vae((3, 16, 16), "conv", 8, likelihood=name)
        result = evaluate(vae, x, [1], batch_size=32)
        assert result["nll"]["1"]["bits_per_dim"] < 9.5, name
