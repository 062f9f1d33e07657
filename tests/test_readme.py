"""Every code block of the README, run as written where a CPU can (with small limits added), so that a
promise cannot drift from the code. A block or command the rules below do not know fails the test: a new
README example needs a rule, which says how it runs or why it cannot run here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA_ENV, ROOT

README = (ROOT / "README.md").read_text()
TIMEOUT = 600
# appended to commands that train, so each is an epoch of a few hundred images
TRAIN_LIMITS = "--epochs 1 --limit-train 600 --limit-test 200 --no-progress"
BENCH_LIMITS = (
    "--steps 2 --warmup-steps 1 --repeats 1 --limit-train 512 --limit-test 128 "
    "--eval-k 10 --eval-images 4 --eval-loop-images 2"
)

# python blocks, by their first line: text replacements that shrink the run ("compile": a schematic)
PYTHON = {
    "class VAE(nn.Module):": "compile",
    "import pyro": [('"../shared/data")', '"../shared/data", limit_train=512, limit_test=200)')],
    "import pyro_vae": [
        ('epochs=10, elbo="analytic"', 'epochs=1, elbo="analytic", limit_train=600, limit_test=200, progress=False'),
        ("epochs=20", "epochs=2"),
        ('load_data("mnist", "../shared/data")', 'load_data("mnist", "../shared/data", limit_test=200)'),
    ],
    "import pyro.distributions as dist": [
        ('out="runs/logistic"', 'out="runs/logistic", epochs=1, limit_train=600, limit_test=100, progress=False'),
        ("epochs=20", "epochs=2"),
    ],
}

# bash commands, first matching rule wins: ("run", flags to append) or ("skip", why it cannot run here)
BASH = [
    (r"^pip install|^pip download", ("skip", "installs packages; .ci/run does the set-up")),
    (r"^python -m pytest", ("skip", "the suite itself")),
    (r"^(mkdir|echo|python3 -m pip) .*\.gpu|^python3 scripts/gpu_check", ("skip", "the GPU machine's recipe")),
    (r"gpu_check\.py --data-dir", ("skip", "needs CUDA")),
    (r"gpu_check\.py --device cpu", ("skip", "run by test_gpu_check_dry_run_on_the_cpu_follows_the_whole_plan")),
    (r"^torchrun --standalone --nproc-per-node 8 -m pyro_vae evaluate", ("skip", "8 GPUs and /shared")),
    (r"^torchrun --standalone --nproc-per-node 8", ("run-torchrun", TRAIN_LIMITS)),
    (r"^torchrun --nnodes|^srun", ("skip", "two machines")),
    (r"jupyter lab", ("skip", "an interactive front-end")),
    (r"jupyter execute", ("run", "")),
    (r"reproduce --list", ("run", "")),
    (r"reproduce (vae-static|iwae|families)", ("skip", "hours of training; test_recipes.py runs it small")),
    (r"^python scripts/benchmark\.py --data-dir \S+$", ("skip", "test_speed.py runs it with the same limits")),
    (r"benchmark", ("run", BENCH_LIMITS)),
    (r"--resume", ("run", "--epochs 2")),
    (r"evaluate", ("run", "--limit 20")),
    (r"^S=|^cp -r runs/", ("run", "")),
    (r"train|train\.py", ("run", TRAIN_LIMITS)),
]


def blocks(lang: str) -> list[tuple[int, str]]:
    return [
        (README[: m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(rf"```{lang}\n(.*?)```", README, re.S)
    ]


def commands(block: str) -> list[str]:
    """Commands of a bash block, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        out.append(re.sub(r"\s+#.*$", "", current).strip())
        current = ""
    return out


def rule(command: str) -> tuple[str, str]:
    for pattern, action in BASH:
        if re.search(pattern, command):
            return action
    raise AssertionError(f"README command without a rule in tests/test_readme.py: {command}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder laid out as the README assumes: the repository's scripts and recipes beside
    ``../shared/data`` (a link to the real data), photographs in ``~/photos`` and ``~/textures``."""
    data = os.environ.get(DATA_ENV)
    if not data or not (Path(data) / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data absent: set {DATA_ENV}")
    from PIL import Image

    base = tmp_path_factory.mktemp("readme")
    work = base / "repo"
    work.mkdir()
    (base / "shared").mkdir()
    (base / "shared" / "data").symlink_to(Path(data).resolve())
    for name in ("scripts", "pyro_vae"):
        (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "notebooks", work / "notebooks")  # jupyter execute writes beside them
    home = base / "home"
    rng = __import__("numpy").random.default_rng(0)
    for folder, size, count in (("photos", (90, 70), 160), ("textures", (600, 560), 4)):
        (home / folder).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype="uint8")
            Image.fromarray(pixels).save(home / folder / f"{i}.png")
    return work, home


def _run(args: list[str] | str, work: Path, home: Path, shell: bool = False) -> subprocess.CompletedProcess:
    # the notebooks' smoke mode: tiny data, as the notebook tests run them
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYRO_VAE_SMOKE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        args, cwd=work, env=env, shell=shell, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_every_block_has_a_rule():
    for line, block in blocks("python"):
        first = block.splitlines()[0]
        assert first in PYTHON, f"README line {line}: a python block without a rule: {first}"
    for _, block in blocks("bash"):
        for command in commands(block):
            rule(command)
    # no rule is left over from an example that is gone
    firsts = {block.splitlines()[0] for _, block in blocks("python")}
    assert set(PYTHON) == firsts


@pytest.mark.real_data
@pytest.mark.parametrize("first", list(PYTHON))
def test_python_blocks_run_as_written(workdir, first):
    work, home = workdir
    (line, block), *_ = [(n, b) for n, b in blocks("python") if b.splitlines()[0] == first]
    how = PYTHON[first]
    if how == "compile":
        compile(block, f"README.md:{line}", "exec")
        return
    for old, new in how:
        assert old in block, f"README line {line}: the rule's text {old!r} is gone; update the rule"
        block = block.replace(old, new)
    script = work / f"readme_{line}.py"
    script.write_text(block)
    proc = _run([sys.executable, script.name], work, home)
    assert proc.returncode == 0, f"README line {line}:\n{block}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr


def _written_runs(block: str) -> set[str]:
    return set(re.findall(r"--out (runs/[\w.-]+)", block))


def _producers(line: int) -> list[int]:
    """The earlier bash blocks that write a run folder block ``line`` reads (``evaluate runs/mnist-mlp``
    after ``train --out runs/mnist-mlp``), in the README's order."""
    block = dict(blocks("bash"))[line]
    wanted = set(re.findall(r"runs/[\w.-]+", block)) - _written_runs(block)
    return [n for n, b in blocks("bash") if n < line and wanted & _written_runs(b)]


# blocks run in this process's working folder (pytest-xdist spreads the blocks over workers, each with
# its own folder: a block that reads another's run folder runs that block first, once per worker)
_RAN: set[int] = set()


def _run_block(line: int, work: Path, home: Path) -> None:
    for before in _producers(line):
        if before not in _RAN:
            _run_block(before, work, home)
    block = dict(blocks("bash"))[line]
    script, ran = ["set -e"], []
    for command in commands(block):
        kind, extra = rule(command)
        if kind == "skip":
            continue
        if kind == "run-torchrun":  # 8 ranks on this machine: the CPU's 2 processes with gloo
            command = command.replace("--nproc-per-node 8", "--nproc-per-node 2")
            command = command.replace("--batch-size 1024", "--batch-size 64")
        script.append(f"{command} {extra}".strip())
        ran.append(command)
    if not ran:
        _RAN.add(line)
        pytest.skip(f"README line {line}: every command needs what this machine lacks (see BASH rules)")
    proc = _run("\n".join(script), work, home, shell=True)
    shown = "\n".join(script)
    assert proc.returncode == 0, f"README line {line}:\n{shown}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    _RAN.add(line)  # only once it passed: a failed prerequisite fails again in its own test


def test_blocks_that_read_a_run_folder_know_the_block_that_writes_it():
    line = next(n for n, b in blocks("bash") if "scripts/evaluate.py runs/mnist-mlp " in b)
    train = next(n for n, b in blocks("bash") if "runs/mnist-mlp" in _written_runs(b))
    assert train < line and train in _producers(line)


@pytest.mark.real_data
@pytest.mark.parametrize("line", [n for n, _ in blocks("bash")])
def test_bash_blocks_run_as_written(workdir, line):
    work, home = workdir
    if line in _RAN:
        return  # already run in this folder, as another block's prerequisite (and passed, or skipped)
    _run_block(line, work, home)
