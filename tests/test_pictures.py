"""`python -m pyro_vae pictures RUN`: every model family, likelihood and colour data; titles and labels on
every picture; the KL per unit against closed forms and the evaluation's own KL; bad input in one line,
with nothing written and the run folder as it was."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import pytest
import torch

from pyro_vae import cli
from pyro_vae.pictures import FILES, make_figures, unit_statistics
from pyro_vae.training import train

from conftest import run_cli, tiny_config


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder`` with its SHA-256 and modification time: a run folder 'untouched'."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# model families and likelihoods, each a tiny run on the fabricated MNIST (labels 0..9)
FAMILIES = {
    "vae-2d": dict(z_dim=2),
    "vae-mog": dict(prior="mog"),
    "vae-student-t": dict(prior="student-t"),
    "ladder": dict(model="ladder", latents=(4, 2), hidden=(24, 12)),
    "iaf": dict(guide="iaf", flows=1, flow_hidden=(16,)),
    "householder": dict(guide="householder", flows=1, flow_hidden=(16,)),
    "continuous-bernoulli": dict(likelihood="continuous-bernoulli"),
    "discretized-mixture": dict(likelihood="discretized-mixture", mixture_components=3),
    "autoregressive": dict(likelihood="autoregressive-mixture", mixture_components=2),
}


def _tiny_run(tmp_path: Path, idx_root: Path, **kw) -> Path:
    config = tiny_config(tmp_path, "run", dataset="mnist", data_dir=str(idx_root), download=False, **kw)
    return Path(train(config).run_dir)


def _colour_folder(root: Path) -> Path:
    """RGB PNGs, 12x12, in two class sub-folders."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for k, name in enumerate(("reds", "blues")):
        (root / name).mkdir(parents=True)
        for i in range(30):
            pixels = torch.randint(0, 120, (12, 12, 3), generator=g, dtype=torch.uint8)
            pixels[..., 0 if k == 0 else 2] += 120
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pictures_of_every_family_are_written_and_leave_the_run_alone(tmp_path, idx_root, capsys, family):
    run = _tiny_run(tmp_path, idx_root, **FAMILIES[family])
    before = snapshot(run)
    out = tmp_path / "pictures"
    code, stdout, err = run_cli(cli.pictures_main, [str(run), "--out", str(out), "--limit", "40"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for name in FILES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert snapshot(run) == before
    assert f"wrote 6 pictures to {out}" in stdout


def test_pictures_of_colour_images_in_class_folders(tmp_path, capsys):
    folder = _colour_folder(tmp_path / "photos")
    config = tiny_config(
        tmp_path, "run", dataset="folder", data_dir=str(folder), channels=3, net="conv", conv_channels=(8, 8),
        conv_strides=(1, 2), likelihood="discretized-logistic", cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    run = Path(train(config).run_dir)
    before = snapshot(run)
    code, _, err = run_cli(cli.pictures_main, [str(run)], capsys)  # the default: RUN-pictures beside it
    assert code == 0, err
    assert sorted(p.name for p in Path(f"{run}-pictures").iterdir()) == sorted(FILES)
    assert snapshot(run) == before


@pytest.fixture
def loaded(tmp_path, idx_root):
    from pyro_vae.runs import load_run_and_data

    return load_run_and_data(_tiny_run(tmp_path, idx_root, z_dim=5))


def test_every_picture_has_a_title_and_axis_labels(loaded):
    figures = make_figures(loaded.vae, loaded.x, loaded.labels, "run")
    assert list(figures) == list(FILES)
    for name, fig in figures.items():
        ax = fig.axes[0]
        bottom = [a for a in fig.axes if a.get_xlabel()]  # the KL figure labels its shared x-axis at the bottom
        assert ax.get_title() and ax.get_ylabel() and bottom, name


def test_the_same_seed_draws_the_same_pictures_and_leaves_the_callers_rng(loaded):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = make_figures(loaded.vae, loaded.x, loaded.labels, "run", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = make_figures(loaded.vae, loaded.x, loaded.labels, "run", seed=1)
    for name in FILES:
        ia, ib = a[name].axes[0].get_images(), b[name].axes[0].get_images()
        for pa, pb in zip(ia, ib, strict=True):
            assert (pa.get_array() == pb.get_array()).all(), name


@pytest.mark.parametrize("prior", ["normal", "laplace", "learned-normal"])
def test_kl_per_unit_is_the_closed_form_and_sums_to_the_evaluations_kl(tmp_path, idx_root, prior):
    """Each unit's KL against the closed form written out here (float64), and their sum against the
    analytic KL that the evaluation reads from Pyro's traces."""
    from pyro_vae.evaluate import elbo_terms
    from pyro_vae.runs import load_run_and_data

    run = load_run_and_data(_tiny_run(tmp_path, idx_root, z_dim=4, prior=prior))
    vae, x = run.vae, run.x
    stats = unit_statistics(vae, x)
    (layer,) = stats
    with torch.no_grad():
        loc, scale, _ = vae._encode(x)
        mu, s = loc.double(), scale.double()
        p = vae.prior().base_dist
        m, b = p.loc.double(), p.scale.double()
        if prior == "laplace":  # KL(N(mu, s) || Laplace(m, b)), written out
            d = mu - m
            e_abs = s * math.sqrt(2 / math.pi) * torch.exp(-(d**2) / (2 * s**2)) + d * torch.erf(d / (s * math.sqrt(2)))
            want = -0.5 * torch.log(2 * math.pi * math.e * s**2) + torch.log(2 * b) + e_abs / b
        else:
            want = torch.log(b / s) + (s**2 + (mu - m) ** 2) / (2 * b**2) - 0.5
    torch.testing.assert_close(layer["kl"], want.mean(0), rtol=1e-9, atol=1e-12)
    _, kl, kinds = elbo_terms(vae, x.float(), analytic_kl=True)
    assert kinds == ["z: analytic"]
    total = kl.double().mean()
    assert abs(float(layer["kl"].sum()) - float(total)) < 1e-4 * max(1.0, abs(float(total)))


def test_kl_per_unit_by_monte_carlo_where_torch_has_no_closed_form(tmp_path, idx_root):
    """A Student-t prior: the per-unit Monte-Carlo KL sums to the evaluation's Monte-Carlo KL within the
    standard error of the difference."""
    from pyro_vae.evaluate import elbo_terms
    from pyro_vae.runs import load_run_and_data

    run = load_run_and_data(_tiny_run(tmp_path, idx_root, z_dim=3, prior="student-t"))
    torch.manual_seed(0)
    (layer,) = unit_statistics(run.vae, run.x, draws=400)
    _, kl, _ = elbo_terms(run.vae, run.x.float(), analytic_kl=False, num_particles=400)
    kl = kl.double()
    se = float(kl.std() / math.sqrt(len(kl)))
    assert abs(float(layer["kl"].sum()) - float(kl.mean())) < 4 * se + 0.05


@pytest.mark.parametrize("family", ["vae-mog", "ladder", "iaf"])
def test_no_kl_per_unit_where_it_is_not_defined_and_the_reason_says_why(tmp_path, idx_root, family):
    from pyro_vae.evaluate import active_units
    from pyro_vae.runs import load_run_and_data

    run = load_run_and_data(_tiny_run(tmp_path, idx_root, **FAMILIES[family]))
    stats = unit_statistics(run.vae, run.x)
    assert all(layer["kl"] is None for layer in stats)
    assert stats[0]["why"]
    counts = active_units(run.vae, run.x)  # the evaluation's own count of active units, layer by layer
    for layer in stats:
        assert int((layer["activity"] > 0.01).sum()) == counts[layer["site"]]["active"]


def _bad_cases(run: Path, tmp_path: Path) -> list[tuple[list[str], str]]:
    afile = tmp_path / "afile"
    afile.write_text("x")
    return [
        ([str(tmp_path / "nothing")], "no run folder"),
        ([str(tmp_path)], "is not a run folder (no config.json)"),
        ([str(run), "--out", str(afile)], "is a file"),
        ([str(run), "--out", str(afile / "below")], "lies below the file"),
        ([str(run), "--limit", "0"], "--limit must be a number of images from 2"),
        ([str(run), "--limit", "1"], "--limit must be a number of images from 2"),
        ([str(run), "--limit", "1e12"], "--limit must be a number of images from 2"),
        ([str(run), "--seed", "-1"], "--seed must be an integer"),
        ([str(run), "--checkpoint", str(afile)], "afile"),
        ([str(run), "--device", "tpu"], "invalid choice"),
        ([str(run), "--limit", "many"], "invalid int value"),
    ]


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, idx_root, capsys):
    run = _tiny_run(tmp_path, idx_root)
    before = snapshot(run)
    for argv, message in _bad_cases(run, tmp_path):
        listing = sorted(os.listdir(tmp_path))
        code, _, err = run_cli(cli.pictures_main, argv, capsys)
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err
        assert sorted(os.listdir(tmp_path)) == listing, argv  # no pictures folder, no probe left
    assert snapshot(run) == before


def test_pictures_is_a_command_of_python_m_pyro_vae(tmp_path, idx_root):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "pictures", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "--out" in proc.stdout


def test_the_docs_pictures_script_redraws_them_from_a_run(tmp_path, idx_root):
    import subprocess
    import sys

    from conftest import ROOT

    run = _tiny_run(tmp_path, idx_root)
    out = tmp_path / "docs-pictures"
    script = str(ROOT / "scripts" / "make_docs_pictures.py")
    proc = subprocess.run([sys.executable, script, str(run), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["latent_plane.png", "reconstructions.png", "samples.png"]
    bad = subprocess.run([sys.executable, script, str(tmp_path / "none"), "--out", str(out / "x")], capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert not (out / "x").exists()
