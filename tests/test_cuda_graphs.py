"""The sync-free step and CUDA-graph capture. The CUDA tests run only where torch sees a GPU
(scripts/gpu_check.py runs them); the CPU test checks the one piece capture changes in the model."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import TrainConfig, build_vae, train
from pyro_vae.objectives import SyncFreeTrace_ELBO, SyncFreeTraceMeanField_ELBO
from pyro_vae.training.graphs import GraphStep, make_capturable
from pyro_vae.training.loop import run_epoch

from conftest import make_tiny_data


@pytest.mark.parametrize("elbo", [SyncFreeTrace_ELBO, SyncFreeTraceMeanField_ELBO])
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_kl_weight_as_a_device_tensor_gives_the_same_loss_as_a_float(elbo, weight):
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,), prior="learned-normal")
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    out = []
    with pyro.validation_enabled(False), vae.registration(False):
        for w in (weight, torch.tensor(weight)):
            vae.kl_weight = w
            torch.manual_seed(3)
            out.append(elbo().differentiable_loss(vae.model, vae.guide, x))
    torch.testing.assert_close(out[0], out[1], rtol=1e-6, atol=1e-5)


def test_an_optimiser_state_saved_in_capturable_mode_steps_again_on_the_cpu():
    # a --cuda-graphs checkpoint holds capturable=True and float32 step counters; a run that resumes it
    # without capture sets its own mode, and then steps exactly as Adam that was never capturable
    torch.manual_seed(0)
    start = torch.randn(5)
    grads = [torch.randn(5) for _ in range(4)]

    def adam(params, **kw):
        return torch.optim.Adam(params, lr=0.1, **kw)

    ref_p = torch.nn.Parameter(start.clone())
    ref = adam([ref_p])
    p = torch.nn.Parameter(start.clone())
    opt = adam([p])
    for g in grads[:2]:
        for param, o in ((ref_p, ref), (p, opt)):
            param.grad = g.clone()
            o.step()
    saved = opt.state_dict()
    saved["param_groups"][0]["capturable"] = True
    saved["state"][0]["step"] = saved["state"][0]["step"].float()
    again = adam([p])
    again.load_state_dict(saved)
    p.grad = grads[2].clone()
    with pytest.raises(AssertionError, match="capturable"):
        again.step()  # what a resumed run met before it set its own mode
    make_capturable(again, False)
    assert again.param_groups[0]["capturable"] is False
    for g in grads[2:]:
        for param, o in ((ref_p, ref), (p, again)):
            param.grad = g.clone()
            o.step()
    torch.testing.assert_close(p.detach(), ref_p.detach(), rtol=0, atol=1e-7)


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(net="mlp", z_dim=2, hidden=(16,), batch_size=16, epochs=2, progress=False, device="cuda")
    return TrainConfig(out=str(tmp_path / "run"), cuda_graphs=True, **{**base, **kw})


def _cuda_vae():
    pyro.set_rng_seed(0)
    return build_vae((1, 8, 8), z_dim=4, hidden=(32,)).cuda()


@pytest.mark.cuda
@pytest.mark.parametrize("elbo", [SyncFreeTrace_ELBO, SyncFreeTraceMeanField_ELBO])
def test_the_eager_step_never_waits_for_the_gpu(elbo):
    vae = _cuda_vae()
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.4, device="cuda"))
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, capturable=True)
    run_epoch(vae, elbo(), opt, [x])  # first call: Pyro guesses the plate nesting
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pyro.validation_enabled(False), vae.registration(False):
            for _ in range(3):
                loss = elbo().differentiable_loss(vae.model, vae.guide, x)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with pytest.raises(RuntimeError), pyro.validation_enabled(False), vae.registration(False):
            Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)  # Pyro's reads back: the check can fail
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_captured_steps_follow_the_eager_steps():
    batches = [torch.bernoulli(torch.full((64, 1, 8, 8), p, device="cuda")) for p in (0.2, 0.4, 0.6, 0.3) * 3]
    results = []
    for captured in (False, True):
        vae = _cuda_vae()
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3, capturable=True)
        torch.manual_seed(5)
        graph = GraphStep(vae, SyncFreeTrace_ELBO(), opt, warmup=2) if captured else None
        p = run_epoch(vae, SyncFreeTrace_ELBO(), opt, batches, weight=lambda s: min(1.0, s / 5), graph=graph)
        if captured:
            assert graph.graph is not None and graph.failed is None
        results.append((p.total.item(), [t.detach().clone() for t in vae.parameters()]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-4)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_a_part_that_syncs_falls_back_to_eager_with_one_message(tmp_path, capsys):
    class Syncing(torch.nn.Module):
        """A decoder wrapper that reads a value back to the host on every call."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            if z.abs().max().item() < 0:  # never true; the read is the point
                raise AssertionError
            return self.inner(z)

    data = make_tiny_data()
    vae = build_vae(data.event_shape, z_dim=2, hidden=(16,))
    vae.decoder = Syncing(vae.decoder)
    config = _config(tmp_path)
    result = train(config, data=data, vae=vae)
    assert len(result.metrics) == 2
    assert capsys.readouterr().out.count("--cuda-graphs: could not capture the step") == 1


@pytest.mark.cuda
def test_a_captured_run_trains_and_resumes(tmp_path):
    from pyro_vae.training import resume

    data = make_tiny_data()
    config = _config(tmp_path, kl_schedule="linear", warmup=1)
    result = train(config, data=data)
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in result.metrics)
    again = resume(tmp_path / "run", epochs=3, data=data)
    assert [m["epoch"] for m in again.metrics] == [1, 2, 3]


def test_cuda_graphs_refused_where_they_cannot_work(tmp_path):
    from pyro_vae.errors import ConfigError

    data = make_tiny_data()
    for device, extra, message in (
        ("cpu", {}, "`cuda_graphs` needs CUDA; drop it on the CPU"),
        ("auto", {"compile": True}, "`cuda_graphs` and `compile` both rewrite the step; pick one"),
    ):
        if device == "auto" and not torch.cuda.is_available():
            continue
        config = _config(tmp_path, device=device, epochs=1, **extra)
        with pytest.raises(ConfigError) as info:
            train(config, data=data)
        assert str(info.value) == message
        assert not (tmp_path / "run").exists()
