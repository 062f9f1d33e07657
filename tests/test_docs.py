"""The documentation: the site builds with warnings as errors and every cross-reference resolved; the
reference shows every public name, every setting, flag, part and recipe (the tables are generated, and
these tests check that the generation misses nothing); the README stays a front door; and no page names
a file that is neither in git nor written by a documented command, or carries the project's development
history."""

from __future__ import annotations

import dataclasses
import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import pyro_vae_docs

DOCS = ROOT / "docs"
DOC_PAGES = sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if "_build" not in p.parts)
PAGES = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", *DOC_PAGES]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The HTML site, built as CI builds it: ``-W`` (warnings are errors) and ``-n`` (every reference resolves)."""
    pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("myst_nb", reason="the docs extra is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "-n", "-q", "-d", str(out / ".doctrees"), str(DOCS),
         str(out)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _text(site: Path, page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", (site / page).read_text()))


def test_the_site_builds_without_a_warning(site):
    for page in ("index.html", "tutorials/quickstart.html", "reference/api.html", "reference/cli.html"):
        assert (site / page).is_file(), page
    assert (site / "tutorials" / "notebooks" / "heldout_elbo.html").is_file()  # the notebooks render


def test_every_public_name_is_in_the_api_reference_with_a_docstring(site):
    import pyro_vae

    api = (site / "reference" / "api.html").read_text()
    missing, undocumented = [], []
    for name in pyro_vae.__all__:
        obj = getattr(pyro_vae, name)
        if not re.search(rf'id="pyro_vae(\.[\w.]+)?\.{re.escape(name)}"', api):
            missing.append(name)
        doc = inspect.getdoc(obj) if (inspect.isclass(obj) or callable(obj)) else None
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (doc and doc.strip()):
            undocumented.append(name)
    assert missing == [], f"add these to docs/reference/api.md: {missing}"
    assert undocumented == []


def test_every_setting_has_a_reason_a_group_and_a_row(site):
    from sphinx.pycode import ModuleAnalyzer

    from pyro_vae.config import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    grouped = [n for group in pyro_vae_docs.GROUPS.values() for n in group]
    assert sorted(grouped) == sorted(names), "every TrainConfig field in exactly one group of docs/_ext GROUPS"
    reasons = {name for (_, name) in ModuleAnalyzer.for_module("pyro_vae.config").find_attr_docs()}
    assert [n for n in names if n not in reasons] == [], "give each field a `#:` comment: why it exists"
    text = _text(site, "reference/config.html")
    assert [n for n in names if f"{n}:" not in text] == []


@pytest.mark.parametrize("command", pyro_vae_docs.COMMANDS)
def test_every_flag_of_every_command_is_in_the_cli_reference(site, command):
    import argparse

    parser = pyro_vae_docs._parsers()[command]()
    text = _text(site, "reference/cli.html")
    flags = [f for a in parser._actions if not isinstance(a, argparse._HelpAction) for f in a.option_strings]
    assert flags and [f for f in flags if f not in text] == []


def test_every_registry_entry_and_recipe_is_in_the_parts_reference(site):
    from pyro_vae.recipes import recipes

    text = _text(site, "reference/parts.html")
    names = [name for registry in pyro_vae_docs._registries().values() for name in registry]
    names += list(recipes())
    assert len(names) > 30 and [n for n in names if n not in text] == []


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200 and len(text.encode()) <= 15_000
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):  # every link and picture is in the repository
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def _tracked() -> set[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}
    return set(files) | folders


def _written(texts: list[str]) -> set[str]:
    """What documented commands write: every ``--out X`` (``out="X"`` in Python), the copies of ``cp -r``, the
    output folder of the photo scripts, and the executed copy of ``jupyter execute NB --output X``."""
    out = set()
    for text in texts:
        out |= set(re.findall(r"--out\s+`?([\w./-]+)", text))
        out |= set(re.findall(r"\bout=\"([\w./-]+)\"", text))
        out |= set(re.findall(r"cp -r \S+ ([\w./-]+)", text))
        out |= set(re.findall(r"scripts/make_photo_(?:tiles|folder)\.py\s+([\w./-]+)", text))
        out |= {f"notebooks/{m}.ipynb" for m in re.findall(r"jupyter execute \S+ --output (\w+)", text)}
    return {o.rstrip("/") for o in out}


# a path as the pages write it: a top-level folder of this repository or a run folder, then more
_PATH = re.compile(r"(?<![\w./~-])((?:runs|docs|scripts|tests|notebooks|pyro_vae|data)/[\w./*{},<>-]*[\w*}>])")


def _prose(text: str) -> str:
    """The page without its toctrees, whose entries are page names, not files."""
    return re.sub(r"```\{toctree\}.*?```", "", text, flags=re.S)


def _paths(text: str) -> list[str]:
    placeholder = re.compile(r"[A-Z]{3,}")  # runs/reproduce-NAME, RUN_DIR: a name the reader chooses
    return [p for p in _PATH.findall(_prose(text)) if not re.search(r"[<*{]", p) and not placeholder.search(p)]


def test_pages_name_only_files_in_git_or_written_by_a_documented_command():
    tracked = _tracked()
    texts = [(ROOT / page).read_text() for page in PAGES]
    written = _written(texts)
    bad = []
    for page, text in zip(PAGES, texts, strict=True):
        for path in _paths(text):
            if path in tracked or path.startswith("data/") or path.startswith("docs/_build"):
                continue
            if any(path == w or path.startswith(w + "/") or w.startswith(path + "/") for w in written):
                continue  # the file itself, something in it, or a folder it lies in
            if path.startswith("runs/") and path.split("/")[1].endswith("-pictures"):
                continue
            bad.append(f"{page}: {path}")
    assert bad == []


def test_the_path_check_catches_a_cited_log_that_nothing_writes():
    written = _written(["python -m pyro_vae train --out runs/quickstart"])
    cited = _paths("as in `runs/bench-s8/b128.txt` and runs/quickstart/metrics.csv")
    assert cited == ["runs/bench-s8/b128.txt", "runs/quickstart/metrics.csv"]
    assert [p for p in cited if not any(p.startswith(w + "/") for w in written)] == ["runs/bench-s8/b128.txt"]


# the project's own history: development rounds, commits as evidence, issue numbers, this machine
JOURNAL = re.compile(
    r"\bsession[- ]\d|\b(?:this|earlier|later|next|previous) session\b|\bround \d|\bcommit `?[0-9a-f]{7}|"
    r"\bissue \d+|(?<![\w/])#\d{2,}\b|\bthis (?:project's )?machine\b|\bno GPU (?:yet|was lent)|git worktree",
    re.IGNORECASE,
)


def test_pages_carry_no_development_journal():
    found = []
    for page in [p for p in PAGES if p != "CONTRIBUTING.md"]:  # the developers' page may name its machine
        # prose only: a fenced block is a command or what a program prints, run by tests/test_readme.py
        prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), (ROOT / page).read_text(), flags=re.S)
        for n, line in enumerate(prose.splitlines(), 1):
            if JOURNAL.search(line):
                found.append(f"{page}:{n}: {line.strip()[:100]}")
    assert found == []


@pytest.mark.parametrize(
    "line",
    ["measured in session 8", "at commit `a9de672`", "see issue 22", "on this machine", "before this round 7"],
)
def test_the_journal_check_catches_each_kind(line):
    assert JOURNAL.search(line)
