"""The module structure the docs promise: no import cycle, packages import downward only, and no
method imports another method (their shared pieces live in stats/, layers.py or a method's internals)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "onnxprune"
METHODS = {"magnitude", "merge", "lobs", "obs", "relief", "wanda"}
#: package (or top-level module) -> what it must never import at module level
FORBIDDEN = {
    "graph": {"analysis", "layers", "stats", "methods", "passes", "pipeline"},
    "layers": {"analysis", "stats", "methods", "passes", "pipeline", "plan"},
    "stats": {"methods", "passes", "pipeline", "plan", "analysis"},
    "analysis": {"layers", "stats", "methods", "passes", "pipeline"},
    "methods": {"pipeline", "passes", "cli", "budget"},
    "budget": {"pipeline", "passes", "cli"},
    "passes": {"methods", "pipeline", "stats", "cli"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module-level `from ... import` edges between onnxprune modules (lazy imports in functions and
    TYPE_CHECKING blocks are not edges)."""
    edges = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules.keys()
            targets |= subs or ({base} & modules.keys())
        edges[name] = targets - {name}
    return edges


def _area(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_import_cycle():
    edges = _imports(_modules())
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def _violations(wrong) -> list[str]:
    """Every module-level import `module -> target` for which wrong(module, target) holds."""
    edges = _imports(_modules())
    return [
        f"{module} imports {target}" for module, targets in edges.items() for target in targets if wrong(module, target)
    ]


def test_packages_import_downward_only():
    wrong = _violations(lambda module, target: _area(target) in FORBIDDEN.get(_area(module), set()))
    assert not wrong, wrong


def _is_method(module: str) -> bool:
    return module.startswith("onnxprune.methods.") and module.rsplit(".", 1)[1] in METHODS


def test_no_method_imports_another_method():
    crossing = _violations(lambda module, target: _is_method(module) and _is_method(target))
    assert not crossing, crossing
