"""`weight_decay`: decoupled (AdamW) decay of the layers' weights only, checked against AdamW written out
by hand, the decayed tensors of every kind of part, end to end in a run, through an exact resume, and
against run folders written before it existed."""

import json
import math

import pytest
import torch
from test_runs import losses_of, same_parameters

from pyro_vae import TrainConfig, resume, train
from pyro_vae.models import build_vae_from_config
from pyro_vae.training import layer_weights, make_optimizer

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
    opt = make_optimizer([weight, kernel, bias], lr, decay, decayed=[weight, kernel])
    for step in grads:
        for p, g in zip((weight, kernel, bias), step, strict=True):
            p.grad = g.clone()
        opt.step()
    for i, (p, decayed) in enumerate(zip((weight, kernel, bias), (True, True, False), strict=True)):
        want = adamw_by_hand(start[i], [step[i] for step in grads], lr, decay if decayed else 0.0)
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)
    # without decay the optimiser is one group, as checkpoints from before weight decay hold it
    assert len(opt.param_groups) == (1 if decay == 0 else 2)


def test_all_decayed_or_none_decayed_makes_one_group():
    w = torch.zeros(2, 2, requires_grad=True)
    assert [g["weight_decay"] for g in make_optimizer([w], 1e-3, 0.1, decayed=[w]).param_groups] == [0.1]
    assert [g["weight_decay"] for g in make_optimizer([w], 1e-3, 0.1).param_groups] == [0.0]


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(likelihood="normal-pixel"),
        dict(prior="vamp"),
        dict(prior="mog"),
        dict(prior="learned-normal"),
        dict(guide="iaf"),
        dict(net="conv", likelihood="autoregressive-mixture"),
        dict(net="conv", likelihood="discretized-logistic-pixel"),
        dict(model="ladder", latents=(4, 2), hidden=(16, 8), batch_norm=True),
    ],
    ids=lambda kw: "-".join(str(v) for v in kw.values()) or "default",
)
def test_only_linear_and_convolution_weights_are_decayed(kw):
    vae = build_vae_from_config((1, 28, 28), TrainConfig(z_dim=4, **kw))
    names = {id(p): n for n, p in vae.named_parameters()}
    decayed = {names[id(p)] for p in layer_weights(vae)}
    nn = torch.nn
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    owner = {f"{m_name}.{n}": m for m_name, m in vae.named_modules() for n, _ in m.named_parameters(recurse=False)}
    want = {name for name, m in owner.items() if isinstance(m, layers) and name.endswith(".weight")}
    assert decayed == want and decayed
    # the rest: biases, batch-norm scales, prior parameters and learned likelihood scales
    for name in set(names.values()) - decayed:
        m = owner[name]
        assert name.endswith(".bias") or isinstance(m, nn.modules.batchnorm._NormBase) or not isinstance(m, layers)


@pytest.mark.parametrize("kw", [dict(), dict(prior="mog"), dict(prior="vamp")], ids=["default", "mog", "vamp"])
def test_a_run_decays_its_weights_and_nothing_else(tmp_path, kw):
    data = make_tiny_data()
    # lr * decay = 0.9: every step keeps a tenth of each weight before Adam moves it by about lr, so
    # after 6 steps the weights are within a few lr of zero (their start is down by 1e-6); every other
    # parameter moves by at most about lr per step, as without decay
    lr = 1e-3
    run = train(tiny_config(tmp_path, "decayed", epochs=1, lr=lr, weight_decay=0.9 / lr, **kw), data=data)
    plain = train(tiny_config(tmp_path, "plain", epochs=1, lr=lr, **kw), data=data)
    assert run.metrics[0]["test_loss"] != plain.metrics[0]["test_loss"]

    def state(r):
        return torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]

    decayed, undecayed = state(run), state(plain)  # the same start (seed 0)
    weights = {k for k, v in decayed.items() if k.endswith(".weight") and v.dim() >= 2}
    others = {k for k, v in decayed.items() if k not in weights and v.is_floating_point()}
    assert weights and others
    for k in weights:
        assert decayed[k].abs().max() < 3 * lr, k
    # every other parameter is never pulled toward zero: the two runs' Adam steps (each a few lr at most)
    # are all that can separate them, while a decay would have taken away 0.9 of the value at each step
    for k in others:
        assert (decayed[k] - undecayed[k]).abs().max() < 6 * 2 * 3 * lr, k
    spread = max(undecayed[k].abs().max().item() for k in others)
    assert spread > 0.1  # so a decay of them would have shown
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
