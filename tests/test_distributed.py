"""torch.distributed on the CPU: two gloo ranks, each a process with the environment torchrun gives it
(or torchrun itself), every one under a timeout so a hang fails the test instead of the suite."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from dist_workers import elbo_of, step_batch, step_model, step_seed

from pyro_vae.data import ShardedBatches
from pyro_vae.distributed import shard
from pyro_vae.evaluate import elbo_terms, importance_log_likelihood
from pyro_vae.runs import read_checkpoint, read_metrics

from conftest import ROOT, make_idx_root

WORKERS = Path(__file__).with_name("dist_workers.py")
TIMEOUT = 240  # seconds for a whole two-rank job; a hang fails the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path: Path, *args: str, world: int = 2) -> tuple[list[dict | None], list[int], list[str]]:
    """Start ``world`` ranks of a worker with torchrun's environment; wait for all, with a timeout. A job
    whose rendezvous port was taken between choosing and binding it (another test's connection can get
    it: the port comes from the ephemeral range) is started again on a new port, up to three times."""
    for _ in range(3):
        results, codes, outputs = _run_ranks_once(tmp_path, *args, world=world)
        if not any(_PORT_TAKEN in out for out in outputs):
            break
    return results, codes, outputs


_PORT_TAKEN = "EADDRINUSE"  # torch's TCPStore, when the rendezvous port is no longer free


def _run_ranks_once(tmp_path: Path, *args: str, world: int) -> tuple[list[dict | None], list[int], list[str]]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKERS), args[0], str(tmp_path), *args[1:]],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=tmp_path,
            )
        )
    outputs, codes = [], []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT)
            outputs.append(out)
            codes.append(p.returncode)
    finally:
        for p in procs:
            p.kill()
    results = []
    for rank in range(world):
        f = tmp_path / f"rank{rank}.pt"
        results.append(torch.load(f, weights_only=False) if f.exists() else None)
    return results, codes, outputs


def test_shards_are_disjoint_and_complete_and_the_order_is_shared():
    n, batch = 103, 10
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1)
    for world in (1, 2, 3, 4, 7):
        ranks = [
            ShardedBatches(images, batch, torch.Generator(), "unit", rank=r, world_size=world, seed=5)
            for r in range(world)
        ]
        perms = [r.permutation() for r in ranks]
        assert all(torch.equal(p, perms[0]) for p in perms)  # one shared order
        assert not torch.equal(ranks[0].permutation(), perms[0])  # a new one each epoch
        pieces = [r.pieces(perms[0]) for r in ranks]
        for b in range(len(ranks[0])):
            global_batch = perms[0][b * batch : (b + 1) * batch]
            parts = [p[b] for p in pieces]
            assert torch.equal(torch.cat(parts), global_batch)  # disjoint, complete, in order
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
        seen = torch.cat([torch.cat(p) for p in pieces])
        assert sorted(seen.tolist()) == list(range(n))
        # what each rank's batches hold, and that it is its share only
        for r, rb in enumerate(ranks):
            got = torch.cat([x.reshape(-1) for x in rb.batches(perms[0])]) * 255
            assert torch.equal(got.round().long(), torch.cat(pieces[r]).long())
        # resuming from a batch in the middle
        assert [t.tolist() for t in ranks[-1].pieces(perms[0], 4)] == [t.tolist() for t in pieces[-1][4:]]
    # contiguous pieces of a range, the same rule as the evaluation's
    for n, k in ((10, 3), (2, 4), (0, 2), (17, 17)):
        got = [list(range(n))[shard(n, k, i)] for i in range(k)]
        assert [i for g in got for i in g] == list(range(n)) and max(map(len, got)) - min(map(len, got)) <= 1


@pytest.mark.parametrize(
    "elbo,prior,likelihood",
    [("mc", "normal", "bernoulli"), ("analytic", "learned-normal", "normal-pixel"), ("mc", "mog", "normal-image")],
)
def test_a_two_rank_step_equals_one_process_on_the_global_batch(tmp_path, elbo, prior, likelihood):
    results, codes, outs = run_ranks(tmp_path, "step", elbo, prior, likelihood, "1")
    assert codes == [0, 0], outs
    # one process, the same global batch, each half with the z draws its rank made
    vae = step_model(prior, likelihood)
    x = step_batch(likelihood)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    loss = 0.0
    with pyro.validation_enabled(False), vae.registration(False):
        for rank in range(2):
            torch.manual_seed(step_seed(rank))
            loss = loss + elbo_of(elbo).differentiable_loss(vae.model, vae.guide, x[shard(10, 2, rank)])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    before = step_model(prior, likelihood).state_dict()
    for name, value in vae.state_dict().items():
        for r in results:
            torch.testing.assert_close(r[name], value, rtol=1e-5, atol=1e-6, msg=name)
        if value.is_floating_point() and name in dict(vae.named_parameters()):
            assert not torch.equal(value, before[name]), f"{name} did not move"


def test_parameters_are_bitwise_equal_across_ranks_after_k_steps(tmp_path):
    results, codes, outs = run_ranks(tmp_path, "step", "mc", "mog", "normal-pixel", "7")
    assert codes == [0, 0], outs
    assert results[0].keys() == results[1].keys()
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


def test_resume_under_two_ranks_is_exact_and_a_signal_on_one_rank_stops_all(tmp_path):
    _, codes, outs = run_ranks(tmp_path, "fit", "straight")
    assert codes == [0, 0], outs
    results, codes, outs = run_ranks(tmp_path, "fit", "interrupted")
    assert codes == [0, 0], outs
    split = tmp_path / "split"
    for r in results:  # both ranks stopped, at the same check, with one checkpoint
        assert r["error"] == "Interrupted", r
        assert f"stopped by SIGTERM at epoch 2, step 2; saved {split}/checkpoints/last.pt" in r["message"]
    state = read_checkpoint(split / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"])  # own z draws
    _, codes, outs = run_ranks(tmp_path, "fit", "resume")
    assert codes == [0, 0], outs
    straight = tmp_path / "straight"
    # bit for bit, the cut epoch's train loss too: each rank resumed from its own part of the epoch's sum
    assert [m["train_loss"] for m in read_metrics(split)] == [m["train_loss"] for m in read_metrics(straight)]
    assert len(state["position"]["rank_totals"]) == 2
    assert [m["test_loss"] for m in read_metrics(split)] == [m["test_loss"] for m in read_metrics(straight)]
    a = read_checkpoint(split / "checkpoints" / "last.pt")["model"]
    b = read_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_collectives_give_their_tensors_back_before_returning_so_an_exit_right_after_is_clean(tmp_path):
    # gloo's worker thread used to drop a collective's tensors after the caller had the result; at
    # interpreter exit that drop aborts the process (SIGABRT: "terminate called without an active exception")
    results, codes, outs = run_ranks(tmp_path, "collectives")
    assert codes == [0, 0], outs
    for r in results:
        assert r["lingering"] == 0
        assert r["sums"] == [float(1 + 2 * i) for i in range(200)]
        assert r["gathered"] == [[{"rank": 0, "i": i}, {"rank": 1, "i": i}] for i in range(200)]
        assert torch.equal(r["cat"], torch.tensor([0, 1, 0, 1, 2]))


def test_a_rank_that_dies_ends_the_job_with_a_message_not_a_hang(tmp_path):
    results, codes, outs = run_ranks(tmp_path, "fit", "die")
    assert codes[1] == 3
    assert codes[0] == 0, outs[0]
    assert results[0]["error"] == "RankFailure", results[0]
    assert results[0]["message"].startswith("rank 0 lost the other ranks (one died, or hung past `dist_timeout`)")


def test_sharded_evaluation_equals_one_process(tmp_path):
    results, codes, outs = run_ranks(tmp_path, "evaluation")
    assert codes == [0, 0], outs
    vae = step_model("normal", "bernoulli")
    x = torch.bernoulli(torch.rand(25, 1, 4, 4, generator=torch.Generator().manual_seed(2)))
    ll = importance_log_likelihood(vae, x, [1, 10, 30], batch_size=4, seed=3, sample_chunk=7)
    sites: dict = {}
    recon, kl, kinds = elbo_terms(vae, x, analytic_kl=True, batch_size=3, seed=4, per_site=sites)
    for r in results:  # every rank holds the whole result
        for k in ll:
            assert r["ll"][k].shape == (25,)
            torch.testing.assert_close(r["ll"][k], ll[k], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(r["elbo"][0], recon, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(r["elbo"][1], kl, rtol=1e-6, atol=1e-5)
        assert r["elbo"][2] == kinds
        torch.testing.assert_close(r["sites"]["z"], sites["z"], rtol=1e-6, atol=1e-5)


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_torchrun_smoke_train_resume_evaluate(tmp_path):
    data = make_idx_root(tmp_path / "data")
    common = ["--data-dir", str(data), "--batch-size", "32", "--hidden", "16", "--z-dim", "2", "--no-progress"]
    run = tmp_path / "run"
    p = _torchrun("-m", "pyro_vae", "train", *common, "--epochs", "2", "--out", str(run), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("done: ") == 1  # rank 0 speaks
    assert "2 processes (torchrun)" in p.stdout
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert (run / "checkpoints" / "epoch0002.pt").exists()
    # the console command under torchrun, where pip installed it
    entry = shutil.which("pyro-vae-train")
    launch = [entry] if entry else ["-m", "pyro_vae", "train"]
    p = _torchrun(*launch, "--resume", str(run), "--epochs", "3", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]
    p = _torchrun("-m", "pyro_vae", "evaluate", str(run), "--k", "20", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("-log p(x), IS K=20") == 1
    single = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "evaluate", str(run), "--k", "20", "--no-progress", "--out", "one.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert single.returncode == 0, single.stderr
    line = [t for t in p.stdout.splitlines() if t.startswith("-log p(x), IS K=20")]
    assert line == [t for t in single.stdout.splitlines() if t.startswith("-log p(x), IS K=20")]
    # a refused run: one line from the job, exit 2, nothing written
    p = _torchrun("-m", "pyro_vae", "train", *common, "--batch-size", "1", "--out", str(tmp_path / "no"), cwd=tmp_path)
    errors = [t for t in p.stderr.splitlines() if t.startswith("error: ")]
    assert errors == ["error: --batch-size 1 is the global batch, split across 2 ranks; pass at least 2"], p.stderr
    assert "]: Traceback" not in p.stderr  # no rank's traceback (torchrun adds its own failure summary)
    assert not (tmp_path / "no").exists()


def test_sigterm_to_torchrun_stops_every_rank_with_a_checkpoint(tmp_path):
    import signal
    import time

    data = make_idx_root(tmp_path / "data")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "pyro_vae"]
    flags = ["--data-dir", str(data), "--batch-size", "8", "--hidden", "16", "--z-dim", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(
        [*cmd, "train", *flags, "--epochs", "100000", "--log-every", "3", "--out", str(run)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (run / "checkpoints" / "epoch0002.pt").exists():  # well into training
            assert job.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=TIMEOUT)
    finally:
        job.kill()
    stops = [t for t in err.splitlines() if t.startswith("stopped by SIGTERM")]
    assert len(stops) == 1, err  # rank 0 speaks for the job
    assert "]: Traceback" not in err
    state = read_checkpoint(run / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["epoch"] >= 2
    done = state["epoch"] + (state["position"] is not None)
    p = _torchrun("-m", "pyro_vae", "train", "--resume", str(run), "--epochs", str(done + 1), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert read_metrics(run)[-1]["epoch"] == done + 1


@pytest.mark.parametrize(
    "args,expect",
    [
        (["train", "--zdim", "3"], "error: unrecognized arguments: --zdim 3; see pyro-vae-train --help"),
        (["trian"], "error: unknown command 'trian'; choose one of train, evaluate, pictures, benchmark, reproduce"),
        (["train", "--out", "r"], "error: mnist not found in"),  # no data offline: and no debris either
    ],
)
def test_torchrun_says_a_mistake_once(tmp_path, args, expect):
    p = _torchrun("-m", "pyro_vae", *args, "--no-download" if args[-1] == "r" else "--no-progress", cwd=tmp_path)
    assert p.returncode != 0
    errors = [t for t in p.stderr.splitlines() if t.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(expect), p.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind: no run folder, no empty data/MNIST/raw
