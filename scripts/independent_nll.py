"""Cross-check a run's −log p(x) with an independent estimator: plain torch, no Pyro traces, one image
at a time, as the papers' reference code computes it (log p(x|z) + log p(z) − log q(z|x), logsumexp over
K draws, minus log K). For one-layer runs with the standard-Normal prior and the Bernoulli likelihood.

``python scripts/independent_nll.py RUN_DIR --k 5000 --limit 300 [--checkpoint FILE]`` prints this
estimate beside ``pyro_vae.evaluate.importance_log_likelihood`` on the same images (different draws:
the two agree within their Monte-Carlo error when both are right).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyro_vae.evaluate import importance_log_likelihood
from pyro_vae.runs import load_run_and_data


def per_image_nll(vae, x: torch.Tensor, k: int, seed: int = 1) -> torch.Tensor:
    """−log p(x) per image, in float64 sums, from the run's encoder and decoder networks alone."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for xi in x:
            loc, scale = vae.encoder(xi.unsqueeze(0))  # (1, d)
            eps = torch.randn(k, loc.shape[-1], generator=g)
            z = loc + scale * eps  # (k, d)
            log_q = (-0.5 * eps**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            logits = vae.decoder(z).reshape(k, -1)
            # log Bernoulli(x | logits) = -BCE-with-logits, stable at any logit
            log_px = -F.binary_cross_entropy_with_logits(logits, xi.reshape(1, -1).expand(k, -1), reduction="none")
            w = log_px.double().sum(-1) + log_pz.double() - log_q.double()
            out.append(-(torch.logsumexp(w, 0) - math.log(k)))
    return torch.stack(out)


def main() -> int:
    from pyro_vae.errors import OneLineParser, run_script

    p = OneLineParser(prog="independent_nll.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args()
    return run_script(lambda: compare(args))


def compare(args) -> None:
    from pyro_vae.errors import ConfigError

    if args.k < 1 or args.limit < 1:
        raise ConfigError(f"--k and --limit must be positive, got {args.k} and {args.limit}")
    run = load_run_and_data(args.run_dir, checkpoint=args.checkpoint, limit=args.limit)
    if run.config.prior != "normal" or run.config.likelihood != "bernoulli" or run.config.model != "vae":
        raise ConfigError("this cross-check is for one-layer runs with --prior normal --likelihood bernoulli")
    ours = -importance_log_likelihood(run.vae, run.x, [args.k], seed=0)[args.k].double()
    theirs = per_image_nll(run.vae, run.x, args.k)
    diff = ours - theirs
    se = lambda v: v.std().item() / math.sqrt(len(v))  # noqa: E731
    print(f"{len(run.x)} images, K = {args.k}, {run.checkpoint.name} (epoch {run.state['epoch']})")
    print(f"pyro_vae (Pyro traces, batched): {ours.mean().item():.3f} ± {se(ours):.3f}")
    print(f"independent (plain torch):       {theirs.mean().item():.3f} ± {se(theirs):.3f}")
    print(f"paired difference:               {diff.mean().item():+.3f} ± {se(diff):.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
