"""User-facing errors: one line that names the problem and the fix.

The command-line entry points print these as ``error: <message>`` and exit with
status 2 instead of showing a traceback; anything else is a bug and keeps its
traceback. Messages name settings as the library spells them (`` `lr=1e-3` ``); the command line
shows them as flags (:func:`as_flags`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping


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
