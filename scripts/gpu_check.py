"""Everything a person with a GPU should run, in one command, with every result in one folder:

1. the CUDA-marked tests;
2. the speed benchmark on CUDA at batch 128 and 256 (ours, Pyro's example, the tutorial, plain PyTorch);
3. the quality run: the default MLP VAE trained for ``--minutes`` on dynamically binarized MNIST;
4. the importance-sampled evaluation of that run, K = 5000 over the 10,000 test images, timed;
5. with two or more GPUs, a two-rank torchrun epoch (NCCL).

    python scripts/gpu_check.py --data-dir ../shared/data --out gpu_check

Each step's command and output go to ``OUT/<step>.log``; ``OUT/summary.json`` collects the figures.
A step that fails is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _step(out: Path, name: str, cmd: list[str], timeout: float) -> dict:
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        code, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        code, text = 124, f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout:.0f}s"
    seconds = time.perf_counter() - start
    (out / f"{name}.log").write_text(f"$ {' '.join(cmd)}\n{text}")
    tail = "\n".join(text.strip().splitlines()[-25:])
    print(f"[{name}] exit {code} after {seconds:.0f}s\n{tail}\n", flush=True)
    return {"command": " ".join(cmd), "exit": code, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST/raw (default %(default)s)")
    p.add_argument("--out", default="gpu_check", help="folder for the logs and summary (default %(default)s)")
    p.add_argument("--minutes", type=float, default=10.0, help="training time of the quality run (default 10)")
    p.add_argument("--skip", nargs="*", default=[], choices=("tests", "benchmark", "quality", "torchrun"))
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: torch sees no GPU; run this on a machine with CUDA", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    gpu = torch.cuda.get_device_name(0)
    summary: dict = {"device": gpu, "gpus": torch.cuda.device_count(), "torch": torch.__version__, "steps": {}}
    steps = summary["steps"]
    data = str(Path(args.data_dir).resolve())
    env_data = {"PYRO_VAE_DATA": data}
    os.environ.update(env_data)
    if "tests" not in args.skip:
        steps["cuda_tests"] = _step(out, "cuda_tests", [py, "-m", "pytest", "-q", "-m", "cuda", "tests"], 1800)
    if "benchmark" not in args.skip:
        for batch in (128, 256):
            json_out = str((out / f"benchmark_b{batch}.json").resolve())
            cmd = [py, "-m", "pyro_vae", "benchmark", "--device", "cuda", "--data-dir", data]
            cmd += ["--batch-size", str(batch), "--paths", "pyro-example", "conventional", "pyro-svi", "pytorch"]
            cmd += ["ours-mc", "ours-analytic", "ours-mc-graphs", "ours-analytic-graphs", "ours-mc-bf16"]
            cmd += ["--out", json_out]
            steps[f"benchmark_b{batch}"] = _step(out, f"benchmark_b{batch}", cmd, 3600)
            if Path(json_out).exists():
                result = json.loads(Path(json_out).read_text())
                steps[f"benchmark_b{batch}"]["ratios"] = result["ratios"]
                steps[f"benchmark_b{batch}"]["evaluation"] = result["evaluation"]
    if "quality" not in args.skip:
        run = str((out / "quality_run").resolve())
        cmd = [py, "-m", "pyro_vae", "train", "--device", "cuda", "--data-dir", data, "--no-progress"]
        cmd += ["--epochs", "100000", "--time-limit", str(args.minutes), "--out", run]
        steps["quality_train"] = _step(out, "quality_train", cmd, args.minutes * 60 + 900)
        cmd = [py, "-m", "pyro_vae", "evaluate", run, "--k", "5000", "--device", "cuda", "--no-progress"]
        steps["quality_eval"] = _step(out, "quality_eval", cmd, 3600)
        eval_file = Path(run) / "eval.json"
        if eval_file.exists():
            e = json.loads(eval_file.read_text())["evaluations"][-1]
            steps["quality_eval"].update(
                nll_k5000=e["nll"]["5000"]["mean"],
                nll_se=e["nll"]["5000"]["se"],
                is_seconds=e["nll_seconds"],
                epochs=e["epoch"],
                images=e["num_points"],
            )
    if "torchrun" not in args.skip and torch.cuda.device_count() >= 2:
        run = str((out / "torchrun_run").resolve())
        cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "pyro_vae"]
        cmd += ["train", "--device", "cuda", "--data-dir", data, "--epochs", "1", "--no-progress", "--out", run]
        steps["torchrun_2gpu"] = _step(out, "torchrun_2gpu", cmd, 1800)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 1 if any(s["exit"] != 0 for s in steps.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
