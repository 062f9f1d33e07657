"""Bad input, class by class: every case is one line on stderr, exit status 2, no traceback, no
stray warnings, and nothing left behind (a refused run creates no folder; a damaged run folder is
left as it was)."""

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pyro_vae.cli import evaluate_main, train_main
from pyro_vae.errors import ConfigError, DataError

from conftest import make_idx_root

TINY = ["--epochs", "1", "--batch-size", "16", "--z-dim", "3", "--hidden", "16", "--no-progress", "--no-download"]


def call(main, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


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


# ------------------------------------------------------------------------------------------------
# class 1: sizes that cannot fit in memory, refused before allocating

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
]


@pytest.mark.parametrize("argv,expect", SIZES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_sizes_that_cannot_fit_are_refused_before_allocating(idx_root, tmp_path, capsys, argv, expect):
    refused_train([*TINY, "--data-dir", str(idx_root), *argv], capsys, tmp_path, expect)


# ------------------------------------------------------------------------------------------------
# class 2: seeds out of range

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


# ------------------------------------------------------------------------------------------------
# class 3: infinite or NaN settings

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
    (["--epochs", "inf"], "invalid int value"),
]


@pytest.mark.parametrize("argv,expect", NONFINITE, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_nonfinite_settings(idx_root, tmp_path, capsys, argv, expect):
    refused_train([*TINY, "--data-dir", str(idx_root), *argv], capsys, tmp_path, expect)


# ------------------------------------------------------------------------------------------------
# class 4: --out that cannot take a run


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


# ------------------------------------------------------------------------------------------------
# class 5: corrupt, truncated or missing dataset files


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


# ------------------------------------------------------------------------------------------------
# class 6: a damaged run folder on resume


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


# ------------------------------------------------------------------------------------------------
# class 7: evaluate's settings


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
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--elbo-particles", "-1"], "--elbo-particles must be a positive integer"),
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


@pytest.mark.parametrize("case", range(16))
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


# ------------------------------------------------------------------------------------------------
# the whole process: nothing but the one line on stderr (no import-time or teardown warnings)


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
    import subprocess
    import sys

    from conftest import ROOT

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


# ------------------------------------------------------------------------------------------------
# class 8: dataset and network options

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


# ------------------------------------------------------------------------------------------------
# class 9: benchmark settings, refused before any process starts

BENCHMARK = [
    (["--steps", "-5"], "--steps must be positive"),
    (["--repeats", "0"], "--repeats must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--limit-train", "0"], "--limit-train must be positive"),
    (["--seed", "-2"], "--seed must be an integer from 0"),
    (["--eval-k", "10000000"], "--eval-k must be at most 1,000,000"),
    (["--paths", "warp"], "invalid choice: 'warp'"),
    (["--data-dir", "NOWHERE"], "mnist not found in"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0, got -1"),
    (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
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


# ------------------------------------------------------------------------------------------------
# class 10: hierarchies

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


# ------------------------------------------------------------------------------------------------
# class 11: the Python API a notebook calls: one exception naming the problem, never a shape error
# from deep inside torch


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
            "num_particles must be a positive",
        ),
        (lambda v: elbo_terms(v, x[:0], analytic_kl=False), DataError, "no images to score"),
        (lambda v: active_units(v, x[:0]), DataError, "no images to score"),
        (lambda v: evaluate(v, x, [np.int64(0)]), ValueError, "numbers of samples must be integers >= 1"),
        (lambda v: evaluate(v, x.reshape(6, 16), [5]), DataError, "this model scores (N, 1, 4, 4)"),
        (lambda v: heldout_loss(v, Trace_ELBO(), x[:0]), DataError, "no images to score (N = 0)"),
        (lambda v: heldout_loss(v, Trace_ELBO(), x.numpy()), DataError, "must be a torch tensor"),
    ]


@pytest.mark.parametrize("case", range(17))
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
    (dict(z_dim=0), "z_dim must be a positive integer, got 0"),
    (dict(z_dim=2.5), "z_dim must be a positive integer, got 2.5"),
    (dict(hidden=(8, 0)), "hidden must be positive widths (or empty for a linear map), got [8, 0]"),
    (dict(decoder_hidden=(-1,)), "decoder_hidden must be positive widths"),
    (dict(likelihood_scale=float("nan")), "likelihood_scale must be a finite number > 0, got nan"),
    (dict(event_shape=()), "event_shape must be the shape of one data point"),
    (dict(event_shape=(1, 0, 4)), "event_shape must hold positive integers, got (1, 0, 4)"),
    (dict(prior="flow"), "unknown --prior 'flow'"),
]


@pytest.mark.parametrize("kw,expect", BUILD, ids=[str(k) for k, _ in BUILD])
def test_build_vae_refuses_impossible_sizes(kw, expect):
    from pyro_vae import build_vae

    kw = {"event_shape": (1, 4, 4), **kw}
    with pytest.raises(ConfigError) as info:
        build_vae(kw.pop("event_shape"), **kw)
    assert expect in str(info.value)
