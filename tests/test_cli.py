"""The command line as a user meets it: a settings file under the flags, and ``python -m pyro_vae``
running every command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae.cli import train_main

from conftest import ROOT, run_cli


def test_config_file_and_flags_over_it(idx_root, tmp_path, capsys):
    first = tmp_path / "first"
    argv = ["--data-dir", str(idx_root), "--no-download", "--batch-size", "16", "--z-dim", "3", "--epochs", "1"]
    assert train_main([*argv, "--no-progress", "--lr", "0.003", "--out", str(first)]) == 0
    # repeat the run from its own config.json, changing one setting
    again = tmp_path / "again"
    assert train_main(["--config", str(first / "config.json"), "--z-dim", "4", "--out", str(again)]) == 0
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert b["z_dim"] == 4 and b["lr"] == 0.003 and b["batch_size"] == 16 and b["progress"] is False
    assert {k: v for k, v in a.items() if k not in ("z_dim", "out")} == {
        k: v for k, v in b.items() if k not in ("z_dim", "out")
    }
    # a hand-written file
    settings = tmp_path / "s.json"
    settings.write_text(
        json.dumps(
            {"data_dir": str(idx_root), "download": False, "epochs": 1, "batch_size": 8, "z_dim": 2, "progress": False}
        )
    )
    assert train_main(["--config", str(settings), "--out", str(tmp_path / "third")]) == 0
    assert json.loads((tmp_path / "third" / "config.json").read_text())["batch_size"] == 8
    capsys.readouterr()
    for content, expect in (
        ("{", "is not JSON"),
        ("[]", "holds a JSON list"),
        ('{"zdim": 3}', "unknown settings ['zdim']"),
        ('{"z_dim": "3"}', "--z-dim must be int"),
        ('{"lr": null}', "--lr must be float"),
    ):
        settings.write_text(content)
        code = train_main(["--config", str(settings), "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expect in err and err.count("\n") == 0, err
        assert not (tmp_path / "bad").exists()
    code = train_main(["--config", str(tmp_path / "missing.json")])
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_python_dash_m_runs_each_command(idx_root, tmp_path):
    def m(*args):
        return subprocess.run([sys.executable, "-m", "pyro_vae", *args], cwd=ROOT, capture_output=True, text=True)

    run = tmp_path / "run"
    p = m(
        "train",
        "--data-dir",
        str(idx_root),
        "--no-download",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--z-dim",
        "2",
        "--no-progress",
        "--out",
        str(run),
    )
    assert p.returncode == 0, p.stderr
    p = m("evaluate", str(run), "--k", "2", "--no-progress")
    assert p.returncode == 0 and "IS K=2" in p.stdout, p.stderr
    p = m("pictures", str(run), "--out", str(tmp_path / "pictures"))
    assert p.returncode == 0 and "wrote 6 pictures" in p.stdout, p.stderr
    p = m("benchmark", "--help")
    assert p.returncode == 0 and "pyro-vae-benchmark" in p.stdout
    p = m("reproduce", "--list")
    assert p.returncode == 0 and "vae-static-mnist" in p.stdout, p.stderr
    p = m("fly")
    assert (
        p.returncode == 2
        and p.stderr.strip()
        == "error: unknown command 'fly'; choose one of train, evaluate, pictures, benchmark, reproduce"
    )


def test_resume_takes_a_time_limit_of_its_own(idx_root, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--data-dir", str(idx_root), "--no-download", "--batch-size", "16", "--z-dim", "2", "--no-progress"]
    assert train_main([*argv, "--epochs", "1", "--time-limit", "5", "--out", str(run)]) == 0
    # the continuation's own limit, counted from the resume: it stops after its first epoch, not at 50
    assert train_main(["--resume", str(run), "--epochs", "50", "--time-limit", "1e-9"]) == 0
    out = capsys.readouterr().out
    assert "time limit of 1e-09 minutes reached after epoch 2" in out
    metrics = (run / "metrics.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == ["1", "2"]
    assert json.loads((run / "config.json").read_text())["time_limit"] == 5  # the record keeps the run's own


def test_a_reader_that_leaves_stops_a_command_quietly(idx_root, tmp_path):
    """``... | head``: the reader closes the pipe; the command stops with exit 1 and nothing on stderr, not
    a BrokenPipeError traceback. The read end is closed before the command starts, so every write fails."""
    run = tmp_path / "run"
    train = [*("train", "--data-dir", str(idx_root), "--no-download", "--epochs", "1", "--batch-size", "16")]
    train += ["--z-dim", "2", "--no-progress", "--out", str(run)]
    assert subprocess.run([sys.executable, "-m", "pyro_vae", *train], cwd=ROOT, capture_output=True).returncode == 0
    helps = [[command, "--help"] for command in ("train", "evaluate", "pictures", "benchmark", "reproduce")]
    for args in (["--help"], *helps, ["reproduce", "--list"], ["evaluate", str(run), "--k", "2", "--no-progress"]):
        read, write = os.pipe()
        os.close(read)
        try:
            p = subprocess.run(
                [sys.executable, "-m", "pyro_vae", *args], cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True
            )
        finally:
            os.close(write)
        assert (p.returncode, p.stderr) == (1, ""), (args, p.stderr)


def test_no_command_is_a_usage_error_on_stderr():
    p = subprocess.run([sys.executable, "-m", "pyro_vae"], cwd=ROOT, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.startswith("usage: python -m pyro_vae {train,evaluate,pictures,benchmark,reproduce}")
    p = subprocess.run([sys.executable, "-m", "pyro_vae", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert (p.returncode, p.stderr) == (0, "") and p.stdout.startswith("usage: python -m pyro_vae")


@pytest.mark.parametrize(
    "text,message",
    [
        ("[" * 100_000, "nests too deeply to be settings"),
        ("{" + '"a": 1, ' * 200_000 + "}", "more than any settings file"),
        ("\udcff not text", "is not JSON"),
    ],
    ids=["deep", "huge", "not-utf8"],
)
def test_a_settings_file_that_cannot_be_settings_is_one_line(tmp_path, capsys, text, message):
    f = tmp_path / "settings.json"
    f.write_bytes(text.encode("utf-8", "surrogateescape"))
    code, _, err = run_cli(train_main, ["--config", str(f), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.startswith("error: --config") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_an_unreadable_settings_file_is_one_line(tmp_path, capsys, monkeypatch):
    f = tmp_path / "settings.json"
    f.write_text("{}")
    real = Path.read_text

    def refuse(self, *a, **k):
        if self == f:
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", refuse)  # root reads any file, so the refusal is made here
    code, _, err = run_cli(train_main, ["--config", str(f)], capsys)
    assert (code, err) == (2, f"error: --config {f} cannot be read (Permission denied); pass a readable file\n")


def test_a_run_whose_reader_leaves_before_its_first_checkpoint_leaves_no_folder(idx_root, tmp_path):
    """``train ... | head -c0``: the first line fails before any checkpoint; the half-made folder (config.json,
    no checkpoint) could be neither resumed nor replaced, so none is left. A folder that was there (empty)
    before stays, empty."""
    for existed in (False, True):
        run = tmp_path / f"run-{existed}"
        if existed:
            run.mkdir()
        read, write = os.pipe()
        os.close(read)
        argv = ["train", "--data-dir", str(idx_root), "--no-download", "--epochs", "1", "--batch-size", "16"]
        try:
            p = subprocess.run(
                [sys.executable, "-m", "pyro_vae", *argv, "--no-progress", "--out", str(run)],
                cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        finally:
            os.close(write)
        assert (p.returncode, p.stderr) == (1, "")
        assert run.exists() == existed and (not existed or list(run.iterdir()) == [])


def test_a_run_stopped_after_its_first_checkpoint_keeps_its_folder(tmp_path):
    from pyro_vae.runs.folder import discard_unstarted_run

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"state")
    (run / "config.json").write_text("{}")
    discard_unstarted_run(run, existed=False)
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "config.json", "last.pt"]
