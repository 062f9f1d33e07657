"""scripts/score_pythae.py: pythae's weights go unchanged into this library's networks (checked against the
networks written out by hand), the script scores them end to end, and a folder it cannot read is one line."""

from __future__ import annotations

import importlib.util

import torch

from conftest import ROOT, run_cli, write_amat

spec = importlib.util.spec_from_file_location("score_pythae", ROOT / "scripts" / "score_pythae.py")
score_pythae = importlib.util.module_from_spec(spec)
spec.loader.exec_module(score_pythae)


def pythae_folder(tmp_path, hidden: int = 12, z_dim: int = 3):
    g = torch.Generator().manual_seed(0)

    def lin(o, i):
        return torch.randn(o, i, generator=g) / i**0.5, 0.1 * torch.randn(o, generator=g)

    weights = {}
    for name, (o, i) in {
        "encoder.layers.0.0": (hidden, 784),
        "encoder.embedding": (z_dim, hidden),
        "encoder.log_var": (z_dim, hidden),
        "decoder.layers.0.0": (hidden, z_dim),
        "decoder.layers.1.0": (784, hidden),
    }.items():
        weights[f"{name}.weight"], weights[f"{name}.bias"] = lin(o, i)
    folder = tmp_path / "final_model"
    folder.mkdir()
    torch.save({"model_state_dict": weights}, folder / "model.pt")
    (folder / "model_config.json").write_text('{"latent_dim": 3, "reconstruction_loss": "bce"}')
    return folder, weights


def test_weights_map_onto_the_networks_written_out_by_hand(tmp_path):
    folder, w = pythae_folder(tmp_path)
    vae = score_pythae.from_pythae(folder)
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    h = torch.relu(x.flatten(1) @ w["encoder.layers.0.0.weight"].T + w["encoder.layers.0.0.bias"])
    mu = h @ w["encoder.embedding.weight"].T + w["encoder.embedding.bias"]
    log_var = h @ w["encoder.log_var.weight"].T + w["encoder.log_var.bias"]
    loc, scale = vae.encoder(x)
    torch.testing.assert_close(loc, mu)
    torch.testing.assert_close(scale, torch.exp(0.5 * log_var))
    z = torch.randn(5, 3)
    hd = torch.relu(z @ w["decoder.layers.0.0.weight"].T + w["decoder.layers.0.0.bias"])
    recon = torch.sigmoid(hd @ w["decoder.layers.1.0.weight"].T + w["decoder.layers.1.0.bias"])  # pythae's output
    torch.testing.assert_close(torch.sigmoid(vae.decoder(z)).flatten(1), recon)


def test_script_scores_end_to_end_and_refuses_in_one_line(tmp_path, capsys):
    folder, _ = pythae_folder(tmp_path)
    write_amat(tmp_path / "data", 12)
    argv = [str(folder), "--data-dir", str(tmp_path / "data"), "--k", "1", "20", "--limit", "8", "--threads", "1"]
    code, out, err = run_cli(score_pythae.main, argv, capsys)
    assert code == 0, err
    assert "-log p(x), IS K=20" in out and "8 test images" in out
    (folder / "model.pt").write_bytes(b"not a torch file")
    code, out, err = run_cli(score_pythae.main, argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a readable torch file" in err, err
    code, out, err = run_cli(score_pythae.main, [str(tmp_path / "nowhere"), *argv[1:]], capsys)
    assert code == 2 and "model.pt not found" in err, err
    torch.save({"model_state_dict": {"encoder.w": torch.zeros(1)}}, folder / "model.pt")
    code, out, err = run_cli(score_pythae.main, argv, capsys)
    assert code == 2 and "not pythae's one-hidden-layer MLP VAE" in err, err
