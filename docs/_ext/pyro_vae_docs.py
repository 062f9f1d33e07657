"""Reference tables generated from the code, so they cannot drift from it: the commands' flags (from their
argparse parsers), the training settings (from :class:`pyro_vae.TrainConfig`, grouped by concern), the
swappable parts (from their registries), the datasets and the recipes.

Each table is a directive: ``{pyro-vae-cli} train``, ``{pyro-vae-config} data``, ``{pyro-vae-parts} priors``,
``{pyro-vae-recipes}``. The rows come from the ``*_rows`` functions, which the tests call too.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence

from docutils import nodes
from docutils.parsers.rst import Directive

# every TrainConfig field in exactly one group (tests/test_docs.py checks it), in the reference's order
GROUPS: dict[str, tuple[str, ...]] = {
    "data": (
        "dataset", "data_dir", "download", "image_size", "channels", "test_fraction", "split_seed", "patches",
        "cache_dir", "data_placement", "limit_train", "limit_test", "validation", "test_binarization_seed",
        "select_k", "select_every",
    ),
    "model": (
        "model", "inference", "latents", "batch_norm", "labels", "classifier_weight", "net", "z_dim", "hidden",
        "decoder_hidden", "conv_channels", "conv_strides", "conv_kernel", "conv_depth", "prior", "likelihood",
        "likelihood_scale", "mixture_components", "ar_kernel", "ar_dropout", "guide", "flows", "flow_hidden",
    ),
    "objective": ("elbo", "particles", "beta", "kl_schedule", "warmup", "warmup_unit", "cycles", "free_bits"),
    "optimisation": (
        "epochs", "batch_size", "lr", "lr_milestones", "lr_gamma", "weight_decay", "ema", "clip_grad",
        "clip_relative", "seed",
    ),
    "run": (
        "device", "threads", "compile", "bf16", "cuda_graphs", "eval_batch_size", "log_every", "keep_checkpoints",
        "time_limit", "progress", "out",
    ),
}  # fmt: skip


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from pyro_vae import cli

    return {
        "train": cli.train_parser,
        "evaluate": cli.evaluate_parser,
        "pictures": cli.pictures_parser,
        "benchmark": cli.benchmark_parser,
        "reproduce": cli.reproduce_parser,
    }


COMMANDS = ("train", "evaluate", "pictures", "benchmark", "reproduce")


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction):
        return ""
    if isinstance(action, argparse._StoreFalseAction):
        return ""
    d = action.default
    return " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)


def cli_rows(command: str) -> list[tuple[str, str, str]]:
    """(flags, default, what it does) for every argument of ``python -m pyro_vae COMMAND``."""
    parser = _parsers()[command]()
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(action.option_strings) or action.dest.upper()
        if action.choices is not None:
            names += " {" + ",".join(map(str, action.choices)) + "}"
        elif action.nargs in ("+", "*") and action.option_strings:
            names += " N [N ...]"
        elif action.option_strings and action.nargs != 0:
            names += f" {action.metavar or action.dest.upper()}"
        text = (action.help or "").replace("%(default)s", str(action.default))
        shown = _default(action)
        if shown and "(default" in text:
            text = text[: text.rindex("(default")].rstrip()
        rows.append((names, shown, text))
    return rows


def config_rows(group: str) -> list[tuple[str, str, str]]:
    """(field and type, default, why it exists and what it does) for the settings of ``group``."""
    from sphinx.pycode import ModuleAnalyzer

    from pyro_vae.config import TrainConfig

    why = {name: " ".join(lines).strip() for (_, name), lines in ModuleAnalyzer.for_module("pyro_vae.config")
           .find_attr_docs().items()}  # fmt: skip
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    rows = []
    for name in GROUPS[group]:
        f = fields[name]
        default = f.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        choices = f.metadata.get("choices")
        text = why.get(name) or f.metadata["help"]
        if choices:
            text = f"{text.rstrip('.')}. Choices: {', '.join(map(str, choices))}."
        flag = {"download": "--no-download", "progress": "--no-progress"}.get(name, "--" + name.replace("_", "-"))
        rows.append((f"{name}: {f.type}  ({flag})", shown, text))
    return rows


def _registries() -> dict[str, object]:
    from pyro_vae.data import DATASETS
    from pyro_vae.objectives import OBJECTIVES, SCHEDULES
    from pyro_vae.parts.guides import GUIDES
    from pyro_vae.parts.likelihoods import LIKELIHOODS
    from pyro_vae.parts.nets import NETWORKS
    from pyro_vae.parts.priors import PRIORS

    return {
        "priors": PRIORS,
        "likelihoods": LIKELIHOODS,
        "networks": NETWORKS,
        "guides": GUIDES,
        "datasets": DATASETS,
        "objectives": OBJECTIVES,
        "schedules": SCHEDULES,
    }


def _about(entry: object) -> str:
    if isinstance(entry, str):
        return entry
    for attr in ("about", "description", "what", "title"):
        if isinstance(getattr(entry, attr, None), str):
            return getattr(entry, attr)
    doc = getattr(entry, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _extra(kind: str, name: str) -> str:
    """A column the code can answer for each part: a prior's KL from a Gaussian q(z|x), the data a
    likelihood models, a dataset's files, shape and splits."""
    if kind == "priors":
        from pyro_vae import build_vae
        from pyro_vae.parts.priors import has_closed_form_kl

        return (
            "closed form"
            if has_closed_form_kl(build_vae((1, 4, 4), z_dim=2, hidden=(4,), prior=name).prior)
            else ("Monte-Carlo (no closed form)")
        )
    if kind == "likelihoods":
        from pyro_vae.parts.likelihoods import build_likelihood

        data_kind = getattr(build_likelihood(name, (1, 4, 4)), "data_kind", "binary")
        return {"binary": "binary pixels", "unit": "intensities in [0, 1]", "byte": "8-bit values 0 … 255"}[data_kind]
    if kind == "datasets":
        from pyro_vae.data.registry import DATASETS

        spec = DATASETS[name]
        shape = "×".join(map(str, spec.shape)) if spec.shape else "set by the images"
        return f"{spec.layout}; {shape}; splits: {', '.join(spec.splits)}"
    return ""


# the extra column's heading, for the kinds that have one
EXTRA = {"priors": "KL from a Gaussian q(z|x)", "likelihoods": "data it models", "datasets": "files; shape; splits"}


def parts_rows(kind: str) -> list[tuple[str, str, str]]:
    """(name, the computed column of :data:`EXTRA` or "", description) for every entry of one registry."""
    registry = _registries()[kind]
    if isinstance(registry, (tuple, list)):
        return [(name, "", "") for name in registry]
    return [(name, _extra(kind, name), _about(registry[name])) for name in registry]


def recipe_rows() -> list[tuple[str, str, str]]:
    """(recipe, reference in nats or percent, source and what differs here) for every shipped recipe."""
    from pyro_vae.recipes import recipes

    rows = []
    for name, r in sorted(recipes().items()):
        ref = r.source.get("reference")
        text = f"{r.source.get('title', '')}. {r.source.get('paper', '')}."
        if r.source.get("differs"):
            text += f" Here: {r.source['differs']}."
        unit = " %" if r.metric == "accuracy" else " nats"
        rows.append((name, "" if ref is None else f"{ref}{unit}", text.replace(". .", ".").strip(". ") + "."))
    return rows


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> nodes.table:
    table = nodes.table(classes=["pyro-vae-generated"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in (28, 14, 58)[: len(headers)]:
        group += nodes.colspec(colwidth=width)

    def row(cells: Sequence[str], head: bool = False) -> nodes.row:
        r = nodes.row()
        for i, cell in enumerate(cells):
            entry = nodes.entry()
            para = nodes.paragraph()
            para += nodes.literal(text=cell) if (i == 0 and not head and cell) else nodes.Text(cell)
            entry += para
            r += entry
        return r

    thead = nodes.thead()
    thead += row(headers, head=True)
    group += thead
    body = nodes.tbody()
    for cells in rows:
        body += row(cells)
    group += body
    return table


class _TableDirective(Directive):
    optional_arguments = 1
    headers: tuple[str, ...] = ()

    def rows(self, arg: str) -> list[tuple[str, str, str]]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        arg = self.arguments[0] if self.arguments else ""
        try:
            rows = self.rows(arg)
        except KeyError:
            raise self.error(f"{self.name}: unknown argument {arg!r}") from None
        return [self.table(arg, rows)]

    def table(self, arg: str, rows: list[tuple[str, str, str]]) -> nodes.table:
        return _table(self.headers, rows)


class CLITable(_TableDirective):
    headers = ("flag", "default", "what it does")

    def rows(self, arg: str) -> list[tuple[str, str, str]]:
        return cli_rows(arg)


class ConfigTable(_TableDirective):
    headers = ("setting", "default", "why, and what it does")

    def rows(self, arg: str) -> list[tuple[str, str, str]]:
        return config_rows(arg)


class PartsTable(_TableDirective):
    def rows(self, arg: str) -> list[tuple[str, str, str]]:
        return parts_rows(arg)

    def table(self, arg: str, rows: list[tuple[str, str, str]]) -> nodes.table:
        # name, description, then the computed column where the kind has one
        if arg in EXTRA:
            return _table(("name", "what it is", EXTRA[arg]), [(a, c, b) for a, b, c in rows])
        return _table(("name", "what it is"), [(a, c) for a, _, c in rows])


class RecipeTable(_TableDirective):
    headers = ("recipe", "reference", "source, and what differs here")

    def rows(self, arg: str) -> list[tuple[str, str, str]]:
        return recipe_rows()


def setup(app: object) -> dict[str, object]:
    app.add_directive("pyro-vae-cli", CLITable)  # type: ignore[attr-defined]
    app.add_directive("pyro-vae-config", ConfigTable)  # type: ignore[attr-defined]
    app.add_directive("pyro-vae-parts", PartsTable)  # type: ignore[attr-defined]
    app.add_directive("pyro-vae-recipes", RecipeTable)  # type: ignore[attr-defined]
    return {"parallel_read_safe": True, "parallel_write_safe": True}
