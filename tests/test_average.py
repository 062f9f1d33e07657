"""`ema`: the moving average of the weights, checked against the recurrence written out by hand in float64,
end to end (held-out losses, checkpoints and evaluation all use the average, training the raw weights),
through an exact resume and the non-finite guard's state, and its bad values."""

import math

import pytest
import torch
from test_runs import losses_of, same_parameters

from pyro_vae import TrainConfig, load_run, resume, train
from pyro_vae.errors import ConfigError
from pyro_vae.training.average import attach_average, averaged, decay_at

from conftest import make_tiny_data, tiny_config


def test_decay_warms_up_to_its_ceiling():
    assert decay_at(0.999, 0) == pytest.approx(0.1)
    assert decay_at(0.999, 8) == pytest.approx(0.5)
    assert decay_at(0.999, 10**6) == 0.999
    assert all(decay_at(0.9, t) <= decay_at(0.9, t + 1) <= 0.9 for t in range(200))


@pytest.mark.parametrize("fused", [True, False])
def test_the_average_is_the_recurrence_written_out_by_hand(fused):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_()
    opt = torch.optim.Adam([a, b], lr=0.05, fused=fused)
    attach_average(opt, 0.8)
    seen = []
    for _ in range(30):
        opt.zero_grad()
        ((a - 1) ** 2).sum().add(b.sin().sum()).backward()
        opt.step()
        seen.append([a.detach().clone(), b.detach().clone()])
    want = [t.clone() for t in seen[0]]  # the average starts at the weights after the first step
    for t, weights in enumerate(seen[1:], start=1):
        d = min(0.8, (1 + t) / (10 + t))
        want = [d * w + (1 - d) * x for w, x in zip(want, weights, strict=True)]
    for p, w in zip((a, b), want, strict=True):
        torch.testing.assert_close(opt.state[p]["ema"], w, rtol=1e-12, atol=1e-14)
    # the raw weights are untouched by the average, and differ from it
    assert torch.equal(a.detach(), seen[-1][0]) and not torch.equal(a.detach(), want[0])
    with averaged(opt) as swapped:
        assert swapped and torch.equal(a.detach(), opt.state[a]["ema"])
    assert torch.equal(a.detach(), seen[-1][0]) and torch.equal(b.detach(), seen[-1][1])  # restored bit for bit


def test_without_an_average_nothing_is_swapped():
    w = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.1)
    with averaged(opt) as swapped:
        assert not swapped
    attach_average(opt, 0.9)
    with averaged(opt) as swapped:  # no step yet: no average
        assert not swapped
    with averaged(None) as swapped:
        assert not swapped


def test_a_run_scores_and_evaluates_the_averaged_weights(tmp_path):
    data = make_tiny_data()
    run = train(tiny_config(tmp_path, "ema", epochs=2, ema=0.9), data=data)
    state = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=False)
    raw, avg = state["model"], state["averaged_model"]
    floats = [k for k, v in raw.items() if v.is_floating_point()]
    assert any(not torch.equal(raw[k], avg[k]) for k in floats)
    # the optimiser state holds the same average the checkpoint's averaged model does
    params = dict(run.vae.named_parameters())
    opt_state = state["optimizer"]["state"]
    assert all(s["ema_steps"] == state["step"] for s in opt_state.values())
    # load_run gives the averaged weights, and their test loss is the one the run logged
    vae = load_run(run.run_dir)[0]
    for k, v in vae.state_dict().items():
        assert torch.equal(v, avg[k]), k
    assert set(params) <= set(avg)
    # the held-out losses are the average's: the same training steps, another test loss
    plain = train(tiny_config(tmp_path, "plain", epochs=2), data=data)
    assert plain.metrics[-1]["train_loss"] == run.metrics[-1]["train_loss"]  # the same training steps
    assert plain.metrics[-1]["test_loss"] != run.metrics[-1]["test_loss"]


def test_resume_with_the_average_equals_a_straight_run(tmp_path):
    data = make_tiny_data()
    straight = train(tiny_config(tmp_path, "straight", epochs=3, ema=0.95), data=data).run_dir
    first = train(tiny_config(tmp_path, "split", epochs=2, ema=0.95), data=data).run_dir
    resume(first, epochs=3, data=data)
    assert losses_of(first) == losses_of(straight)
    assert same_parameters(first, straight)  # the averaged weights, as load_run gives them
    a = torch.load(first / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("value", [1.0, -0.1, math.nan, math.inf, 1.5])
def test_bad_decays_are_refused(value):
    with pytest.raises(ConfigError, match="`ema` must be a decay"):
        TrainConfig(ema=value).validate()


def test_the_average_is_not_combined_with_captured_steps():
    with pytest.raises(ConfigError, match="drop one of them"):
        TrainConfig(ema=0.99, cuda_graphs=True, device="cuda").validate()
