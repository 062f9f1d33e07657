"""A run's evaluation results, ``eval.json``: kept per split, checkpoint, limit, seed and K, so a new
evaluation merges into the entry it extends and never replaces another kind."""

from __future__ import annotations

import json
from pathlib import Path

from pyro_vae.errors import ConfigError
from pyro_vae.files import check_writable_file, write_atomic

# what makes two evaluations the same: their numbers are merged (new K added, ELBO rows replaced)
RESULT_KEY = ("split", "checkpoint", "epoch", "limit", "seed", "elbo_particles")


def _read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path} exists but is not an evaluation file ({type(exc).__name__}); move it away or pass `out`"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("evaluations"), list):
        return data["evaluations"]
    if isinstance(data, dict) and "nll" in data and "split" in data:  # one result, as written before
        return [data]
    raise ConfigError(f"{path} exists but is not an evaluation file; move it away or pass `out`")


def check_results_file(path: str | Path) -> None:
    """Refuse, before any work, a results file that cannot be read back or written."""
    check_writable_file(path)
    _read_results(Path(path))


def record_results(path: str | Path, result: dict) -> dict:
    """Add ``result`` to the results file ``path`` (``eval.json``), kept per split, checkpoint, limit,
    seed and K: an evaluation of the same kind merges its K values into the earlier entry, any
    other is added beside it, so a ``--split train`` run never replaces the test results.

    :returns: the entry as stored.
    """
    path = Path(path)
    entries = _read_results(path)
    key = tuple(result.get(k) for k in RESULT_KEY)
    for entry in entries:
        if tuple(entry.get(k) for k in RESULT_KEY) == key:
            nll = {**entry.get("nll", {}), **result["nll"]}
            entry.update(result)
            entry["nll"] = dict(sorted(nll.items(), key=lambda kv: int(kv[0])))
            stored = entry
            break
    else:
        entries.append(result)
        stored = result
    text = json.dumps({"evaluations": entries}, indent=2) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))
    return stored


def read_results(path: str | Path) -> list[dict]:
    """Every evaluation stored in a results file (``eval.json``)."""
    return _read_results(Path(path))
