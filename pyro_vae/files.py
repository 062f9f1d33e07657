"""Files that are never half-written: every file this library writes (checkpoints, metrics, results,
cached arrays) goes through :func:`write_atomic`."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# the process umask, read once (os.umask can only be read by setting it)
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file through a temporary file in the same folder, flushed and fsynced, then renamed over
    ``path``: a write interrupted at any point leaves the old file (or none) intact.

    :param path: the file to write.
    :param write: writes the contents to the binary file object it is given.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file is as readable as any other
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # make the rename itself durable
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_writable_file(path: str | Path, flag: str = "`out`", example: str = "eval.json") -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, a missing folder, or a
    place where no file can be made (permissions, read-only or special file systems).

    :param flag: the option that named ``path``, for the message.
    :param example: a file name to suggest when ``path`` is a folder.
    """
    from pyro_vae.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; pass a file name such as {path / example}")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: folder {parent} does not exist (or is a file); create it or pass another")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path}: cannot write there (permission denied); pass another {flag}")
    try:  # permissions are not the whole story: try a file there
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); pass another {flag}") from None


# a settings file names each of about sixty settings once; a megabyte is far beyond any real one
MAX_SETTINGS_BYTES = 2**20


def read_settings_file(path: str) -> dict[str, Any]:
    """Settings from a JSON file for ``--config``. A run's own ``config.json`` works: its ``out``
    is dropped, so repeating a run writes a new folder, and its bookkeeping keys are ignored. Anything that
    cannot be settings (unreadable, not JSON, absurdly large or deeply nested) is one :class:`ConfigError`."""
    from pyro_vae.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file; pass a JSON file of settings (a run's config.json works)")
    try:
        text = p.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path} is not JSON ({exc}); pass a JSON object of settings") from None
    except OSError as exc:
        raise ConfigError(f"--config {path} cannot be read ({exc.strerror or exc}); pass a readable file") from None
    if len(text) > MAX_SETTINGS_BYTES:
        raise ConfigError(f"--config {path} holds {len(text):,} characters, more than any settings file; pass another")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {path} is not JSON ({exc}); pass a JSON object of settings") from None
    except RecursionError:
        raise ConfigError(f"--config {path} nests too deeply to be settings; pass a JSON object of settings") from None
    if not isinstance(d, dict):
        raise ConfigError(f"--config {path} holds a JSON {type(d).__name__}; pass a JSON object of settings")
    if "versions" in d:  # a run folder's config.json
        d.pop("out", None)
    return d


def check_out_folder(out: str | Path, flag: str = "`out`") -> None:
    """Refuse, before any work, a folder that outputs cannot go to: a file, a folder below a file, or a place
    where nothing can be written (permissions, read-only file systems). Nothing is created here."""
    from pyro_vae.errors import ConfigError

    out = Path(out)
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == out else f"lies below the file {probe}"
        raise ConfigError(f"{flag} {out} {what}; pass a folder")
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"{flag} {out}: cannot write in {probe} (permission denied); pass another {flag}")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".probe.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{flag} {out}: cannot write in {probe} ({exc.strerror or exc}); pass another {flag}"
        ) from None
