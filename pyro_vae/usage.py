"""Settings a run would silently ignore: which settings each part of a run uses, so that a value given to
one it does not use is refused (:meth:`pyro_vae.TrainConfig.check_all_used`) instead of doing nothing."""

from __future__ import annotations

from typing import Any

from pyro_vae.errors import ConfigError


def _differs(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return tuple(value) != tuple(default)
    return value != default


_SCALED = ("normal", "normal-image", "normal-pixel", "laplace")
# (settings, whether the run uses them, what they need): what check_all_used refuses when ignored
_APPLIES_ONLY: list[tuple[tuple[str, ...], Any, str]] = [
    (
        ("image_size", "channels", "test_fraction", "split_seed", "cache_dir"),
        lambda c: c.dataset == "folder",
        "`dataset=folder`",
    ),
    (("inference", "latents", "batch_norm"), lambda c: c.model == "ladder", "`model=ladder`"),
    (("conv_channels", "conv_strides", "conv_kernel", "conv_depth"), lambda c: c.net == "conv", "`net=conv`"),
    (
        ("likelihood_scale",),
        lambda c: c.likelihood in (*_SCALED, "custom"),
        "`likelihood` " + ", ".join(_SCALED),
    ),
    (("particles",), lambda c: c.elbo == "iwae", "`elbo=iwae`"),
    (
        ("ar_kernel", "ar_dropout"),
        lambda c: c.likelihood == "autoregressive-mixture",
        "`likelihood=autoregressive-mixture`",
    ),
    (("labels", "classifier_weight"), lambda c: c.model == "m2", "`model=m2`"),
    (("select_k",), lambda c: c.model in ("vae", "ladder"), "`model=vae` and `model=ladder`"),
    (("select_every",), lambda c: c.select_k is not None, "`select_k`"),
    (("warmup", "warmup_unit"), lambda c: c.kl_schedule == "linear", "`kl_schedule=linear`"),
    (("cycles",), lambda c: c.kl_schedule == "cyclical", "`kl_schedule=cyclical`"),
    (("lr_gamma",), lambda c: c.lr_milestones is not None, "`lr_milestones`"),
]


def check_all_used(config: Any, defaults: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first setting given a value (not its default) that ``config``'s
    run would not use, naming what it needs."""
    for names, applies, needs in _APPLIES_ONLY:
        if applies(config):
            continue
        given = [n for n in names if _differs(getattr(config, n), defaults[n])]
        if given:
            shown = " and ".join(f"`{n}`" for n in given)
            raise ConfigError(f"{shown} {'applies' if len(given) == 1 else 'apply'} to {needs} only: drop it")
