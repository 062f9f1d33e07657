"""The package's import map: no circles, nothing imports a layer above its own, no module over about
450 lines. Imports inside functions count: a circle dodged by a late import is still a circle."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "pyro_vae"

# lowest first; a module may import its own layer or any below it, never one above
LAYERS = [
    ("pyro_vae.errors", "pyro_vae.files", "pyro_vae.distributed", "pyro_vae.resources", "pyro_vae.images"),
    ("pyro_vae.parts", "pyro_vae.objectives", "pyro_vae.notebook"),
    ("pyro_vae.models", "pyro_vae.data"),
    ("pyro_vae.config",),
    ("pyro_vae.runs",),
    ("pyro_vae.evaluate", "pyro_vae.studies", "pyro_vae.plots", "pyro_vae.training"),
    ("pyro_vae.benchmark", "pyro_vae.recipes"),
    ("pyro_vae.cli", "pyro_vae.__main__", "pyro_vae.__init__"),
]
MAX_LINES = 460


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The pyro_vae modules ``path`` imports anywhere (functions included), except under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_vae"):
            for alias in node.names:  # `from pyro_vae import distributed` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pyro_vae"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        for top in layer:
            if module == top or module.startswith(top + "."):
                return i
    if module == "pyro_vae":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} has no layer in tests/test_layout.py; give it one")


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports_of(p, set(mods)) if i != m} for m, p in mods.items()}


def test_no_import_circles():
    g = graph()
    # Tarjan's strongly connected components
    index, low, stack, on, comps = {}, {}, [], set(), []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(comp)

    for v in g:
        if v not in index:
            strong(v)
    circles = [sorted(c) for c in comps if len(c) > 1]
    assert circles == [], f"import circles: {circles}"


def test_nothing_imports_upward():
    upward = [
        f"{m} imports {i}" for m, deps in graph().items() for i in deps if i != "pyro_vae" and layer_of(i) > layer_of(m)
    ]
    assert upward == []


def test_no_module_is_over_about_450_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
