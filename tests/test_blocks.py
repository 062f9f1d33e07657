"""Evaluation's densities in cache-sized blocks (:func:`pyro_vae.parts.blocks.in_blocks`): the same numbers to
float rounding for every broadcast and remainder; one piece when a gradient is recorded; really split when not."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import ContinuousBernoulli

import pyro_vae.parts.blocks as blocks
import pyro_vae.parts.discrete as discrete
from pyro_vae.parts.discrete import discretized_logistic_log_prob
from pyro_vae.parts.likelihoods import StableContinuousBernoulli

SHAPES = [
    ((50, 7, 3), (50, 7, 3), (50, 7, 3)),  # 21 values a row: blocks of 2 rows, the last one short
    ((5, 1, 21), (1, 8, 21), (21,)),  # the first dimension from one argument, the rest from others
    ((1, 60, 21), (60, 21), ()),  # one index on the first dimension: a single piece
    ((0, 5), (0, 5), (0, 5)),  # empty
    ((), (), ()),  # scalars
]


def _inputs(shapes, g):
    value = torch.randint(0, 256, shapes[0], generator=g).float()
    loc = torch.rand(shapes[1], generator=g) * 300 - 20
    scale = torch.rand(shapes[2], generator=g) * 40 + 0.05
    return value, loc, scale


@pytest.mark.parametrize("shapes", SHAPES)
def test_blocks_give_the_same_numbers_for_every_broadcast(shapes, monkeypatch):
    g = torch.Generator().manual_seed(0)
    value, loc, scale = _inputs(shapes, g)
    whole = discrete._discretized_logistic_log_prob(*torch.broadcast_tensors(value, loc, scale))
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 20)
    with torch.no_grad():
        got = discretized_logistic_log_prob(value, loc, scale)
    eps32 = torch.finfo(torch.float32).eps
    # the same operators on the same values, but torch may take a SIMD or a scalar path for an element
    # depending on the block's shape, and the two round exp, log and softplus differently: agreement to the
    # density's own float32 accuracy (2e-5 relative against float64, tests/test_discrete.py)
    assert got.shape == whole.shape
    torch.testing.assert_close(got, whole, rtol=2e-5, atol=1e-6)
    # a mixed function of several arguments: the continuous Bernoulli's density
    logits = (torch.randn(loc.shape, generator=g) * 30).expand(whole.shape)
    x = torch.rand(value.shape, generator=g)
    with torch.no_grad():
        blocked = StableContinuousBernoulli(logits=logits).log_prob(x)
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 2**40)
    unblocked = StableContinuousBernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(blocked, unblocked, rtol=16 * eps32, atol=16 * eps32)


def test_split_only_without_gradients_and_only_when_large(monkeypatch):
    calls: list[tuple[int, ...]] = []
    inner = discrete._discretized_logistic_log_prob

    def spy(*args):
        calls.append(tuple(args[0].shape))
        return inner(*args)

    monkeypatch.setattr(discrete, "_discretized_logistic_log_prob", spy)
    value = torch.randint(0, 256, (784,)).float()
    loc = torch.full((1000, 784), 127.5, requires_grad=True)
    scale = torch.full((1000, 784), 16.0)
    with torch.no_grad():
        discretized_logistic_log_prob(value, loc, scale)
    rows = blocks.BLOCK_ELEMENTS // 784
    assert calls == [(rows, 784)] * (1000 // rows) + [(1000 % rows, 784)]
    calls.clear()
    out = discretized_logistic_log_prob(value, loc, scale)  # training: one piece, and the gradient flows
    assert calls == [(1000, 784)]
    (grad,) = torch.autograd.grad(out.sum(), loc)
    assert grad.shape == loc.shape and torch.isfinite(grad).all()
    calls.clear()
    with torch.no_grad():
        discretized_logistic_log_prob(value, loc[:128], scale[:128])  # a training-sized batch: one piece
    assert calls == [(128, 784)]
    calls.clear()
    with torch.no_grad():  # another device (meta: shapes only, as a GPU would take it): one piece, no launches added
        out = discretized_logistic_log_prob(value.to("meta"), loc.to("meta"), scale.to("meta"))
    assert calls == [(1000, 784)] and out.shape == (1000, 784)


def test_the_continuous_bernoulli_density_is_torchs_in_float64_and_close_in_float32():
    # x·l − softplus(l) from exp and log (pyro_vae.parts.lean.bernoulli_log_prob) in place of torch's BCE;
    # torch's float64 density is the reference where its probabilities-based normaliser is exact (|l| ≤ 10)
    g = torch.Generator().manual_seed(1)
    logits = torch.rand(400, 50, generator=g, dtype=torch.float64) * 20 - 10
    x = torch.rand(400, 50, generator=g, dtype=torch.float64)
    ref = ContinuousBernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(StableContinuousBernoulli(logits=logits).log_prob(x), ref, rtol=1e-9, atol=1e-9)
    got32 = StableContinuousBernoulli(logits=logits.float()).log_prob(x.float())
    eps32 = torch.finfo(torch.float32).eps
    # a few roundings of terms up to |l| in size
    assert ((got32.double() - ref).abs() <= 8 * eps32 * (1 + logits.abs())).all()
    assert math.isfinite(got32.sum().item())
