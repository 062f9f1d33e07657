"""Pyro's own SVI loop trains every parameter; user-written parts go through train, checkpoint,
resume and evaluation; a run records its data and refuses other data; settings files and the
resume flags mean what they say."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_vae import TrainConfig, build_vae, load_run, resume, train
from pyro_vae.cli import evaluate_main, train_main
from pyro_vae.data import ImageData, prepare
from pyro_vae.errors import DataError, PyroVAEError
from pyro_vae.evaluate import evaluate
from pyro_vae.runs import RunError, load_run_and_data
from pyro_vae.training import heldout_loss

from conftest import ROOT, make_idx_root, make_tiny_data


def cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, z_dim=3, hidden=(24,), progress=False, log_every=2, out=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------
# Pyro's way: SVI(vae.model, vae.guide, pyro.optim.Adam, Trace_ELBO()).step(x)


@pytest.mark.parametrize(
    "prior,likelihood,elbo",
    [
        ("learned-normal", "normal-pixel", Trace_ELBO),
        ("mog", "normal-image", Trace_ELBO),
        ("vamp", "discretized-logistic", Trace_ELBO),
        ("learned-normal", "bernoulli", TraceMeanField_ELBO),
    ],
)
def test_plain_pyro_svi_trains_every_parameter(prior, likelihood, elbo):
    data = make_tiny_data()
    vae = build_vae((1, 8, 8), z_dim=3, hidden=(32,), prior=prior, likelihood=likelihood)
    kind = vae.data_kind
    x = prepare(data.train, kind, torch.Generator().manual_seed(0))
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    held = prepare(data.train[:40], kind, torch.Generator().manual_seed(1))
    loss0 = heldout_loss(vae, Trace_ELBO(), held)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo())
    for step in range(60):
        svi.step(x[(step * 16) % 96 : (step * 16) % 96 + 16])
    # every parameter of the VAE is in Pyro's param store, as the very tensor the module holds
    store = pyro.get_param_store()
    registered = {id(store[name]) for name in store.keys()}
    assert {id(p) for p in vae.parameters()} <= registered
    moved = [k for k, v in vae.named_parameters() if not torch.equal(before[k], v)]
    assert sorted(moved) == sorted(before), f"not trained: {sorted(set(before) - set(moved))}"
    assert heldout_loss(vae, Trace_ELBO(), held) < loss0 - 1.0


def test_a_second_vae_in_the_same_param_store_trains_too():
    # the param store still holds the first VAE's tensors under the same names (no clear in between)
    data = make_tiny_data()
    x = prepare(data.train, "binary", torch.Generator().manual_seed(0))
    for _ in range(2):
        vae = build_vae((1, 8, 8), z_dim=3, hidden=(16,), prior="learned-normal")
        before = {k: v.detach().clone() for k, v in vae.named_parameters()}
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(5):
            svi.step(x[:32])
        assert all(not torch.equal(before[k], v) for k, v in vae.named_parameters())


def test_library_loop_leaves_the_param_store_alone_and_svi_registration_back_on(tmp_path):
    result = train(cfg(tmp_path, epochs=1), data=make_tiny_data())
    assert result.vae.register_params is True
    assert len(list(pyro.get_param_store().keys())) == 0


# ------------------------------------------------------------------------------------------------
# user-written parts


class LogisticPrior(nn.Module):
    """A few lines of torch/Pyro: independent logistic coordinates with a learned scale."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self):
        base = dist.Uniform(torch.zeros_like(self.log_scale), torch.ones_like(self.log_scale))
        transforms = [
            dist.transforms.SigmoidTransform().inv,
            dist.transforms.AffineTransform(0.0, self.log_scale.exp()),
        ]
        return dist.TransformedDistribution(base, transforms).to_event(1)


class TinyEncoder(nn.Module):
    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2 * z_dim))

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3


def test_custom_prior_trains_checkpoints_resumes_and_evaluates(tmp_path):
    data = make_tiny_data()
    pyro.set_rng_seed(0)  # the modules are built here, before train seeds: same seed, same start
    vae = build_vae((1, 8, 8), z_dim=3, hidden=(24,), prior=LogisticPrior(3))
    result = train(cfg(tmp_path), data=data, vae=vae)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["prior"] == "custom"
    assert saved["custom"] == {"prior": f"{__name__}.LogisticPrior"}
    assert not torch.equal(result.vae.prior.log_scale, torch.zeros(3))

    with pytest.raises(RunError) as info:
        load_run(result.run_dir)
    assert str(info.value) == (
        f"{result.run_dir} was trained with custom prior ({__name__}.LogisticPrior), which a run folder cannot "
        f"rebuild; pass the same module(s) back in: load_run({result.run_dir}, prior=<your {__name__}.LogisticPrior>)"
    )
    loaded, _, _ = load_run(result.run_dir, prior=LogisticPrior(3))
    assert torch.equal(loaded.prior.log_scale, result.vae.prior.log_scale)

    # resuming goes on exactly as one uninterrupted 3-epoch run
    pyro.set_rng_seed(0)
    straight = train(
        cfg(tmp_path, "straight", epochs=3),
        data=data,
        vae=build_vae((1, 8, 8), z_dim=3, hidden=(24,), prior=LogisticPrior(3)),
    )
    with pytest.raises(RunError):
        resume(result.run_dir, epochs=3, data=data)
    resumed = resume(result.run_dir, epochs=3, data=data, prior=LogisticPrior(3))
    assert [m["test_loss"] for m in resumed.metrics] == [m["test_loss"] for m in straight.metrics]

    run = load_run_and_data(result.run_dir, data=data, prior=LogisticPrior(3))
    out = evaluate(run.vae, run.x, (1, 10))
    assert out["elbo"]["analytic"]["kl_kind"] == ["z: Monte-Carlo (no closed form)"]
    assert out["nll"]["10"]["mean"] <= out["nll"]["1"]["mean"] + 3 * out["nll"]["1"]["se"]


def test_custom_encoder_and_likelihood_go_through(tmp_path):
    class GaussianLikelihood(nn.Module):
        data_kind = "unit"

        def __init__(self) -> None:
            super().__init__()
            self.log_scale = nn.Parameter(torch.tensor(-1.0))

        def forward(self, out, event_dim):
            return dist.Normal(torch.sigmoid(out), self.log_scale.exp()).to_event(event_dim)

    data = make_tiny_data()
    data = ImageData("tiny", data.train, data.train_labels, data.test.clone() * 0 + 0.25, data.test_labels, "unit")
    enc = TinyEncoder(3)
    _, dec = pyro_vae_networks()
    vae = build_vae((1, 8, 8), net=(enc, dec), z_dim=3, likelihood=GaussianLikelihood())
    result = train(cfg(tmp_path), data=data, vae=vae)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert set(saved["custom"]) == {"encoder", "likelihood"} and saved["net"] == "mlp"
    with pytest.raises(RunError, match="custom encoder, likelihood"):
        load_run(result.run_dir)
    loaded, _, _ = load_run(result.run_dir, encoder=TinyEncoder(3), likelihood=GaussianLikelihood())
    assert torch.equal(loaded.likelihood.log_scale, result.vae.likelihood.log_scale)
    assert loaded.reconstruct(data.test[:2]).shape == (2, 1, 8, 8)


def pyro_vae_networks():
    from pyro_vae.nets import build_networks

    return build_networks("mlp", (1, 8, 8), 3, (24,))


def test_evaluate_command_asks_for_the_custom_part(tmp_path, capsys):
    data = make_tiny_data()
    vae = build_vae((1, 8, 8), z_dim=3, hidden=(24,), prior=LogisticPrior(3))
    run = train(cfg(tmp_path), data=data, vae=vae).run_dir
    code = evaluate_main([str(run), "--k", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "custom prior" in err and "prior=<your" in err


# ------------------------------------------------------------------------------------------------
# a run records its data and refuses other data


def test_run_records_the_data_and_refuses_other_data(tmp_path):
    data = make_tiny_data()
    run = train(cfg(tmp_path), data=data).run_dir
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
        c = cfg(
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


# ------------------------------------------------------------------------------------------------
# flags: --resume with --epochs, --config, python -m pyro_vae


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
    p = m("benchmark", "--help")
    assert p.returncode == 0 and "pyro-vae-benchmark" in p.stdout
    p = m("reproduce", "--list")
    assert p.returncode == 0 and "vae-static-mnist" in p.stdout, p.stderr
    p = m("fly")
    assert (
        p.returncode == 2
        and p.stderr.strip() == "error: unknown command 'fly'; choose one of train, evaluate, benchmark, reproduce"
    )


def test_checkpoint_from_another_run_is_refused(tmp_path):
    data = make_tiny_data()
    a = train(cfg(tmp_path, "a"), data=data).run_dir
    b = train(cfg(tmp_path, "b", z_dim=4), data=data).run_dir
    c = train(replace(cfg(tmp_path, "c")), data=make_tiny_data(seed=9)).run_dir
    for other, why in ((b, "z_dim=4"), (c, "other data")):
        with pytest.raises(PyroVAEError) as info:
            load_run_and_data(a, data=data, checkpoint=Path(other) / "checkpoints" / "last.pt")
        assert "is not a checkpoint of" in str(info.value) and why in str(info.value)
