"""Score a VAE trained by pythae (its reproduction of the static-MNIST VAE: one hidden layer, Gaussian
q(z|x) with a log-variance head, Bernoulli decoder with a sigmoid) with this library's evaluator, on the
test images of the fixed binarization:

    python scripts/score_pythae.py PYTHAE_MODEL_FOLDER --data-dir data --k 200 5000

``PYTHAE_MODEL_FOLDER`` holds pythae's ``model.pt`` (and ``model_config.json``), e.g. the ``final_model``
folder of its training. The weights go unchanged into :func:`pyro_vae.build_vae`'s networks; the posterior
scale is pythae's exp(log_var / 2) and the decoder's pre-sigmoid output is the Bernoulli logits. Bad input is
one line and exit status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pythae's names -> this library's, for the one-hidden-layer MLP pair
WEIGHTS = {
    "encoder.layers.0.0": "encoder.body.1",
    "encoder.embedding": "encoder.head.loc",
    "encoder.log_var": "encoder.head.log_var",
    "decoder.layers.0.0": "decoder.body.0",
    "decoder.layers.1.0": "decoder.body.2",
}


class LogVarianceHead(nn.Module):
    """pythae's Gaussian head: ``loc`` and ``log_var`` linear maps; the scale is exp(log_var / 2)."""

    def __init__(self, features: int, z_dim: int) -> None:
        super().__init__()
        self.loc = nn.Linear(features, z_dim)
        self.log_var = nn.Linear(features, z_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), torch.exp(0.5 * self.log_var(h))


def from_pythae(folder: str | Path):
    """The VAE of a pythae model folder, as a :class:`pyro_vae.VAE` in eval mode."""
    from pyro_vae import build_vae
    from pyro_vae.errors import ConfigError

    folder = Path(folder)
    path = folder / "model.pt"
    if not path.is_file():
        raise ConfigError(f"{path} not found; pass a pythae model folder (its final_model/, holding model.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is one line
        raise ConfigError(
            f"{path} is not a readable torch file ({exc.__class__.__name__}); pass pythae's model.pt"
        ) from None
    state = state.get("model_state_dict", state) if isinstance(state, dict) else state
    want = {f"{a}.{p}" for a in WEIGHTS for p in ("weight", "bias")}
    if not isinstance(state, dict) or set(state) != want:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ConfigError(
            f"{path} is not pythae's one-hidden-layer MLP VAE (weights {got}); this script scores that one"
        )
    hidden, inputs = state["encoder.layers.0.0.weight"].shape
    z_dim = state["encoder.embedding.weight"].shape[0]
    if inputs != 784:
        raise ConfigError(f"{path} models {inputs} inputs; the static-MNIST test images have 784")
    vae = build_vae((1, 28, 28), z_dim=z_dim, hidden=(hidden,))
    vae.encoder.head = LogVarianceHead(hidden, z_dim)
    ours = {f"{WEIGHTS[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v.float() for k, v in state.items()}
    vae.load_state_dict(ours, strict=False)
    missing = {k for k in vae.state_dict() if k.startswith(("encoder.", "decoder.")) and k not in ours}
    if missing:
        raise ConfigError(f"{path}: no pythae weights for {sorted(missing)}")
    config = folder / "model_config.json"
    if config.is_file() and json.loads(config.read_text()).get("reconstruction_loss", "bce") != "bce":
        raise ConfigError(f"{config}: the model's reconstruction loss is not bce; this script scores Bernoulli VAEs")
    return vae.eval()


def main(argv: list[str] | None = None) -> int:
    from pyro_vae.errors import OneLineParser, run_script

    p = OneLineParser(prog="score_pythae.py", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="pythae's model folder (final_model/, with model.pt)")
    p.add_argument("--data-dir", default="./data", help="root holding binarized_mnist/ (default ./data)")
    p.add_argument("--k", type=int, nargs="+", default=[5000], help="importance samples (default 5000)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    args = p.parse_args(argv)

    def go() -> None:
        from pyro_vae.data import load_data
        from pyro_vae.evaluate import evaluate, format_table
        from pyro_vae.resources import set_threads

        set_threads(args.threads)
        vae = from_pythae(args.folder)
        data = load_data("binarized-mnist", args.data_dir, download=False, limit_test=args.limit)
        result = evaluate(vae, data.test, args.k, seed=args.seed, batch_size=100)
        print(f"{args.folder}  pythae's weights, this library's evaluator, {len(data.test)} test images")
        print(format_table(result))

    return run_script(go)


if __name__ == "__main__":
    sys.exit(main())
