"""`weight_decay`: decoupled (AdamW) decay of the weight matrices only, checked against AdamW written out
by hand, end to end in a run, through an exact resume, and against run folders written before it existed."""

import json
import math

import pytest
import torch
from test_runs import losses_of, same_parameters

from pyro_vae import TrainConfig, resume, train
from pyro_vae.training import make_optimizer

from conftest import make_tiny_data, tiny_config


def adamw_by_hand(theta, grads, lr, decay, betas=(0.9, 0.999), eps=1e-8):
    """Loshchilov & Hutter's AdamW (Algorithm 2, with the schedule multiplier 1): the decay multiplies
    the parameter by (1 - lr * decay) before the bias-corrected Adam step."""
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        theta = theta * (1 - lr * decay)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t)
        v_hat = v / (1 - betas[1] ** t)
        theta = theta - lr * m_hat / (v_hat.sqrt() + eps)
    return theta


@pytest.mark.parametrize("decay", [0.0, 0.5, 30.0])
def test_the_update_is_adamw_on_matrices_and_adam_elsewhere(decay):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    kernel = torch.randn(2, 1, 3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_()
    start = [p.detach().clone() for p in (weight, kernel, bias)]
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in start] for _ in range(3)]
    lr = 1e-2
    opt = make_optimizer([weight, kernel, bias], lr, decay)
    for step in grads:
        for p, g in zip((weight, kernel, bias), step, strict=True):
            p.grad = g.clone()
        opt.step()
    for i, (p, decayed) in enumerate(zip((weight, kernel, bias), (True, True, False), strict=True)):
        want = adamw_by_hand(start[i], [step[i] for step in grads], lr, decay if decayed else 0.0)
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)
    # without decay the optimiser is one group, as checkpoints from before weight decay hold it
    assert len(opt.param_groups) == (1 if decay == 0 else 2)


def test_only_matrices_or_only_vectors_make_one_group():
    w = torch.zeros(2, 2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    assert [g["weight_decay"] for g in make_optimizer([w], 1e-3, 0.1).param_groups] == [0.1]
    assert [g["weight_decay"] for g in make_optimizer([b], 1e-3, 0.1).param_groups] == [0.0]


def test_a_run_decays_its_weights_and_not_its_biases(tmp_path):
    data = make_tiny_data()
    # lr * decay = 0.9: every step keeps a tenth of each weight before Adam moves it by about lr, so
    # after 6 steps the weights are within a few lr of zero (their start is down by 1e-6), while the
    # biases keep their initial spread (about 1/sqrt(fan-in))
    lr = 1e-3
    run = train(tiny_config(tmp_path, "decayed", epochs=1, lr=lr, weight_decay=0.9 / lr), data=data)
    plain = train(tiny_config(tmp_path, "plain", epochs=1, lr=lr), data=data)
    assert run.metrics[0]["test_loss"] != plain.metrics[0]["test_loss"]
    state = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]
    weights = {k: v for k, v in state.items() if v.is_floating_point() and v.dim() >= 2}
    biases = {k: v for k, v in state.items() if k.endswith("bias") and v.dim() == 1}
    assert weights and biases
    for k, v in weights.items():
        assert v.abs().max() < 3 * lr, k
    assert max(v.abs().max().item() for v in biases.values()) > 0.05
    assert json.loads((run.run_dir / "config.json").read_text())["weight_decay"] == 0.9 / lr


def test_resume_with_weight_decay_equals_a_straight_run(tmp_path):
    data = make_tiny_data()
    kw = dict(weight_decay=0.05, lr_milestones=(1, 2), lr_gamma=0.5)
    straight = train(tiny_config(tmp_path, "straight", epochs=3, **kw), data=data).run_dir
    first = train(tiny_config(tmp_path, "split", epochs=2, **kw), data=data).run_dir
    resume(first, epochs=3, data=data)
    assert losses_of(first) == losses_of(straight)
    assert same_parameters(first, straight)


def test_a_run_folder_from_before_weight_decay_resumes_as_plain_adam(tmp_path):
    data = make_tiny_data()
    first = train(tiny_config(tmp_path, "old", epochs=1), data=data).run_dir
    path = first / "config.json"
    saved = json.loads(path.read_text())
    del saved["weight_decay"]  # as versions before the setting wrote it
    path.write_text(json.dumps(saved))
    assert TrainConfig.from_dict(saved).weight_decay == 0.0
    again = resume(first, epochs=2, data=data)
    assert [m["epoch"] for m in again.metrics] == [1, 2]
    assert all(math.isfinite(m["test_loss"]) for m in again.metrics)
