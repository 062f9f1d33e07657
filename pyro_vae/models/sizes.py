"""The sizes no network can have, refused in one line before anything is built."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from pyro_vae.errors import ConfigError


def check_sizes(
    event_shape: Sequence[int],
    z_dim: int,
    hidden: Sequence[int],
    decoder_hidden: Sequence[int] | None,
    likelihood_scale: float,
) -> None:
    """One line for sizes no network can have (the settings a :class:`TrainConfig` checks for the CLI)."""

    def count(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 1

    if isinstance(event_shape, (str, bytes)) or not isinstance(event_shape, Sequence) or not event_shape:
        raise ConfigError(f"`event_shape` must be the shape of one data point, e.g. (1, 28, 28), got {event_shape!r}")
    if not all(count(d) for d in event_shape):
        raise ConfigError(f"`event_shape` must hold positive integers, got {tuple(event_shape)}")
    if not count(z_dim):
        raise ConfigError(f"`z_dim` must be a positive integer, got {z_dim!r}")
    for name, widths in (("hidden", hidden), ("decoder_hidden", decoder_hidden or ())):
        if not all(count(w) for w in widths):
            raise ConfigError(f"`{name}` must be positive widths (or empty for a linear map), got {list(widths)}")
    if not (isinstance(likelihood_scale, numbers.Real) and math.isfinite(likelihood_scale) and likelihood_scale > 0):
        raise ConfigError(f"`likelihood_scale` must be a finite number > 0, got {likelihood_scale!r}")
