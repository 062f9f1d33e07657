"""Everything a run keeps on disk, in one package that imports nothing above it:

* :mod:`~pyro_vae.runs.folder`: where a run may be written, its ``config.json`` and data record, its
  ``metrics.csv``;
* :mod:`~pyro_vae.runs.checkpoint`: the checkpoint format, its safe read, its compatibility checks and
  the epoch files' rotation;
* :mod:`~pyro_vae.runs.load`: loading a run's model (:func:`load_run`), or the model with the held-out
  data it is scored on (:func:`load_run_and_data`);
* :mod:`~pyro_vae.runs.results`: the evaluation results, ``eval.json``.
"""

from pyro_vae.runs.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from pyro_vae.runs.folder import (
    PARTS,
    RunError,
    check_out_dir,
    make_run_dir,
    read_metrics,
    read_run_config,
    read_run_json,
    write_metrics,
)
from pyro_vae.runs.load import LoadedRun, load_run, load_run_and_data
from pyro_vae.runs.results import check_results_file, read_results, record_results

__all__ = [
    "PARTS",
    "CheckpointError",
    "LoadedRun",
    "RunError",
    "check_out_dir",
    "check_results_file",
    "latest_checkpoint",
    "load_run",
    "load_run_and_data",
    "make_run_dir",
    "read_checkpoint",
    "read_metrics",
    "read_results",
    "read_run_config",
    "read_run_json",
    "record_results",
    "save_checkpoint",
    "write_metrics",
]
