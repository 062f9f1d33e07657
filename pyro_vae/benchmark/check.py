"""The GPU check: everything a short GPU window should measure, planned to end within a wall-clock
budget, with every result written as it comes.

The machine this project is lent runs one command for 10 minutes at most and gives 15 minutes of GPU
time in all, the start included; it has its own Python (no pyro-ppl: the wheels travel on
``PYTHONPATH``), and only a few files come back. So the check

- plans its steps by value, each with a deadline inside ``budget_minutes``: the CUDA-marked tests, the
  benchmark rows at batch 256 then 128, a quality run on the time left, and K = 5000 over the 10,000
  test images (the last two sized so that the evaluation fits);
- runs every step as a child process that keeps the caller's ``PYTHONPATH`` and is killed, with its
  children, at its deadline;
- writes exactly three files to ``out``: ``summary.json``, ``summary.md`` (the README's tables) and
  ``gpu_check.log`` (every command and its output), rewritten after each step;
- runs the same plan on the CPU with ``device="cpu"`` and tiny sizes (the test suite does), so a
  wrong key or a missing flag is found before a GPU is.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# benchmark rows, by value: the floor, Pyro's own example, ours, ours as one CUDA graph
BENCH_ROWS = ("pytorch", "pyro-example", "ours-mc", "ours-mc-graphs", "ours-analytic-graphs")
CUDA_ONLY_ROWS = ("ours-mc-graphs", "ours-analytic-graphs")
BENCH_BATCHES = (256, 128)
# modules the child processes import; a missing one is named up front with the fix
NEEDED_MODULES = ("torch", "torchvision", "numpy", "pyro", "pyroapi", "opt_einsum", "tqdm", "matplotlib", "pytest")

# each step's share of the whole budget, at most; time a step leaves unused goes to the quality run
SHARES = {"preflight": 0.08, "cuda_tests": 0.22, "benchmark_b256": 0.16, "benchmark_b128": 0.16}
# and at least this many seconds, if the budget has them: below that, no child gets past its imports
FLOORS = {"preflight": 30.0, "cuda_tests": 30.0, "benchmark_b256": 60.0, "benchmark_b128": 60.0}
MIN_TRAIN_SECONDS = 15.0  # a quality run shorter than this says nothing; the step is skipped instead
START_SECONDS = 20.0  # a child's imports and data loading, before its own clock starts


@dataclass
class CheckConfig:
    """What the check runs and how long it may take."""

    budget_minutes: float = 8.0  # the whole check ends within this wall time (one command: 10 min)
    device: str = "cuda"  # "cpu" runs the same plan as a dry run
    data_dir: str = "../shared/data"  # holds MNIST/raw/*.gz (the four files suffice)
    out: str = "gpu_check"  # the three result files
    work: str | None = None  # run folders and benchmark JSON (default: a temporary folder)
    tiny: bool = False  # tiny sizes: the CPU dry run of the same plan
    k: int = 5000  # importance samples of the held-out evaluation


@dataclass
class Step:
    """One step's record, as ``summary.json`` keeps it."""

    name: str
    status: str = "pending"  # ok | failed | timed out | skipped
    command: str = ""
    seconds: float = 0.0
    deadline_seconds: float = 0.0
    exit: int | None = None
    note: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def child_env(data_dir: str) -> dict[str, str]:
    """The caller's environment, with the source tree put in front of its ``PYTHONPATH`` (never in
    place of it: pyro may live there, installed with ``pip install --target``)."""
    env = dict(os.environ)
    parts = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYRO_VAE_DATA"] = data_dir
    return env


def cuda_test_files(root: Path = ROOT) -> list[str]:
    """The test files that hold CUDA-marked tests (collecting only these needs no dev extras)."""
    return sorted(
        str(p.relative_to(root)) for p in (root / "tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text()
    )


def pytest_counts(text: str) -> dict[str, int]:
    """``{"passed": 3, "skipped": 1, ...}`` from pytest's last summary line."""
    lines = [line for line in text.strip().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    if not lines:
        return {}
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", lines[-1])}


class Check:
    """The plan, run step by step against one clock."""

    def __init__(self, cfg: CheckConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.start = clock()
        self.budget = cfg.budget_minutes * 60
        self.out = Path(cfg.out)
        self._work = Path(cfg.work) if cfg.work else None  # a temporary folder is made only when the check runs
        self.data = str(Path(cfg.data_dir).resolve())
        self.env = child_env(self.data)
        self.steps: list[Step] = []
        self.info: dict[str, Any] = {}
        self.log_path = self.out / "gpu_check.log"

    @property
    def k(self) -> int:
        """Importance samples of every evaluation (tiny: 20, so the dry run stays short)."""
        return 20 if self.cfg.tiny else self.cfg.k

    # --- time -------------------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.budget - (self.clock() - self.start)

    def share(self, name: str) -> float:
        """Seconds this step may take: its share of the budget, never past the end."""
        return max(0.0, min(max(SHARES[name] * self.budget, FLOORS[name]), self.remaining()))

    # --- results ----------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        with self.log_path.open("a") as f:
            f.write(text.rstrip("\n") + "\n")

    def write(self) -> None:
        summary = {
            "budget_minutes": self.cfg.budget_minutes,
            "elapsed_minutes": (self.clock() - self.start) / 60,
            "device": self.cfg.device,
            "tiny": self.cfg.tiny,
            **self.info,
            "steps": {s.name: asdict(s) for s in self.steps},
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (self.out / "summary.md").write_text(format_summary(summary))

    def run(self, name: str, cmd: list[str], seconds: float, note: str = "") -> Step:
        """Run ``cmd`` with a deadline ``seconds`` from now; the step is recorded and written at once."""
        step = Step(name, command=" ".join(cmd), deadline_seconds=round(seconds, 1), note=note)
        self.steps.append(step)
        if seconds < 5:
            step.status, step.note = "skipped", f"no time left ({seconds:.0f}s of the budget)"
            self.log(f"[{name}] skipped: {step.note}")
            self.write()
            return step
        self.log(f"\n[{name}] deadline {seconds:.0f}s\n$ {step.command}")
        began = self.clock()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a deadline kills its children too
        )
        try:
            text, _ = proc.communicate(timeout=seconds)
            step.exit = proc.returncode
            step.status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            step.exit, step.status = 124, "timed out"
            text += f"\nkilled at its deadline, {seconds:.0f}s"
        step.seconds = round(self.clock() - began, 2)
        self.log(text)
        self.log(f"[{name}] {step.status} (exit {step.exit}) after {step.seconds:.0f}s")
        print(f"[{name}] {step.status} after {step.seconds:.0f}s", flush=True)
        self.write()
        return step

    # --- the plan ---------------------------------------------------------------------------------
    def preflight(self) -> Step:
        probe = (
            "import importlib, json, sys\n"
            "found = {}\n"
            f"for m in {NEEDED_MODULES!r}:\n"
            "    try:\n"
            "        found[m] = getattr(importlib.import_module(m), '__version__', 'present')\n"
            "    except Exception as e:\n"
            "        found[m] = None\n"
            "import torch\n"
            "cuda = torch.cuda.is_available()\n"
            "name = torch.cuda.get_device_name(0) if cuda else None\n"
            "print('PROBE ' + json.dumps({'modules': found, 'cuda': cuda, 'gpu': name, "
            "'gpus': torch.cuda.device_count(), 'python': sys.version.split()[0]}))\n"
        )
        step = self.run("preflight", [sys.executable, "-c", probe], self.share("preflight"))
        text = self.log_path.read_text()
        found = re.findall(r"^PROBE (.*)$", text, re.M)
        if found:
            probe_result = json.loads(found[-1])
            self.info.update(
                python=probe_result["python"],
                gpu=probe_result["gpu"],
                gpus=probe_result["gpus"],
                versions={k: v for k, v in probe_result["modules"].items() if v},
            )
            missing = [m for m, v in probe_result["modules"].items() if v is None]
            step.results = {"missing": missing, "cuda": probe_result["cuda"]}
            if missing:
                step.note = (
                    f"missing: {', '.join(missing)}; carry their wheels in .gpu/ "
                    "(pip download --no-deps -d .gpu NAME here, see the README)"
                )
            if self.cfg.device == "cuda" and not probe_result["cuda"]:
                step.status, step.note = "failed", "torch sees no GPU in the child process"
        self.write()
        return step

    def cuda_tests(self) -> Step:
        files = cuda_test_files()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *files]
        step = self.run("cuda_tests", cmd, self.share("cuda_tests"))
        step.results = pytest_counts(self.last_output(step))
        if self.cfg.device == "cpu":
            step.note = "CPU dry run: the CUDA-marked tests are collected and skipped"
        self.write()
        return step

    def benchmark(self, batch: int) -> Step:
        name = f"benchmark_b{batch}"
        json_out = self.work / f"{name}.json"
        rows = [r for r in BENCH_ROWS if self.cfg.device == "cuda" or r not in CUDA_ONLY_ROWS]
        cmd = [sys.executable, "-m", "pyro_vae", "benchmark", "--device", self.cfg.device, "--data-dir", self.data]
        cmd += ["--batch-size", str(batch), "--paths", *rows, "--out", str(json_out), "--eval-k", str(self.k)]
        if self.cfg.tiny:
            cmd += ["--steps", "3", "--warmup-steps", "1", "--repeats", "1", "--limit-train", "1024"]
            cmd += ["--limit-test", "256", "--eval-images", "8", "--eval-loop-images", "2"]
        else:
            cmd += ["--steps", "200", "--warmup-steps", "20", "--repeats", "3"]
            cmd += ["--eval-images", "500", "--eval-loop-images", "20"]
        skipped = [r for r in BENCH_ROWS if r not in rows]
        note = f"not run on {self.cfg.device}: {', '.join(skipped)} (CUDA only)" if skipped else ""
        step = self.run(name, cmd, self.share(name), note)
        if json_out.exists():
            result = json.loads(json_out.read_text())
            step.results = {
                "rows": {
                    r["path"]: {
                        "images_per_second": r["images_per_second"],
                        "ms_per_step": 1000 * batch / r["images_per_second"],
                        "peak_memory_mb": r["peak_memory_mb"],
                        "memory_kind": r["memory_kind"],
                    }
                    for r in result["rows"]
                },
                "ratios": result["ratios"],
                "evaluation": result["evaluation"],
                "machine": result["device"],
            }
        self.write()
        return step

    def eval_rate(self) -> float | None:
        """Images per second of the batched K-sample estimator, from the benchmark steps."""
        for s in self.steps:
            ev = s.results.get("evaluation") if s.name.startswith("benchmark") else None
            if ev and ev.get("k") == self.k:
                return ev["batched_images_per_second"]
        return None

    def quality(self) -> None:
        run_dir = self.work / "quality_run"
        images = 200 if self.cfg.tiny else 10_000
        rate = self.eval_rate()
        # the evaluation's reserve: its measured rate with a margin, or a quarter of what is left
        eval_seconds = START_SECONDS + (1.5 * images / rate if rate else 0.25 * self.remaining())
        deadline = self.remaining() - eval_seconds
        train_seconds = deadline - START_SECONDS  # the run's own clock starts after its imports
        cmd = [sys.executable, "-m", "pyro_vae", "train", "--device", self.cfg.device, "--data-dir", self.data]
        # tiny: two short epochs; otherwise as many epochs as the time left holds
        epochs = 2 if self.cfg.tiny else 100_000
        cmd += ["--no-download", "--no-progress", "--epochs", str(epochs), "--out", str(run_dir)]
        cmd += ["--time-limit", f"{max(train_seconds, 1.0) / 60:.3f}"]
        if self.cfg.tiny:
            cmd += ["--limit-train", "2048", "--limit-test", str(images)]
        if train_seconds < (1.0 if self.cfg.tiny else MIN_TRAIN_SECONDS):
            step = Step("quality_train", status="skipped", command=" ".join(cmd))
            step.note = f"{max(train_seconds, 0):.0f}s left for training after the evaluation's reserve"
            self.steps.append(step)
            self.write()
            return
        train = self.run("quality_train", cmd, deadline)
        if train.status == "failed" or not (run_dir / "metrics.csv").exists():
            return
        lines = (run_dir / "metrics.csv").read_text().strip().splitlines()
        header, last = lines[0].split(","), lines[-1].split(",")
        metrics = dict(zip(header, last, strict=False))
        train.results = {
            "epochs": int(float(metrics["epoch"])),
            "test_neg_elbo": float(metrics["test_loss"]),
            "train_minutes": sum(float(line.split(",")[header.index("seconds")]) for line in lines[1:]) / 60,
        }
        # score as many test images as fit in the time left (all of them, when the reserve held)
        left = self.remaining() - START_SECONDS
        rate = self.eval_rate()
        limit = images if rate is None else min(images, max(1, int(0.9 * left * rate)))
        out_json = self.work / "eval.json"
        cmd = [sys.executable, "-m", "pyro_vae", "evaluate", str(run_dir), "--k", str(self.k)]
        cmd += ["--device", self.cfg.device, "--no-progress", "--out", str(out_json), "--limit", str(limit)]
        note = "" if limit == images else f"only {limit} of {images} test images fitted in the budget"
        ev = self.run("quality_eval", cmd, self.remaining(), note)
        if out_json.exists():
            e = json.loads(out_json.read_text())["evaluations"][-1]
            k = next(iter(e["nll"]))
            ev.results = {
                "k": int(k),
                "images": e["num_points"],
                "nll": e["nll"][k]["mean"],
                "nll_se": e["nll"][k]["se"],
                "is_seconds": e["nll_seconds"],
                "ms_per_image": 1000 * e["nll_seconds"] / e["num_points"],
                "epoch": e["epoch"],
            }
            self.write()

    @property
    def work(self) -> Path:
        """Where the run folders go: ``work``, or a temporary folder made on first use."""
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        return self._work

    def run_all(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(f"gpu check: budget {self.cfg.budget_minutes} min, device {self.cfg.device}\n")
        self.info["plan"] = ["preflight", "cuda_tests", *(f"benchmark_b{b}" for b in BENCH_BATCHES)]
        self.info["plan"] += ["quality_train", "quality_eval"]
        pre = self.preflight()
        if pre.status == "ok":
            self.cuda_tests()
            for batch in BENCH_BATCHES:
                self.benchmark(batch)
            self.quality()
        self.info["elapsed_minutes"] = (self.clock() - self.start) / 60
        self.write()
        return 0 if all(s.status in ("ok", "skipped") for s in self.steps) and pre.status == "ok" else 1

    def last_output(self, step: Step) -> str:
        text = self.log_path.read_text()
        return text[text.rfind(f"[{step.name}] deadline") :]


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def format_summary(summary: dict[str, Any]) -> str:
    """The README's tables from ``summary.json``."""
    steps = summary["steps"]
    versions = summary.get("versions", {})
    lines = [
        f"# GPU check: {summary.get('gpu') or summary['device']}",
        "",
        f"torch {versions.get('torch', '?')}, pyro {versions.get('pyro', '?')}, Python {summary.get('python', '?')}; "
        f"budget {summary['budget_minutes']} min, used {summary['elapsed_minutes']:.1f} min"
        + ("; tiny sizes (dry run)" if summary.get("tiny") else ""),
        "",
        "| step | status | seconds | deadline | note |",
        "|---|---|---:|---:|---|",
    ]
    for s in steps.values():
        seconds = f"{s['seconds']:.0f} | {s['deadline_seconds']:.0f}"
        lines.append(f"| {s['name']} | {s['status']} | {seconds} | {s['note']} |")
    tests = steps.get("cuda_tests", {}).get("results")
    if tests:
        lines += ["", "CUDA-marked tests: " + ", ".join(f"{n} {k}" for k, n in tests.items())]
    for name in (f"benchmark_b{b}" for b in BENCH_BATCHES):
        res = steps.get(name, {}).get("results")
        if not res:
            continue
        batch = name.rsplit("b", 1)[1]
        floor = res["rows"].get("pytorch", {}).get("images_per_second")
        lines += ["", f"Training step, batch {batch} ({res['machine']})", ""]
        lines += ["| row | images/s | ms/step | time × pytorch | peak memory (MB) |", "|---|---:|---:|---:|---:|"]
        for row, r in res["rows"].items():
            ratio = floor / r["images_per_second"] if floor else None
            lines.append(
                f"| {row} | {r['images_per_second']:.0f} | {r['ms_per_step']:.2f} | {_fmt(ratio, '.2f')} "
                f"| {r['peak_memory_mb']:.0f} |"
            )
        ev = res["evaluation"]
        lines += [
            "",
            f"Held-out K = {ev['k']}: batched {ev['batched_images_per_second']:.1f} images/s, "
            f"one image at a time {ev['loop_images_per_second']:.1f} images/s ({ev['speedup']:.1f}× batched); "
            f"10,000 test images would take {10_000 / ev['batched_images_per_second']:.0f}s batched, "
            f"{10_000 / ev['loop_images_per_second']:.0f}s one at a time",
        ]
    train = steps.get("quality_train", {}).get("results") or None
    ev = steps.get("quality_eval", {}).get("results") or None
    if train:
        lines += ["", "Quality run (default MLP VAE, dynamically binarized MNIST)", ""]
        lines += ["| epochs | train minutes | test −ELBO | −log p(x) | K | images | IS seconds | ms/image |"]
        lines += ["|---:|---:|---:|---:|---:|---:|---:|---:|"]
        nll = f"{ev['nll']:.2f} ± {ev['nll_se']:.2f}" if ev else "—"
        lines.append(
            f"| {train['epochs']} | {train['train_minutes']:.1f} | {train['test_neg_elbo']:.2f} | {nll} "
            f"| {ev['k'] if ev else '—'} | {ev['images'] if ev else '—'} | {_fmt(ev and ev['is_seconds'])} "
            f"| {_fmt(ev and ev['ms_per_image'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def check_arguments(cfg: CheckConfig) -> None:
    """One line per bad setting, before anything runs (raises ``ConfigError``)."""
    from pyro_vae.errors import ConfigError

    if not (isinstance(cfg.budget_minutes, (int, float)) and math.isfinite(cfg.budget_minutes)):
        raise ConfigError(f"`budget_minutes` must be a number of minutes, got {cfg.budget_minutes!r}")
    if not 0.5 <= cfg.budget_minutes <= 600:
        raise ConfigError(f"`budget_minutes` must be from 0.5 to 600, got {cfg.budget_minutes}")
    if cfg.device not in ("cuda", "cpu"):
        raise ConfigError(f"`device` must be cuda or cpu, got {cfg.device!r}")
    raw = Path(cfg.data_dir) / "MNIST" / "raw"
    if not raw.is_dir():
        raise ConfigError(f"no MNIST/raw under `data_dir` {cfg.data_dir}; pass the folder that holds MNIST/raw/*.gz")
    from pyro_vae.files import check_out_folder

    check_out_folder(cfg.out, "`out`")
    if cfg.work:
        check_out_folder(cfg.work, "`work`")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("torch sees no GPU; run this where CUDA is, or pass `device=cpu` for the dry run")
    if isinstance(cfg.k, bool) or not isinstance(cfg.k, int) or cfg.k < 1:
        raise ConfigError(f"`k` must be a positive integer, got {cfg.k}")


def run_check(cfg: CheckConfig) -> int:
    """Run the whole plan; 0 when every step that ran passed."""
    check_arguments(cfg)
    return Check(cfg).run_all()
