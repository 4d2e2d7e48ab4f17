"""The package's imports point one way, down the layers CONTRIBUTING.md describes; no cycles.

Parsed from the source (`ast`), every import counted: module level, inside functions, and under
`if TYPE_CHECKING:`. A new module must be given its layer here, or this test fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_taichi_limits"

#: Top to bottom. A module may import its own layer and any layer below it, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("entry points", {"plugin", "zygote", "fixtures", "__main__", "cli", "__init__"}),
    (
        "launch",
        {
            "runner",
            "forking",
            "spawn",
            "worker",
            "startplan",
            "admission",
            "capacity",
            "ledger",
            "forksafety",
        },
    ),
    ("child", {"child", "taichi_support", "taichi_hooks", "taichi_replay"}),
    ("supervisor", {"supervisor", "proctree", "gpu", "memory", "cgroup"}),
    ("verdict", {"verdict"}),
    ("replay", {"replay"}),
    (
        "results",
        {
            "reports",
            "render",
            "summary",
            "suggest",
            "jsonreport",
            "baseline",
            "environment",
            "markdown",
            "html",
            "jsonlog",
            "outputs",
            "usagelog",
            "htmlreport",
            "reportdata",
            "cireports",
        },
    ),
    ("records", {"records", "collect", "outcomes", "units", "hookspecs", "timeline"}),
    ("protocol", {"protocol", "channel"}),
    ("configuration", {"options", "settings", "budget"}),
    ("platform", {"linux"}),
]


def _layer_of(module: str) -> int:
    for number, (_, members) in enumerate(LAYERS):
        if module in members:
            return number
    raise AssertionError(f"pytest_taichi_limits/{module}.py has no layer in tests/test_layering.py")


def _imports(path: Path) -> set[str]:
    """The package's own modules that `path` imports, by short name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("pytest_taichi_limits"):
                rest = node.module.split(".")[1:]
                found.update(rest[:1] or [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "pytest_taichi_limits" and len(parts) > 1:
                    found.add(parts[1])
    return {name for name in found if (PACKAGE / f"{name}.py").exists()}


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path) - {path.stem} for path in sorted(PACKAGE.glob("*.py"))}


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        _layer_of(module)


def test_nothing_imports_a_layer_above_it() -> None:
    upward = [
        f"{module} ({LAYERS[_layer_of(module)][0]}) imports {target} "
        f"({LAYERS[_layer_of(target)][0]})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer_of(target) < _layer_of(module)
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    # The parser itself: a relative import of a module above is found.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from .plugin import X\nfrom . import budget\nimport pytest_taichi_limits.runner\n"
    )
    assert _imports(sample) == {"plugin", "budget", "runner"}
    assert _layer_of("plugin") < _layer_of("budget")
