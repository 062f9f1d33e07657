"""Every notebook runs top to bottom in smoke mode, and is committed without outputs."""

from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    expected = {"heldout_elbo", "mc_vs_analytic_kl", "latent_space", "swap_prior_likelihood"}
    assert {f"{n}.ipynb" for n in expected} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"strip outputs from {path.name}"


@pytest.mark.real_data
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_in_smoke_mode(path: Path, data_dir: str, monkeypatch, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYRO_VAE_SMOKE", "1")
    monkeypatch.setenv("PYRO_VAE_DATA", str(Path(data_dir).resolve()))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' run folders land here
    monkeypatch.delenv("PYRO_VAE_RUN", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize(
    "model,likelihood",
    [("vae", "continuous-bernoulli"), ("ladder", "continuous-bernoulli"), ("vae", "autoregressive-mixture")],
)
@pytest.mark.parametrize("name", ["heldout_elbo.ipynb", "latent_space.ipynb"])
def test_notebooks_load_a_colour_folder_run(name, model, likelihood, monkeypatch, tmp_path):
    """Any dataset and likelihood: a run on a folder of RGB images, loaded by PYRO_VAE_RUN instead of
    training."""
    nbclient = pytest.importorskip("nbclient")
    import numpy as np
    from PIL import Image

    from pyro_vae import TrainConfig, train

    rng = np.random.default_rng(0)
    for i in range(40):
        folder = tmp_path / "imgs" / ("red" if i % 2 else "blue")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = TrainConfig(
        dataset="folder",
        data_dir=str(tmp_path / "imgs"),
        test_fraction=0.25,
        model=model,
        **(dict(net="conv", z_dim=2) if model == "vae" else dict(net="mlp", latents=(4, 2), hidden=(32, 16))),
        likelihood=likelihood,
        mixture_components=2 if likelihood == "autoregressive-mixture" else 10,
        epochs=1,
        batch_size=10,
        progress=False,
        out=str(tmp_path / "run"),
    )
    run = train(config).run_dir
    monkeypatch.setenv("PYRO_VAE_SMOKE", "1")
    monkeypatch.setenv("PYRO_VAE_RUN", str(run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = ROOT / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "10 test images" in text or "-log p(x), IS K=25" in text
