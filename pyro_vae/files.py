"""Files that are never half-written: every file this library writes (checkpoints, metrics, results,
cached arrays) goes through :func:`write_atomic`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

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
