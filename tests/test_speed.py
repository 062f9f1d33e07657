"""Speed options never change results silently, and the benchmark runs (smoke size; speed is not tested)."""

import json
import os
import subprocess
import sys

import pyro
import pytest
import torch

from pyro_vae import build_vae
from pyro_vae.data import ResidentBatches
from pyro_vae.objectives import make_elbo
from pyro_vae.training import run_epoch

from conftest import ROOT


def losses(vae, elbo_name, images, steps=6, validate=None, bf16=False):
    """Per-step losses of the training hot path for a fixed seed."""
    pyro.set_rng_seed(0)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    batches = ResidentBatches(images, 16, torch.Generator(device=images.device).manual_seed(0))
    elbo = make_elbo(elbo_name)
    out = []
    if validate is None:  # the library's path
        for x in list(batches)[:steps]:
            out.append(run_epoch(vae, elbo, optimizer, [x], bf16=bf16).total.item())
        return out
    with pyro.validation_enabled(validate):  # a plain reference loop
        for x in list(batches)[:steps]:
            loss = elbo.differentiable_loss(vae.model, vae.guide, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            out.append(loss.item())
    return out


def fresh(device="cpu"):
    torch.manual_seed(0)
    return build_vae((1, 8, 8), z_dim=4, hidden=(32,)).to(device)


IMAGES = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("elbo", ["mc", "analytic", "iwae"])
def test_hot_path_without_per_step_checks_matches_a_validated_loop(elbo):
    assert losses(fresh(), elbo, IMAGES) == losses(fresh(), elbo, IMAGES, validate=True)


def test_compiled_networks_give_the_same_losses():
    pytest.importorskip("torch._inductor")
    vae = fresh()
    vae.encoder.compile()
    vae.decoder.compile()
    try:
        compiled = losses(vae, "mc", IMAGES)
    except Exception as exc:  # no C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}")
    eager = losses(fresh(), "mc", IMAGES)
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-2)


@pytest.mark.cuda
def test_bf16_autocast_stays_close_and_keeps_densities_in_float32():
    images = IMAGES.cuda()
    full = losses(fresh("cuda"), "mc", images)
    half = losses(fresh("cuda"), "mc", images, bf16=True)
    torch.testing.assert_close(torch.tensor(half), torch.tensor(full), rtol=2e-2, atol=1.0)


@pytest.mark.real_data
def test_benchmark_smoke_writes_valid_json(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "scripts/benchmark.py", "--data-dir", data_dir, "--limit-train", "256"]
    cmd += ["--limit-test", "64", "--steps", "2", "--warmup-steps", "1", "--repeats", "1", "--eval-k", "8"]
    cmd += ["--eval-images", "4", "--eval-loop-images", "2", "--out", str(out)]
    # one thread per row process: the rows start together, and spinning OpenMP threads slow a smoke run 2x
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    paths = ["pyro-example", "conventional", "pyro-svi", "pytorch", "ours-mc", "ours-analytic"]
    assert [r["path"] for r in result["rows"]] == paths
    for r in result["rows"]:
        assert r["images_per_second"] > 0 and r["seconds_per_epoch"] > 0 and r["peak_memory_mb"] > 0
        assert len(r["repeat_seconds"]) == 1 and r["steps_timed"] == 2
    assert set(result["ratios"]) >= {
        "ours-mc/pyro-example",
        "ours-mc/conventional",
        "ours-mc/pyro-svi",
        "ours-mc/pytorch",
    }
    assert result["evaluation"]["speedup"] > 0 and result["evaluation"]["k"] == 8
    assert result["torch"] == torch.__version__ and result["pyro"] == pyro.__version__
    assert "time ratio ours-mc/conventional" in proc.stdout
