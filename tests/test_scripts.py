"""Every script runs end to end with tiny settings (the example-smoke list), and fails cleanly."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from pyro_vae import load_run

from conftest import ROOT

TINY = ["--epochs", "1", "--limit-train", "1000", "--limit-test", "300", "--no-progress"]

# (script, extra arguments): each runs against the real data with tiny settings
EXAMPLES = [
    ("scripts/train.py", []),
    ("scripts/train.py", ["--net", "conv", "--elbo", "analytic", "--z-dim", "8", "--dataset", "fashion-mnist"]),
    ("scripts/train.py", ["--prior", "vamp", "--likelihood", "continuous-bernoulli", "--elbo", "analytic"]),
    ("scripts/train.py", ["--prior", "mog", "--elbo", "iwae", "--particles", "3", "--kl-schedule", "linear"]),
]


def run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.real_data
@pytest.mark.parametrize("script,extra", EXAMPLES, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_example_scripts_run_and_write_every_file(data_dir, tmp_path, script, extra):
    out = tmp_path / "run"
    proc = run([script, "--data-dir", data_dir, "--out", str(out), *TINY, *extra])
    assert proc.returncode == 0, proc.stderr
    assert f"done: {out}" in proc.stdout

    config = json.loads((out / "config.json").read_text())
    assert config["device"] == "cpu" and config["out"] == str(out) and config["limit_train"] == 1000
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    if config["likelihood"] == "bernoulli":
        assert 50 < float(rows[0]["test_loss"]) < 600  # nats per 28x28 binary image
    else:  # a density on [0, 1] can be negative
        assert math.isfinite(float(rows[0]["test_loss"]))
    assert float(rows[0]["seconds"]) > 0

    recon = Image.open(out / "images" / "reconstructions_epoch0001.png")
    samples = Image.open(out / "images" / "samples_epoch0001.png")
    # originals above reconstructions: 2 rows of 8; samples: 8 x 8; each 28-px image drawn >= 96 px wide
    assert recon.size[0] >= 8 * 96 and recon.size[1] >= 2 * 96
    assert samples.size[0] >= 8 * 96 and samples.size[1] >= 8 * 96
    assert Image.open(out / "learning_curve.png").size[0] >= 400

    _, cfg, state = load_run(out)
    assert state["epoch"] == 1 and cfg.net == config["net"] and cfg.prior == config["prior"]
    assert config["objective"] in proc.stdout
    assert {"model", "optimizer", "param_store"} <= set(state)


def test_missing_data_folder_gives_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run(["scripts/train.py", "--data-dir", str(missing), "--no-download", "--out", str(tmp_path / "r")])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: mnist not found in {missing}/MNIST/raw")
    assert "--data-dir" in lines[0]
    assert not (tmp_path / "r").exists()


def test_bad_flag_value_gives_one_clear_line(tmp_path):
    proc = run(["scripts/train.py", "--z-dim", "0", "--out", str(tmp_path / "r")])
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --z-dim must be a positive integer, got 0"


def test_console_command_is_installed():
    exe = shutil.which("pyro-vae-train")
    if exe is None:
        pytest.skip("package not installed with pip (pip install -e .)")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--elbo" in proc.stdout


def test_gpu_check_refuses_bad_arguments_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "--budget-minutes" in proc.stdout
    out = tmp_path / "out"
    cases = [
        (["--budget-minutes", "0"], "--budget-minutes must be from 0.5 to 600"),
        (["--budget-minutes", "nan"], "--budget-minutes must be a number"),
        (["--device", "cpu", "--data-dir", str(tmp_path / "nowhere")], "no MNIST/raw under --data-dir"),
        (["--device", "cpu", "--k", "0", "--data-dir", str(tmp_path)], None),
    ]
    if not torch.cuda.is_available():
        cases.append(([], "torch sees no GPU; run this where CUDA is, or pass --device cpu for the dry run"))
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, "scripts/gpu_check.py", "--out", str(out), *args], capture_output=True, text=True, cwd=ROOT
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        if message:
            assert message in proc.stderr, proc.stderr
        assert not out.exists()  # a refused check leaves nothing behind


def test_gpu_check_children_keep_the_callers_pythonpath(tmp_path, monkeypatch):
    from pyro_vae.benchmark.check import Check, CheckConfig, child_env

    (tmp_path / "only_on_pythonpath.py").write_text("print('found')\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}/elsewhere")
    env = child_env("/data")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), str(tmp_path), "/elsewhere"]
    assert env["PYRO_VAE_DATA"] == "/data"
    check = Check(CheckConfig(out=str(tmp_path / "out"), work=str(tmp_path / "work"), device="cpu"))
    check.out.mkdir()
    step = check.run("probe", [sys.executable, "-c", "import only_on_pythonpath"], 60)
    assert step.status == "ok" and "found" in (check.out / "gpu_check.log").read_text()


def test_gpu_check_deadlines_never_pass_the_budget(tmp_path):
    from pyro_vae.benchmark.check import FLOORS, SHARES, Check, CheckConfig

    now = [0.0]
    check = Check(CheckConfig(budget_minutes=8, out=str(tmp_path / "o"), work=str(tmp_path)), clock=lambda: now[0])
    for name in SHARES:
        assert check.share(name) == max(SHARES[name] * 480, FLOORS[name])
    now[0] = 470.0  # ten seconds left: no step may be given more
    assert all(check.share(name) == 10.0 for name in SHARES)
    now[0] = 500.0
    assert all(check.share(name) == 0.0 for name in SHARES)
    check.out.mkdir()
    step = check.run("late", [sys.executable, "-c", "pass"], check.share("cuda_tests"))
    assert step.status == "skipped" and "no time left" in step.note


def test_gpu_check_kills_a_step_at_its_deadline(tmp_path):
    from pyro_vae.benchmark.check import Check, CheckConfig

    check = Check(CheckConfig(out=str(tmp_path / "o"), work=str(tmp_path), device="cpu"))
    check.out.mkdir()
    # the child starts a grandchild that would outlive it; the whole process group goes
    sleeper = "[sys.executable, '-c', 'import time; time.sleep(60)']"
    code = f"import subprocess, sys, time; subprocess.Popen({sleeper}); time.sleep(60)"
    step = check.run("slow", [sys.executable, "-c", code], 6)
    assert step.status == "timed out" and step.exit == 124 and step.seconds < 20
    summary = json.loads((check.out / "summary.json").read_text())
    assert summary["steps"]["slow"]["status"] == "timed out"  # written as it came


@pytest.mark.real_data
def test_gpu_check_dry_run_on_the_cpu_follows_the_whole_plan(tmp_path, data_dir):
    """The same plan as on the GPU, tiny sizes: a wrong key or a missing flag fails here first."""
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["scripts/gpu_check.py", "--device", "cpu", "--budget-minutes", "3", "--tiny"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # its benchmark rows start together: no spinning threads
    proc = run([*args, "--data-dir", data_dir, "--out", str(out), "--work", str(work)], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "summary.json", "summary.md"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["elapsed_minutes"] <= 3.2
    assert list(summary["steps"]) == summary["plan"]
    assert all(s["status"] == "ok" for s in summary["steps"].values()), summary["steps"]
    assert summary["steps"]["cuda_tests"]["results"]["skipped"] >= 8  # every CUDA test was collected
    for batch in (256, 128):
        res = summary["steps"][f"benchmark_b{batch}"]["results"]
        assert set(res["rows"]) == {"pytorch", "pyro-example", "ours-mc"}
        assert {"ours-mc/pytorch", "ours-mc/pyro-example"} <= set(res["ratios"])
        assert res["evaluation"]["k"] == 20
    train, ev = summary["steps"]["quality_train"]["results"], summary["steps"]["quality_eval"]["results"]
    assert train["epochs"] == 2 and ev["k"] == 20 and ev["images"] == 200 and ev["epoch"] == 2
    # the importance-sampled bound is at least as tight as the ELBO, up to its standard error
    assert ev["nll"] <= train["test_neg_elbo"] + 4 * ev["nll_se"]
    md = (out / "summary.md").read_text()
    for heading in ("Training step, batch 256", "Training step, batch 128", "Held-out K = 20", "Quality run"):
        assert heading in md


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--count", "0"], "error: --count must be a positive number of crops, got 0"),
        (["--size", "0"], "error: --size must be from 1 to 191 pixels (the smallest photograph's side), got 0"),
        (["--size", "192"], "error: --size must be from 1 to 191 pixels (the smallest photograph's side), got 192"),
        (["--seed", "-1"], "error: --seed must be an integer from 0 to 4294967295, got -1"),
    ],
)
def test_photo_folder_script_refuses_bad_settings_in_one_line(tmp_path, argv, message):
    proc = run(["scripts/make_photo_folder.py", str(tmp_path / "photos"), *argv])
    assert (proc.returncode, proc.stderr.strip()) == (2, message)
    assert not (tmp_path / "photos").exists()


def test_photo_folder_script_writes_crops_of_every_photograph(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "photos"
    proc = run(["scripts/make_photo_folder.py", str(out), "--count", "20", "--size", "191"])
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.rglob("*.*"))
    assert len(files) == 20 and len({f.parent.name for f in files}) == 10
    assert all(Image.open(f).size == (191, 191) for f in files)
    (tmp_path / "afile").write_text("")
    proc = run(["scripts/make_photo_folder.py", str(tmp_path / "afile")])
    assert (proc.returncode, proc.stderr.strip()) == (
        2,
        f"error: OUT {tmp_path}/afile is a file; pass a folder",
    )


def test_independent_nll_agrees_with_the_library_estimator(idx_root, tmp_path):
    """Two estimators of −log p(x) on the same trained model and images, with independent draws: the
    paired difference must sit within four of its standard errors of zero."""
    from pyro_vae.cli import train_main

    out = tmp_path / "run"
    argv = ["--data-dir", str(idx_root), "--no-download", "--epochs", "2", "--z-dim", "3", "--hidden", "32"]
    assert train_main([*argv, "--batch-size", "16", "--no-progress", "--out", str(out)]) == 0
    proc = run(["scripts/independent_nll.py", str(out), "--k", "300", "--limit", "40"])
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("paired difference"))
    diff, se = (float(v) for v in line.split(":")[1].split("±"))
    assert se > 0 and abs(diff) < 4 * se, proc.stdout


@pytest.fixture(scope="module")
def photo_tiles(tmp_path_factory):
    """64x64 tiles of scikit-image's photographs (few of them: fast), as scripts/make_photo_tiles.py cuts them."""
    pytest.importorskip("skimage")
    out = tmp_path_factory.mktemp("tiles") / "t"
    proc = run(["scripts/make_photo_tiles.py", str(out), "--size", "64", "--test-fraction", "0.05"])
    assert proc.returncode == 0, proc.stderr
    return out


def test_photo_tiles_are_the_photographs_cut_on_a_grid_with_a_fixed_split(photo_tiles, tmp_path):
    import numpy as np
    import skimage.data

    train, test = sorted((photo_tiles / "train").iterdir()), sorted((photo_tiles / "test").iterdir())
    assert len(test) > 0 and len(train) > 3 * len(test)
    assert not {f.name for f in train} & {f.name for f in test}
    # a tile holds exactly the photograph's pixels at its grid place
    name, index = test[0].stem.rsplit("-", 1)
    photo = getattr(skimage.data, name)()
    photo = (photo[0] if isinstance(photo, tuple) else photo)[..., :3]
    r, c = divmod(int(index), photo.shape[1] // 64)
    assert np.array_equal(np.asarray(Image.open(test[0])), photo[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64])
    # the same seed, the same split; every photograph is in both splits
    again = tmp_path / "again"
    assert run(["scripts/make_photo_tiles.py", str(again), "--size", "64", "--test-fraction", "0.05"]).returncode == 0
    assert sorted(f.name for f in (again / "test").iterdir()) == [f.name for f in test]
    assert {f.stem.rsplit("-", 1)[0] for f in test} == {f.stem.rsplit("-", 1)[0] for f in train}
    proc = run(["scripts/make_photo_tiles.py", str(photo_tiles)])
    assert (proc.returncode, proc.stderr.strip()) == (
        2,
        f"error: {photo_tiles} exists and is not an empty folder; pass a new folder",
    )
    proc = run(["scripts/make_photo_tiles.py", str(tmp_path / "x"), "--size", "2"])
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: --size must be from 4 to 256 pixels, got 2")
    assert not (tmp_path / "x").exists()


def test_tile_baselines_are_the_compressed_file_sizes_and_a_fitted_logistic(photo_tiles, tmp_path):
    import io

    import numpy as np

    out = tmp_path / "baselines.json"
    proc = run(["scripts/tile_baselines.py", str(photo_tiles), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    tiles = [np.asarray(Image.open(f).convert("RGB")) for f in sorted((photo_tiles / "test").iterdir())]
    webp = {"lossless": True, "quality": 100, "method": 6}
    for key, fmt, options in (("PNG", "PNG", {"optimize": True}), ("WebP", "WEBP", webp)):
        sizes = []
        for t in tiles:  # each tile on its own, headers included: bits over values
            buf = io.BytesIO()
            Image.fromarray(t).save(buf, format=fmt, **options)
            sizes.append(8 * buf.tell() / t.size)
        row = next(v for k, v in rows.items() if k.startswith(key))
        assert row["bits_per_dim"] == pytest.approx(float(np.mean(sizes)), rel=1e-12)
    no_latent = next(v for k, v in rows.items() if k.startswith("no-latent"))["bits_per_dim"]
    # a proper 8-bit model of photographs: between a perfect code and a uniform one would be 0 to 8 (a badly
    # fitted one can exceed 8); a photograph's channel spread puts one logistic at a few bits
    assert 2 < no_latent < 9


def test_tile_baselines_score_a_run_tile_by_tile_and_pair_it_with_each_codec(photo_tiles, tmp_path):
    import math

    import numpy as np

    from pyro_vae import TrainConfig, load_run_and_data, train
    from pyro_vae.evaluate.estimators import importance_log_likelihood

    config = TrainConfig(
        dataset="folder",
        data_dir=str(photo_tiles),
        net="conv",
        z_dim=2,
        likelihood="autoregressive-mixture",
        mixture_components=2,
        epochs=1,
        limit_train=40,
        batch_size=20,
        progress=False,
        out=str(tmp_path / "run"),
    )
    train(config)
    out = tmp_path / "paired.json"
    proc = run(
        ["scripts/tile_baselines.py", str(photo_tiles), "--run", str(tmp_path / "run"), "--k", "3", "--out", str(out)]
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())["rows"]
    loaded = load_run_and_data(tmp_path / "run")
    with loaded.vae.registration(False):
        log_p = importance_log_likelihood(loaded.vae, loaded.x, 3, batch_size=20)[3]
    expected = float((-log_p / (loaded.x[0].numel() * math.log(2))).mean())
    assert result["run"]["bits_per_dim"] == pytest.approx(expected, rel=1e-6)  # float32 scores, float64 mean
    for name, row in result["run"]["paired"].items():  # a paired mean difference is the difference of means
        assert row["difference"] == pytest.approx(expected - result[name]["bits_per_dim"], abs=1e-5)
        assert 0 <= row["lower_on"] <= 1 and np.isfinite(row["se"])
    # per photograph: each group's figures are the means over its own tiles, the groups cover every tile
    groups = result["run"]["groups"]
    photos = {k: g for k, g in groups.items() if k.startswith("photo ")}
    assert sum(g["n"] for g in photos.values()) == len(list((photo_tiles / "test").iterdir()))
    png = result["PNG, lossless (PIL, optimize)"]["bits_per_dim"]
    assert sum(g["n"] * g["png"] for g in photos.values()) / sum(g["n"] for g in photos.values()) == pytest.approx(png)
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    (other / "test").mkdir()
    for split in ("train", "test"):
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), i, dtype=np.uint8)).save(other / split / f"{i}.png")
    proc = run(["scripts/tile_baselines.py", str(other), "--run", str(tmp_path / "run")])
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: the run ") and "Traceback" not in proc.stderr


@pytest.mark.real_data
def test_the_plain_replica_trains_on_the_binarized_files(data_dir):
    proc = run(["scripts/plain_vae_replica.py", "--data-dir", str(data_dir), "--epochs", "2", "--limit", "300"])
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",") for line in proc.stdout.strip().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [1, 2] and float(rows[1][2]) < float(rows[0][2])


SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


def _into_a_closed_pipe(args: list[str]) -> subprocess.CompletedProcess:
    """Run with standard output into a pipe whose reader closed it before the start (``... | head -c0``)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, *args], cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=600)  # fmt: skip
    finally:
        os.close(write)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_stops_quietly_when_its_reader_leaves(script):
    # --help for those with flags; precision_report has none and prints its table
    args = [f"scripts/{script}"] + ([] if script == "precision_report.py" else ["--help"])
    proc = _into_a_closed_pipe(args)
    assert (proc.returncode, proc.stderr) == (1, ""), proc.stderr


def test_tile_baselines_into_a_closed_pipe_is_quiet(photo_tiles):
    proc = _into_a_closed_pipe(["scripts/tile_baselines.py", str(photo_tiles)])
    assert (proc.returncode, proc.stderr) == (1, ""), proc.stderr


def _one_line(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("script", ["make_photo_tiles.py", "make_photo_folder.py"])
def test_photo_scripts_refuse_an_output_they_cannot_write(tmp_path, script):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, message in ((afile / "out", "lies below the file"), (afile, "is a file"), ("/proc/pyro_vae_out", "")):
        before = sorted(tmp_path.rglob("*"))
        _one_line(run([f"scripts/{script}", str(out)]), f"error: OUT {out}")
        assert message in run([f"scripts/{script}", str(out)]).stderr
        assert sorted(tmp_path.rglob("*")) == before


@pytest.fixture
def bad_tiles(photo_tiles, tmp_path):
    """A copy of the tiles, to damage."""
    import shutil

    out = tmp_path / "tiles"
    shutil.copytree(photo_tiles, out)
    return out


def test_tile_baselines_refuse_bad_tiles_and_outputs_before_the_work(bad_tiles, tmp_path):
    from PIL import Image

    cases = []
    (tmp_path / "afolder").mkdir()
    cases.append(([str(bad_tiles), "--out", str(tmp_path / "afolder")], "--out", "is a folder"))
    cases.append(([str(bad_tiles), "--run", str(tmp_path / "afolder")], "is not a run folder", ""))
    for args, first, second in cases:
        proc = run(["scripts/tile_baselines.py", *args])
        _one_line(proc, first)
        assert second in proc.stderr and proc.stdout == ""
    odd = sorted((bad_tiles / "test").glob("*.png"))[0]
    Image.new("RGB", (20, 30)).save(odd)
    _one_line(run(["scripts/tile_baselines.py", str(bad_tiles)]), f"error: {odd} is 20x30")
    odd.write_bytes(b"not a png at all")
    _one_line(run(["scripts/tile_baselines.py", str(bad_tiles)]), f"error: {odd} is not a readable image")


def test_gpu_check_refuses_outputs_under_a_file_and_leaves_nothing(tmp_path):
    import glob
    import tempfile

    afile = tmp_path / "afile"
    afile.write_text("x")
    data = tmp_path / "data" / "MNIST" / "raw"
    data.mkdir(parents=True)
    temps = set(glob.glob(os.path.join(tempfile.gettempdir(), "gpu_check_*")))
    for flag in ("--out", "--work"):
        args = ["scripts/gpu_check.py", "--device", "cpu", "--data-dir", str(tmp_path / "data"), flag, str(afile / "x")]
        _one_line(run(args), f"error: {flag} {afile / 'x'} lies below the file")
    _one_line(run(["scripts/gpu_check.py", "--device", "tpu"]), "invalid choice: 'tpu'")
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "gpu_check_*"))) == temps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "data"]


FAKE_SS_VAE = '''
import pyro
import pyro.distributions as dist
import torch
from torch import nn


class SSVAE(nn.Module):
    """The interface of Pyro's examples/vae/ss_vae_M2.py SSVAE, with one linear layer per network."""

    def __init__(self, output_size=10, input_size=784, z_dim=50, hidden_layers=(500,), config_enum=None,
                 use_cuda=False, aux_loss_multiplier=None):
        super().__init__()
        self.z_dim, self.aux = z_dim, aux_loss_multiplier
        self.classify = nn.Linear(input_size, output_size)
        self.encode = nn.Linear(input_size + output_size, 2 * z_dim)
        self.decode = nn.Linear(z_dim + output_size, input_size)

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(len(xs), self.z_dim), 1.0).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(xs.new_ones(len(xs), 10) / 10), obs=ys)
            logits = self.decode(torch.cat([zs, ys.expand(*zs.shape[:-1], 10)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.classify(xs)))
            h = self.encode(torch.cat([xs.expand(*ys.shape[:-1], xs.shape[-1]), ys], -1))
            pyro.sample("z", dist.Normal(h[..., : self.z_dim], h[..., self.z_dim :].exp()).to_event(1))

    def model_classify(self, xs, ys=None):
        pass

    def guide_classify(self, xs, ys=None):
        pass
'''


def test_benchmark_m2_times_both_and_refuses_a_wrong_folder(tmp_path):
    from conftest import make_idx_root

    root = make_idx_root(tmp_path / "data", n_train=120)
    folder = tmp_path / "examples" / "vae"
    (folder / "utils").mkdir(parents=True)
    (folder / "ss_vae_M2.py").write_text(FAKE_SS_VAE)
    argv = ["scripts/benchmark_m2.py", "--pyro-examples", str(folder), "--data-dir", str(root), "--steps", "2",
            "--batch-size", "20", "--repeats", "1", "--labels", "20"]  # fmt: skip
    proc = run(argv)
    assert proc.returncode == 0, proc.stderr
    assert "ratio pyro_vae / Pyro's example:" in proc.stdout
    proc = run([*argv[:2], str(tmp_path), *argv[3:]])
    assert proc.returncode == 2 and "holds no ss_vae_M2.py" in proc.stderr and "Traceback" not in proc.stderr
    proc = run([*argv, "--steps", "100"])
    assert proc.returncode == 2 and "more than the 120 training images" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--photos", "camera", "astronaut"], "error: the set mixes grayscale (camera) and colour images"),
        (["--photos", "nothing_here"], "error: skimage.data has no image 'nothing_here'"),
        (["--photos", "horse"], "error: an image of dtype bool is not an 8-bit photograph"),
        (["--photos", "text", "--size", "256"], "error: text (448x172) has under 2 tiles of 256x256"),
        (["--set", "sky"], "error: argument --set: invalid choice: 'sky'"),
    ],
)
def test_photo_sets_refuse_what_cannot_be_one_folder_of_tiles(tmp_path, argv, message):
    pytest.importorskip("skimage")
    proc = run(["scripts/make_photo_tiles.py", str(tmp_path / "x"), *argv])
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "x").exists()


def test_a_grayscale_set_is_one_channel_and_its_codecs_see_one_channel(tmp_path):
    pytest.importorskip("skimage")
    import io

    import numpy as np
    import skimage.data

    out = tmp_path / "gray"
    proc = run(["scripts/make_photo_tiles.py", str(out), "--photos", "text", "clock", "--size", "64"])
    assert proc.returncode == 0, proc.stderr
    tile = sorted((out / "train").iterdir())[0]
    assert Image.open(tile).mode == "L"
    name, index = tile.stem.rsplit("-", 1)
    photo = getattr(skimage.data, name)()
    r, c = divmod(int(index), photo.shape[1] // 64)
    assert np.array_equal(np.asarray(Image.open(tile)), photo[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64])
    result = tmp_path / "b.json"
    proc = run(["scripts/tile_baselines.py", str(out), "--out", str(result)])
    assert proc.returncode == 0 and "x64x1 from" in proc.stdout, proc.stderr
    sizes = []
    for f in sorted((out / "test").iterdir()):
        buf = io.BytesIO()
        Image.open(f).save(buf, format="PNG", optimize=True)
        sizes.append(8 * buf.tell() / (64 * 64))  # one value per pixel
    rows = json.loads(result.read_text())["rows"]
    assert rows["PNG, lossless (PIL, optimize)"]["bits_per_dim"] == pytest.approx(float(np.mean(sizes)), rel=1e-12)


def test_the_logo_is_composited_over_white():
    pytest.importorskip("skimage")
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("make_photo_tiles", ROOT / "scripts" / "make_photo_tiles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 0, 255)  # opaque: itself
    rgba[0, 1] = (200, 100, 0, 0)  # transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half: half-way to white
    out = module._as_bytes(rgba)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 100, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 0].tolist() == [127, 127, 127]


def test_tile_baselines_pair_identical_tiles_each_with_its_own_score(tmp_path):
    """Flat regions give identical tiles (all black): each test tile is still scored once, in its place."""
    import numpy as np

    from pyro_vae import TrainConfig, train

    tiles = tmp_path / "tiles"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        (tiles / split).mkdir(parents=True)
        for i in range(n):
            t = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) if i % 2 else np.zeros((8, 8, 3), dtype=np.uint8)
            Image.fromarray(t).save(tiles / split / f"p-{i:04d}.png")
    config = TrainConfig(
        dataset="folder", data_dir=str(tiles), net="conv", z_dim=2, likelihood="autoregressive-mixture",
        mixture_components=2, epochs=1, batch_size=4, progress=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    train(config)
    out = tmp_path / "paired.json"
    proc = run(["scripts/tile_baselines.py", str(tiles), "--run", str(tmp_path / "run"), "--k", "2", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    groups = json.loads(out.read_text())["rows"]["run"]["groups"]
    assert groups["photo p"]["n"] == 4 and groups["flat tiles (spread < 2)"]["n"] == 2


def test_a_validation_split_of_tiles_leaves_the_test_split_as_it_was(photo_tiles, tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "v"
    argv = ["scripts/make_photo_tiles.py", str(out), "--size", "64", "--test-fraction", "0.05"]
    proc = run([*argv, "--valid-fraction", "0.1"])
    assert proc.returncode == 0, proc.stderr
    names = {split: {f.name for f in (out / split).iterdir()} for split in ("train", "valid", "test")}
    assert names["test"] == {f.name for f in (photo_tiles / "test").iterdir()}  # as without a validation split
    assert names["valid"] and not names["valid"] & names["train"] and not names["valid"] & names["test"]
    assert names["train"] | names["valid"] == {f.name for f in (photo_tiles / "train").iterdir()}
    proc = run([argv[0], str(tmp_path / "w"), "--valid-fraction", "0.95"])
    assert proc.returncode == 2 and "--valid-fraction must be from 0" in proc.stderr and not (tmp_path / "w").exists()
