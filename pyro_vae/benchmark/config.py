"""The benchmark's settings and its rows: what each timed path is. Its own module, so the baselines and the
runner both read it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from pyro_vae.errors import ConfigError

PATHS = ("pyro-example", "conventional", "pyro-svi", "pytorch", "ours-mc", "ours-analytic")
# the rows each of ours is compared with
REFERENCES = ("pyro-example", "conventional", "pyro-svi", "pytorch")
# what each path is, for the table
PATH_NOTES = {
    "pyro-example": "Pyro's examples/vae/vae.py loop: cached-tensor DataLoader(shuffle) -> SVI.step, pyro.optim.Adam",
    "conventional": "Pyro tutorial loop: DataLoader(ToTensor, shuffle) -> .to(device) -> SVI.step, Trace_ELBO",
    "pyro-svi": "Pyro's own loop on our pieces: resident data -> SVI(vae.model, vae.guide, pyro.optim.Adam).step",
    "pytorch": "plain PyTorch: resident data, closed-form KL, the same Adam as ours (fused on the CPU), no Pyro",
    "ours-mc": "pyro_vae training path, Trace_ELBO",
    "ours-analytic": "pyro_vae training path, TraceMeanField_ELBO",
    "ours-mc-compile": "pyro_vae training path, Trace_ELBO, torch.compile networks",
    "ours-mc-bf16": "pyro_vae training path, Trace_ELBO, bf16 autocast (CUDA)",
    "ours-mc-graphs": "pyro_vae training path, Trace_ELBO, whole step as a CUDA graph (`cuda_graphs`)",
    "ours-analytic-graphs": "pyro_vae training path, TraceMeanField_ELBO, whole step as a CUDA graph",
    "ours-mc-iaf": "pyro_vae training path, Trace_ELBO, IAF guide (2 steps, hidden 256)",
    "ours-mc-householder": "pyro_vae training path, Trace_ELBO, Householder-flow guide (2 reflections)",
}
# the guide each row trains with: a flow row's step time over ours-mc's is the flow's cost
ROW_GUIDES = {"ours-mc-iaf": "iaf", "ours-mc-householder": "householder"}


@dataclass
class BenchmarkConfig:
    """Settings of one benchmark run; every path gets the same ones."""

    data_dir: str = "./data"  # torchvision layout, as for training
    device: str = "auto"
    batch_size: int = 128
    steps: int | None = None  # steps per timed repeat; None: one epoch of the training set
    warmup_steps: int = 10  # untimed steps first: allocator, caches, lazy initialisation
    repeats: int = 3  # timed repeats per path; the table shows the median
    limit_train: int | None = None  # first N training images only (smoke runs)
    limit_test: int | None = None  # first N test images for the quality check (smoke runs)
    num_workers: int = 1  # DataLoader workers of the conventional loop, as in Pyro's tutorial
    paths: tuple[str, ...] = PATHS  # which rows; also ours-mc-compile, ours-mc-bf16, ours-mc-iaf, ...
    eval_k: int = 5000  # importance samples per image in the evaluation timing
    eval_images: int = 200  # test images scored by the batched estimator
    eval_loop_images: int = 20  # test images scored by the per-image loop
    seed: int = 0
    # competing single-thread processes kept busy for the whole run: a machine shared with other jobs
    load: int = 0
    # torch's intra-op threads in every row and the evaluation; None: torch's default (every core)
    threads: int | None = None

    def validate(self) -> BenchmarkConfig:
        """Raise :class:`ConfigError` naming the first impossible setting; return ``self``."""
        from pyro_vae.config import check_seed
        from pyro_vae.evaluate import MAX_K
        from pyro_vae.resources import check_count

        at_least_zero = ("warmup_steps", "num_workers")
        for name in (*at_least_zero, "batch_size", "repeats", "eval_k", "eval_images", "eval_loop_images"):
            value = getattr(self, name)
            if value < (0 if name in at_least_zero else 1):
                raise ConfigError(f"`{name}` must be {'>= 0' if name in at_least_zero else 'positive'}, got {value}")
        if self.load < 0:
            raise ConfigError(f"`load` must be >= 0, got {self.load}")
        for name in ("steps", "limit_train", "limit_test", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"`{name}` must be positive, got {value}")
        check_count("threads", self.threads)
        check_count("load", self.load, "competing processes")
        check_count("num_workers", self.num_workers, "DataLoader worker processes")
        if self.eval_k > MAX_K:
            raise ConfigError(f"`eval_k` must be at most {MAX_K:,}, got {self.eval_k}")
        twice = sorted({p for p in self.paths if list(self.paths).count(p) > 1})
        if twice:
            raise ConfigError(f"`paths` names {', '.join(twice)} more than once; name each row once")
        unknown = [p for p in self.paths if p not in PATH_NOTES]
        if unknown:
            raise ConfigError(f"unknown benchmark paths {unknown}; choose from {', '.join(PATH_NOTES)}")
        check_seed("`seed`", self.seed)
        return self
