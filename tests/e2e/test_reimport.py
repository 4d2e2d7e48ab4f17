"""Reimport workers import the project's modules as a fresh interpreter would.

A test module whose import leaves Taichi state behind runs in a worker forked from pytest after a
Taichi reset, whose session imports the module again. Every module of the project itself must be
imported again there, once: a helper that a test module changes at import (`helpers.COUNT += 1`)
would otherwise be inherited from pytest, already changed, and changed a second time. Only the
standard library and installed packages are inherited. Every run is a pytester subprocess under
`run_plugin`'s hard timeout, with real kernels on the CPU.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from helpers.plugin_types import RunPlugin

#: Imported at module level by the test module, as plain modules, a package, a subpackage, and
#: through `from x import y`: each counts how often its own module-level code ran, and the
#: chain link increments the helper's counter when it is imported.
PROJECT_FILES = {
    "helpers.py": "COUNT = 0\nIMPORTS = 0\nIMPORTS += 1\n",
    "chain_link.py": "import helpers\n\nhelpers.COUNT += 1\nIMPORTS = 1\n",
    "pkg/__init__.py": "IMPORTS = 0\nIMPORTS += 1\n",
    "pkg/counter.py": "COUNT = 0\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/deep.py": "from pkg import counter\n\ncounter.COUNT += 1\nIMPORTS = 1\n",
}

TEST_MODULE = """
import pytest
import taichi as ti

import chain_link
import helpers
import pkg
import pkg.sub.deep as deep_by_path
from pkg import counter
from pkg.sub import deep

ti.init(arch=ti.cpu)
field = ti.field(ti.i32, shape=4)
helpers.COUNT += 1


@ti.kernel
def fill(value: ti.i32):
    for i in field:
        field[i] = value


@pytest.mark.parametrize("value", [1, 2])
def test_every_project_module_was_imported_once(value):
    fill(value)
    assert field[2] == value
    assert helpers.IMPORTS == 1 and pkg.IMPORTS == 1
    assert helpers.COUNT == 2  # chain_link's increment and this module's, each once
    assert counter.COUNT == 1
    assert deep is deep_by_path and deep.counter is counter and chain_link.helpers is helpers
"""


def write_project(pytester: pytest.Pytester) -> None:
    for name, text in PROJECT_FILES.items():
        path = Path(pytester.path, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    pytester.makepyfile(test_counts=TEST_MODULE)


def modes(report: Path) -> set[str]:
    return {record["mode"] for record in json.loads(report.read_text())["records"]}


def test_a_reimport_worker_imports_every_project_module_once(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    write_project(pytester)
    assert run_plugin("-p", "no:taichi_limits").ret == 0  # plain pytest: the counts hold
    report = pytester.path / "report.json"
    result = run_plugin("--taichi-limits", f"--taichi-limits-json={report}")
    result.assert_outcomes(passed=2)
    assert modes(report) == {"reimport"}


@pytest.mark.parametrize("isolation", ["module", "session"])
def test_the_counts_hold_in_shared_workers(
    pytester: pytest.Pytester, run_plugin: RunPlugin, isolation: str
) -> None:
    write_project(pytester)
    result = run_plugin("--taichi-limits", f"--taichi-limits-isolation={isolation}")
    result.assert_outcomes(passed=2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_module_that_binds_a_port_at_import_names_the_reimport_worker(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # It cannot work in two processes (nor under pytest-xdist): the failure says where it ran
    # again and why, and points at the documented limit.
    pytester.makepyfile(
        test_server=f"""
        import socket
        import pytest
        import taichi as ti

        ti.init(arch=ti.cpu)
        server = socket.socket()
        server.bind(("127.0.0.1", {free_port()}))
        server.listen()

        def test_serves():
            assert server.fileno() >= 0
        """
    )
    result = run_plugin("--taichi-limits")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*could not be collected again in a worker forked from pytest that imports the "
            "project's modules again (reimport mode)*",
            "*OSError: *Address already in use",
            "*an import side effect that only one process can hold (a bound port, a lock) "
            "fails there, as it does under pytest-xdist. See Known limitations in "
            "docs/how-it-works.md.",
        ]
    )
    assert "spawn mode" not in result.stdout.str()


def test_an_ndarray_a_conftest_makes_at_import_is_made_again_in_the_worker(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # `ti.ndarray` at import is Taichi state too (it used to go unnoticed: the test forked, and
    # its kernel got a dead ndarray), and the pytest process's own copy, dead after the reset,
    # must not start a Taichi program when it is freed at exit.
    pytester.makeconftest(
        """
        import pytest
        import taichi as ti

        ti.init(arch=ti.cpu)
        shared = ti.ndarray(ti.f32, shape=4)

        @pytest.fixture
        def data():
            return shared
        """
    )
    pytester.makepyfile(
        test_uses_ndarray="""
        import taichi as ti

        @ti.kernel
        def fill(target: ti.types.ndarray(), value: ti.f32):
            for i in target:
                target[i] = value

        def test_fills(data):
            fill(data, 2.0)
            assert data[1] == 2.0
        """
    )
    report = pytester.path / "report.json"
    result = run_plugin("--taichi-limits", f"--taichi-limits-json={report}")
    result.assert_outcomes(passed=1)
    assert modes(report) == {"reimport"}
    assert "Exception ignored" not in result.stdout.str() + result.stderr.str()
