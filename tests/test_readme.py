"""Every code block of the README and of the documentation pages (``docs/**/*.md``), run as written where a
CPU can (with small limits added), so that a promise cannot drift from the code. A block or command the
rules below do not know fails the test: a new example needs a rule, which says how it runs or why it
cannot run here. Blocks are keyed by page and first line (python) or page and line (bash)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA_ENV, ROOT

DOC_PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
PAGES = ["README.md", *DOC_PAGES]
TEXT = {page: (ROOT / page).read_text() for page in PAGES}
TIMEOUT = 600
# appended to commands that train, so each is an epoch of a few hundred images
TRAIN_LIMITS = "--epochs 1 --limit-train 600 --limit-test 200 --no-progress"
BENCH_LIMITS = (
    "--steps 2 --warmup-steps 1 --repeats 1 --limit-train 512 --limit-test 128 "
    "--eval-k 10 --eval-images 4 --eval-loop-images 2"
)
SMALL = ", epochs=1, limit_train=600, limit_test=200, progress=False"

# python blocks, by page and first line: text replacements that shrink the run ("compile": a schematic)
PYTHON = {
    ("README.md", "class VAE(nn.Module):"): "compile",
    ("README.md", "import pyro"): [
        ('load_data("mnist", "data")', 'load_data("mnist", "data", limit_train=512, limit_test=200)')
    ],
    ("README.md", "from pyro_vae import load_run_and_data"): [],
    ("docs/explanation/pyro-program.md", "class VAE(nn.Module):"): "compile",
    ("docs/explanation/pyro-program.md", "import pyro"): [('"data")', '"data", limit_train=512, limit_test=200)')],
    ("docs/explanation/pyro-program.md", "import pyro_vae"): [
        ('epochs=10, elbo="analytic"', f'elbo="analytic"{SMALL}'),
        ("epochs=20", "epochs=2"),
        ('load_data("mnist", "data")', 'load_data("mnist", "data", limit_test=200)'),
    ],
    ("docs/howto/swap-parts.md", "import pyro.distributions as dist"): [
        ('out="runs/logistic"', 'out="runs/logistic", epochs=1, limit_train=600, limit_test=100, progress=False'),
        ("epochs=20", "epochs=2"),
    ],
    ("docs/tutorials/quickstart.md", "import pyro_vae"): [("epochs=10, ", SMALL[2:] + ", ")],
    ("docs/howto/reproduce.md", "import pyro_vae"): [],
    ("docs/howto/completion.md", "import pyro"): [
        (
            'load_data("mnist", "data", kind="unit")',
            'load_data("mnist", "data", kind="unit", limit_train=600, limit_test=50)',
        ),
    ],
    ("docs/howto/labels.md", "import pyro"): [
        ('load_data("mnist", "data")', 'load_data("mnist", "data", limit_train=600, limit_test=200)'),
        ("range(5)", "range(1)"),
    ],
}

# bash commands, first matching rule wins: ("run", flags to append) or ("skip", why it cannot run here)
BASH = [
    (r"^pip install -e \S+$", ("skip", "installs the package; .ci/run does the set-up")),
    (r"^python -m pytest", ("skip", "the suite itself")),
    (r"--device cuda", ("skip", "needs CUDA")),
    (r"^torchrun --standalone --nproc-per-node 8 -m pyro_vae evaluate", ("skip", "8 GPUs and /shared")),
    (r"^torchrun --standalone --nproc-per-node \d", ("run-torchrun", TRAIN_LIMITS)),
    (r"^torchrun --nnodes|^srun", ("skip", "two machines")),
    (r"jupyter lab", ("skip", "an interactive front-end")),
    (r"jupyter execute", ("run", "")),
    (r"reproduce --list", ("run", "")),
    (r"reproduce (vae-static|iwae|families|m2-mnist)", ("skip", "hours of training; test_recipes.py runs it small")),
    (r"^python scripts/benchmark\.py\s*$", ("skip", "test_speed.py runs it with the same limits")),
    (r"benchmark", ("run", BENCH_LIMITS)),
    (r"--resume", ("run", "--epochs 2")),
    (r"--select-k", ("run", TRAIN_LIMITS)),
    (r"evaluate --pretrained", ("run", "")),
    (r"--model cvae", ("run", TRAIN_LIMITS + " --validation 100")),
    (r"--model m2", ("run", "--epochs 1 --limit-train 1200 --limit-test 200 --validation 200 --no-progress")),
    (r"complete_quadrants", ("run", "--epochs 1 --limit-train 1200 --limit-test 50 --validation 200 --k 5")),
    (r"evaluate", ("run", "--limit 20")),
    (r"pictures", ("run", "")),
    (r"^S=|^cp -r runs/", ("run", "")),
    (r"train|train\.py", ("run", TRAIN_LIMITS)),
]

# `pip install ... && COMMAND`: the environment has the package; the command after it runs by its own rule
INSTALL_PREFIX = re.compile(r"^pip install [^&]*&&\s*")


def blocks(page: str, lang: str) -> list[tuple[int, str]]:
    """(line, text) of every ``lang`` block of ``page``."""
    text = TEXT[page]
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(rf"```{lang}\n(.*?)```", text, re.S)]


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


def rule(command: str) -> tuple[str, str, str]:
    """(kind, flags to append, the command as it runs) for one documented command."""
    command = INSTALL_PREFIX.sub("", command)
    for pattern, (kind, extra) in BASH:
        if re.search(pattern, command):
            return kind, extra, command
    raise AssertionError(f"documented command without a rule in tests/test_readme.py: {command}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The data and a home folder for the pages: photographs in ``~/photos`` and ``~/textures``."""
    data = os.environ.get(DATA_ENV)
    if not data or not (Path(data) / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data absent: set {DATA_ENV}")
    from PIL import Image

    base = tmp_path_factory.mktemp("readme")
    home = base / "home"
    rng = __import__("numpy").random.default_rng(0)
    for folder, size, count in (("photos", (90, 70), 160), ("textures", (600, 560), 4)):
        (home / folder).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype="uint8")
            Image.fromarray(pixels).save(home / folder / f"{i}.png")
    return base, home


def page_folder(base: Path, page: str) -> Path:
    """A working folder for one page, laid out as a checkout: the scripts, the recipes and the notebooks, and the
    data in ``./data`` (a link to the real data). Each page has its own, as each is read on its own: two pages
    may both write ``runs/quickstart``."""
    work = base / page.replace("/", "_").removesuffix(".md")
    if not work.exists():
        work.mkdir()
        (work / "data").symlink_to(Path(os.environ[DATA_ENV]).resolve())
        for name in ("scripts", "pyro_vae"):
            (work / name).symlink_to(ROOT / name)
        shutil.copytree(ROOT / "notebooks", work / "notebooks")  # jupyter execute writes beside them
    return work


def _run(args: list[str] | str, work: Path, home: Path, shell: bool = False) -> subprocess.CompletedProcess:
    # the notebooks' smoke mode: tiny data, as the notebook tests run them
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYRO_VAE_SMOKE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        args, cwd=work, env=env, shell=shell, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def _python_keys() -> list[tuple[str, str]]:
    return [(page, block.splitlines()[0]) for page in PAGES for _, block in blocks(page, "python")]


def test_every_block_has_a_rule_and_every_rule_a_block():
    keys = _python_keys()
    for key in keys:
        assert key in PYTHON, f"{key[0]}: a python block without a rule: {key[1]}"
    assert len(keys) == len(set(keys)), "two python blocks of one page share a first line; make them differ"
    for page in PAGES:
        for _, block in blocks(page, "bash"):
            for command in commands(block):
                rule(command)
    assert set(PYTHON) == set(keys)  # no rule is left over from an example that is gone


def _written_runs(block: str) -> set[str]:
    return set(re.findall(r"--out (runs/[\w.-]+)", block))


def _producers(page: str, line: int) -> list[int]:
    """The earlier bash blocks of ``page`` that write a run folder the block at ``line`` reads (``evaluate
    runs/mnist-mlp`` after ``train --out runs/mnist-mlp``), in the page's order."""
    block = dict(blocks(page, "bash") + blocks(page, "python"))[line]
    wanted = set(re.findall(r"runs/[\w-]+(?:/[\w.-]+)?", block)) - _written_runs(block)
    wanted = {w for w in wanted if not w.endswith("-pictures")}
    return [n for n, b in blocks(page, "bash") if n < line and wanted & _written_runs(b)]


@pytest.mark.real_data
@pytest.mark.parametrize("key", list(PYTHON), ids=[f"{p}:{f}" for p, f in PYTHON])
def test_python_blocks_run_as_written(workdir, key):
    base, home = workdir
    page, first = key
    work = page_folder(base, page)
    (line, block), *_ = [(n, b) for n, b in blocks(page, "python") if b.splitlines()[0] == first]
    how = PYTHON[key]
    if how == "compile":
        compile(block, f"{page}:{line}", "exec")
        return
    for before in _producers(page, line):
        _run_block(page, before, work, home)
    for old, new in how:
        assert old in block, f"{page} line {line}: the rule's text {old!r} is gone; update the rule"
        block = block.replace(old, new)
    script = work / f"block_{Path(page).stem}_{line}.py"
    script.write_text(block)
    proc = _run([sys.executable, script.name], work, home)
    assert proc.returncode == 0, f"{page} line {line}:\n{block}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr


# blocks run in this process's working folder (pytest-xdist spreads the blocks over workers, each with
# its own folder: a block that reads another's run folder runs that block first, once per worker)
_RAN: set[tuple[str, int]] = set()


def _run_block(page: str, line: int, work: Path, home: Path) -> None:
    if (page, line) in _RAN:
        return
    for before in _producers(page, line):
        _run_block(page, before, work, home)
    block = dict(blocks(page, "bash"))[line]
    script, ran = ["set -e"], []
    for command in commands(block):
        kind, extra, command = rule(command)
        if kind == "skip":
            continue
        if kind == "run-torchrun":  # 8 ranks on a CPU: 2 processes with gloo
            command = command.replace("--nproc-per-node 8", "--nproc-per-node 2")
            command = command.replace("--batch-size 1024", "--batch-size 64")
        script.append(f"{command} {extra}".strip())
        ran.append(command)
    if not ran:
        _RAN.add((page, line))
        pytest.skip(f"{page} line {line}: every command needs what this machine lacks (see BASH rules)")
    proc = _run("\n".join(script), work, home, shell=True)
    shown = "\n".join(script)
    assert proc.returncode == 0, f"{page} line {line}:\n{shown}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    _RAN.add((page, line))  # only once it passed: a failed prerequisite fails again in its own test


def test_blocks_that_read_a_run_folder_know_the_block_that_writes_it():
    page = "docs/howto/evaluate.md"
    line = next(n for n, b in blocks(page, "bash") if "evaluate runs/mnist-mlp " in b)
    train = next(n for n, b in blocks(page, "bash") if "runs/mnist-mlp" in _written_runs(b))
    assert train <= line and (train in _producers(page, line) or train == line)


BASH_BLOCKS = [(page, line) for page in PAGES for line, _ in blocks(page, "bash")]


@pytest.mark.real_data
@pytest.mark.parametrize("key", BASH_BLOCKS, ids=[f"{p}:{n}" for p, n in BASH_BLOCKS])
def test_bash_blocks_run_as_written(workdir, key):
    base, home = workdir
    _run_block(*key, page_folder(base, key[0]), home)
