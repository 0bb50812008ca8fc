"""The package's shape: no import cycles, a small root, and the science free of nipype and CLI.

The import graph is read from the source with ``ast``, function-level (lazy) imports and
``if TYPE_CHECKING:`` imports included: a lazy import only hides a cycle until both functions
run in one process, and a type-only import is still a dependency (of the types, and of anyone
reading the code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bids_app" / "vaefusion"
ROOT_MODULES = {"__init__.py", "__main__.py", "config.py", "errors.py"}
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
    assert "vaefusion.evaluation.crossval" in graph["vaefusion.interfaces.group"]
    assert "vaefusion.derivatives.naming" in graph["vaefusion.derivatives.subject"]


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
    assert "vaefusion.workflows.status" in graph["vaefusion.cli.run"]  # a TYPE_CHECKING import


def test_package_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


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
