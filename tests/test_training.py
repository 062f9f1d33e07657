import csv
import hashlib
import json
import math

import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import TrainConfig, build_vae, heldout_loss, load_run, train
from pyro_vae.config import RUN_RECORD_KEYS
from pyro_vae.errors import ConfigError
from pyro_vae.runs import read_checkpoint
from pyro_vae.training import NonFiniteLoss

from conftest import make_tiny_data, tiny_config, tiny_data_with


def params(vae):
    return {k: v.detach().clone() for k, v in vae.named_parameters()}


def test_one_svi_step_changes_parameters_and_evaluating_does_not(tiny_data):
    vae = build_vae(tiny_data.event_shape, z_dim=3, hidden=(16,))
    x = tiny_data.test[:16]
    elbo = Trace_ELBO()
    before = params(vae)
    heldout_loss(vae, elbo, tiny_data.test, batch_size=7)
    elbo.loss(vae.model, vae.guide, x)
    assert all(torch.equal(before[k], v) for k, v in params(vae).items())

    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    elbo.differentiable_loss(vae.model, vae.guide, x).backward()
    opt.step()
    after = params(vae)
    assert all(not torch.equal(before[k], after[k]) for k in before), "every parameter should move"


@pytest.mark.parametrize("net,elbo", [("mlp", "mc"), ("mlp", "analytic"), ("conv", "mc")])
def test_train_writes_the_run_folder(tmp_path, tiny_data, net, elbo):
    cfg = tiny_config(tmp_path, net=net, elbo=elbo)
    result = train(cfg, data=tiny_data)
    run = result.run_dir
    saved = json.loads((run / "config.json").read_text())
    assert {k: v for k, v in saved.items() if k not in RUN_RECORD_KEYS} == result.config.to_dict()
    # what the run was trained on, recorded independently of the config's dataset name
    assert saved["data"]["source"] == "memory" and saved["data"]["name"] == "tiny"
    assert saved["data"]["event_shape"] == [1, 8, 8] and saved["data"]["test_size"] == len(tiny_data.test)
    assert (
        saved["data"]["test_fingerprint"]
        == hashlib.sha256(b"torch.float32(40, 1, 8, 8)" + tiny_data.test.numpy().tobytes()).hexdigest()[:16]
    )
    assert saved["objective"] == ("KL: analytic" if elbo == "analytic" else "KL: Monte-Carlo (Trace_ELBO)")
    assert saved["device"] == "cpu" and saved["versions"]["pyro"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "test_loss", "seconds", "checkpoint_seconds"}
    assert (run / "checkpoints" / "last.pt").samefile(run / "checkpoints" / "epoch0002.pt")
    assert (run / "checkpoints" / "best.pt").is_file()
    for epoch in (1, 2):
        assert (run / "checkpoints" / f"epoch{epoch:04d}.pt").is_file()
        assert (run / "images" / f"reconstructions_epoch{epoch:04d}.png").is_file()
        assert (run / "images" / f"samples_epoch{epoch:04d}.png").is_file()
    state = torch.load(run / "checkpoints" / "epoch0002.pt", weights_only=True)
    assert {"model", "optimizer", "param_store", "epoch", "step", "config"} <= set(state)
    assert state["epoch"] == 2 and state["step"] == 2 * 6  # 96 images / 16 per batch


def test_loss_goes_down(tmp_path, tiny_data):
    result = train(tiny_config(tmp_path, epochs=6, lr=3e-3), data=tiny_data)
    losses = [m["train_loss"] for m in result.metrics]
    assert losses[-1] < losses[0] - 5


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path, tiny_data):
    def losses(name, seed):
        m = train(tiny_config(tmp_path, name, seed=seed), data=tiny_data).metrics
        return [(r["train_loss"], r["test_loss"]) for r in m]

    a, b, c = losses("a", 0), losses("b", 0), losses("c", 1)
    assert a == b
    assert a != c


def test_loaded_run_reproduces_the_heldout_loss(tmp_path, tiny_data):
    result = train(tiny_config(tmp_path, elbo="analytic"), data=tiny_data)
    vae, config, state = load_run(result.run_dir)
    assert config == result.config and state["epoch"] == 2
    for a, b in zip(vae.state_dict().values(), result.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_keep_checkpoints_prunes_old_ones(tmp_path, tiny_data):
    result = train(tiny_config(tmp_path, epochs=3, keep_checkpoints=1), data=tiny_data)
    names = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch0003.pt", "last.pt"]


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(z_dim=0), "`z_dim` must be a positive integer, got 0"),
        (dict(lr=0.0), "`lr` must be a finite number > 0, got 0.0; e.g. `lr=1e-3`"),
        (dict(net="rnn"), "unknown `net='rnn'`; choose one of mlp, conv"),
        (dict(elbo="renyi"), "unknown `elbo='renyi'`; choose one of mc, analytic, iwae"),
        (
            dict(prior="flow"),
            "unknown `prior='flow'`; choose one of normal, learned-normal, student-t, laplace, mog, vamp",
        ),
        (dict(kl_schedule="cosine"), "unknown `kl_schedule='cosine'`; choose one of constant, linear, cyclical"),
        (dict(batch_size=1000), "`batch_size=1000` is larger than the 96 training images; lower it"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, tiny_data, change, message):
    cfg = tiny_config(tmp_path, **change)
    with pytest.raises(ConfigError) as info:
        train(cfg, data=tiny_data)
    assert str(info.value) == message
    assert not (tmp_path / "run").exists()


def test_refuses_to_overwrite_a_run(tmp_path, tiny_data):
    train(tiny_config(tmp_path, epochs=1), data=tiny_data)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(tmp_path, epochs=1), data=tiny_data)


@pytest.mark.cuda
@pytest.mark.parametrize("elbo", ["mc", "analytic"])
def test_trains_on_cuda(tmp_path, tiny_data, elbo):
    result = train(tiny_config(tmp_path, device="cuda", elbo=elbo), data=tiny_data)
    assert result.config.device == "cuda"
    assert next(result.vae.parameters()).is_cuda and result.vae.prior().base_dist.loc.is_cuda
    assert all(torch.isfinite(torch.tensor(m["test_loss"])) for m in result.metrics)


def test_time_limit_ends_the_run_after_the_epoch_that_passes_it(tmp_path, tiny_data, capsys):
    config = TrainConfig(
        net="mlp",
        z_dim=2,
        hidden=(8,),
        batch_size=32,
        epochs=1000,
        progress=False,
        device="cpu",
        out=str(tmp_path / "run"),
        time_limit=1e-9,
    )
    result = train(config, data=tiny_data)
    assert [m["epoch"] for m in result.metrics] == [1]
    assert "time limit of 1e-09 minutes reached after epoch 1" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoints" / "epoch0001.pt").exists()
    with pytest.raises(ConfigError, match="`time_limit` must be a finite number > 0"):
        TrainConfig(time_limit=float("inf")).validate()


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    # the default --out names a run by the second it started: a loop over settings must not collide
    import datetime as dt

    import pyro_vae.training.setup as setup

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(setup, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    data = make_tiny_data()
    dirs = [
        train(TrainConfig(epochs=1, batch_size=32, z_dim=2, hidden=(8,), progress=False, prior=p), data=data).run_dir
        for p in ("normal", "laplace", "normal")
    ]
    base = "runs/mnist-mlp-mc-20260102-030405"
    assert [str(d) for d in dirs] == [base, f"{base}-2", f"{base}-3"]
    assert [json.loads((tmp_path / d / "config.json").read_text())["prior"] for d in dirs] == [
        "normal",
        "laplace",
        "normal",
    ]


def test_nonfinite_loss_stops_with_the_last_good_state_and_names_the_term(tmp_path, monkeypatch):
    from pyro_vae.parts import priors

    calls = {"n": 0}
    original = priors.StandardNormalPrior.forward

    def breaks_after_a_while(self):
        calls["n"] += 1
        d = original(self)
        if calls["n"] > 8:  # from step 9 on the prior has zero scale: log p(z) = -inf, the KL is infinite
            return dist.Normal(self.loc, 0 * self.scale).to_event(1)
        return d

    monkeypatch.setattr(priors.StandardNormalPrior, "forward", breaks_after_a_while)
    with pytest.raises(NonFiniteLoss) as info:
        train(tiny_config(tmp_path, epochs=3, log_every=4), data=make_tiny_data())
    msg = str(info.value)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    # prior calls: 6 steps, 1 test-loss batch and the sample picture in epoch 1; the 9th is epoch 2, step 1
    assert msg.startswith("the KL term became non-finite at epoch 2, step 1; ")
    assert f"saved the last good state to {last}; try a lower step size (now 0.001), `clip_grad=100`" in msg
    assert "weight_decay" not in msg
    state = read_checkpoint(last)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert state["position"]["batch"] == 0 and state["epoch"] == 1


def test_gradient_clipping_bounds_the_update(tmp_path):
    result = train(tiny_config(tmp_path, epochs=1, clip_grad=1e-3), data=make_tiny_data())
    assert result.metrics[0]["train_loss"] > 0


@pytest.mark.parametrize(
    "shape",
    [(1, 8, 8), (8, 8), (64,), (60,), (2, 4, 8)],
    ids=["CHW", "HW", "flat-square", "flat-strip", "two-channels"],
)
def test_data_of_any_shape_trains_and_draws_its_pictures(tmp_path, shape):
    # the MLP takes any event shape; the epoch pictures show each as grey images or a strip, never crash
    d = make_tiny_data()
    n = math.prod(shape)
    train_x = d.train.reshape(len(d.train), -1)[:, :n].reshape(len(d.train), *shape)
    test_x = d.test.reshape(len(d.test), -1)[:, :n].reshape(len(d.test), *shape)
    result = train(tiny_config(tmp_path, epochs=1), data=tiny_data_with(train=train_x, test=test_x))
    assert math.isfinite(result.metrics[-1]["test_loss"])
    pictures = sorted(p.name for p in (result.run_dir / "images").iterdir())
    assert pictures == ["reconstructions_epoch0001.png", "samples_epoch0001.png"]


def test_a_run_of_very_few_steps_says_so(tmp_path, tiny_data, capsys):
    from pyro_vae.training.setup import FEW_STEPS, few_steps_note

    assert few_steps_note(FEW_STEPS, 50, 4) is None
    assert few_steps_note(FEW_STEPS - 1, 1, FEW_STEPS - 1).startswith(f"note: this run takes only {FEW_STEPS - 1}")
    steps = math.ceil(len(tiny_data.train) / 32)
    config = tiny_config(tmp_path, batch_size=32, epochs=2)
    train(config, data=tiny_data)
    out = capsys.readouterr().out
    assert f"note: this run takes only {2 * steps} optimiser steps (2 epochs of {steps})" in out


def test_the_loops_adam_is_fused_on_the_cpu_and_steps_as_torchs_reference_adam():
    """make_optimizer: torch's fused CPU kernel, checked against the plain for-loop Adam (foreach=False,
    the reference implementation) over 20 steps of the same gradients, in float64 to rounding error."""
    from pyro_vae.training import make_optimizer

    torch.manual_seed(0)
    a = [
        torch.randn(7, 5, dtype=torch.float64, requires_grad=True),
        torch.randn(3, dtype=torch.float64, requires_grad=True),
    ]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    start = [p.detach().clone() for p in a]
    fused = make_optimizer(a, 1e-2)
    reference = torch.optim.Adam(b, lr=1e-2, foreach=False)
    assert fused.param_groups[0]["fused"] is True
    for _ in range(20):
        for p, q in zip(a, b, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        reference.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert all((p - s).abs().max() > 0.05 for p, s in zip(a, start, strict=True))  # 20 steps of 0.01 moved them
    # half precision, or no parameters at all: torch's default
    assert (
        make_optimizer([torch.zeros(2, dtype=torch.float16, requires_grad=True)], 1e-3).param_groups[0]["fused"] is None
    )


def test_the_guard_names_the_step_size_in_force_and_the_weight_decay(tmp_path, monkeypatch):
    """After a milestone the message gives the scheduled step size, not `lr`; with weight decay it names it."""
    import pyro.distributions as dist

    from pyro_vae.parts import priors

    original = priors.StandardNormalPrior.forward
    calls = {"n": 0}

    def breaks_after_a_while(self):
        calls["n"] += 1
        return dist.Normal(self.loc, 0 * self.scale).to_event(1) if calls["n"] > 8 else original(self)

    monkeypatch.setattr(priors.StandardNormalPrior, "forward", breaks_after_a_while)
    config = tiny_config(tmp_path, epochs=3, log_every=4, lr_milestones=(1,), lr_gamma=0.01, weight_decay=0.5)
    with pytest.raises(NonFiniteLoss) as info:
        train(config, data=make_tiny_data())
    msg = str(info.value)
    assert "try a lower step size (now 1e-05, `lr=0.001` scheduled by `lr_gamma=0.01`)" in msg
    assert "or a lower `weight_decay` (now 0.5: each step scales the weights by 1 − lr·λ)" in msg


def test_milestones_past_the_last_epoch_are_named_not_silently_kept(tmp_path, capsys):
    from pyro_vae.training.setup import late_milestones_note

    assert late_milestones_note((2, 3), 5) is None and late_milestones_note(None, 5) is None
    assert late_milestones_note((2, 5, 9), 5).startswith("note: the step-size milestones 5 9 lie at or past the")
    train(tiny_config(tmp_path, epochs=2, lr_milestones=(1, 4)), data=make_tiny_data())
    assert "note: the step-size milestones 4 lie at or past the last epoch (2)" in capsys.readouterr().out
