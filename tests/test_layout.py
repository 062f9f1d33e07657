"""The package's import map: no circles, nothing imports a layer above its own, no module over about
450 lines. Imports inside functions count: a circle dodged by a late import is still a circle."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "pyro_vae"

# lowest first; a module may import its own layer or any below it, never one above
LAYERS = [
    ("pyro_vae.errors", "pyro_vae.files", "pyro_vae.distributed", "pyro_vae.resources", "pyro_vae.images"),
    ("pyro_vae.parts", "pyro_vae.objectives", "pyro_vae.notebook"),
    ("pyro_vae.models", "pyro_vae.data"),
    ("pyro_vae.config", "pyro_vae.usage"),
    ("pyro_vae.runs",),
    ("pyro_vae.evaluate", "pyro_vae.studies", "pyro_vae.plots", "pyro_vae.pictures", "pyro_vae.training"),
    ("pyro_vae.benchmark", "pyro_vae.recipes", "pyro_vae.pretrained"),
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


# flags the library may still print: other programs' (torchrun's) and whole command lines it suggests
COMMAND_LINE_ONLY = {"--resume", "--nproc-per-node", "--list", "--config"}


def test_library_messages_name_settings_not_flags():
    """Messages in the library spell a setting as `name` or `name=value` (what a Python caller passes);
    only the command line turns them into flags (pyro_vae.errors.as_flags)."""
    import io
    import re
    import tokenize

    found = []
    for module, path in modules().items():
        if module in ("pyro_vae.cli", "pyro_vae.__main__", "pyro_vae.errors"):  # the translators
            continue
        if module == "pyro_vae.benchmark.check":  # writes the command lines of its child processes
            continue
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type != tokenize.STRING or re.match(r"^[rbfuRBFU]*(\"\"\"|''')", tok.string):
                continue  # docstrings describe the command line too
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", tok.string):
                if flag not in COMMAND_LINE_ONLY:
                    found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {flag}")
    assert found == []


@pytest.mark.parametrize(
    "message,shown",
    [
        ("unknown `inference='x'`; choose one of ladder, bottom-up", "unknown --inference 'x'; choose one of ladder"),
        ("e.g. `lr=1e-3`", "e.g. --lr 1e-3"),
        ("`batch_norm` applies to `model=ladder`", "--batch-norm applies to --model ladder"),
        ("`compile=True` and `cuda_graphs`", "--compile and --cuda-graphs"),
        ("`download=False` is set", "--no-download is set"),
        ("leave `progress` on", "leave --no-progress on"),
        ("drop `train=False`", "drop --no-train"),
        ("`lr_milestones=200 350`", "--lr-milestones 200 350"),
        ("a `ks` of 5", "a --k of 5"),
        (
            "no marks: --resume RUN, `Not A Setting`, pyro_vae.data",
            "no marks: --resume RUN, `Not A Setting`, pyro_vae.data",
        ),
    ],
)
def test_the_command_line_shows_settings_as_flags(message, shown):
    from pyro_vae.errors import as_flags

    assert as_flags(message, aliases={"ks": "k"}).startswith(shown)
