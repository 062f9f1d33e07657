"""Time one M2 training step of this library beside Pyro's own semi-supervised VAE example
(``examples/vae/ss_vae_M2.py`` of a Pyro checkout, its model and its SVI steps as its ``main`` builds them),
on the same MNIST images, batch size and threads, as a ratio in one run:

    git clone https://github.com/pyro-ppl/pyro && python scripts/benchmark_m2.py --pyro-examples pyro/examples/vae

A step of Pyro's example on an unlabelled batch is its enumerated ``TraceEnum_ELBO`` step and its auxiliary
classifier step; a step here is the library's loop (``model=m2``) on the same unlabelled batch plus a
labelled batch with its classifier term. Both are timed over the same number of steps, interleaved,
``--repeats`` times; the median of each is reported with the ratio, per step and per unlabelled image.
Bad input is one line and exit status 2."""

from __future__ import annotations

import importlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_pyro_example(folder: str | Path):
    """Pyro's ``ss_vae_M2`` module from a checkout's ``examples/vae`` folder (visdom, for its plots only, is
    stubbed when absent)."""
    from pyro_vae.errors import ConfigError

    folder = Path(folder)
    if not (folder / "ss_vae_M2.py").is_file() or not (folder / "utils").is_dir():
        raise ConfigError(f"{folder} holds no ss_vae_M2.py with its utils/; pass a Pyro checkout's examples/vae")
    if importlib.util.find_spec("visdom") is None:
        sys.modules["visdom"] = types.SimpleNamespace(Visdom=None)  # type: ignore[assignment]
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("ss_vae_M2")
    except Exception as exc:  # its imports are Pyro's, not ours: say which failed
        raise ConfigError(f"{folder}/ss_vae_M2.py did not import ({type(exc).__name__}: {exc})") from None
    finally:
        sys.path.remove(str(folder))


def pyro_steps(module, x: torch.Tensor, steps: int, batch: int, seed: int):
    """A closure running ``steps`` of Pyro's example on unlabelled batches of ``x`` (flat grey values), with the
    published settings (hidden 500, z 50, parallel enumeration, auxiliary loss x 46, Adam 4.2e-4, beta1 0.95)."""
    import pyro
    from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
    from pyro.optim import Adam

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = module.SSVAE(
        input_size=x.shape[1], z_dim=50, hidden_layers=[500], config_enum="parallel", aux_loss_multiplier=46
    )
    optimizer = Adam({"lr": 0.00042, "betas": (0.95, 0.999)})
    guide = config_enumerate(vae.guide, "parallel", expand=True)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    losses = [SVI(vae.model, guide, optimizer, loss=elbo), SVI(vae.model_classify, vae.guide_classify, optimizer,
                                                              loss=Trace_ELBO())]  # fmt: skip

    def run() -> None:
        for i in range(steps):
            xs = x[i * batch : (i + 1) * batch]
            for loss in losses:
                loss.step(xs)

    return run


def library_steps(x_u: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor, steps: int, batch: int, seed: int):
    """A closure running ``steps`` of this library's loop (``pyro_vae.training.loop.run_epoch`` with the M2 step)."""
    import pyro

    from pyro_vae.models.m2 import build_m2
    from pyro_vae.training.labels import EnumeratedELBO, SemiSupervisedLoss
    from pyro_vae.training.loop import make_optimizer, run_epoch

    pyro.set_rng_seed(seed)
    vae = build_m2(x_u.shape[1:], classes=10, z_dim=50, hidden=(500,))
    g = torch.Generator().manual_seed(seed)
    loss = SemiSupervisedLoss(vae, x_l, y_l, batch_size=batch, train_size=len(x_u), classifier_weight=0.1,
                              generator=g, kind="unit", binary=False, seed=seed)  # fmt: skip
    optimizer = make_optimizer(vae.parameters(), 1e-3)
    batches = [x_u[i * batch : (i + 1) * batch].float() / 255 for i in range(steps)]

    def run() -> None:
        run_epoch(vae, EnumeratedELBO(), optimizer, batches, objective=loss, log_every=50)

    return run


def main(argv: list[str] | None = None) -> int:
    from pyro_vae.errors import OneLineParser, run_script

    p = OneLineParser(prog="benchmark_m2.py", description=__doc__.splitlines()[0])
    p.add_argument("--pyro-examples", required=True, help="a Pyro checkout's examples/vae folder")
    p.add_argument("--data-dir", default="./data", help="root holding MNIST/raw (default ./data)")
    p.add_argument("--batch-size", type=int, default=100, help="images per step (default 100, the example's)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per repeat (default 50)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--labels", type=int, default=100, help="labelled images of the library's step (default 100)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for both (default 1)")
    args = p.parse_args(argv)

    def go() -> None:
        from pyro_vae.data import load_data
        from pyro_vae.errors import ConfigError
        from pyro_vae.models.m2 import balanced_subset
        from pyro_vae.resources import set_threads

        for name in ("batch_size", "steps", "repeats", "labels"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
        set_threads(args.threads)
        module = load_pyro_example(args.pyro_examples)
        data = load_data("mnist", args.data_dir, download=False)
        need = args.steps * args.batch_size
        if need > len(data.train):
            raise ConfigError(f"--steps x --batch-size = {need} is more than the {len(data.train)} training images")
        x_u = data.train[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))][:need]
        flat = x_u.float().flatten(1) / 255  # the example's input: grey values, flattened
        labelled = balanced_subset(data.train_labels, args.labels, seed=0)
        runs = {
            "pyro": pyro_steps(module, flat, args.steps, args.batch_size, 0),
            "pyro_vae": library_steps(x_u, data.train[labelled], data.train_labels[labelled], args.steps,
                                      args.batch_size, 0),
        }  # fmt: skip
        for run in runs.values():  # warm-up: allocations, first-call costs
            run()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) / args.steps)
        ours, theirs = statistics.median(times["pyro_vae"]), statistics.median(times["pyro"])
        print(f"batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, {torch.get_num_threads()} "
              f"thread(s), torch {torch.__version__}")  # fmt: skip
        print(f"Pyro's ss_vae_M2.py: {1000 * theirs:.1f} ms per step ({1e6 * theirs / args.batch_size:.0f} µs per "
              f"unlabelled image)")  # fmt: skip
        print(
            f"pyro_vae (model=m2): {1000 * ours:.1f} ms per step ({1e6 * ours / args.batch_size:.0f} µs per "
            f"unlabelled image; each step also takes a labelled batch of {min(args.labels, args.batch_size)})"
        )
        print(f"ratio pyro_vae / Pyro's example: {ours / theirs:.2f}")

    return run_script(go)


if __name__ == "__main__":
    sys.exit(main())
