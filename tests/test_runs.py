"""Everything a run keeps on disk: exact resume (after an epoch, mid-epoch, by a signal to a real
process, with the --epochs flag), checkpoints written atomically and read safely, checkpoints of other
runs refused, and the data record that makes a run refuse other data."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pyro_vae import build_vae, load_run, train
from pyro_vae.cli import evaluate_main, train_main
from pyro_vae.errors import DataError, PyroVAEError
from pyro_vae.runs import CheckpointError, RunError, load_run_and_data, read_checkpoint, save_checkpoint
from pyro_vae.training import Interrupted, resume

from conftest import ROOT, make_idx_root, make_tiny_data, tiny_config


def losses_of(run_dir: Path) -> list[dict]:
    """metrics.csv without the wall-time columns."""
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    return [{k: v for k, v in r.items() if k not in ("seconds", "checkpoint_seconds")} for r in rows]


def same_parameters(a: Path, b: Path) -> bool:
    va, vb = load_run(a)[0], load_run(b)[0]
    return all(torch.equal(x, y) for x, y in zip(va.state_dict().values(), vb.state_dict().values(), strict=True))


@pytest.mark.parametrize(
    "elbo,schedule,milestones",
    [("mc", "constant", None), ("analytic", "linear", None), ("iwae", "constant", None), ("mc", "constant", (1, 2))],
)
def test_resume_after_epoch_2_equals_a_straight_run(tmp_path, elbo, schedule, milestones):
    data = make_tiny_data()
    # milestones (1, 2): the step size changes in both halves, the second time right at the resume
    kw = dict(elbo=elbo, kl_schedule=schedule, lr_milestones=milestones)
    # each setting only where the run uses it (the others are refused as ignored)
    kw.update({"warmup": 2} if schedule == "linear" else {})
    kw.update({"particles": 3} if elbo == "iwae" else {})
    kw.update({"lr_gamma": 0.5} if milestones else {})
    straight = train(tiny_config(tmp_path, "straight", epochs=3, **kw), data=data).run_dir
    first = train(tiny_config(tmp_path, "split", epochs=2, **kw), data=data).run_dir
    resume(first, epochs=3, data=data)
    assert losses_of(first) == losses_of(straight)
    assert len(losses_of(first)) == 3
    assert same_parameters(first, straight)


@pytest.mark.parametrize("schedule", ["constant", "cyclical"])
def test_sigint_mid_epoch_then_resume_equals_a_straight_run(tmp_path, monkeypatch, schedule):
    data = make_tiny_data()
    straight = train(tiny_config(tmp_path, "straight", epochs=3, kl_schedule=schedule), data=data).run_dir

    from pyro_vae.objectives import SyncFreeTrace_ELBO

    calls = {"n": 0}
    original = SyncFreeTrace_ELBO.differentiable_loss

    def interrupting(self, *args):
        calls["n"] += 1
        if calls["n"] == 9:  # epoch 2 (6 steps an epoch + 1 test-loss call), step 2
            signal.raise_signal(signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(SyncFreeTrace_ELBO, "differentiable_loss", interrupting)
    with pytest.raises(Interrupted) as info:
        train(tiny_config(tmp_path, "split", epochs=3, kl_schedule=schedule), data=data)
    split = tmp_path / "split"
    assert info.value.exit_code == 128 + signal.SIGINT
    assert f"stopped by SIGINT at epoch 2, step 2; saved {split}/checkpoints/last.pt" in str(info.value)
    assert f"resume with: pyro-vae-train --resume {split}" in str(info.value)
    assert read_checkpoint(split / "checkpoints" / "last.pt")["position"]["batch"] == 2
    monkeypatch.setattr(SyncFreeTrace_ELBO, "differentiable_loss", original)
    resume(split, data=data)
    assert losses_of(split) == losses_of(straight)
    assert same_parameters(split, straight)


@pytest.mark.real_data
def test_sigint_to_a_running_training_process_then_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "scripts/train.py", "--data-dir", data_dir, "--out", str(out), "--epochs", "3"]
    cmd += ["--limit-train", "20000", "--limit-test", "500", "--batch-size", "32", "--no-progress", "--z-dim", "8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("KL:")  # set up and about to train
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and f"resume with: pyro-vae-train --resume {out}" in err
    assert read_checkpoint(out / "checkpoints" / "last.pt")["format_version"] == 2
    again = subprocess.run(
        [sys.executable, "scripts/train.py", "--resume", str(out), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert [r["epoch"] for r in csv.DictReader(open(out / "metrics.csv"))] == ["1", "2", "3"]


def test_resume_epochs_is_read_even_when_it_equals_the_default(idx_root, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--data-dir", str(idx_root), "--no-download", "--batch-size", "16", "--z-dim", "3", "--no-progress"]
    assert train_main([*base, "--epochs", "2", "--out", str(run)]) == 0
    assert train_main(["--resume", str(run), "--epochs", "10", "--no-progress"]) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 10
    # a 12-epoch run stopped after 3, resumed with --epochs 10, stops at 10 (not at its own 12)
    long = tmp_path / "long"
    assert train_main([*base, "--epochs", "3", "--out", str(long)]) == 0
    saved = json.loads((long / "config.json").read_text())
    (long / "config.json").write_text(json.dumps({**saved, "epochs": 12}))
    assert train_main(["--resume", str(long), "--epochs", "10", "--no-progress"]) == 0
    assert len((long / "metrics.csv").read_text().splitlines()) == 1 + 10
    capsys.readouterr()


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format_version": 2, "model": {"w": torch.ones(3)}, "config": {}, "event_shape": [3]})

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"format_version": 2, "model": {"w": torch.zeros(3)}, "config": {}, "event_shape": [3]})
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['MARKER'])}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 2, "model": {}, "config": {}, "event_shape": [1], "x": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(f"refused {path}: it holds Python objects that could run code when loaded")
    assert not marker.exists()


def test_truncated_and_incompatible_checkpoints_name_the_problem(tmp_path):
    data = make_tiny_data()
    run = train(tiny_config(tmp_path, epochs=1), data=data).run_dir
    good = run / "checkpoints" / "epoch0001.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {cut}: truncated or corrupt"):
        read_checkpoint(cut)
    with pytest.raises(CheckpointError, match="is not a pyro_vae checkpoint"):
        torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
        read_checkpoint(tmp_path / "other.pt")
    # a checkpoint of another model (z_dim 5, mixture prior) put into this run's folder
    other = train(tiny_config(tmp_path, "other", epochs=1, z_dim=5, prior="mog"), data=data).run_dir
    (run / "checkpoints" / "last.pt").unlink()
    os.link(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError) as info:
        resume(run, epochs=2, data=data)
    assert "was saved with z_dim=5 but the run asks for z_dim=3" in str(info.value)
    from pyro_vae.runs.checkpoint import load_model_state

    theirs = read_checkpoint(other / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError) as info:
        load_model_state(build_vae((1, 8, 8), z_dim=3, hidden=(24,)), theirs, "x")
    assert str(info.value).startswith("checkpoint x does not fit this model: missing ['prior.loc', 'prior.scale']")
    assert "shape encoder.head.loc.weight (5, 24) vs (3, 24); it was made for another architecture or prior" in str(
        info.value
    )


def test_checkpoint_from_another_run_is_refused(tmp_path):
    data = make_tiny_data()
    a = train(tiny_config(tmp_path, "a"), data=data).run_dir
    b = train(tiny_config(tmp_path, "b", z_dim=4), data=data).run_dir
    c = train(replace(tiny_config(tmp_path, "c")), data=make_tiny_data(seed=9)).run_dir
    for other, why in ((b, "z_dim=4"), (c, "other data")):
        with pytest.raises(PyroVAEError) as info:
            load_run_and_data(a, data=data, checkpoint=Path(other) / "checkpoints" / "last.pt")
        assert "is not a checkpoint of" in str(info.value) and why in str(info.value)


def test_run_records_the_data_and_refuses_other_data(tmp_path):
    data = make_tiny_data()
    run = train(tiny_config(tmp_path), data=data).run_dir
    other = make_tiny_data(seed=5)
    with pytest.raises(RunError, match="in-memory data"):
        load_run_and_data(run)
    with pytest.raises(DataError, match="differ from what"):
        load_run_and_data(run, data=other)
    with pytest.raises(DataError, match="differ from what"):
        resume(run, epochs=3, data=other)
    loaded = load_run_and_data(run, data=data)
    assert torch.equal(loaded.x, data.test)


def test_a_run_by_name_refuses_other_files_and_works_from_any_directory(tmp_path, capsys):
    a = make_idx_root(tmp_path / "a", seed=0)
    b = make_idx_root(tmp_path / "b", seed=1)
    run = tmp_path / "run"
    argv = ["--data-dir", "a/", "--no-download", "--epochs", "1", "--batch-size", "16", "--z-dim", "3"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *argv, "--no-progress", "--out", str(run)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["data_dir"] == str(a.resolve()) and saved["data"]["data_dir"] == str(a.resolve())
    assert saved["data"]["event_shape"] == [1, 8, 8] and saved["data"]["kind"] == "binary"
    # from another working directory the recorded absolute path still finds the data
    code = evaluate_main([str(run), "--k", "3", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    code = evaluate_main([str(run), "--k", "3", "--no-progress", "--data-dir", str(b)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "differ from what" in err and err.count("\n") == 0
    code = train_main(["--resume", str(run), "--epochs", "2", "--no-progress"])
    assert code == 0


def test_load_run_and_data_prepares_the_data_for_the_runs_likelihood(tmp_path):
    root = make_idx_root(tmp_path / "d")
    from pyro_vae.data import load_raw

    raw_test = load_raw("mnist", str(root), False)[2]
    for likelihood, expected in (
        ("discretized-logistic", raw_test.float()),
        ("continuous-bernoulli", raw_test.float() / 255),
        ("bernoulli", torch.bernoulli(raw_test.float() / 255, generator=torch.Generator().manual_seed(3))),
    ):
        c = tiny_config(
            tmp_path,
            likelihood,
            epochs=1,
            likelihood=likelihood,
            data_dir=str(root),
            download=False,
            test_binarization_seed=3,
        )
        run = train(c).run_dir
        loaded = load_run_and_data(run)
        assert torch.equal(loaded.x, expected), likelihood
