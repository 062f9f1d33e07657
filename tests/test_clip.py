"""`clip_relative`: the gradient cut at a multiple of its running mean, checked against the recurrence written out
by hand in float64, with Adam's own state beside it, through a checkpoint of the optimiser and an exact resume of
a run, and its bad values."""

import math

import pytest
import torch
from test_runs import losses_of

from pyro_vae import TrainConfig, resume, train
from pyro_vae.errors import ConfigError
from pyro_vae.training.clip import DECAY, attach_relative_clip, threshold

from conftest import make_tiny_data, tiny_config

# the gradient norms fed in: ordinary steps, spikes (10, 20 times), a fall, a non-finite one
NORMS = [1.0, 1.2, 0.9, 10.0, 1.1, 0.5, 20.0, math.nan, 1.0, 3.0]


def _by_hand(norms: list[float], factor: float) -> tuple[list[float], float]:
    """The norms after clipping, and the final running mean, in float64 by the module's recurrence."""
    mean, steps, kept = 0.0, 0, []
    for n in norms:
        if not math.isfinite(n):
            kept.append(n)
            continue
        limit = math.inf if steps == 0 else factor * mean / (1 - DECAY**steps)
        kept.append(min(n, limit))
        mean = DECAY * mean + (1 - DECAY) * min(n, limit)
        steps += 1
    return kept, mean


def test_the_clip_is_the_recurrence_written_out_by_hand():
    gen = torch.Generator().manual_seed(0)
    a = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([a, b], lr=0.0)
    attach_relative_clip(opt, 2.0)
    want, mean = _by_hand(NORMS, 2.0)
    for n, w in zip(NORMS, want, strict=True):
        ga = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        gb = torch.randn(5, generator=gen, dtype=torch.float64)
        size = torch.cat([ga.flatten(), gb]).norm()
        a.grad, b.grad = ga * n / size, gb * n / size  # the direction is random, the norm is n
        opt.step()
        got = torch.cat([a.grad.flatten(), b.grad]).norm().item()
        if math.isfinite(w):
            assert got == pytest.approx(w, rel=1e-12)
            # the direction is kept: only the length changes
            torch.testing.assert_close(a.grad * n / w, ga * n / size, rtol=1e-12, atol=1e-15)
        else:
            assert math.isnan(got)  # a non-finite gradient is left for the non-finite guard
    assert opt.state[a]["clip_mean"] == pytest.approx(mean, rel=1e-12)
    assert opt.state[a]["clip_steps"] == sum(math.isfinite(n) for n in NORMS)
    assert want[3] < 10.0 and want[6] < 20.0 and want[:3] == NORMS[:3]  # the spikes were cut, the rest not


@pytest.mark.parametrize("fused", [True, False])
def test_adam_steps_and_its_checkpoint_carries_the_running_mean(fused):
    def make():
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
        opt = torch.optim.Adam([w], lr=0.1, fused=fused)
        attach_relative_clip(opt, 1.5)
        return w, opt

    def steps(w, opt, ts):
        for t in ts:
            opt.zero_grad()
            (w.sin().sum() * (30.0 if t % 7 == 3 else 1.0)).backward()  # a spike every 7 steps
            opt.step()

    w, opt = make()
    steps(w, opt, range(20))
    straight = w.detach().clone()
    assert "exp_avg" in opt.state[w] and opt.state[w]["clip_steps"] == 20

    w2, opt2 = make()
    steps(w2, opt2, range(10))
    saved = opt2.state_dict()
    w3, opt3 = make()
    with torch.no_grad():
        w3.copy_(w2)
    opt3.load_state_dict(saved)
    assert threshold(opt3, 1.5) == threshold(opt2, 1.5) < math.inf
    steps(w3, opt3, range(10, 20))
    torch.testing.assert_close(w3.detach(), straight, rtol=0, atol=0)


def test_resume_with_the_relative_clip_equals_a_straight_run(tmp_path):
    data = make_tiny_data()
    straight = train(tiny_config(tmp_path, "straight", epochs=3, clip_relative=1.01), data=data).run_dir
    first = train(tiny_config(tmp_path, "split", epochs=2, clip_relative=1.01), data=data).run_dir
    resume(first, epochs=3, data=data)
    assert losses_of(first) == losses_of(straight)
    plain = train(tiny_config(tmp_path, "plain", epochs=3), data=data).run_dir
    assert losses_of(plain) != losses_of(straight)  # it acted: a factor of 1.01 cuts the steps whose norm grew


@pytest.mark.parametrize("value", [1.0, 0.5, -2.0, math.nan, math.inf])
def test_bad_factors_are_refused(value):
    with pytest.raises(ConfigError, match="`clip_relative` must be a multiple"):
        TrainConfig(clip_relative=value).validate()


def test_one_clip_at_a_time_and_not_with_captured_steps():
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(clip_relative=2.0, clip_grad=100.0).validate()
    with pytest.raises(ConfigError, match="drop one of them"):
        TrainConfig(clip_relative=2.0, cuda_graphs=True, device="cuda").validate()
