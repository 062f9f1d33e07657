"""Sphinx configuration: MyST Markdown pages, the API from docstrings, reference tables generated from the
code (``_ext/pyro_vae_docs.py``), the notebooks rendered without running them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import pyro_vae  # noqa: E402

project = "pyro_vae"
author = "the pyro_vae authors"
copyright = "2026, the pyro_vae authors"
version = release = pyro_vae.__version__

extensions = [
    "myst_nb",  # MyST Markdown pages and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "pyro_vae_docs",
]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks run under the tests (smoke mode), not at build time
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"

# every cross-reference must resolve (sphinx-build -n)
nitpicky = True
nitpick_ignore_regex = [
    # names of annotations that are not objects anywhere: typing's forward references and aliases
    ("py:class", r"(optional|callable|Ellipsis|\.\.\.)"),
]

# offline builds: the objects these docs link to, listed with their pages (see _inventories/make.py)
intersphinx_mapping = {
    name: (url, (str(DOCS / "_inventories" / f"{name}.inv"),))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "torch": "https://docs.pytorch.org/docs/stable/",
        "pyro": "https://docs.pyro.ai/en/stable/",
        "matplotlib": "https://matplotlib.org/stable/",
    }.items()
}

html_theme = "furo"
html_title = f"pyro_vae {release}"
html_static_path = ["_static"]


def _copy_notebooks(app: object) -> None:
    """The notebooks live in ``notebooks/`` beside the package; the site shows them as committed."""
    target = DOCS / "tutorials" / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if nb.stem.endswith("_run"):
            continue
        dest = target / nb.name
        if not dest.exists() or dest.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, dest)


def setup(app: object) -> None:
    app.connect("builder-inited", _copy_notebooks)  # type: ignore[attr-defined]
