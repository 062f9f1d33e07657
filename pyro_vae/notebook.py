"""Settings the notebooks read from the environment, resolved the same way wherever Jupyter starts."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The folder that holds ``notebooks/``: Jupyter runs a notebook inside ``notebooks/``, a shell in
    the repository root; both resolve relative paths from the root, as the command line does."""
    cwd = Path.cwd()
    return cwd.parent if cwd.name == "notebooks" else cwd


def env_path(name: str, default: str | None = None) -> str | None:
    """The path in environment variable ``name`` (or ``default``), made absolute: a relative path is
    taken from :func:`repo_root`. ``None`` when neither is set."""
    value = os.environ.get(name) or default
    if not value:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (repo_root() / path).resolve())


def smoke() -> bool:
    """``PYRO_VAE_SMOKE=1``: tiny data and epochs, how the test suite runs the notebooks."""
    return os.environ.get("PYRO_VAE_SMOKE") == "1"
