"""Write the intersphinx inventories the docs link with: the objects of Python, torch, Pyro and matplotlib
that these docs name, each with its page on the project's own site. The build machines are offline, so
the full inventories cannot be fetched at build time; these small ones are committed instead.

Run ``python docs/_inventories/make.py`` after naming a new outside object in a docstring or a page; a
missing one fails the docs build (nitpicky) with its name."""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# project -> [(name, role, page#anchor)]; "$" in the address stands for the name
OBJECTS: dict[str, list[tuple[str, str, str]]] = {
    "python": [
        *[
            (n, "py:class", "library/functions.html#$")
            for n in ("int", "float", "str", "bool", "dict", "list", "tuple", "object", "type")
        ],
        *[
            (n, "py:exception", "library/exceptions.html#$")
            for n in ("Exception", "ValueError", "TypeError", "KeyError", "OSError", "RuntimeError")
        ],
        *[
            (f"collections.abc.{n}", "py:class", "library/collections.abc.html#$")
            for n in ("Sequence", "Mapping", "Callable", "Iterator", "Iterable")
        ],
        ("pathlib.Path", "py:class", "library/pathlib.html#$"),
        ("os.PathLike", "py:class", "library/os.html#$"),
        ("typing.Any", "py:data", "library/typing.html#$"),
        ("None", "py:data", "library/constants.html#$"),
        ("contextlib.AbstractContextManager", "py:class", "library/contextlib.html#$"),
        ("argparse.ArgumentParser", "py:class", "library/argparse.html#$"),
    ],
    "torch": [
        ("torch.Tensor", "py:class", "tensors.html#$"),
        ("torch.device", "py:class", "tensor_attributes.html#$"),
        ("torch.dtype", "py:class", "tensor_attributes.html#$"),
        ("torch.Size", "py:class", "size.html#$"),
        ("torch.Generator", "py:class", "generated/$.html#$"),
        ("torch._C.Generator", "py:class", "generated/torch.Generator.html#torch.Generator"),
        ("torch.nn.Module", "py:class", "generated/$.html#$"),
        ("nn.Module", "py:class", "generated/torch.nn.Module.html#torch.nn.Module"),  # annotations written nn.Module
        ("torch.nn.modules.module.Module", "py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
        ("torch.nn.ModuleList", "py:class", "generated/$.html#$"),
        ("nn.ModuleList", "py:class", "generated/torch.nn.ModuleList.html#torch.nn.ModuleList"),
        ("torch.optim.Optimizer", "py:class", "optim.html#$"),
        (
            "torch.distributions.Distribution",
            "py:class",
            "distributions.html#torch.distributions.distribution.Distribution",
        ),
        ("torch.distributions.distribution.Distribution", "py:class", "distributions.html#$"),
    ],
    "pyro": [
        ("pyro.infer.elbo.ELBO", "py:class", "inference_algos.html#$"),
        ("pyro.infer.ELBO", "py:class", "inference_algos.html#pyro.infer.elbo.ELBO"),
        ("pyro.infer.Trace_ELBO", "py:class", "inference_algos.html#pyro.infer.trace_elbo.Trace_ELBO"),
        (
            "pyro.infer.TraceMeanField_ELBO",
            "py:class",
            "inference_algos.html#pyro.infer.trace_mean_field_elbo.TraceMeanField_ELBO",
        ),
        ("pyro.infer.RenyiELBO", "py:class", "inference_algos.html#pyro.infer.renyi_elbo.RenyiELBO"),
        ("pyro.infer.SVI", "py:class", "inference_algos.html#pyro.infer.svi.SVI"),
        ("pyro.plate", "py:class", "primitives.html#pyro.primitives.plate"),
        ("pyro.primitives.plate", "py:class", "primitives.html#$"),
        ("pyro.distributions.Distribution", "py:class", "distributions.html#$"),
        (
            "pyro.distributions.torch_distribution.TorchDistribution",
            "py:class",
            "distributions.html#pyro.distributions.TorchDistribution",
        ),
    ],
    "matplotlib": [
        ("matplotlib.axes.Axes", "py:class", "api/_as_gen/$.html#$"),
        ("matplotlib.axes._axes.Axes", "py:class", "api/_as_gen/matplotlib.axes.Axes.html#matplotlib.axes.Axes"),
        ("matplotlib.figure.Figure", "py:class", "api/_as_gen/$.html#$"),
    ],
}


def write(project: str, objects: list[tuple[str, str, str]]) -> None:
    header = f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n"
    header += "# The remainder of this file is compressed using zlib.\n"
    lines = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(objects))
    (HERE / f"{project}.inv").write_bytes(header.encode() + zlib.compress(lines.encode()))


if __name__ == "__main__":
    for project, objects in OBJECTS.items():
        write(project, objects)
