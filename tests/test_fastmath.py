"""``pyro_vae.parts.fastmath`` against float64 references written with torch's own ``log1p``/``expm1``:
float32 values within a few ulps (relative) across the whole range, the special values, exact gradients, and
torch's functions on other devices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyro_vae.parts.fastmath import log1m_exp, log_sigmoid, softplus

EPS32 = torch.finfo(torch.float32).eps
TINY32 = torch.finfo(torch.float32).smallest_normal


def _grid(lo: float, hi: float) -> torch.Tensor:
    # a dense linear grid plus logarithmic points towards 0 from both sides, and the ends
    log = torch.logspace(-30, math.log10(max(abs(lo), abs(hi))), 600)
    pts = torch.cat([torch.linspace(lo, hi, 20001), log, -log, torch.tensor([lo, hi, 0.0])])
    return pts[(pts >= lo) & (pts <= hi)]


def _within_ulps(got: torch.Tensor, exact: torch.Tensor, ulps: float) -> None:
    err = (got.double() - exact).abs()
    bound = ulps * EPS32 * exact.abs() + TINY32
    assert (err <= bound).all(), f"worst {(err / (EPS32 * exact.abs() + TINY32)).max():.2f} ulps"


def test_log_sigmoid_is_exact_to_float32_rounding_everywhere():
    y = _grid(-120.0, 120.0)
    exact = -torch.log1p(torch.exp(-y.double().abs())) + y.double().clamp(max=0)  # float64, no threshold
    _within_ulps(log_sigmoid(y), exact, 4)
    _within_ulps(softplus(y), -(-torch.log1p(torch.exp(-y.double().abs())) + (-y.double()).clamp(max=0)), 4)


def test_log_sigmoid_special_values_and_float64():
    y = torch.tensor([-math.inf, math.inf, math.nan, 0.0])
    out = log_sigmoid(y)
    assert out[0] == -math.inf and out[1] == 0 and math.isnan(out[2]) and out[3] == pytest.approx(-math.log(2))
    y64 = torch.linspace(-700, 700, 5001, dtype=torch.float64)
    torch.testing.assert_close(log_sigmoid(y64), F.logsigmoid(y64), rtol=1e-14, atol=1e-300)


def test_log_sigmoid_and_softplus_gradients():
    y = (torch.randn(40, dtype=torch.float64) * 10).requires_grad_()
    assert torch.autograd.gradcheck(log_sigmoid, (y,))
    assert torch.autograd.gradcheck(softplus, (y,))
    y32 = _grid(-120.0, 120.0).requires_grad_()
    (g,) = torch.autograd.grad(log_sigmoid(y32).sum(), y32)
    torch.testing.assert_close(g.double(), torch.sigmoid(-y32.detach().double()), rtol=2 * EPS32, atol=TINY32)


def test_log1m_exp_is_exact_to_float32_rounding_on_both_sides_of_minus_log_2():
    # near 0, log(1 − eᵈ) ≈ log(−d) needs expm1; far below, ≈ −eᵈ needs log1p: both halves, and the seam
    d = _grid(-100.0, -1e-30)
    d = torch.cat([d, torch.tensor([-math.log(2) * (1 + k * EPS32) for k in (-2, -1, 0, 1, 2)])])
    exact = torch.where(
        d.double() > -math.log(2), torch.log(-torch.expm1(d.double())), torch.log1p(-torch.exp(d.double()))
    )
    _within_ulps(log1m_exp(d), exact, 6)


def test_log1m_exp_special_values_and_float64():
    out = log1m_exp(torch.tensor([0.0, -math.inf, 1.0, math.nan]))
    assert out[0] == -math.inf and out[1] == 0 and math.isnan(out[2]) and math.isnan(out[3])
    d64 = -torch.logspace(-300, 2.8, 4001, dtype=torch.float64)
    ref = torch.where(d64 > -math.log(2), torch.log(-torch.expm1(d64)), torch.log1p(-torch.exp(d64)))
    torch.testing.assert_close(log1m_exp(d64), ref, rtol=1e-14, atol=1e-300)


def test_log1m_exp_gradient():
    d = (-torch.rand(40, dtype=torch.float64) * 20 - 1e-3).requires_grad_()
    assert torch.autograd.gradcheck(log1m_exp, (d,))
    d32 = _grid(-80.0, -1e-6).requires_grad_()
    (g,) = torch.autograd.grad(log1m_exp(d32).sum(), d32)
    exact = 1 / torch.expm1(-d32.detach().double())  # d/dd log(1 − eᵈ) = −eᵈ/(1 − eᵈ) = −1/expm1(−d)
    _within_ulps(-g, exact, 8)


@pytest.mark.cuda
def test_other_devices_run_torchs_own_functions_with_the_same_values():
    y = torch.linspace(-50, 50, 1001)
    d = -torch.logspace(-20, 1.9, 1001)
    torch.testing.assert_close(log_sigmoid(y.cuda()).cpu(), log_sigmoid(y), rtol=4 * EPS32, atol=TINY32)
    torch.testing.assert_close(log1m_exp(d.cuda()).cpu(), log1m_exp(d), rtol=8 * EPS32, atol=TINY32)
