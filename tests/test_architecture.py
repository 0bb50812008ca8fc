"""The package's shape: no import cycles, a small root, and the science free of nipype and CLI.

The import graph is read from the source with ``ast``, function-level (lazy) imports and
``if TYPE_CHECKING:`` imports included: a lazy import only hides a cycle until both functions
run in one process, and a type-only import is still a dependency (of the types, and of anyone
reading the code).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bids_app" / "vaefusion"
ROOT_MODULES = {"__init__.py", "__main__.py", "config.py", "errors.py"}
#: The floors of docs/architecture.md, lowest first: a module imports only from its own
#: package and the floors below its own (packages on one floor may import each other). The root
#: modules ``errors`` and ``config`` are floors of their own; ``vaefusion`` is the root package
#: (``__version__``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vaefusion", "errors"),
    ("disk",),
    ("model",),
    ("config",),
    ("inputs",),
    ("simulate", "training"),
    ("evaluation",),
    ("derivatives",),
    ("interpret",),
    ("reports",),
    ("interfaces",),
    ("workflows",),
    ("federated",),
    ("flare",),
    ("cli", "__main__"),
    ("bench",),
)
#: subpackages that hold the science: they must not know the workflow engine or the CLI
SCIENCE = ("inputs", "model", "training", "evaluation", "simulate")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, type_checking: bool = True) -> set[str]:
    """Every module ``path`` imports (absolute and relative); those under
    ``if TYPE_CHECKING:`` too, unless ``type_checking`` is false."""
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if type_checking else {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
        and _is_type_checking(node) for child in node.body for n in ast.walk(child)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from pkg import mod`` imports the submodule pkg.mod when there is one
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = _modules()
    return {name: {m for m in _imports(path, name) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_lazy_imports():
    """The reader must see imports inside functions (where the old cycle hid)."""
    graph = import_graph()
    assert "vaefusion.evaluation.methods" in graph["vaefusion.interfaces.group"]
    assert "vaefusion.disk.naming" in graph["vaefusion.derivatives.subject"]


def test_graph_sees_type_checking_imports(tmp_path):
    """An import under ``if TYPE_CHECKING:`` is an edge of the graph (a type-level cycle is a
    cycle), and only it is what the type_checking switch leaves out."""
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nimport a\n"
                      "if TYPE_CHECKING:\n    from b import X\n")
    assert {"a", "b", "b.X"} <= _imports(module, "m")
    assert "b" not in _imports(module, "m", type_checking=False)
    assert "a" in _imports(module, "m", type_checking=False)
    graph = import_graph()
    assert "vaefusion.workflows.status" in graph["vaefusion.cli.ending"]  # a TYPE_CHECKING import


def test_package_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Subpackage (or root module) -> the others it imports."""
    out: dict[str, set[str]] = {}
    for module, imported in graph.items():
        out.setdefault(_unit(module), set()).update(
            _unit(t) for t in imported if _unit(t) != _unit(module))
    for targets in list(out.values()):
        for t in targets:
            out.setdefault(t, set())
    return out


def test_no_package_level_cycles_and_no_floor_shared():
    """0 cycles between subpackages (a module cycle is one too), and every floor holds one
    package, so every arrow between packages runs down."""
    assert find_cycle(package_graph(import_graph())) is None
    assert find_cycle(package_graph({"vaefusion.a.x": {"vaefusion.b.y"},
                                     "vaefusion.b.y": {"vaefusion.a.z"}})) == ["a", "b", "a"]
    shared = [units for units in LAYERS if len(units) > 1]
    assert shared == [("vaefusion", "errors"), ("simulate", "training"), ("cli", "__main__")]


def _unit(module: str) -> str:
    """The floor-holder of a module: its subpackage, or the root module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up the floors of :data:`LAYERS` (or into a package that has no
    floor)."""
    floor = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    bad = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            a, b = _unit(module), _unit(target)
            if a == b:
                continue
            if a not in floor or b not in floor:
                bad.append(f"{module} -> {target}: {a if a not in floor else b} has no floor "
                           f"in LAYERS (docs/architecture.md)")
            elif floor[b] > floor[a]:
                bad.append(f"{module} (floor {floor[a]}, {a}) imports {target} "
                           f"(floor {floor[b]}, {b})")
    return bad


def test_layer_checker_finds_an_upward_import():
    graph = {"vaefusion.model.x": {"vaefusion.config"}, "vaefusion.config": {"vaefusion.disk.io"},
             "vaefusion.cli.a": {"vaefusion.model.x"}, "vaefusion.nowhere.b": set()}
    assert layer_violations(graph) == [
        "vaefusion.model.x (floor 2, model) imports vaefusion.config (floor 3, config)"]
    assert layer_violations({"vaefusion.model.x": {"vaefusion.nowhere.b"}})[0].endswith(
        "nowhere has no floor in LAYERS (docs/architecture.md)")


def test_every_subpackage_has_a_floor():
    floors = {unit for units in LAYERS for unit in units}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages - floors == set(), "add the new package to LAYERS and the architecture page"
    assert floors - packages - {"vaefusion", "errors", "config", "__main__"} == set()


def test_each_layer_imports_only_the_layers_below():
    """naming and atomic I/O (``disk/``) sit under everything; the model takes plain values,
    not a Config; the output writers (``derivatives/``) sit above evaluation."""
    assert layer_violations(import_graph()) == []


def test_architecture_page_lists_the_floors():
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    for units in LAYERS:
        for unit in units:
            if unit not in ("vaefusion", "__main__"):
                name = f"`{unit}.py`" if unit in ("errors", "config") else f"`{unit}/`"
                assert name in page, f"{name} is not on docs/architecture.md"


def test_package_root_holds_only_the_entry_modules():
    assert {p.name for p in PACKAGE.glob("*.py")} <= ROOT_MODULES


@pytest.mark.parametrize("package", SCIENCE)
def test_science_knows_nothing_of_nipype_or_the_cli(package):
    offenders = {}
    for path in (PACKAGE / package).rglob("*.py"):
        name = _module_name(path)
        bad = sorted(m for m in _imports(path, name)
                     if m.split(".")[0] == "nipype"
                     or m.startswith(("vaefusion.cli", "vaefusion.workflows",
                                      "vaefusion.interfaces")))
        if bad:
            offenders[name] = bad
    assert offenders == {}


#: The modules that hold the variants' registries: the only place a variant's name is compared
#: (as a registry key).
REGISTRIES = {"model/registry.py", "model/objective.py", "evaluation/methods.py"}


def name_comparisons(source: str, names: set[str]) -> list[str]:
    """Lines of ``source`` that compare a string literal with a variant's name: ``==``,
    ``!=``, ``in (...)`` or ``.startswith(...)`` (a name's prefix)."""
    found = []
    quoted = "|".join(re.escape(n) for n in sorted(names))
    patterns = [re.compile(rf"""(==|!=)\s*["']({quoted})["']"""),
                re.compile(rf"""["']({quoted})["']\s*(==|!=)"""),
                re.compile(rf"""\bin\s*[(\[{{][^)\]}}]*["']({quoted})["']""")]
    starts = re.compile(r"""startswith\(\s*["']([^"']+)["']""")
    for number, line in enumerate(source.splitlines(), 1):
        prefix = starts.search(line)
        if any(p.search(line) for p in patterns) or (
                prefix and any(n.startswith(prefix.group(1)) for n in names)):
            found.append(f"{number}: {line.strip()}")
    return found


def test_the_name_grep_finds_a_comparison():
    names = {"sigma", "pca-early"}
    assert name_comparisons('if lik == "sigma":\n    x = "sigma"\n', names) == [
        '1: if lik == "sigma":']
    assert len(name_comparisons('a in ("mask", "sigma")\nm.startswith("pca-")\n', names)) == 2


def test_no_variant_name_is_compared_outside_the_registries():
    """A likelihood, a scaling or a method is chosen through its registry's object, never by
    comparing its name (issue 23): a new variant then touches no other module."""
    from vaefusion.evaluation.methods import METHODS
    from vaefusion.model.objective import LIKELIHOODS, SCALINGS

    names = {*LIKELIHOODS, *SCALINGS, *METHODS}
    bad = {str(p.relative_to(PACKAGE)): hits for p in sorted(PACKAGE.rglob("*.py"))
           if str(p.relative_to(PACKAGE)) not in REGISTRIES
           and (hits := name_comparisons(p.read_text(), names))}
    assert bad == {}


def private_imports(graph_modules: dict[str, Path]) -> list[str]:
    """``from vaefusion.x import _name`` anywhere in the package: a private name crossing a
    module boundary."""
    bad = []
    for name, path in sorted(graph_modules.items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vaefusion"):
                bad.extend(f"{name}: {node.module}.{a.name}" for a in node.names
                           if a.name.startswith("_") and not a.name.startswith("__"))
    return bad


def test_no_private_name_is_imported_across_modules():
    assert private_imports(_modules()) == []


def test_the_product_never_imports_the_benchmarks_modules():
    """``vaefusion.bench`` holds what only ``benchmarks/`` uses; nothing else imports it."""
    graph = import_graph()
    users = {m for m, imported in graph.items() if _unit(m) != "bench"
             and any(_unit(t) == "bench" for t in imported)}
    assert users == set()


ROOT = PACKAGE.parents[1]
PAGE = ROOT / "docs" / "architecture.md"


def _section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_architecture_page_lists_every_module():
    rows = {line.split("|")[1].strip().strip("`"): line
            for line in _section("Subpackages").splitlines() if line.startswith("| `")}
    missing = [f"{p.parent.name}/{p.name}" for p in sorted(PACKAGE.glob("*/*.py"))
               if p.name != "__init__.py"
               and f"`{p.name}`" not in rows.get(f"{p.parent.name}/", "")]
    assert missing == []


def test_the_recipes_name_files_that_exist():
    """Every file a recipe of "Where new things go" names exists (in the package, or from
    the repository root); the new method's example module is the one it asks for."""
    names = re.findall(r"`([\w./-]+\.(?:py|md|json))`", _section("Where new things go"))
    assert len(names) > 15
    files = [n for n in names if "/" in n or n.endswith(".py")]  # not model.json's name
    missing = [n for n in files if not (PACKAGE / n).exists() and not (ROOT / n).exists()
               and n != "evaluation/my_method.py"]
    assert missing == []


def test_module_paths_in_the_docs_resolve():
    """Dotted ``vaefusion.x.y`` paths in the benchmarks' README and this page name a module,
    or a name in one (they drifted once)."""
    import importlib

    bad = []
    for doc in (ROOT / "benchmarks" / "README.md", PAGE):
        found = set(re.findall(r"vaefusion(?:\.\w+)+", doc.read_text()))
        # the recipe's example of a new method's module
        for dotted in sorted(found - {"vaefusion.evaluation.my_method"}):
            parts = dotted.split(".")
            for k in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:k]))
                except ImportError:
                    continue
                for attr in parts[k:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    bad.append(f"{doc.name}: {dotted}")
                break
    assert bad == []
