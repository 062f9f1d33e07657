"""User-facing errors: one line that names the problem and the fix.

The command-line entry points print these as ``error: <message>`` and exit with
status 2 instead of showing a traceback; anything else is a bug and keeps its
traceback. Messages name settings as the library spells them (`` `lr=1e-3` ``); the command line
shows them as flags (:func:`as_flags`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn


class PyroVAEError(Exception):
    """Base class of the errors a user can cause and fix (bad settings, missing data)."""


class ConfigError(PyroVAEError, ValueError):
    """A setting is impossible or unknown (a ``ValueError`` too, as Python code would raise)."""


class DataError(PyroVAEError):
    """Data are missing, or do not match what the likelihood expects."""


# A message names a setting as `name`, or a setting with a value as `name=value`: the Python name a
# user of the library passes. The command line shows the same message with its flags instead.
_SETTING = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")
# settings whose flag turns them off
_NEGATED = {"progress": "--no-progress", "download": "--no-download", "train": "--no-train"}


def as_flags(message: str, aliases: Mapping[str, str] | None = None) -> str:
    """``message`` as the command line says it: `` `lr=1e-3` `` becomes ``--lr 1e-3``, `` `batch_norm` ``
    becomes ``--batch-norm``, `` `compile=True` `` becomes ``--compile``, `` `download=False` ``
    becomes ``--no-download``.

    :param aliases: setting names whose flag is spelled otherwise (``{"ks": "k"}``).
    """

    def flag(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        name = (aliases or {}).get(name, name)
        if name in _NEGATED and value in (None, "False"):
            return _NEGATED[name]
        text = "--" + name.replace("_", "-")
        return text if value in (None, "True") else f"{text} {value}"

    return _SETTING.sub(flag, message)


def stdout_gone() -> None:
    """The reader of standard output has gone (``... | head``): send what is still buffered to /dev/null, so
    the exit's flush cannot raise again, and let the command stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real descriptor (captured output): nothing is left to flush into a pipe
        pass


class OneLineParser(argparse.ArgumentParser):
    """argparse with the commands' rules: a bad flag is one line (``error: …; see PROG --help``) and exit 2,
    and ``--help`` into a pipe whose reader left stops quietly with exit 1. Under torchrun every rank parses
    the same flags, and rank 0 alone says what is wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n" if os.environ.get("RANK", "0") == "0" else None)

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse's own drops write errors
        if not message:
            return
        file = file or sys.stderr
        try:
            file.write(message)
            file.flush()
        except BrokenPipeError:
            stdout_gone()
            raise SystemExit(1) from None


def run_script(fn: Callable[[], object]) -> int:
    """Run a script's work: a :class:`PyroVAEError` is one line on stderr and exit 2 (settings spelled as
    flags), a closed standard output stops it quietly with exit 1; anything else keeps its traceback."""
    try:
        fn()
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_gone()
        return 1
    except PyroVAEError as exc:
        print(f"error: {as_flags(str(exc))}", file=sys.stderr)
        return 2
    return 0
