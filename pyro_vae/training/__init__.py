"""SVI training: ``train(config) -> TrainResult`` and ``resume(run_dir) -> TrainResult``.

The objective is Pyro's own ``Trace_ELBO`` (Monte-Carlo KL) or ``TraceMeanField_ELBO``
(closed-form KL where one exists), or the importance-weighted bound
(:class:`pyro_vae.objectives.IWAE_ELBO`), differentiated with autograd and stepped with
``torch.optim.Adam`` over the VAE's parameters, the pattern of Pyro's
``examples/svi_torch.py``. The loop adds no host-device synchronisation of its
own: the loss is summed on the device and read every ``log_every`` steps.

A run survives interruption: SIGINT/SIGTERM finish the current step and write
``checkpoints/last.pt``; :func:`resume` continues from it with every random state restored,
so the finished run is the same, to the last digit on the CPU, as one never interrupted.
A non-finite loss or gradient stops the run at the next check with the last good state saved.
"""

from pyro_vae.training.guard import NonFiniteLoss
from pyro_vae.training.loop import ELBOLoss, EpochProgress, heldout_loss, layer_weights, make_optimizer, run_epoch
from pyro_vae.training.run import Interrupted, TrainResult, resume, train
from pyro_vae.training.setup import check_image_data, describe_objective, resolve_device

__all__ = [
    "ELBOLoss",
    "EpochProgress",
    "Interrupted",
    "NonFiniteLoss",
    "TrainResult",
    "check_image_data",
    "describe_objective",
    "heldout_loss",
    "layer_weights",
    "make_optimizer",
    "resolve_device",
    "resume",
    "run_epoch",
    "train",
]
