"""Bad input, class by class: every case is one line on stderr, exit status 2, no traceback, no
stray warnings, and nothing left behind (a refused run creates no folder; a damaged run folder is
left as it was)."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import train
from pyro_vae.cli import evaluate_main, train_main
from pyro_vae.errors import ConfigError, DataError, PyroVAEError

from conftest import ROOT, make_idx_root, make_tiny_data, run_cli, tiny_config, tiny_data_with

TINY = ["--epochs", "1", "--batch-size", "16", "--z-dim", "3", "--hidden", "16", "--no-progress", "--no-download"]


def call(main, argv, capsys):
    code, _, err = run_cli(main, argv, capsys)
    return code, err


def assert_one_line(code, err, expect: str):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"more than one line: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err
    assert expect in lines[0], lines[0]


def refused_train(argv, capsys, tmp_path, expect, out=None):
    out = out if out is not None else tmp_path / "run"
    before = set(tmp_path.rglob("*"))
    code, err = call(train_main, [*argv, "--out", str(out)], capsys)
    assert_one_line(code, err, expect)
    assert set(tmp_path.rglob("*")) == before, "a refused run must leave nothing behind"


SIZES = [
    (["--z-dim", "1e9"], "needs about"),
    (["--z-dim", "1000000000"], "needs about"),
    (["--hidden", "1e9"], "needs about"),
    (["--hidden", "400", "1000000000"], "needs about"),
    (["--elbo", "iwae", "--particles", "1e9"], "needs about"),
    (["--net", "conv", "--z-dim", "1e10"], "needs about"),
    (["--prior", "vamp", "--hidden", "300000000"], "needs about"),
    (["--z-dim", "1e99"], "--z-dim 1e+99 is beyond any memory"),
    (["--hidden", "1e50"], "--hidden 1e+50 is beyond any memory"),
    (["--batch-size", "1e20"], "--batch-size 1e+20 is beyond any memory"),
    (["--z-dim", "2.5"], "invalid int value"),
    # step sizes that cannot train: refused before training, naming the product
    (["--weight-decay", "1e9"], "the step size reaches 0.001 (--lr × --lr-gamma^0), and lr·λ = 1e+06 ≥ 1 with"),
    (["--lr", "0.5", "--weight-decay", "2"], "and lr·λ = 1 ≥ 1 with --weight-decay"),
    (["--lr-milestones", "1", "2", "--lr-gamma", "10", "--weight-decay", "150"], "(--lr × --lr-gamma^1), and lr·λ"),
    (["--lr-milestones", "1", "--lr-gamma", "1e308"], "the step size reaches 1e+305 (--lr × --lr-gamma^1), unusable"),
    # the flow's networks are built on the CPU even in the dry build: sized before a weight is made
    (["--guide", "iaf", "--flow-hidden", "1e9"], "a flow guide of 2 steps with --flow-hidden 1000000000 needs about"),
    (["--guide", "householder", "--flows", "64", "--flow-hidden", "1e6", "1e6"], "a flow guide of 64 steps"),
    # every thread needs a core, and OpenMP allocates per thread
    (["--threads", "1e9"], f"--threads 1e+09 asks for more threads than the {os.cpu_count()} CPUs"),
    (["--threads", str((os.cpu_count() or 1) + 1)], "asks for more threads than the"),
]


@pytest.mark.parametrize("argv,expect", SIZES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_sizes_that_cannot_fit_are_refused_before_allocating(idx_root, tmp_path, capsys, argv, expect):
    refused_train([*TINY, "--data-dir", str(idx_root), *argv], capsys, tmp_path, expect)


SEEDS = [
    (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    (["--seed", str(2**64)], "--seed must be an integer from 0 to 4294967295"),
    (["--seed", str(2**32)], "--seed must be an integer from 0 to 4294967295"),
    (["--test-binarization-seed", "-7"], "--test-binarization-seed must be an integer from 0"),
    (["--test-binarization-seed", str(2**70)], "--test-binarization-seed must be an integer from 0"),
    (["--seed", "1.5"], "invalid int value"),
    (["--seed", "nan"], "invalid int value"),
]


@pytest.mark.parametrize("argv,expect", SEEDS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_out_of_range_seeds(idx_root, tmp_path, capsys, argv, expect):
    refused_train([*TINY, "--data-dir", str(idx_root), *argv], capsys, tmp_path, expect)


def test_out_may_be_several_new_folders_deep(idx_root, tmp_path, capsys):
    out = tmp_path / "runs" / "project" / "run-1"
    code, err = call(train_main, [*TINY, "--data-dir", str(idx_root), "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "config.json").is_file() and (out / "checkpoints").is_dir()


def test_largest_seed_is_accepted(idx_root, tmp_path, capsys):
    code, err = call(
        train_main, [*TINY, "--data-dir", str(idx_root), "--seed", str(2**32 - 1), "--out", str(tmp_path / "r")], capsys
    )
    assert code == 0, err


NONFINITE = [
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr=-inf"], "--lr must be a finite number > 0"),
    (["--beta", "inf"], "--beta must be a finite number >= 0"),
    (["--beta", "nan"], "--beta must be a finite number >= 0"),
    (["--likelihood-scale", "inf"], "--likelihood-scale must be a finite number > 0"),
    (["--likelihood-scale", "nan"], "--likelihood-scale must be a finite number > 0"),
    (["--warmup", "inf", "--kl-schedule", "linear"], "--warmup must be a finite number >= 0"),
    (["--warmup", "nan"], "--warmup must be a finite number >= 0"),
    (["--clip-grad", "inf"], "--clip-grad must be a finite number > 0"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    (["--weight-decay=-0.01"], "--weight-decay must be a finite number >= 0"),
    (["--epochs", "inf"], "invalid int value"),
]


@pytest.mark.parametrize("argv,expect", NONFINITE, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_nonfinite_settings(idx_root, tmp_path, capsys, argv, expect):
    refused_train([*TINY, "--data-dir", str(idx_root), *argv], capsys, tmp_path, expect)


def _out_cases(tmp_path: Path) -> list:
    afile = tmp_path / "afile"
    afile.write_text("x")
    stale = tmp_path / "stale"
    (stale / "checkpoints").mkdir(parents=True)
    (stale / "checkpoints" / "epoch0001.pt").write_bytes(b"precious")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    done = tmp_path / "done"
    done.mkdir()
    (done / "config.json").write_text("{}")
    return [
        (afile, "is a file, not a folder"),
        (afile / "run", "lies below"),
        ("", "--out is empty"),
        ("   ", "--out is empty"),
        (stale, "is not empty"),
        (busy, "is not empty"),
        (done, "already holds a run"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_out_folders(idx_root, tmp_path, capsys, case):
    out, expect = _out_cases(tmp_path)[case]
    refused_train([*TINY, "--data-dir", str(idx_root)], capsys, tmp_path, expect, out=out)
    if case == 4:  # the checkpoints found there are untouched
        assert (tmp_path / "stale" / "checkpoints" / "epoch0001.pt").read_bytes() == b"precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot refuse it")
def test_out_in_a_read_only_folder(idx_root, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused_train([*TINY, "--data-dir", str(idx_root)], capsys, tmp_path, "permission denied", out=ro / "run")
    finally:
        ro.chmod(0o755)


def _damage(raw: Path, how: str) -> str:
    """Damage one file of a fabricated MNIST folder; return the file name the message must name."""
    name = "train-images-idx3-ubyte.gz"
    blob = gzip.decompress((raw / name).read_bytes())
    if how == "truncated-gz":
        (raw / name).write_bytes((raw / name).read_bytes()[:200])
    elif how == "not-gzip":
        (raw / name).write_bytes(b"hello, not a gzip file at all")
    elif how == "short-idx":
        (raw / name).write_bytes(gzip.compress(blob[:-30]))
    elif how == "bad-magic":
        (raw / name).write_bytes(gzip.compress(b"\x01\x02" + blob[2:]))
    elif how == "wrong-rank":
        (raw / name).write_bytes(gzip.compress(blob[:3] + b"\x02" + blob[4:]))
    elif how == "raw-truncated":  # an unpacked file beside the .gz is read first
        (raw / "train-images-idx3-ubyte").write_bytes(blob[:100])
        return "train-images-idx3-ubyte"
    elif how == "count-mismatch":
        labels = gzip.decompress((raw / "train-labels-idx1-ubyte.gz").read_bytes())
        short = labels[:4] + (len(labels) - 8 - 5).to_bytes(4, "big") + labels[8:-5]
        (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(short))
        return "differ in number"
    elif how == "empty":
        (raw / name).write_bytes(b"")
    return name


DAMAGE = [
    "truncated-gz",
    "not-gzip",
    "short-idx",
    "bad-magic",
    "wrong-rank",
    "raw-truncated",
    "count-mismatch",
    "empty",
]


@pytest.mark.parametrize("how", DAMAGE)
def test_corrupt_dataset_files_are_named(tmp_path, capsys, how):
    root = make_idx_root(tmp_path / "data")
    named = _damage(root / "MNIST" / "raw", how)
    refused_train([*TINY, "--data-dir", str(root)], capsys, tmp_path, named)
    _, err = call(train_main, [*TINY, "--data-dir", str(root), "--out", str(tmp_path / "r2")], capsys)
    if how != "count-mismatch":
        assert "corrupt" in err and "not found" not in err


def test_gz_only_folder_works_offline(idx_root, tmp_path, capsys):
    assert not list(idx_root.rglob("*-ubyte"))  # only the .gz files
    code, err = call(train_main, [*TINY, "--data-dir", str(idx_root), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("download", [True, False])
def test_failed_lookups_leave_no_folders(tmp_path, capsys, download):
    argv = [a for a in TINY if download is False or a != "--no-download"]
    where = tmp_path / "nowhere" / "deeper"
    refused_train([*argv, "--data-dir", str(where)], capsys, tmp_path, "not found in")
    assert not (tmp_path / "nowhere").exists()


def test_data_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "data.txt"
    f.write_text("x")
    refused_train([*TINY, "--data-dir", str(f)], capsys, tmp_path, "is a file")


@pytest.fixture
def trained(idx_root, tmp_path, capsys) -> Path:
    out = tmp_path / "trained"
    code, err = call(train_main, [*TINY, "--epochs", "2", "--data-dir", str(idx_root), "--out", str(out)], capsys)
    assert code == 0, err
    return out


def _break_run(run: Path, how: str) -> str:
    if how == "config-not-json":
        (run / "config.json").write_text("{not json")
        return "not JSON"
    if how == "config-list":
        (run / "config.json").write_text("[1, 2]")
        return "not an object of settings"
    if how == "config-bad-type":
        saved = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**saved, "z_dim": "three"}))
        return "--z-dim must be int"
    if how == "config-unknown":
        saved = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**saved, "learning_rate": 1}))
        return "unknown settings ['learning_rate']"
    if how == "config-missing":
        (run / "config.json").unlink()
        return "no config.json"
    if how == "metrics-garbage":
        (run / "metrics.csv").write_text(
            "epoch,train_loss,val_loss,test_loss,seconds,checkpoint_seconds\n1,abc,,1,1,1\n"
        )
        return "metrics.csv is damaged"
    if how == "metrics-header":
        (run / "metrics.csv").write_bytes(b"\x00\xff\xfe garbage")
        return "metrics.csv is damaged"
    if how == "metrics-short-row":
        (run / "metrics.csv").write_text("epoch,train_loss,val_loss,test_loss,seconds,checkpoint_seconds\n1,2\n")
        return "metrics.csv is damaged"
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    os.unlink(last)  # a hard link to epoch0002.pt: write a separate file
    if how == "ckpt-no-optimizer":
        del state["optimizer"]
        torch.save(state, last)
        return "lacks optimizer"
    if how == "ckpt-no-rng":
        del state["rng"]
        torch.save(state, last)
        return "lacks rng"
    if how == "ckpt-no-model":
        del state["model"]
        torch.save(state, last)
        return "not a pyro_vae checkpoint"
    if how == "ckpt-truncated":
        shutil.copy(run / "checkpoints" / "epoch0002.pt", last)
        last.write_bytes(last.read_bytes()[:500])
        return "truncated or corrupt"
    if how == "ckpt-not-a-dict":
        torch.save([1, 2, 3], last)
        return "not a pyro_vae checkpoint"
    raise AssertionError(how)


RUN_DAMAGE = [
    "config-not-json",
    "config-list",
    "config-bad-type",
    "config-unknown",
    "config-missing",
    "metrics-garbage",
    "metrics-header",
    "metrics-short-row",
    "ckpt-no-optimizer",
    "ckpt-no-rng",
    "ckpt-no-model",
    "ckpt-truncated",
    "ckpt-not-a-dict",
]


@pytest.mark.parametrize("how", RUN_DAMAGE)
def test_resume_of_a_damaged_run_is_one_line_and_changes_nothing(trained, capsys, how):
    expect = _break_run(trained, how)
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    code, err = call(train_main, ["--resume", str(trained), "--epochs", "3", "--no-progress"], capsys)
    assert_one_line(code, err, expect)
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def _eval_cases(trained: Path, tmp_path: Path, idx_root: Path, capsys) -> list:
    other = tmp_path / "other"
    code, err = call(train_main, [*TINY, "--z-dim", "4", "--data-dir", str(idx_root), "--out", str(other)], capsys)
    assert code == 0, err
    junk = tmp_path / "junk.json"
    junk.write_text("not json")
    return [
        (["--limit", "0"], "--limit must be a positive number of images, got 0"),
        (["--limit", "-3"], "--limit must be a positive number of images, got -3"),
        (["--k", "0"], "--k must be sample counts from 1"),
        (["--k", "10", "2000000"], "--k must be sample counts from 1"),
        (["--batch-size", "0"], "--batch-size must be an integer from 1 to 1,000,000, got 0"),
        (["--elbo-particles", "-1"], "--elbo-particles must be an integer from 1 to 1,000,000, got -1"),
        # an unbounded count would end in an allocator traceback after the load
        (["--elbo-particles", "1000000000"], "--elbo-particles must be an integer from 1 to 1,000,000"),
        (["--elbo-particles", "1e9"], "--elbo-particles must be an integer from 1 to 1,000,000"),
        (["--batch-size", "10000000"], "--batch-size must be an integer from 1 to 1,000,000"),
        (["--seed", "-1"], "--seed must be an integer from 0"),
        (["--out", str(tmp_path / "missing" / "eval.json")], "does not exist"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(junk)], "is not an evaluation file"),
        (["--checkpoint", str(other / "checkpoints" / "last.pt")], "is not a checkpoint of"),
        (["--checkpoint", str(tmp_path / "nope.pt")], "no checkpoint file"),
        (["--split", "valid"], "this dataset has no validation split"),
        (["--data-dir", str(tmp_path / "empty")], "not found in"),
        (["--dist-timeout", "0"], "--dist-timeout must be a finite number of seconds > 0, got 0.0"),
        # a folder that permissions allow but where no file can be made (the probe finds it, not os.access)
        (["--out", "/proc/pyro_vae_eval.json"], "--out /proc/pyro_vae_eval.json: cannot write there ("),
    ]


@pytest.mark.parametrize("case", range(19))
def test_evaluate_refuses_before_the_work(trained, tmp_path, idx_root, capsys, case):
    argv, expect = _eval_cases(trained, tmp_path, idx_root, capsys)[case]
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    code, err = call(evaluate_main, [str(trained), "--k", "2", "--no-progress", *argv], capsys)
    assert_one_line(code, err, expect)
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before  # no eval.json written


def test_a_results_file_that_fails_at_the_end_keeps_the_figures_on_screen(trained, capsys, monkeypatch):
    import pyro_vae.runs.results

    def full_disk(path, result):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyro_vae.runs.results, "record_results", full_disk)
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    code = evaluate_main([str(trained), "--k", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert_one_line(code, captured.err, f"could not add the results to {trained}/eval.json (No space left on device)")
    assert captured.err.strip().endswith("the figures are printed above")
    assert "-log p(x), IS K=2" in captured.out  # the work is not lost
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def test_evaluate_a_run_whose_folder_is_missing(tmp_path, capsys):
    code, err = call(evaluate_main, [str(tmp_path / "nope")], capsys)
    assert_one_line(code, err, "no run folder")


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["train", "--z-dim", "1e9"], "needs about"),
        (["train", "--seed", "-1"], "--seed must be"),
        (["train", "--lr", "nan"], "--lr must be a finite number"),
        (["evaluate", "RUN", "--limit", "0"], "--limit must be a positive number"),
    ],
)
def test_a_separate_process_prints_exactly_one_line(idx_root, tmp_path, capsys, argv, expect):

    run = tmp_path / "run"
    if argv[0] == "evaluate":
        assert call(train_main, [*TINY, "--data-dir", str(idx_root), "--out", str(run)], capsys)[0] == 0
        argv = ["evaluate", str(run), *argv[2:]]
    else:
        argv = [argv[0], *TINY, *argv[1:], "--data-dir", str(idx_root), "--out", str(tmp_path / "new")]
    proc = subprocess.run([sys.executable, "-m", "pyro_vae", *argv], cwd=ROOT, capture_output=True, text=True)
    assert_one_line(proc.returncode, proc.stderr, expect)
    assert proc.stdout == ""
    assert not (tmp_path / "new").exists()


DATASET_OPTIONS = [
    (["--channels", "2"], "invalid choice: 2"),
    (["--test-fraction", "1.5"], "--test-fraction must be between 0 and 1"),
    (["--test-fraction", "0"], "--test-fraction must be between 0 and 1"),
    (["--test-fraction", "nan"], "--test-fraction must be between 0 and 1"),
    (["--patches", "0"], "--patches must be a positive integer"),
    (["--patches", "64"], "--patches 64 is larger than the 8x8 images"),
    (["--image-size", "-4"], "--image-size must be a positive integer"),
    (["--split-seed", "-1"], "--split-seed must be an integer from 0"),
    (["--conv-kernel", "4", "--net", "conv"], "--conv-kernel must be odd"),
    (["--conv-channels", "32", "64", "--net", "conv"], "one value per layer"),
    (["--conv-strides", "0", "2", "2", "1", "--net", "conv"], "--conv-strides must be one or more positive integers"),
    (["--conv-depth", "0", "--net", "conv"], "--conv-depth must be a positive integer"),
    # sizes checked in integers before anything is built: strides past 1x1, weights past 2**31
    (
        ["--conv-depth", "4", "--net", "conv"],
        "conv layer 4 of 4 strides over 1x1 maps: 8x8 images are down to 1x1 after 3",
    ),
    (["--conv-depth", "50", "--net", "conv"], "conv layer 4 of 50 strides over 1x1 maps"),
    (
        ["--conv-channels", "4", "4", "4", "4", "4", "--conv-strides", "2", "1", "2", "2", "2", "--net", "conv"],
        "conv layer 5 of 5 strides over 1x1 maps: 8x8 images are down to 1x1 after 3",
    ),
    (
        ["--conv-channels", "99999", "99999", "--conv-strides", "1", "1", "--net", "conv"],
        "would hold about 9e+10 weights",
    ),
    (["--decoder-hidden", "0"], "--decoder-hidden must be one or more positive integers"),
    (["--data-placement", "gpu"], "invalid choice: 'gpu'"),
    (["--dataset", "folder"], "differ in size"),
]


@pytest.mark.parametrize("argv,expect", DATASET_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_dataset_and_network_options(idx_root, tmp_path, capsys, argv, expect):
    if argv[:2] == ["--dataset", "folder"]:  # a folder of images of two sizes
        from PIL import Image

        (tmp_path / "imgs").mkdir()
        Image.new("RGB", (10, 12)).save(tmp_path / "imgs" / "a.png")
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "b.png")
        refused_train([*TINY, *argv, "--data-dir", str(tmp_path / "imgs")], capsys, tmp_path, expect)
        return
    refused_train([*TINY, "--data-dir", str(idx_root), *argv], capsys, tmp_path, expect)


BENCHMARK = [
    (["--steps", "-5"], "--steps must be positive"),
    (["--repeats", "0"], "--repeats must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--limit-train", "0"], "--limit-train must be positive"),
    (["--seed", "-2"], "--seed must be an integer from 0"),
    (["--eval-k", "10000000"], "--eval-k must be at most 1,000,000"),
    (["--paths", "warp"], "invalid choice: 'warp'"),
    (["--paths", "ours-mc", "pytorch", "ours-mc"], "--paths names ours-mc more than once; name each row once"),
    (["--data-dir", "NOWHERE"], "mnist not found in"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0, got -1"),
    (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
    (["--load", "-1"], "--load must be >= 0, got -1"),
    (["--threads", "0"], "--threads must be positive, got 0"),
    (["--threads", "1e9"], "--threads 1e+09 asks for more threads than the"),
    (["--load", "1000000000000"], "--load 1e+12 asks for more competing processes than the"),
    (["--num-workers", "1000000000"], "--num-workers 1e+09 asks for more DataLoader worker processes than the"),
    (["--breakdown", "--device", "cuda"], "the step breakdown times the CPU step; drop --device cuda"),
    # the output file is checked before minutes of timing, not written to after them
    (["--out", "HERE"], "is a folder; pass a file name such as"),
    (["--out", "NOWHERE/bench.json"], "does not exist (or is a file)"),
    (["--out", "/proc/pyro_vae_bench.json"], "--out /proc/pyro_vae_bench.json: cannot write there ("),
]


@pytest.mark.parametrize("argv,expect", BENCHMARK, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_benchmark_settings(idx_root, tmp_path, capsys, argv, expect):
    from pyro_vae.cli import benchmark_main

    argv = [a.replace("NOWHERE", str(tmp_path / "nowhere")).replace("HERE", str(tmp_path)) for a in argv]
    out = tmp_path / "bench.json"
    code, err = call(benchmark_main, ["--data-dir", str(idx_root), "--out", str(out), *argv], capsys)
    assert_one_line(code, err, expect)
    assert not out.exists()


HIERARCHY = [
    (["--model", "ladder", "--latents", "8", "4", "--hidden", "16"], "one --hidden width per latent layer"),
    (["--model", "ladder", "--latents", "0", "4", "--hidden", "16", "8"], "--latents must be one or more positive"),
    (
        [
            "--model",
            "ladder",
            "--inference",
            "bottom-up",
            "--elbo",
            "analytic",
            "--latents",
            "4",
            "2",
            "--hidden",
            "8",
            "8",
        ],
        "would be biased",
    ),
    (
        [
            "--model",
            "ladder",
            "--inference",
            "bottom-up",
            "--prior",
            "vamp",
            "--latents",
            "4",
            "2",
            "--hidden",
            "8",
            "8",
        ],
        "depends on x alone",
    ),
    (["--model", "deep"], "invalid choice: 'deep'"),
    (["--inference", "sideways"], "invalid choice: 'sideways'"),
    (["--free-bits", "-1"], "--free-bits must be a finite number >= 0"),
    (["--free-bits", "inf"], "--free-bits must be a finite number >= 0"),
    (["--free-bits", "0.1", "--elbo", "iwae"], "the IWAE bound has none"),
]


@pytest.mark.parametrize("argv,expect", HIERARCHY, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_hierarchy_options(idx_root, tmp_path, capsys, argv, expect):
    refused_train([*TINY, "--data-dir", str(idx_root), *argv], capsys, tmp_path, expect)


def _api_cases():
    import numpy as np
    from pyro.infer import Trace_ELBO

    from pyro_vae import heldout_loss
    from pyro_vae.evaluate import active_units, elbo_terms, evaluate, importance_log_likelihood

    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    return [
        (lambda v: importance_log_likelihood(v, x, 0), ValueError, "numbers of samples must be integers >= 1, got 0"),
        (lambda v: importance_log_likelihood(v, x, [5, -1]), ValueError, "integers >= 1, got [5, -1]"),
        (lambda v: importance_log_likelihood(v, x, 2.5), ValueError, "integers >= 1, got 2.5"),
        (lambda v: importance_log_likelihood(v, x, []), ValueError, "integers >= 1, got []"),
        (lambda v: importance_log_likelihood(v, x, 5, batch_size=0), ConfigError, "batch_size must be a positive"),
        (lambda v: importance_log_likelihood(v, x[:0], 5), DataError, "no images to score (N = 0)"),
        (
            lambda v: importance_log_likelihood(v, x.reshape(6, 16), 5),
            DataError,
            "have shape (6, 16); this model scores (N, 1, 4, 4)",
        ),
        (
            lambda v: importance_log_likelihood(v, x[0], 5),
            DataError,
            "have shape (1, 4, 4); this model scores (N, 1, 4, 4)",
        ),
        (
            lambda v: importance_log_likelihood(v, x.numpy(), 5),
            DataError,
            "must be a torch tensor shaped (N, 1, 4, 4), got ndarray",
        ),
        (lambda v: importance_log_likelihood(v, x * 255, 5), DataError, "Bernoulli likelihood needs binary data"),
        (
            lambda v: elbo_terms(v, x, analytic_kl=True, num_particles=0),
            ConfigError,
            "num_particles must be an integer from 1 to 1,000,000, got 0",
        ),
        (
            lambda v: elbo_terms(v, x, analytic_kl=True, num_particles=10**9),
            ConfigError,
            "num_particles must be an integer from 1 to 1,000,000, got 1000000000",
        ),
        (lambda v: evaluate(v, x, [5], elbo_particles=10**9), ConfigError, "`elbo_particles` must be an integer from"),
        (lambda v: evaluate(v, x, [5], batch_size=0), ConfigError, "`batch_size` must be an integer from 1"),
        (lambda v: evaluate(v, x, [5], seed=-1), ConfigError, "`seed` must be an integer from 0"),
        (lambda v: evaluate(v, x, [5, 10**7]), ConfigError, "`ks` must be sample counts from 1 to 1,000,000"),
        (lambda v: elbo_terms(v, x[:0], analytic_kl=False), DataError, "no images to score"),
        (lambda v: active_units(v, x[:0]), DataError, "no images to score"),
        (lambda v: evaluate(v, x, [np.int64(0)]), ValueError, "`ks` must be sample counts from 1 to 1,000,000"),
        (lambda v: evaluate(v, x.reshape(6, 16), [5]), DataError, "this model scores (N, 1, 4, 4)"),
        (lambda v: heldout_loss(v, Trace_ELBO(), x[:0]), DataError, "no images to score (N = 0)"),
        (lambda v: heldout_loss(v, Trace_ELBO(), x.numpy()), DataError, "must be a torch tensor"),
    ]


@pytest.mark.parametrize("case", range(22))
def test_the_evaluation_functions_refuse_bad_arguments_in_one_line(case):
    from pyro_vae import build_vae

    call_it, kind, expect = _api_cases()[case]
    vae = build_vae((1, 4, 4), z_dim=2, hidden=(8,))
    with pytest.raises(kind) as info:
        call_it(vae)
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_the_evaluation_functions_take_numpy_counts_float64_and_bool_images():
    import numpy as np

    from pyro_vae import build_vae
    from pyro_vae.evaluate import importance_log_likelihood

    vae = build_vae((1, 4, 4), z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    ref = importance_log_likelihood(vae, x, 7)[7]
    for same in (x.double(), x.bool(), x.to(torch.uint8)):
        got = importance_log_likelihood(vae, same, np.int64(7))
        assert list(got) == [7] and got[7].dtype == torch.float32
        assert torch.equal(got[7], ref)
    # a float64 model scores in float64, and agrees with the float32 model to float32 precision for
    # the same latents (float64 draws from the same seed are other numbers)
    z = torch.randn(7, 6, 2)
    ref = importance_log_likelihood(vae, x, 7, latents={"z": z})[7]
    got = importance_log_likelihood(vae.double(), x, 7, latents={"z": z.double()})[7]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.float(), ref, rtol=1e-5, atol=1e-4)


BUILD = [
    (dict(z_dim=0), "`z_dim` must be a positive integer, got 0"),
    (dict(z_dim=2.5), "`z_dim` must be a positive integer, got 2.5"),
    (dict(hidden=(8, 0)), "`hidden` must be positive widths (or empty for a linear map), got [8, 0]"),
    (dict(decoder_hidden=(-1,)), "`decoder_hidden` must be positive widths"),
    (dict(likelihood_scale=float("nan")), "`likelihood_scale` must be a finite number > 0, got nan"),
    (dict(event_shape=()), "`event_shape` must be the shape of one data point"),
    (dict(event_shape=(1, 0, 4)), "`event_shape` must hold positive integers, got (1, 0, 4)"),
    (dict(prior="flow"), "unknown `prior='flow'`"),
    (dict(guide="planar"), "unknown `guide='planar'`; choose one of gaussian, iaf, householder"),
    (dict(guide="iaf", flows=0), "`flows` must be an integer from 1 to 64, got 0"),
    (dict(likelihood="discretized-mixture", mixture_components=0), "`mixture_components` must be an integer from 1"),
]


@pytest.mark.parametrize("kw,expect", BUILD, ids=[str(k) for k, _ in BUILD])
def test_build_vae_refuses_impossible_sizes(kw, expect):
    from pyro_vae import build_vae

    kw = {"event_shape": (1, 4, 4), **kw}
    with pytest.raises(ConfigError) as info:
        build_vae(kw.pop("event_shape"), **kw)
    assert expect in str(info.value)


def _cli(argv, capsys):
    code, _, err = run_cli(train_main, argv, capsys)
    return code, err.strip()


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
        "'normal', 'normal-image', 'normal-pixel', 'normal-decoder', 'laplace', 'discretized-logistic', "
        "'discretized-logistic-pixel', 'discretized-mixture', 'autoregressive-mixture'); see pyro-vae-train --help",
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
        "error: --resume takes the run's own settings; drop --z-dim "
        "(only --epochs, --time-limit and --no-progress may change); see pyro-vae-train --help",
    )
    assert not (tmp_path / "r").exists()


BAD_DATA = [
    (
        dict(train=make_tiny_data().train.float()),
        {},
        "training images must be uint8 intensities 0..255, got torch.float32",
    ),
    (dict(train=make_tiny_data().train[:0]), {}, "the training set is empty; check `limit_train`/`limit_test`"),
    (dict(test=make_tiny_data().test[:0]), {}, "the test set is empty; check `limit_train`/`limit_test`"),
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
        "`net=conv` needs images shaped (channels, height, width), got (64,); use `net=mlp`",
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
        train(tiny_config(tmp_path, **{"epochs": 3, **settings}), data=tiny_data_with(**change))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


# settings given a value that the run would silently ignore: (settings, what would use them)
IGNORED = [
    (dict(inference="bottom-up"), dict(model="ladder"), "`inference` applies to `model=ladder` only"),
    (dict(latents=(4, 2)), dict(model="ladder", hidden=(24, 12)), "`latents` applies to `model=ladder` only"),
    (dict(batch_norm=True), dict(model="ladder"), "`batch_norm` applies to `model=ladder` only"),
    (
        dict(conv_channels=(8, 8), conv_strides=(2, 2)),
        dict(net="conv"),
        "`conv_channels` and `conv_strides` apply to `net=conv` only",
    ),
    (dict(conv_kernel=5), dict(net="conv"), "`conv_kernel` applies to `net=conv` only"),
    (dict(conv_depth=2), dict(net="conv"), "`conv_depth` applies to `net=conv` only"),
    (dict(likelihood_scale=0.3), dict(likelihood="normal"), "`likelihood_scale` applies to `likelihood` normal"),
    (dict(particles=7), dict(elbo="iwae"), "`particles` applies to `elbo=iwae` only"),
    (dict(warmup=3), dict(kl_schedule="linear"), "`warmup` applies to `kl_schedule=linear` only"),
    (dict(warmup_unit="steps"), dict(kl_schedule="linear"), "`warmup_unit` applies to `kl_schedule=linear` only"),
    (dict(cycles=2), dict(kl_schedule="cyclical"), "`cycles` applies to `kl_schedule=cyclical` only"),
    (dict(lr_gamma=0.5), dict(lr_milestones=(1,)), "`lr_gamma` applies to `lr_milestones` only"),
    (dict(flows=3), dict(guide="iaf"), "`flows` and `flow_hidden` shape a flow guide"),
    (dict(mixture_components=4), None, "`mixture_components` applies to `likelihood=discretized-mixture` and"),
    (dict(image_size=16), None, "`image_size` applies to `dataset=folder` only"),
    (dict(cache_dir="somewhere"), None, "`cache_dir` applies to `dataset=folder` only"),
    (dict(test_fraction=0.2, split_seed=3), None, "`test_fraction` and `split_seed` apply to `dataset=folder` only"),
]


@pytest.mark.parametrize("given,needs,message", IGNORED, ids=[next(iter(g)) for g, _, _ in IGNORED])
def test_a_setting_the_run_would_ignore_is_refused_and_accepted_where_it_applies(
    tmp_path, tiny_data, given, needs, message
):
    from pyro_vae import train

    with pytest.raises(ConfigError) as info:
        train(tiny_config(tmp_path, **given), data=tiny_data)
    assert str(info.value).startswith(message)
    assert not (tmp_path / "run").exists()
    if needs is not None:  # where the setting is used, the same value is accepted
        tiny_config(tmp_path, **given, **needs).validate().check_all_used()


def test_an_ignored_setting_on_the_command_line_names_the_flags(tmp_path, capsys):
    code, err = _cli(["--batch-norm", "--out", str(tmp_path / "r")], capsys)
    assert (code, err.strip()) == (2, "error: --batch-norm applies to --model ladder only: drop it")
    code, err = _cli(["--conv-depth", "3", "--conv-kernel", "5", "--out", str(tmp_path / "r")], capsys)
    assert (code, err.strip()) == (2, "error: --conv-kernel and --conv-depth apply to --net conv only: drop it")
    assert not (tmp_path / "r").exists()


def test_a_run_written_before_a_rule_still_resumes(tmp_path, tiny_data):
    """The ignored-settings rule is for new runs: an older run folder that holds such a value resumes."""
    import json

    from pyro_vae import resume, train

    first = train(tiny_config(tmp_path, epochs=1), data=tiny_data)
    path = first.run_dir / "config.json"
    saved = json.loads(path.read_text())
    saved["particles"] = 9  # as an older version wrote it beside elbo=mc
    path.write_text(json.dumps(saved))
    again = resume(first.run_dir, epochs=2, data=tiny_data)
    assert [m["epoch"] for m in again.metrics] == [1, 2]


# ---------------------------------------------------------------- hostile files in an image folder


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (its data is a few bytes: a decompression bomb's
    signature, as far as any reader that trusts the header can tell)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def _photo_folder(root: Path, n: int = 6) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (12, 12), (i * 30, 80, 160)).save(root / f"ok{i}.png")
    return root


HOSTILE = [
    ("dangling link", lambda d: (d / "gone.png").symlink_to(d / "nowhere.png"), {}, "gone.png"),
    (
        "loop of links",
        lambda d: ((d / "a.png").symlink_to(d / "b.png"), (d / "b.png").symlink_to(d / "a.png")),
        {},
        "a.png",
    ),
    ("bomb", lambda d: (d / "bomb.png").write_bytes(_png_header(100_000, 100_000)), {}, "decompression bomb"),
    (
        "bomb with image_size",
        lambda d: (d / "bomb.png").write_bytes(_png_header(100_000, 100_000)),
        {"image_size": 8},
        "decompression bomb",
    ),
    ("not an image", lambda d: (d / "text.png").write_text("hello"), {}, "cannot read image"),
    ("truncated", lambda d: (d / "cut.png").write_bytes((d / "ok0.png").read_bytes()[:40]), {}, "cannot read image"),
    ("huge image_size", lambda d: None, {"image_size": 10**9}, "`image_size=1000000000` would need"),
]


@pytest.mark.parametrize("name,make,options,expect", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_in_an_image_folder_are_named_in_one_line(tmp_path, name, make, options, expect):
    from pyro_vae.data import DataOptions
    from pyro_vae.data.folder import load_folder
    from pyro_vae.errors import DataError

    folder = _photo_folder(tmp_path / "photos")
    make(folder)
    with pytest.raises(DataError) as info:
        load_folder(DataOptions(data_dir=str(folder), **options))
    message = str(info.value)
    assert expect in message and "\n" not in message
    assert not (folder / ".pyro_vae_cache").exists() or not any((folder / ".pyro_vae_cache").iterdir())


def test_a_hostile_file_on_the_command_line_is_one_line(tmp_path, capsys):
    folder = _photo_folder(tmp_path / "photos")
    (folder / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    code, err = _cli(["--dataset", "folder", "--data-dir", str(folder), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.startswith("error: image ") and "decompression bomb" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_a_run_refused_after_decoding_leaves_no_cache_in_the_image_folder(tmp_path, capsys):
    folder = _photo_folder(tmp_path / "photos", n=10)
    argv = ["--dataset", "folder", "--data-dir", str(folder), "--net", "conv", "--batch-size", "4", "--epochs", "1"]
    code, err = _cli([*argv, "--patches", "64", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "`patches" not in err and "--patches 64 is larger than the 12x12 images" in err
    assert not (tmp_path / "r").exists()
    assert not (folder / ".pyro_vae_cache").exists()  # nothing left behind, not even the decoded cache
    # an accepted run writes the cache as before, and the next run reads it
    code, err = _cli([*argv, "--no-progress", "--out", str(tmp_path / "ok")], capsys)
    assert code == 0, err
    assert any((folder / ".pyro_vae_cache").iterdir())


@pytest.mark.parametrize("case", ["a file", "below a file", "read-only"])
def test_a_cache_dir_that_cannot_hold_the_cache_is_refused(tmp_path, case):
    from pyro_vae.data import DataOptions
    from pyro_vae.data.folder import load_folder
    from pyro_vae.errors import DataError

    folder = _photo_folder(tmp_path / "photos")
    (tmp_path / "afile").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cache = {"a file": tmp_path / "afile", "below a file": tmp_path / "afile" / "c", "read-only": locked / "c"}[case]
    try:
        if case == "read-only" and os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        with pytest.raises(DataError, match=r"`cache_dir=") as info:
            load_folder(DataOptions(data_dir=str(folder), cache_dir=str(cache)))
        assert "\n" not in str(info.value)
        assert not (folder / ".pyro_vae_cache").exists()
    finally:
        locked.chmod(0o700)
