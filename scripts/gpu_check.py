"""Everything a short GPU window should measure, in one command, planned to end within
``--budget-minutes`` (default 8): the CUDA-marked tests, the benchmark rows at batch 256 and 128, a
quality run on the time left and K = 5000 over the 10,000 test images. Three files come back in
``--out``: summary.json, summary.md (the README's tables) and gpu_check.log.

    python scripts/gpu_check.py --data-dir .gpu --out $OUT                  # on the GPU machine
    python scripts/gpu_check.py --device cpu --budget-minutes 1 --tiny      # the same plan, on the CPU

Child processes keep the caller's PYTHONPATH (pyro may be installed with ``pip --target``).
The exit status is 1 if any step failed or timed out, 2 for bad arguments.
"""

from __future__ import annotations

from pyro_vae.benchmark.check import CheckConfig, run_check
from pyro_vae.errors import OneLineParser, run_script


def main(argv: list[str] | None = None) -> int:
    d = CheckConfig()
    p = OneLineParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--budget-minutes", type=float, default=d.budget_minutes, help="wall time of the whole check")
    p.add_argument("--device", choices=("cuda", "cpu"), default=d.device, help="cpu: the dry run")
    p.add_argument("--data-dir", default=d.data_dir, help="folder holding MNIST/raw/*.gz (default %(default)s)")
    p.add_argument("--out", default=d.out, help="folder for the three result files (default %(default)s)")
    p.add_argument("--work", default=None, help="folder for run folders (default: a temporary folder)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes everywhere (the CPU dry run)")
    p.add_argument("--k", type=int, default=d.k, help="importance samples of the evaluation (default %(default)s)")
    args = p.parse_args(argv)
    status = {}
    code = run_script(lambda: status.update(code=run_check(CheckConfig(**vars(args)))))
    return code if code else status["code"]


if __name__ == "__main__":
    raise SystemExit(main())
