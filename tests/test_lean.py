"""The lean hot-path distributions (:mod:`pyro_vae.parts.lean`) against torch's own classes and exact
formulas: densities, gradients, normalisation, ``expand``, KL and broadcasting."""

from __future__ import annotations

import itertools
import math

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from pyro_vae.parts.lean import BernoulliLogits, DiagNormal, StandardDiagNormal, bernoulli_log_prob


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,scale_shape", [((), (5,)), ((7,), (7, 5)), ((3, 7), (5,)), ((3, 7), (3, 7, 5))])
def test_diag_normal_density_and_gradients_equal_torchs(dtype, batch, scale_shape):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(*batch, 5, generator=g, dtype=dtype, requires_grad=True)
    scale = (torch.rand(scale_shape, generator=g, dtype=dtype) * 3 + 1e-3).requires_grad_()
    value = 10 * torch.randn(*batch, 5, generator=g, dtype=dtype)  # far into the tails too
    ours = DiagNormal(loc, scale).log_prob(value)
    ref = dist.Normal(loc, scale).to_event(1).log_prob(value)
    assert ours.shape == ref.shape == batch and ours.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(ours, ref, **tol)
    grads = torch.autograd.grad(ours.sum(), [loc, scale]), torch.autograd.grad(ref.sum(), [loc, scale])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_diag_normal_float32_against_an_exact_float64_formula():
    g = torch.Generator().manual_seed(1)
    loc, scale = torch.randn(100, 8, generator=g), torch.rand(100, 8, generator=g) + 0.01
    value = loc + 50 * scale * torch.randn(100, 8, generator=g)
    v, m, s = value.double(), loc.double(), scale.double()
    exact = (-0.5 * ((v - m) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    got = DiagNormal(loc, scale).log_prob(value).double()
    assert ((got - exact).abs() / exact.abs()).max() < 1e-6


def test_diag_normal_integrates_to_one():
    loc, scale = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64)
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64).unsqueeze(-1)
    density = DiagNormal(loc, scale).log_prob(grid).exp()
    assert torch.trapezoid(density, grid.squeeze(-1)).item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("event_dim", [0, 1, 2, 3])
def test_bernoulli_logits_density_and_gradient_equal_torchs(dtype, event_dim):
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(6, 1, 4, 4, generator=g, dtype=dtype) * 30).requires_grad_()  # saturating logits too
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5, dtype=dtype), generator=g)
    ours = BernoulliLogits(logits, event_dim).log_prob(x)
    ref = dist.Bernoulli(logits=logits).to_event(event_dim).log_prob(x)
    assert ours.shape == ref.shape == (6, 1, 4, 4)[: 4 - event_dim]
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])
    # the exact form x*l - softplus(l), in float64: nothing saturates at |l| ~ 100
    exact = x.double() * logits.double() - F.softplus(logits.double())
    if event_dim:
        exact = exact.sum(dim=tuple(range(4 - event_dim, 4)))
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=1e-4)


def test_bernoulli_logits_sums_to_one_over_every_image():
    logits = torch.tensor([[-3.0, 0.2], [40.0, -0.7]], dtype=torch.float64)  # one 2x2 "image"
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).reshape(16, 2, 2)
    total = BernoulliLogits(logits, 2).log_prob(images).logsumexp(0)
    assert total.item() == pytest.approx(0.0, abs=1e-12)


def test_bernoulli_logits_broadcasts_particles_against_one_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 6, 1, 3, 3, generator=g)  # (K, N, *event)
    x = torch.bernoulli(torch.full((6, 1, 3, 3), 0.5), generator=g)
    ours = BernoulliLogits(logits, 3).log_prob(x)
    torch.testing.assert_close(ours, dist.Bernoulli(logits=logits).to_event(3).log_prob(x))
    assert ours.shape == (5, 6)


@pytest.mark.parametrize(
    "make", [lambda: DiagNormal(torch.zeros(4, 3), torch.ones(4, 3)), lambda: BernoulliLogits(torch.zeros(4, 3), 1)]
)
def test_expand_to_the_same_shape_is_the_same_object_and_otherwise_a_true_expand(make):
    d = make()
    assert d.expand((4,)) is d
    wider = d.expand((2, 4))
    assert type(wider) is type(d) and wider.batch_shape == (2, 4) and wider.event_shape == (3,)
    value = torch.ones(2, 4, 3)
    torch.testing.assert_close(wider.log_prob(value), d.log_prob(value).expand(2, 4))


def test_a_prior_expanded_by_the_plate_scores_as_torchs():
    prior = DiagNormal(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.3]))  # batch (), as a prior module returns it
    z = torch.randn(9, 2)
    torch.testing.assert_close(
        prior.expand((9,)).log_prob(z), dist.Normal(prior.base_dist.loc, prior.base_dist.scale).to_event(1).log_prob(z)
    )


def test_closed_form_kl_is_torchs():
    g = torch.Generator().manual_seed(4)
    q_loc, q_scale = torch.randn(6, 4, generator=g), torch.rand(6, 4, generator=g) + 0.1
    q = DiagNormal(q_loc, q_scale)
    p = DiagNormal(torch.zeros(4), torch.ones(4)).expand((6,))
    ref = kl_divergence(dist.Normal(q_loc, q_scale).to_event(1), dist.Normal(0.0, 1.0).expand([6, 4]).to_event(1))
    torch.testing.assert_close(kl_divergence(q, p), ref)
    torch.testing.assert_close(kl_divergence(q, dist.Normal(0.0, 1.0).expand([6, 4]).to_event(1)), ref)
    # the closed form against the definition, by Monte Carlo: mean of log q - log p, within 5 standard errors
    z = q.rsample((20000,))
    terms = q.log_prob(z) - p.log_prob(z)
    se = terms.std(0) / math.sqrt(len(terms))
    assert ((terms.mean(0) - ref).abs() < 5 * se).all()


def test_reparameterised_samples_carry_gradients_and_pyros_score_parts():
    loc = torch.zeros(3, 2, requires_grad=True)
    q = DiagNormal(loc, torch.ones(3, 2))
    z = q.rsample()
    assert z.shape == (3, 2) and z.requires_grad
    parts = q.score_parts(z)
    torch.testing.assert_close(parts.log_prob, q.log_prob(z))
    assert parts.score_function == 0  # reparameterised: no score-function term


@pytest.mark.parametrize("sample_shape", [(), (4,)])
def test_own_draws_are_torchs_draws_and_score_as_torch_does_with_the_same_total_gradient(sample_shape):
    g = torch.Generator().manual_seed(5)
    loc = torch.randn(7, 3, generator=g, dtype=torch.float64).requires_grad_()
    scale = (torch.rand(7, 3, generator=g, dtype=torch.float64) + 0.05).requires_grad_()
    torch.manual_seed(11)
    z = DiagNormal(loc, scale).rsample(sample_shape)
    torch.manual_seed(11)
    z_torch = dist.Normal(loc, scale).to_event(1).rsample(sample_shape)
    assert torch.equal(z, z_torch)  # the same generator, the same draws
    q = DiagNormal(loc, scale)
    z = q.rsample(sample_shape)
    ours = q.log_prob(z)  # from epsilon
    ref = dist.Normal(loc, scale).to_event(1).log_prob(z)  # from (z - loc) / scale, through z as well
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # the total derivative, through z and the parameters: zero in loc, -1/scale in scale, for both
    got = torch.autograd.grad(ours.sum(), [loc, scale], retain_graph=True, allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad(ref.sum(), [loc, scale])
    n = math.prod(sample_shape)
    torch.testing.assert_close(got[0], torch.zeros_like(loc), rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], -n / scale.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_own_draw_scored_without_the_float32_cancellation_of_z_minus_loc():
    # loc = 1e4, scale = 1e-3: z = loc + scale * eps keeps about one significant digit of eps in float32
    loc, scale = torch.full((1000, 2), 1e4), torch.full((1000, 2), 1e-3)
    q = DiagNormal(loc, scale)
    torch.manual_seed(0)
    z = q.rsample()
    eps = q._draw[2].double()
    exact = (-0.5 * eps.square() - math.log(1e-3) - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert (q.log_prob(z).double() - exact).abs().max() < 1e-4
    formula = dist.Normal(loc, scale).to_event(1).log_prob(z).double()
    assert (formula - exact).abs().max() > 0.1  # what the subtraction would have lost


@pytest.mark.parametrize(
    "other",
    [
        lambda z: z.detach(),  # a detached copy (e.g. a sticking-the-landing estimator)
        lambda z: z.clone(),  # another tensor with the same values
        lambda z: z.detach().add_(0.5),  # the draw itself, changed in place
        lambda z: torch.zeros_like(z),  # a replayed or conditioned value
    ],
)
def test_any_value_but_the_unchanged_own_draw_is_scored_from_the_formula(other):
    g = torch.Generator().manual_seed(6)
    loc, scale = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.1,
    )
    q = DiagNormal(loc, scale)
    value = other(q.rsample())
    torch.testing.assert_close(
        q.log_prob(value), dist.Normal(loc, scale).to_event(1).log_prob(value), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_standard_normal_scores_grads_and_expands_as_torchs(dtype):
    d = 4
    prior = StandardDiagNormal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype))
    ref = dist.Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)).to_event(1)
    z = (10 * torch.randn(6, 9, d, dtype=dtype)).requires_grad_()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(prior.log_prob(z), ref.log_prob(z), **tol)
    torch.testing.assert_close(
        torch.autograd.grad(prior.log_prob(z).sum(), z)[0], torch.autograd.grad(ref.log_prob(z).sum(), z)[0], **tol
    )
    wide = prior.expand((9,))  # as the "data" plate expands it
    assert type(wide) is StandardDiagNormal and wide.batch_shape == (9,)
    torch.testing.assert_close(wide.log_prob(z[0]), ref.expand((9,)).log_prob(z[0]), **tol)
    # a value with fewer batch dimensions than the distribution broadcasts, as torch's does
    one = torch.randn(d, dtype=dtype)
    assert wide.log_prob(one).shape == (9,)
    torch.testing.assert_close(wide.log_prob(one), ref.expand((9,)).log_prob(one), **tol)
    for checked in (True, False):  # Pyro's validation, or our own check without it
        unchecked = StandardDiagNormal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype), validate_args=checked)
        with pytest.raises(ValueError, match=r"over 4 dimensions|must match event_shape"):
            unchecked.log_prob(torch.zeros(9, 3, dtype=dtype))
    # the closed-form KL sees the zeros and ones
    q = DiagNormal(torch.randn(9, d, dtype=dtype), torch.rand(9, d, dtype=dtype) + 0.1)
    torch.testing.assert_close(
        kl_divergence(q, wide),
        kl_divergence(dist.Normal(q.base_dist.loc, q.base_dist.scale).to_event(1), ref.expand((9,))),
        **tol,
    )


def test_standard_normal_integrates_to_one():
    p = StandardDiagNormal(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    grid = torch.linspace(-12, 12, 24001, dtype=torch.float64).unsqueeze(-1)
    assert torch.trapezoid(p.log_prob(grid).exp(), grid.squeeze(-1)).item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    "q_batch,p_batch", [((), ()), ((7,), ()), ((7,), (7,)), ((3, 7), (7,)), ((7,), (3, 7)), ((3, 1), (1, 7))]
)
def test_standard_normal_kl_is_torchs_general_formula_in_value_gradient_and_shape(q_batch, p_batch):
    # the five-operator KL against torch's Normal–Normal KL in float64 (an independent formula), for every
    # way the posterior's and the prior's batch shapes broadcast
    d, f64 = 5, torch.float64
    g = torch.Generator().manual_seed(11)
    loc = (3 * torch.randn(*q_batch, d, generator=g, dtype=f64)).requires_grad_()
    scale = (torch.rand(*q_batch, d, generator=g, dtype=f64) * 4 + 0.01).requires_grad_()
    prior = StandardDiagNormal(torch.zeros(d, dtype=f64), torch.ones(d, dtype=f64)).expand(p_batch)
    ours = kl_divergence(DiagNormal(loc, scale), prior)
    ref = kl_divergence(dist.Normal(loc, scale).to_event(1), dist.Normal(0.0, 1.0).expand([*p_batch, d]).to_event(1))
    assert ours.shape == ref.shape == torch.broadcast_shapes(q_batch, p_batch)
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-13)
    for a, b in zip(
        torch.autograd.grad(ours.sum(), (loc, scale)), torch.autograd.grad(ref.sum(), (loc, scale)), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and against the derivatives by hand: dKL/dμ = μ, dKL/dσ = σ − 1/σ (times the broadcast multiplicity)
    times = ours.numel() / loc[..., 0].numel()
    dloc, dscale = torch.autograd.grad(kl_divergence(DiagNormal(loc, scale), prior).sum(), (loc, scale))
    torch.testing.assert_close(dloc, times * loc.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dscale, times * (scale - 1 / scale).detach(), rtol=1e-12, atol=1e-12)


def test_standard_normal_kl_in_float32_keeps_a_collapsed_units_small_kl():
    # units near the prior (μ ≈ 0, σ ≈ 1) have KL ≈ μ²/2 + (σ − 1)²: each term must come out with the
    # rounding of σ² near 1 (a few float32 ulps of 1 per unit), not of the sum of d terms near 1
    d = 64
    g = torch.Generator().manual_seed(12)
    loc64 = 1e-3 * torch.randn(1000, d, generator=g, dtype=torch.float64)
    scale64 = 1 + 1e-3 * torch.randn(1000, d, generator=g, dtype=torch.float64)
    loc, scale = loc64.float(), scale64.float()
    exact = 0.5 * (loc.double() ** 2 + scale.double() ** 2 - 1 - 2 * scale.double().log()).sum(-1)  # the float32 inputs
    ours = kl_divergence(DiagNormal(loc, scale), StandardDiagNormal(torch.zeros(d), torch.ones(d)))
    ulp = torch.finfo(torch.float32).eps
    # each unit's term carries a few roundings of numbers near 1 (σ², μ² + σ²), random in sign, so the sum of
    # d = 64 terms is off by a few ulps of 1: torch's general formula, which also subtracts per unit, is off by
    # 3.3 here; summing the d terms near 1 first and subtracting d/2 after would be off by 46
    assert (ours.double() - exact).abs().max() < 8 * ulp
    assert exact.mean() > 100 * 8 * ulp  # the KL itself is far above that bound


def test_standard_normal_kl_refuses_a_different_number_of_dimensions():
    prior = StandardDiagNormal(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match=r"over \(3,\) and \(4,\) dimensions"):
        kl_divergence(DiagNormal(torch.zeros(3), torch.ones(3)), prior)


_GRID = torch.tensor(
    [
        -200.0,
        -100.0,
        -88.0,
        -40.0,
        -17.0,
        -16.0,
        -5.0,
        -1.0,
        -1e-3,
        -1e-7,
        0.0,
        1e-7,
        1e-3,
        1.0,
        5.0,
        16.0,
        17.0,
        40.0,
        88.0,
        100.0,
        200.0,
    ]
)


@pytest.mark.parametrize("x", [0.0, 1.0, 0.3, 0.999])
def test_bernoulli_log_prob_is_exact_to_float32_rounding_from_any_logit(x):
    # x·l − softplus(l) in float64 is the reference; float32 must hold its relative precision everywhere,
    # near 0 too (|log p| ~ e^{-|l|}), down to the smallest float32 numbers
    logits = torch.cat([_GRID, torch.linspace(-30, 30, 6001)])
    value = torch.full_like(logits, x)
    ld = logits.double()
    # softplus in float64 written out (F.softplus turns linear past its threshold, dropping e^{-|l|})
    exact = (value.double() * ld - ld.clamp(min=0)) - torch.log1p(torch.exp(-ld.abs()))
    got = bernoulli_log_prob(logits, value).double()
    eps32 = torch.finfo(torch.float32).eps
    tiny = torch.finfo(torch.float32).smallest_normal
    assert ((got - exact).abs() <= 4 * eps32 * exact.abs() + tiny).all(), (got - exact).abs().max()
    assert (got <= 0).all()


def test_bernoulli_log_prob_float64_agrees_with_torch_to_float64_rounding():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(50, 20, generator=g, dtype=torch.float64) * 20
    x = torch.rand(50, 20, generator=g, dtype=torch.float64)
    ref = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    torch.testing.assert_close(bernoulli_log_prob(logits, x), ref, rtol=1e-13, atol=1e-13)


def test_bernoulli_log_prob_gradients_are_exact_in_both_arguments():
    g = torch.Generator().manual_seed(8)
    logits = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 4).requires_grad_()
    x = torch.rand(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(bernoulli_log_prob, (logits, x))
    weights = torch.randn(6, 5, generator=g, dtype=torch.float64)
    grad_l, grad_x = torch.autograd.grad((bernoulli_log_prob(logits, x) * weights).sum(), [logits, x])
    torch.testing.assert_close(grad_l, weights * (x - torch.sigmoid(logits)), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(grad_x, weights * logits, rtol=1e-14, atol=1e-14)
    # float32 at saturating logits: the gradient x − sigmoid(l) stays finite and exact
    l32 = _GRID.clone().requires_grad_()
    ones = torch.ones_like(l32)
    (g32,) = torch.autograd.grad(bernoulli_log_prob(l32, ones).sum(), l32)
    torch.testing.assert_close(g32.double(), 1 - torch.sigmoid(_GRID.double()), rtol=1e-6, atol=1e-7)


def test_bernoulli_log_prob_broadcasts_and_its_gradient_comes_back_in_each_shape():
    logits = torch.randn(4, 1, 3, requires_grad=True)
    x = torch.bernoulli(torch.full((5, 3), 0.5))
    out = bernoulli_log_prob(logits, x)
    assert out.shape == (4, 5, 3)
    torch.testing.assert_close(
        out, -F.binary_cross_entropy_with_logits(logits.expand(4, 5, 3), x.expand(4, 5, 3), reduction="none")
    )
    (grad,) = torch.autograd.grad(out.sum(), logits)
    assert grad.shape == logits.shape


@pytest.mark.parametrize(
    "logit_shape,x_shape",
    [
        ((50, 7, 3), (50, 7, 3)),  # 21 elements a row: blocks of 2 rows, the last one short
        ((50, 1, 21), (4, 21)),  # K draws' logits against a batch of 4: x broadcast (expanded, stride 0)
        ((1, 50, 21), (1, 50, 21)),  # one index on the first dimension: a single block
        ((0, 5), (0, 5)),  # empty
        ((), ()),  # a scalar
    ],
)
def test_bernoulli_log_prob_in_cache_sized_blocks_is_the_same_function(logit_shape, x_shape, monkeypatch):
    # evaluation's large inputs are scored in blocks along the first dimension: the blocked forward is the
    # same elementwise operators, so the same numbers to float rounding (where a block ends inside a SIMD
    # vector, the scalar tail may round an exp or log differently), and the same float64 values and
    # gradients as the exact formula, for every block size, remainder and broadcast
    import pyro_vae.parts.lean as lean

    g = torch.Generator().manual_seed(10)
    logits = (torch.randn(logit_shape, generator=g) * 20).requires_grad_()
    x = torch.bernoulli(torch.full(x_shape, 0.5), generator=g)
    whole = bernoulli_log_prob(logits, x)
    (grad_whole,) = torch.autograd.grad(whole.sum(), logits)
    monkeypatch.setattr(lean, "_BLOCK_ELEMENTS", 50)
    blocked = bernoulli_log_prob(logits, x)
    eps32 = torch.finfo(torch.float32).eps
    torch.testing.assert_close(blocked, whole, rtol=2 * eps32, atol=torch.finfo(torch.float32).tiny)
    (grad_blocked,) = torch.autograd.grad(blocked.sum(), logits)
    assert torch.equal(grad_blocked, grad_whole)  # the backward pass runs on the whole tensors
    ld, xd = torch.broadcast_tensors(logits.detach().double(), x.double())
    exact = (xd * ld - ld.clamp(min=0)) - torch.log1p(torch.exp(-ld.abs()))
    assert ((blocked.double() - exact).abs() <= 4 * eps32 * exact.abs() + torch.finfo(torch.float32).tiny).all()
    # float32 gradient terms (each within an ulp of 1) summed over the broadcast copies
    reference = (xd - torch.sigmoid(ld)).sum_to_size(logits.shape)
    copies = max(xd.numel(), 1) / max(logits.numel(), 1)
    torch.testing.assert_close(grad_blocked.double(), reference, rtol=0, atol=4 * eps32 * copies)


def test_bernoulli_log_prob_blocks_really_split_evaluation_sized_inputs(monkeypatch):
    # the blocked path is taken (not only equal): each block's own exp_ runs on at most the block size
    import pyro_vae.parts.lean as lean

    sizes: list[int] = []
    exp_ = torch.Tensor.exp_
    monkeypatch.setattr(torch.Tensor, "exp_", lambda self: sizes.append(self.numel()) or exp_(self))
    bernoulli_log_prob(torch.randn(1000, 1, 28, 28), torch.zeros(1, 28, 28))
    assert len(sizes) == math.ceil(1000 / (lean._BLOCK_ELEMENTS // 784)) and max(sizes) <= lean._BLOCK_ELEMENTS
    sizes.clear()
    bernoulli_log_prob(torch.randn(128, 1, 28, 28), torch.zeros(128, 1, 28, 28))  # a training batch: one block
    assert sizes == [128 * 784]


@pytest.mark.cuda
def test_bernoulli_logits_scores_alike_on_cuda_and_cpu():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(8, 1, 5, 5, generator=g) * 10
    x = torch.bernoulli(torch.full((8, 1, 5, 5), 0.5), generator=g)
    cpu = BernoulliLogits(logits, 3).log_prob(x)
    cuda = BernoulliLogits(logits.cuda(), 3).log_prob(x.cuda())  # torch's fused kernel there
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-4)
