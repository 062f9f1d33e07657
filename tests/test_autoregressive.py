"""The autoregressive 8-bit likelihood (pyro_vae.parts.autoregressive): the joint sums to one over every
image, each pixel sees exactly its causal neighbourhood, log-probabilities equal an independent float64
reference written here, float32 holds at extreme parameters, the pixel-by-pixel decoder uses the same
conditionals as the parallel score, and its draws pass a χ² test against the exact probabilities."""

import copy
import math

import numpy as np
import pytest
import torch
from test_discrete import _byte_data, _chi2_pvalue, reference_mixture_log_prob

from pyro_vae import build_vae, load_run_and_data, resume, train
from pyro_vae.errors import DataError
from pyro_vae.evaluate import evaluate
from pyro_vae.parts.autoregressive import AutoregressiveMixture, AutoregressiveMixtureLikelihood
from pyro_vae.parts.discrete import coupling_count, discretized_logistic_log_prob, mixture_from_params

from conftest import tiny_config

VALUES = torch.arange(256, dtype=torch.float64)


def _likelihood(shape, components=3, kernel=3, features=4, hidden=8, seed=0, spread=0.3, dtype=torch.float64):
    """A likelihood with random weights large enough that every pixel's mixture depends on its
    neighbours and on the features (the default init is near-constant)."""
    torch.manual_seed(seed)
    lik = AutoregressiveMixtureLikelihood(shape, components, kernel, features, hidden).to(dtype)
    with torch.no_grad():
        for p in lik.parameters():
            p.normal_(0, spread)
    return lik


def _features(n, features, h, w, seed=0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, features, h, w, generator=g) * scale).to(dtype)


# ---------------------------------------------------------------- exact sums


@pytest.mark.parametrize("shape", [(1, 1, 2), (1, 2, 1)])
@pytest.mark.parametrize("spread", [0.3, 3.0])  # moderate weights, and saturated heads (scales at the bounds)
def test_a_two_pixel_gray_image_sums_to_one_over_all_256_squared_images(shape, spread):
    lik = _likelihood(shape, spread=spread)
    d = lik(_features(1, 4, *shape[1:], scale=spread), 3)
    a, b = torch.meshgrid(VALUES, VALUES, indexing="ij")
    images = torch.stack([a.reshape(-1), b.reshape(-1)], -1).reshape(-1, *shape)
    lp = d.log_prob(images)  # (65536,)
    assert torch.isfinite(lp).all()
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
    # and the second pixel does depend on the first (the sum is not trivially a product)
    first = lp.reshape(256, 256)
    assert (first[0] - first[200]).abs().max() > 1e-3


@pytest.mark.parametrize("first", [(0.0, 0.0), (30.0, 255.0), (140.0, 90.0)])
def test_a_coupled_two_channel_pixel_given_its_neighbour_sums_to_one(first):
    """A 1 x 2 image of two coupled channels with its first pixel fixed: the scores of all 256² second
    pixels (the second channel's mean coupled to the first's value, both conditioned on the first
    pixel) sum to p(first pixel), the first pixel's own factor. (An RGB pixel's 256³ sum is in
    tests/test_discrete.py; here the conditioning on a neighbour is what is checked.)"""
    shape = (2, 1, 2)
    lik = _likelihood(shape, spread=0.5)
    feats = _features(1, 4, 1, 2)
    first_px = torch.tensor(first, dtype=torch.float64)
    second = torch.cartesian_prod(VALUES, VALUES)
    x = torch.stack([first_px.expand(len(second), 2), second], -1).reshape(-1, *shape)
    total = torch.logsumexp(lik(feats, 3).log_prob(x), 0)
    log_first = _pixel_log_probs(lik, x[:1], feats)[0, 0, 0]
    assert abs(total.item() - log_first.item()) < 1e-9


def _pixel_log_probs(lik, x, features):
    """log p(x_i | x_<i) per pixel ``(N, H, W)``, from the parallel pass."""
    raw = lik.head(x, features)
    m = mixture_from_params(raw, lik.head.channels, lik.head.components)
    xx = x.unsqueeze(-4)
    per = discretized_logistic_log_prob(xx, m._coupled_loc(x), m.scale).sum(-3) + torch.log_softmax(m.logits, -3)
    return torch.logsumexp(per, -3)


# ---------------------------------------------------------------- what each pixel sees


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("channels", [1, 3])
def test_each_pixel_sees_exactly_its_causal_neighbourhood(kernel, channels):
    h, w = 6, 7
    lik = _likelihood((channels, h, w), kernel=kernel)
    x = torch.rand(1, channels, h, w, dtype=torch.float64) * 255
    feats = _features(1, 4, h, w)
    r = kernel // 2
    for i, j in [(0, 0), (0, 6), (3, 3), (5, 0), (5, 6), (2, 1)]:
        xi = x.clone().requires_grad_(True)
        raw = lik.head(xi, feats)[0, :, i, j]
        (grad,) = torch.autograd.grad(raw.square().sum(), xi)
        seen = grad[0].abs().sum(0) > 0  # (H, W)
        expected = torch.zeros(h, w, dtype=torch.bool)
        for a in range(max(0, i - r), i + 1):
            for b in range(max(0, j - r), min(w, j + r + 1)):
                expected[a, b] = a < i or b < j
        assert torch.equal(seen, expected), (i, j)


# ---------------------------------------------------------------- an independent float64 reference


def _reference_log_prob(lik, x, features):
    """log p(x) of one image ``x`` (C, H, W), written from the definition with NumPy: for each pixel in
    raster order, the neighbourhood (k//2 rows above, k//2 pixels either side, the row's left part),
    outside pixels 0 in every channel including the inside flag; hidden = ELU(Σ w·v + b + V f + c), two
    residual ELU layers, the output layer, then the coupled mixture of the reference in test_discrete."""
    head = lik.head
    c, h, w = x.shape
    k = head.neighbours.conv.kernel_size[1]
    r = k // 2
    wn = head.neighbours.conv.weight.detach().numpy()  # (hidden, C+1, r+1, k)
    bn = head.neighbours.conv.bias.detach().numpy()
    wc = head.condition.weight.detach().numpy()[:, :, 0, 0]
    bc = head.condition.bias.detach().numpy()
    layers = [(m.weight.detach().numpy()[:, :, 0, 0], m.bias.detach().numpy()) for m in head.body]
    wo, bo = head.out.weight.detach().numpy()[:, :, 0, 0], head.out.bias.detach().numpy()
    xs = x.numpy() / 127.5 - 1
    f = features.numpy()
    elu = lambda t: np.where(t > 0, t, np.expm1(np.minimum(t, 0)))  # noqa: E731
    m = head.components
    total = 0.0
    for i in range(h):
        for j in range(w):
            pre = bn.copy()
            for a in range(r + 1):  # kernel row a reads image row i - r + a
                for b in range(k):  # kernel column b reads image column j - r + b
                    ii, jj = i - r + a, j - r + b
                    if a == r and b >= r:
                        continue  # the pixel itself and those right of it
                    if 0 <= ii < h and 0 <= jj < w:
                        v = np.append(xs[:, ii, jj], 1.0)
                        pre += wn[:, :, a, b] @ v
            hid = elu(pre + wc @ f[:, i, j] + bc)
            for wl, bl in layers:
                hid = hid + elu(wl @ hid + bl)
            raw = wo @ hid + bo
            logits, loc, scale, coeffs = np.split(raw, np.cumsum([m, m * c, m * c]))
            lo, hi = math.log(0.01), math.log(256.0)
            init = math.log((math.log(16.0) - lo) / (hi - math.log(16.0)))
            scale = np.exp(lo + (hi - lo) / (1 + np.exp(-(scale + init))))
            total += reference_mixture_log_prob(
                x[:, i, j].numpy(),
                logits,
                127.5 * (1 + loc.reshape(m, c)),
                scale.reshape(m, c),
                np.tanh(coeffs.reshape(m, coupling_count(c))),
            )
    return total


@pytest.mark.parametrize("channels,kernel", [(1, 3), (3, 3), (3, 5)])
def test_the_log_prob_equals_an_independent_float64_reference(channels, kernel):
    shape = (channels, 4, 5)
    lik = _likelihood(shape, kernel=kernel, spread=0.15, seed=channels + kernel)  # no bin below 1e-300
    feats = _features(2, 4, 4, 5, seed=1)
    x = torch.randint(0, 256, (2, *shape), generator=torch.Generator().manual_seed(2)).double()
    x[1, :, 0, :] = 0  # end bins
    x[1, :, -1, :] = 255
    lp = lik(feats, 3).log_prob(x)
    for n in range(2):
        assert lp[n].item() == pytest.approx(_reference_log_prob(lik, x[n], feats[n]), abs=1e-8)


@pytest.mark.parametrize("seed", range(3))
def test_float32_matches_float64_at_extreme_parameters(seed):
    shape = (3, 5, 6)
    lik64 = _likelihood(shape, components=4, spread=3.0, seed=seed)  # saturated: scales at their bounds
    lik32 = copy.deepcopy(lik64).float()
    feats = _features(4, 4, 5, 6, seed=seed, scale=20.0)
    x = torch.randint(0, 256, (4, *shape), generator=torch.Generator().manual_seed(seed)).double()
    x[0], x[1] = 0, 255
    lp64 = lik64(feats, 3).log_prob(x)
    lp32 = lik32(feats.float(), 3).log_prob(x.float())
    assert torch.isfinite(lp32).all()
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=0.05)


def test_the_batch_broadcasts_like_any_distribution():
    """Importance sampling scores (K, N) decoder outputs against (N,) images."""
    lik = _likelihood((3, 3, 4))
    feats = _features(6, 4, 3, 4).reshape(2, 3, 4, 3, 4)
    x = torch.randint(0, 256, (3, 3, 3, 4)).double()
    d = lik(feats, 3)
    assert isinstance(d, AutoregressiveMixture)
    assert d.batch_shape == (2, 3) and d.event_shape == (3, 3, 4)
    lp = d.log_prob(x)
    assert lp.shape == (2, 3)
    for a in range(2):
        torch.testing.assert_close(lp[a], lik(feats[a], 3).log_prob(x))
    assert d.expand((2, 3)) is d
    assert d.expand((5, 2, 3)).log_prob(x).shape == (5, 2, 3)


# ---------------------------------------------------------------- decoding pixel by pixel


@pytest.mark.parametrize("channels", [1, 3])
def test_the_decoded_picture_is_each_pixels_mean_given_the_pixels_before_it(channels):
    """The pixel-by-pixel decoder (one neighbourhood patch per step) against the parallel pass: every
    decoded pixel is its conditional's mean, rounded, given the decoded image before it."""
    shape = (channels, 5, 6)
    lik = _likelihood(shape, spread=0.4)
    feats = _features(3, 4, 5, 6)
    x = lik(feats, 3).mean
    assert x.shape == (3, *shape)
    mixture = mixture_from_params(lik.head(x, feats), channels, 3)
    assert torch.equal(x, mixture.mean.round())
    assert torch.equal(lik.mean(feats) * 255, x)


def test_draws_follow_the_exact_probabilities_of_a_two_pixel_image():
    """χ² of 200,000 draws on 8 x 8 coarse cells of the joint (256² exact probabilities summed)."""
    shape = (1, 1, 2)
    lik = _likelihood(shape, spread=0.5, seed=3)
    feats = _features(1, 4, 1, 2, seed=3)
    d = lik(feats, 3)
    a, b = torch.meshgrid(VALUES, VALUES, indexing="ij")
    with torch.no_grad():
        p = d.log_prob(torch.stack([a.reshape(-1), b.reshape(-1)], -1).reshape(-1, *shape)).exp().reshape(256, 256)
    cells = p.reshape(8, 32, 8, 32).sum((1, 3)).reshape(-1).numpy()
    torch.manual_seed(4)
    n = 200_000
    s = d.sample((n,)).reshape(n, 2).long() // 32
    observed = np.bincount((s[:, 0] * 8 + s[:, 1]).numpy(), minlength=64)
    assert abs(cells.sum() - 1) < 1e-9
    assert _chi2_pvalue(observed, cells * n) > 1e-3


def test_rgb_draws_follow_each_channels_conditional():
    """Draws of a 2 x 3 RGB image against the parallel pass's conditionals on the drawn images: for each
    pixel and channel, P(x_c = v | earlier pixels, x_<c) = Σ_m w_m p_m(v) with w_m ∝ π_m Π_{j<c} p_m(x_j)
    (the coupled locations at the drawn values). Randomised probability-integral transforms of all
    4,000 x 18 draws must be uniform (χ² on 20 bins)."""
    shape = (3, 2, 3)
    lik = _likelihood(shape, spread=0.4, seed=5)
    feats = _features(1, 4, 2, 3, seed=5)
    torch.manual_seed(6)
    n = 4000
    with torch.no_grad():
        x = lik(feats, 3).sample((n,)).reshape(n, *shape)
        mixture = mixture_from_params(lik.head(x, feats.expand(n, -1, -1, -1)), 3, 3)
        loc = mixture._coupled_loc(x)  # (n, M, C, H, W) at the drawn earlier channels
        log_w = torch.log_softmax(mixture.logits, -3)  # (n, M, H, W)
        uniforms = []
        for c in range(3):
            grid = VALUES.view(256, 1, 1, 1, 1)
            per_value = discretized_logistic_log_prob(grid, loc[:, :, c], mixture.scale[:, :, c])  # (256,n,M,H,W)
            probs = torch.softmax(log_w, -3).mul(per_value.exp()).sum(-3)  # (256, n, H, W)
            k = x[:, c].long().unsqueeze(0)
            upper = probs.cumsum(0).gather(0, k).squeeze(0)
            lower = upper - probs.gather(0, k).squeeze(0)
            uniforms.append(lower + torch.rand(lower.shape, dtype=torch.float64) * (upper - lower))
            log_w = log_w + discretized_logistic_log_prob(x[:, c].unsqueeze(1), loc[:, :, c], mixture.scale[:, :, c])
    counts = np.histogram(torch.cat(uniforms).reshape(-1).numpy(), bins=20, range=(0, 1))[0]
    assert _chi2_pvalue(counts, np.full(20, counts.sum() / 20)) > 1e-3


# ---------------------------------------------------------------- in a VAE


def test_gradients_are_finite_when_the_decoder_saturates():
    vae = build_vae((3, 4, 4), "conv", 2, likelihood="autoregressive-mixture")
    shape = (5, *vae.likelihood.param_shape((3, 4, 4)))
    for fill in (-1e4, -60.0, 60.0, 1e4):
        out = torch.full(shape, fill, requires_grad=True)
        x = torch.tensor([0.0, 255.0]).repeat(120).view(5, 3, 4, 4)
        vae.likelihood(out, 3).log_prob(x).sum().backward()
        assert torch.isfinite(out.grad).all(), fill
        assert all(torch.isfinite(p.grad).all() for p in vae.likelihood.parameters()), fill
        vae.zero_grad()


@pytest.mark.parametrize("net", ["conv", "mlp"])
@pytest.mark.parametrize("shape", [(1, 7, 9), (3, 13, 11)])
def test_the_decoder_gives_the_features_at_odd_sizes(net, shape):
    vae = build_vae(shape, net, 4, (32,), likelihood="autoregressive-mixture", mixture_components=2)
    out = vae.decoder(torch.randn(2, 4))
    assert tuple(out.shape) == (2, 32, *shape[1:])
    x = torch.randint(0, 256, (2, *shape)).float()
    assert vae.likelihood(out, 3).log_prob(x).shape == (2,)
    pictures = vae.decode_mean(torch.randn(3, 4))
    assert pictures.shape == (3, *shape) and 0 <= pictures.min() and pictures.max() <= 1


def test_it_refuses_what_it_cannot_model():
    with pytest.raises(ValueError, match="`likelihood=autoregressive-mixture` needs images shaped"):
        AutoregressiveMixtureLikelihood((64,))
    with pytest.raises(ValueError, match="`mixture_components` must be an integer from 1 to 100"):
        AutoregressiveMixtureLikelihood((3, 8, 8), 0)
    with pytest.raises(ValueError, match="neighbourhood `kernel` must be an odd integer"):
        AutoregressiveMixtureLikelihood((3, 8, 8), 5, kernel=4)
    with pytest.raises(DataError, match="whole 8-bit values"):
        AutoregressiveMixtureLikelihood((1, 2, 2)).check_data(torch.full((1, 1, 2, 2), 0.5))


def test_a_run_trains_resumes_evaluates_and_draws(tmp_path):
    data = _byte_data()
    config = tiny_config(
        tmp_path, likelihood="autoregressive-mixture", net="conv", z_dim=4, epochs=1, mixture_components=3
    )
    first = train(config, data=data)
    assert any((first.run_dir / "images").iterdir())
    again = resume(first.run_dir, epochs=2, data=data)
    assert [m["epoch"] for m in again.metrics] == [1, 2]
    run = load_run_and_data(first.run_dir, data=data)
    result = evaluate(run.vae, run.x, [1, 20], batch_size=8)
    nll = result["nll"]
    assert math.isfinite(nll["20"]["mean"]) and nll["20"]["mean"] <= nll["1"]["mean"] + 3 * nll["1"]["se"]
    assert nll["20"]["mean"] > 0 and 0 < nll["20"]["bits_per_dim"] < 16


def test_it_starts_near_the_no_latent_baseline_not_far_above_8_bits():
    """Before any training the neighbourhood network outputs about 0, so each pixel starts as the
    plain mixture does (scale 16 levels): near the no-latent baseline (about 7.5 bits/dim here)."""
    data = _byte_data(shape=(3, 16, 16), n_train=8, n_test=64)
    torch.manual_seed(0)
    vae = build_vae((3, 16, 16), "conv", 8, likelihood="autoregressive-mixture")
    result = evaluate(vae, data.test.float(), [1], batch_size=32)
    assert result["nll"]["1"]["bits_per_dim"] < 9.5


# ---------------------------------------------------------------- hiding neighbours in training (ar_dropout)


def test_hidden_neighbours_read_as_the_padding_and_only_in_training():
    shape = (3, 4, 5)
    torch.manual_seed(0)
    lik = AutoregressiveMixtureLikelihood(shape, 3, 3, 4, 8, dropout=0.5).double()
    head = lik.head
    x = torch.randint(0, 256, (64, *shape), generator=torch.Generator().manual_seed(1)).double()
    plain = AutoregressiveMixtureLikelihood(shape, 3, 3, 4, 8).double().head.inputs(x)
    head.eval()
    assert torch.equal(head.inputs(x, hide=head.training), plain)  # eval mode: every neighbour seen
    torch.manual_seed(3)
    hidden = head.inputs(x, hide=True)
    r = head.neighbours.reach
    inner = hidden[:, :, r:, r:-r]  # the image inside its padding
    flag = inner[:, -1]
    assert set(flag.unique().tolist()) == {0.0, 1.0}
    # a hidden pixel is all zeros (value and inside flag), as the padding is; a seen one is the plain input
    assert (inner[:, :-1] * (1 - flag).unsqueeze(1)).abs().max() == 0
    seen = flag.unsqueeze(1).bool().expand_as(inner[:, :-1])
    assert torch.equal(inner[:, :-1][seen], plain[:, :-1, r:, r:-r][seen])
    # about half the pixels hidden: within 5 s.e. of a binomial share
    n = flag.numel()
    assert abs((1 - flag).mean().item() - 0.5) < 5 * math.sqrt(0.25 / n)


def test_with_neighbours_hidden_each_image_still_sums_to_one(monkeypatch):
    """Training scores with a random mask; for any fixed mask each factor is a normalised mixture, so the
    joint of a two-pixel image sums to one over all 256² images."""
    lik = _likelihood((1, 1, 2), spread=0.3)
    lik.head.dropout = 0.5
    lik.train()
    d = lik(_features(1, 4, 1, 2, scale=0.3), 3)
    a, b = torch.meshgrid(VALUES, VALUES, indexing="ij")
    images = torch.stack([a.reshape(-1), b.reshape(-1)], -1).reshape(-1, 1, 1, 2)
    # one fixed mask over the whole sum: every pixel hidden, then every pixel seen
    monkeypatch.setattr(torch, "bernoulli", lambda p, *a, **k: torch.zeros_like(p))
    lp_hidden = d.log_prob(images)
    monkeypatch.setattr(torch, "bernoulli", lambda p, *a, **k: torch.ones_like(p))
    lp_seen = d.log_prob(images)
    for lp in (lp_hidden, lp_seen):
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
    # hidden, the second pixel no longer depends on the first
    grid = lp_hidden.reshape(256, 256)
    second = grid - torch.logsumexp(grid, 1, keepdim=True)
    assert (second[0] - second[200]).abs().max() < 1e-12
    assert (lp_seen.reshape(256, 256)[0] - lp_seen.reshape(256, 256)[200]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(ar_kernel=4), "`ar_kernel` must be an odd width from 3 to 15"),
        (dict(ar_kernel=17), "`ar_kernel` must be an odd width from 3 to 15"),
        (dict(ar_dropout=1.0), "`ar_dropout` must be a share from 0"),
        (dict(ar_dropout=-0.1), "`ar_dropout` must be a share from 0"),
        (dict(ar_dropout=math.nan), "`ar_dropout` must be a share from 0"),
    ],
)
def test_bad_neighbourhood_settings_are_refused(settings, message):
    from pyro_vae import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(likelihood="autoregressive-mixture", net="conv", **settings).validate()


def test_neighbourhood_settings_apply_to_the_autoregressive_likelihood_only(tmp_path):
    from pyro_vae import TrainConfig, train
    from pyro_vae.models import build_vae_from_config

    with pytest.raises(ValueError, match="`ar_kernel` applies to `likelihood=autoregressive-mixture` only"):
        train(TrainConfig(likelihood="discretized-mixture", ar_kernel=3, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()
    config = TrainConfig(likelihood="autoregressive-mixture", net="conv", ar_kernel=3, ar_dropout=0.25)
    vae = build_vae_from_config((3, 8, 8), config)
    head = vae.likelihood.head
    assert head.neighbours.conv.kernel_size == (2, 3) and head.dropout == 0.25
