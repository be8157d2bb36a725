"""Where code lives (docs/architecture.md, "Where code lives"), checked by reading every module's
imports (AST; nothing is imported): no import cycle between modules, the engine and the node
declarations free of heavy libraries, implementations free of the node declarations."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segflow"
ENGINE = ("segflow.workflow", "segflow.nodes")
IMPLEMENTATIONS = ("segflow.data", "segflow.networks", "segflow.losses", "segflow.optim", "segflow.training",
                   "segflow.inference", "segflow.evaluation", "segflow.export", "segflow.planning")
HEAVY = ("torch", "monai", "albumentations", "nibabel")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in `module` outside `if TYPE_CHECKING:`."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, top)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, top))
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


def _graph(module_level_only: bool = False) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(MODULES)
    for module in MODULES:
        for target, top in _imports(module):
            if target in MODULES and target != module and (top or not module_level_only):
                g.add_edge(module, target)
    return g


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_walk_sees_the_package():
    assert {"segflow.workflow.spec", "segflow.nodes.registry", "segflow.training.loop"} <= set(MODULES)
    assert ("segflow.workflow.errors", True) in _imports("segflow.workflow.spec")
    assert ("segflow.training.loop", False) in _imports("segflow.nodes.training")  # imported inside run


def test_no_import_cycle_between_modules():
    cycles = sorted(c + c[:1] for c in nx.simple_cycles(_graph()))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", [m for m in MODULES if _within(m, IMPLEMENTATIONS)])
def test_implementations_do_not_import_the_node_declarations(module):
    bad = [t for t, _ in _imports(module) if _within(t, ("segflow.nodes", "segflow.registry"))]
    assert bad == [], f"{module} imports {bad} at run time (config types go under `if TYPE_CHECKING:`)"


@pytest.mark.parametrize("module", [m for m in MODULES if _within(m, ENGINE)])
def test_engine_and_declarations_load_no_heavy_library(module):
    """Directly or through the segflow modules it imports at module level."""
    reached = nx.descendants(_graph(module_level_only=True), module) | {module}
    heavy = sorted({f"{m} imports {t}" for m in reached for t, top in _imports(m)
                    if top and t.split(".")[0] in HEAVY})
    assert heavy == [], f"`import {module}` loads a heavy library: {heavy}"
