"""Speed options never change results silently, and the benchmark runs (smoke size; speed is not tested)."""

import json
import os
import subprocess
import sys
import time

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


@pytest.mark.parametrize("paths", [["pytorch"], ["ours-mc"], ["pyro-example", "pytorch"], ["pytorch", "ours-mc"]])
def test_the_table_formats_any_selection_of_rows(paths):
    # a run of one row, or of rows with no `ours` beside a reference, has no ratio: the table says so
    # instead of failing after the timing is done
    from pyro_vae.benchmark import BenchmarkConfig, format_results
    from pyro_vae.benchmark.config import REFERENCES

    row = dict(images_per_second=1.0, seconds_per_epoch=2.0, peak_memory_mb=3.0, test_neg_elbo=100.0)
    ratios = {f"{o}/{r}": 1.0 for o in paths if o.startswith("ours") for r in paths if r in REFERENCES}
    result = {
        "device": "CPU",
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "config": {**BenchmarkConfig(paths=paths).__dict__, "load": 0},
        "rows": [{**row, "path": p, "test_neg_elbo_se": 0.1, "epochs_trained": 1.0} for p in paths],
        "ratios": ratios,
        "evaluation": dict(
            k=8, batched_images_per_second=1.0, batched_images=2, loop_images_per_second=1.0, loop_images=2, speedup=1.0
        ),
    }
    text = format_results(result)
    assert all(p in text for p in paths)
    assert ("time ratio ours-mc/pytorch" in text) == (paths == ["pytorch", "ours-mc"])
    assert ("time ratios: none" in text) == (not ratios)


@pytest.mark.real_data
def test_step_breakdown_smoke_times_every_layer(data_dir, tmp_path):
    out = tmp_path / "breakdown.json"
    cmd = [sys.executable, "scripts/benchmark.py", "--data-dir", data_dir, "--breakdown", "--steps", "2"]
    cmd += ["--repeats", "2", "--batch-size", "32", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    from pyro_vae.benchmark.breakdown import VARIANTS

    assert [r["variant"] for r in result["rows"]] == list(VARIANTS)
    assert result["threads"] == 1 and result["batch_size"] == 32 and result["load"] == 0
    for r in result["rows"]:
        assert r["ms_per_step"] > 0 and len(result["round_ms"][r["variant"]]) == 2
    assert result["rows"][0]["over_floor"] == 1.0
    assert "pyro-classic" in proc.stdout and "ms per step removed" in proc.stdout
    # the profile of the two ends: operators counted, Python time sorted by where it lives
    floor, ours = result["profile"]["floor"], result["profile"]["ours"]
    assert result["profile"]["ours-analytic"]["aten_ops_per_step"] > 0
    assert floor["aten_ops_per_step"] > 0 and floor["aten_self_ms_per_step"] > 0
    pyro_floor, pyro_ours = (p["python_ms_per_step"]["Pyro's messengers and traces"] for p in (floor, ours))
    assert pyro_ours > 0 and pyro_floor < 0.05 * pyro_ours  # the floor runs no model or guide (only the loop's
    # pyro.validation_enabled, once per round)
    assert ours["python_ms_per_step"]["torch's distribution classes"] > 0
    assert "aten operators" in proc.stdout and "Python, Pyro's messengers and traces" in proc.stdout


def test_the_breakdown_variants_compute_the_same_loss_for_the_same_draws():
    """Each layer adds cost, not a different objective: for the same noise, every variant's loss is the
    same negative ELBO (the floor's with the closed-form KL, the others with the Monte-Carlo one)."""
    from pyro_vae import build_vae
    from pyro_vae.benchmark.breakdown import VARIANTS, _loss_functions
    from pyro_vae.objectives import make_elbo

    vae = build_vae((1, 6, 6), z_dim=4, hidden=(16,))
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4, dtype=torch.float32), generator=torch.Generator().manual_seed(0))
    variants = _loss_functions(vae, make_elbo("mc"))
    losses = {}
    with pyro.validation_enabled(False):
        for name in VARIANTS:
            module, fn = variants[name]
            torch.manual_seed(3)
            with module.registration(False):
                losses[name] = fn(x).item()
    for name in VARIANTS[1:-1]:  # Monte-Carlo KL, same draw: the same number
        assert losses[name] == pytest.approx(losses["mc-kl"], rel=1e-5), name
    assert losses["floor"] != pytest.approx(losses["mc-kl"], rel=1e-5)  # the closed form differs from one draw
    assert VARIANTS[-1] == "ours-analytic"  # the closed form through Pyro's traces: the floor's number
    assert losses["ours-analytic"] == pytest.approx(losses["floor"], rel=1e-6)


def test_a_competing_load_runs_and_stops():
    from pyro_vae.benchmark.run import _start_load, _stop_load

    procs = _start_load(2)
    try:
        assert len(procs) == 2 and all(p.is_alive() for p in procs)
        before = [_cpu_seconds(p.pid) for p in procs]
        time.sleep(2.0)
        after = [_cpu_seconds(p.pid) for p in procs]
        assert all(b - a > 0.3 for a, b in zip(before, after, strict=True))  # really busy, not asleep
    finally:
        _stop_load(procs)
    assert not any(p.is_alive() for p in procs)


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_row_worker_that_dies_is_an_error_not_a_hang():
    """A worker ended from inside (an OpenMP runtime out of memory, a kill) is noticed within a second."""
    from multiprocessing import get_context

    from pyro_vae.benchmark.run import _receive
    from pyro_vae.errors import PyroVAEError

    ctx = get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=os._exit, args=(3,))
    proc.start()
    with pytest.raises(PyroVAEError, match=r"benchmark path x died \(exit code 3\) before it answered"):
        _receive(parent, proc, "x")
    proc.join()
    child.close()
