"""Pyro's conditional-VAE task: complete MNIST digits from 1, 2 or 3 of their quadrants, and score the
completions by −log p(y | x) of the hidden pixels (the baseline network's cross-entropy, the CVAE's −ELBO and its
importance-sampled estimate), as in Pyro's tutorial ``examples/cvae``:

    python scripts/complete_quadrants.py --data-dir data --quadrants 1 2 3 --out runs/completion

Each quadrant count writes ``completion-qN.pt`` (weights) and ``completion-qN.json`` (settings and scores) in
``--out``. Bad input is one line and exit status 2; nothing is written before the data has been read."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyro_vae.errors import OneLineParser, run_script
from pyro_vae.training.completion import CompletionConfig, train_completion


def main(argv: list[str] | None = None) -> None:
    default = CompletionConfig()
    p = OneLineParser(prog="complete_quadrants.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3], choices=(1, 2, 3),
                   help="quadrants shown, one run each (default 1 2 3)")  # fmt: skip
    p.add_argument("--data-dir", default=default.data_dir, help="root holding MNIST/raw (default ./data)")
    p.add_argument("--out", default=default.out, help=f"output folder (default {default.out})")
    p.add_argument("--epochs", type=int, default=default.epochs, help="most epochs per phase (default 101)")
    p.add_argument("--patience", type=int, default=default.patience, help="epochs without improvement (default 3)")
    p.add_argument("--k", type=int, default=default.k, help="importance samples per test image (default 100)")
    p.add_argument("--seed", type=int, default=default.seed)
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--time-limit", type=float, default=None, help="minutes per quadrant count, both phases")
    p.add_argument("--limit-train", type=int, default=None, help="smoke runs: the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="smoke runs: the first N test images")
    p.add_argument("--validation", type=int, default=default.validation, help="validation images (default 10000)")
    args = p.parse_args(argv)

    def work() -> None:
        configs = [
            CompletionConfig(
                quadrants=q,
                **{f.name: getattr(args, f.name) for f in dataclasses.fields(CompletionConfig)
                   if f.name not in ("quadrants", "log") and hasattr(args, f.name)},
            ).validate()
            for q in args.quadrants
        ]  # fmt: skip
        rows = []
        for config in configs:
            r = train_completion(config)
            rows.append((config.quadrants, r))
        print(f"\n−log p(y | x) of the hidden pixels, nats per image, {rows[0][1]['test_images']} test images:")
        print(f"| quadrants shown | baseline network | CVAE −ELBO | CVAE, K = {rows[0][1]['k']} |")
        print("|---|---|---|---|")
        for q, r in rows:
            cells = [f"{r[n]['mean']:.2f} ± {r[n]['se']:.2f}" for n in ("baseline", "elbo", "nll")]
            print(f"| {q} | " + " | ".join(cells) + " |")

    sys.exit(run_script(work))


if __name__ == "__main__":
    main()
