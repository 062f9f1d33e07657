"""Exact resume, safe checkpoints, clean stops, the non-finite guard, and one-line errors."""

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae import TrainConfig, load_run, train
from pyro_vae.cli import train_main
from pyro_vae.data import ImageData
from pyro_vae.errors import PyroVAEError
from pyro_vae.runs import CheckpointError, read_checkpoint, save_checkpoint
from pyro_vae.training import Interrupted, NonFiniteLoss, resume

from conftest import ROOT, make_tiny_data


def cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, z_dim=3, hidden=(24,), progress=False, log_every=2, out=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


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
    kw = dict(elbo=elbo, kl_schedule=schedule, warmup=2, particles=3, lr_milestones=milestones, lr_gamma=0.5)
    straight = train(cfg(tmp_path, "straight", **kw), data=data).run_dir
    first = train(cfg(tmp_path, "split", epochs=2, **kw), data=data).run_dir
    resume(first, epochs=3, data=data)
    assert losses_of(first) == losses_of(straight)
    assert len(losses_of(first)) == 3
    assert same_parameters(first, straight)


@pytest.mark.parametrize("schedule", ["constant", "cyclical"])
def test_sigint_mid_epoch_then_resume_equals_a_straight_run(tmp_path, monkeypatch, schedule):
    data = make_tiny_data()
    straight = train(cfg(tmp_path, "straight", kl_schedule=schedule), data=data).run_dir

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
        train(cfg(tmp_path, "split", kl_schedule=schedule), data=data)
    split = tmp_path / "split"
    assert info.value.exit_code == 128 + signal.SIGINT
    assert f"stopped by SIGINT at epoch 2, step 2; saved {split}/checkpoints/last.pt" in str(info.value)
    assert f"resume with: pyro-vae-train --resume {split}" in str(info.value)
    assert read_checkpoint(split / "checkpoints" / "last.pt")["position"]["batch"] == 2
    monkeypatch.setattr(SyncFreeTrace_ELBO, "differentiable_loss", original)
    resume(split, data=data)
    assert losses_of(split) == losses_of(straight)
    assert same_parameters(split, straight)


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
    run = train(cfg(tmp_path, epochs=1), data=data).run_dir
    good = run / "checkpoints" / "epoch0001.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {cut}: truncated or corrupt"):
        read_checkpoint(cut)
    with pytest.raises(CheckpointError, match="is not a pyro_vae checkpoint"):
        torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
        read_checkpoint(tmp_path / "other.pt")
    # a checkpoint of another model (z_dim 5, mixture prior) put into this run's folder
    other = train(cfg(tmp_path, "other", epochs=1, z_dim=5, prior="mog"), data=data).run_dir
    (run / "checkpoints" / "last.pt").unlink()
    os.link(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError) as info:
        resume(run, epochs=2, data=data)
    assert "was saved with z_dim=5 but the run asks for z_dim=3" in str(info.value)
    from pyro_vae import build_vae
    from pyro_vae.runs.checkpoint import load_model_state

    theirs = read_checkpoint(other / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError) as info:
        load_model_state(build_vae((1, 8, 8), z_dim=3, hidden=(24,)), theirs, "x")
    assert str(info.value).startswith("checkpoint x does not fit this model: missing ['prior.loc', 'prior.scale']")
    assert "shape encoder.head.loc.weight (5, 24) vs (3, 24); it was made for another architecture or prior" in str(
        info.value
    )


def test_nonfinite_loss_stops_with_the_last_good_state_and_names_the_term(tmp_path, monkeypatch):
    from pyro_vae import priors

    calls = {"n": 0}
    original = priors.StandardNormalPrior.forward

    def breaks_after_a_while(self):
        calls["n"] += 1
        d = original(self)
        if calls["n"] > 8:  # from step 9 on the prior has zero scale: log p(z) = -inf, the KL is infinite
            return type(d)(type(d.base_dist)(self.loc, 0 * self.scale), 1)
        return d

    monkeypatch.setattr(priors.StandardNormalPrior, "forward", breaks_after_a_while)
    with pytest.raises(NonFiniteLoss) as info:
        train(cfg(tmp_path, log_every=4), data=make_tiny_data())
    msg = str(info.value)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    # prior calls: 6 steps, 1 test-loss batch and the sample picture in epoch 1; the 9th is epoch 2, step 1
    assert msg.startswith("the KL term became non-finite at epoch 2, step 1; ")
    assert f"saved the last good state to {last}; try a lower --lr (now 0.001), --clip-grad 100" in msg
    state = read_checkpoint(last)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert state["position"]["batch"] == 0 and state["epoch"] == 1


def test_gradient_clipping_bounds_the_update(tmp_path):
    result = train(cfg(tmp_path, epochs=1, clip_grad=1e-3), data=make_tiny_data())
    assert result.metrics[0]["train_loss"] > 0


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


def _cli(argv, capsys):
    try:
        code = train_main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err.strip()


BAD_FLAGS = [
    (["--z-dim", "0"], "error: --z-dim must be a positive integer, got 0"),
    (["--z-dim", "abc"], "error: argument --z-dim: invalid int value: 'abc'; see pyro-vae-train --help"),
    (["--lr", "0"], "error: --lr must be a finite number > 0, got 0.0; e.g. --lr 1e-3"),
    (["--lr", "-0.1"], "error: --lr must be a finite number > 0, got -0.1; e.g. --lr 1e-3"),
    (["--epochs", "0"], "error: --epochs must be a positive integer, got 0"),
    (["--batch-size", "-5"], "error: --batch-size must be a positive integer, got -5"),
    (["--hidden", "400", "0"], "error: --hidden must be one or more positive widths, got [400, 0]; e.g. --hidden 400"),
    (["--particles", "0"], "error: --particles must be a positive integer, got 0"),
    (["--beta", "-1"], "error: --beta must be a finite number >= 0, got -1.0; e.g. --beta 1"),
    (["--clip-grad", "0"], "error: --clip-grad must be a finite number > 0, got 0.0; e.g. --clip-grad 100"),
    (["--validation", "-1"], "error: --validation must be >= 0, got -1"),
    (["--limit-train", "0"], "error: --limit-train must be a positive integer, got 0"),
    (
        ["--dataset", "svhn"],
        "error: argument --dataset: invalid choice: 'svhn' (choose from 'mnist', 'fashion-mnist', "
        "'binarized-mnist', 'cifar10', 'folder'); see pyro-vae-train --help",
    ),
    (
        ["--net", "rnn"],
        "error: argument --net: invalid choice: 'rnn' (choose from 'mlp', 'conv'); see pyro-vae-train --help",
    ),
    (
        ["--prior", "flow"],
        "error: argument --prior: invalid choice: 'flow' (choose from 'normal', 'learned-normal', 'student-t', "
        "'laplace', 'mog', 'vamp'); see pyro-vae-train --help",
    ),
    (
        ["--likelihood", "poisson"],
        "error: argument --likelihood: invalid choice: 'poisson' (choose from 'bernoulli', 'continuous-bernoulli', "
        "'normal', 'normal-image', 'normal-pixel', 'laplace', 'discretized-logistic'); see pyro-vae-train --help",
    ),
    (["--bf16", "--device", "cpu"], "error: --bf16 autocast is for CUDA; drop it on the CPU"),
    (["--cuda-graphs", "--device", "cpu"], "error: --cuda-graphs needs CUDA; drop it on the CPU"),
    (["--time-limit", "0"], "error: --time-limit must be a finite number > 0, got 0.0; minutes, e.g. --time-limit 10"),
] + [
    # refused without torchrun too: a bad value must not wait to surface until the job runs on many machines
    (
        ["--dist-timeout", value],
        f"error: --dist-timeout must be a finite number of seconds > 0, got {float(value)}; e.g. --dist-timeout 600",
    )
    for value in ("0", "-5", "nan", "inf")
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_flags_give_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code, err = _cli([*argv, "--out", str(tmp_path / "run")], capsys)
    assert (code, err) == (2, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.real_data
@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--limit-train", "100", "--batch-size", "128"],
            "error: --batch-size 128 is larger than the 100 training images; lower it",
        ),
        (
            ["--limit-train", "100", "--validation", "100"],
            "error: --validation 100 leaves no training images out of 100; lower it",
        ),
    ],
)
def test_settings_that_do_not_fit_the_data(argv, message, data_dir, tmp_path, capsys):
    code, err = _cli([*argv, "--data-dir", data_dir, "--out", str(tmp_path / "run")], capsys)
    assert (code, err) == (2, message)
    assert not (tmp_path / "run").exists()


def test_missing_data_and_resume_mistakes(tmp_path, capsys):
    code, err = _cli(["--data-dir", str(tmp_path / "none"), "--no-download", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.startswith(f"error: mnist not found in {tmp_path}/none/MNIST/raw and --no-download is set")
    code, err = _cli(["--resume", str(tmp_path / "nothing")], capsys)
    assert (code, err) == (
        2,
        f"error: no run folder {tmp_path}/nothing; pass a folder written by pyro-vae-train",
    )
    code, err = _cli(["--resume", str(tmp_path), "--z-dim", "3"], capsys)
    assert (code, err) == (
        2,
        "error: --resume takes the run's own settings; drop --z-dim (only --epochs may change); "
        "see pyro-vae-train --help",
    )
    assert not (tmp_path / "r").exists()


def _data(**change) -> ImageData:
    d = make_tiny_data()
    return ImageData(**{**d.__dict__, **change})


BAD_DATA = [
    (
        dict(train=make_tiny_data().train.float()),
        {},
        "training images must be uint8 intensities 0..255, got torch.float32",
    ),
    (dict(train=make_tiny_data().train[:0]), {}, "the training set is empty; check --limit-train/--limit-test"),
    (dict(test=make_tiny_data().test[:0]), {}, "the test set is empty; check --limit-train/--limit-test"),
    (dict(test=torch.zeros(5, 1, 7, 8)), {}, "test images are shaped (1, 7, 8) but training images (1, 8, 8)"),
    (dict(test=torch.full((5, 1, 8, 8), 0.5)), {}, "Bernoulli likelihood needs binary test images (0 or 1), found 0.5"),
    (
        dict(test=torch.full((5, 1, 8, 8), float("nan")), kind="unit"),
        dict(likelihood="continuous-bernoulli"),
        "continuous Bernoulli likelihood got NaN or Inf in the test images; clean the data",
    ),
    (
        dict(test=torch.full((5, 1, 8, 8), 2.0), kind="unit"),
        dict(likelihood="continuous-bernoulli"),
        "continuous Bernoulli likelihood needs test images in [0, 1], found values in [2, 2]",
    ),
    (
        dict(train=torch.zeros(20, 64, dtype=torch.uint8), test=torch.zeros(5, 64)),
        dict(net="conv"),
        "--net conv needs images shaped (channels, height, width), got (64,); use --net mlp",
    ),
    (
        dict(train=make_tiny_data().train.numpy()),
        {},
        "the training images must be a torch tensor, got ndarray; wrap them: torch.from_numpy(array)",
    ),
    (
        dict(test=make_tiny_data().test.tolist()),
        {},
        "the test images must be a torch tensor, got list; wrap them: torch.as_tensor(...)",
    ),
]


@pytest.mark.parametrize("change,settings,message", BAD_DATA)
def test_bad_data_gives_one_line_before_any_work(change, settings, message, tmp_path):
    with pytest.raises(PyroVAEError) as info:
        train(cfg(tmp_path, **settings), data=_data(**change))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


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
    result = train(cfg(tmp_path, epochs=1), data=_data(train=train_x, test=test_x))
    assert math.isfinite(result.metrics[-1]["test_loss"])
    pictures = sorted(p.name for p in (result.run_dir / "images").iterdir())
    assert pictures == ["reconstructions_epoch0001.png", "samples_epoch0001.png"]
