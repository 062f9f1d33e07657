"""User-facing errors: one line that names the problem and the fix.

The command-line entry points print these as ``error: <message>`` and exit with
status 2 instead of showing a traceback; anything else is a bug and keeps its
traceback.
"""


class PyroVAEError(Exception):
    """Base class of the errors a user can cause and fix (bad settings, missing data)."""


class ConfigError(PyroVAEError):
    """A setting is impossible or unknown."""


class DataError(PyroVAEError):
    """Data are missing, or do not match what the likelihood expects."""
