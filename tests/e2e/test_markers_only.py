"""Markers only (no --taichi-limits): the tests pytest runs itself keep their Taichi state.

Without --taichi-limits only marked tests are supervised; every other test runs in the pytest
process, on whatever Taichi state that process holds (a field made at import, by a conftest, by
a module fixture). A fork needs a `ti.reset()` of the pytest process first, which would destroy
that state under them (the process aborted), so while unsupervised tests that may use it remain,
supervised tests start in a fresh interpreter instead. Every run is a pytester subprocess under
`run_plugin`'s hard timeout, with real kernels on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin

#: A module that initialises Taichi and makes a field at import; its unmarked test fills the
#: field with a kernel in the pytest process.
FIELD_AT_IMPORT = """
import taichi as ti

ti.init(arch=ti.cpu)
field = ti.field(ti.f32, shape=16)

@ti.kernel
def fill(value: ti.f32):
    for i in field:
        field[i] = value

def test_unmarked_fills_the_field():
    fill(3.0)
    assert field[5] == 3.0
"""

MARKED_WITHOUT_TAICHI = """
import pytest

@pytest.mark.taichi_limits(mem_mb=512)
def test_marked():
    assert sum(range(10)) == 45
"""


def records(path: Path) -> dict[str, dict[str, Any]]:
    document = json.loads(path.read_text())
    return {record["nodeid"]: record for record in document["records"]}


def run_markers_only(pytester: pytest.Pytester, run_plugin: RunPlugin, *args: str) -> Any:
    report = pytester.path / "report.json"
    result = run_plugin("-v", f"--taichi-limits-json={report}", *args)
    assert "Fatal Python error" not in result.stdout.str() + result.stderr.str()
    return result, records(report)


def test_a_marked_test_first_leaves_the_field_of_a_later_unmarked_test_intact(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_a=MARKED_WITHOUT_TAICHI, test_b=FIELD_AT_IMPORT)
    result, by_id = run_markers_only(pytester, run_plugin)
    result.assert_outcomes(passed=2)
    # The marked test ran supervised, in a fresh interpreter: nothing was reset in pytest.
    assert list(by_id) == ["test_a.py::test_marked"]
    assert by_id["test_a.py::test_marked"]["mode"] == "spawn"
    result.stdout.fnmatch_lines(
        [
            "taichi-limits: start mode spawn while unsupervised tests remain (the pytest "
            "process holds Taichi fields that 1 unsupervised test still to run there may use*"
        ]
    )


def test_with_every_unmarked_test_done_a_marked_test_still_forks(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # Unmarked first: once it has run, nothing here needs the field any more, and the fast
    # fork path (after a reset) is safe.
    pytester.makepyfile(test_a=FIELD_AT_IMPORT, test_b=MARKED_WITHOUT_TAICHI)
    result, by_id = run_markers_only(pytester, run_plugin)
    result.assert_outcomes(passed=2)
    assert by_id["test_b.py::test_marked"]["mode"] == "fork"


#: Marked and unmarked tests alternate over one field made at import.
ALTERNATING = """
import pytest
import taichi as ti

ti.init(arch=ti.cpu)
field = ti.field(ti.i32, shape=8)

@ti.kernel
def fill(value: ti.i32):
    for i in field:
        field[i] = value + i

@pytest.mark.taichi_limits(mem_mb=2048)
def test_marked_1():
    fill(10)
    assert field[3] == 13

def test_unmarked_1():
    fill(20)
    assert field[3] == 23

@pytest.mark.taichi_limits(mem_mb=2048)
def test_marked_2():
    fill(30)
    assert field[3] == 33

def test_unmarked_2():
    assert field[3] == 23  # what test_unmarked_1 left: the same field, never reset
    fill(40)
    assert field[3] == 43
"""


def test_marked_and_unmarked_tests_alternate_in_a_module_with_a_field_at_import(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_mixed=ALTERNATING)
    result, by_id = run_markers_only(pytester, run_plugin)
    result.assert_outcomes(passed=4)
    assert {record["mode"] for record in by_id.values()} == {"spawn"}
    assert sorted(by_id) == ["test_mixed.py::test_marked_1", "test_mixed.py::test_marked_2"]


#: ti.init in a conftest's pytest_configure: the program holds no object of its own.
CONFTEST_INIT = """
import taichi as ti

def pytest_configure(config):
    ti.init(arch=ti.cpu)
"""

#: Tests that make their fields inside the test, around a module-level kernel.
FIELDS_INSIDE_TESTS = """
import pytest
import taichi as ti

@ti.kernel
def fill(target: ti.template(), value: ti.i32):
    for i in target:
        target[i] = value

def check(value):
    data = ti.field(ti.i32, shape=4)
    fill(data, value)
    assert data[2] == value

@pytest.mark.taichi_limits(mem_mb=2048)
def test_marked_1():
    check(2)

def test_unmarked_1():
    check(1)

def test_unmarked_2():
    check(3)

@pytest.mark.taichi_limits(mem_mb=2048)
def test_marked_2():
    check(4)
"""


def test_a_conftest_init_without_fields_keeps_the_fork_path_and_its_replay(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # Nothing alive in the program before the first marked test: the reset before its fork is
    # harmless, and the unmarked tests after it get the conftest's init back (the replay).
    # (The field an unmarked test hands to a template kernel stays alive in Taichi's kernel
    # cache: the second marked test starts in a fresh interpreter.)
    pytester.makeconftest(CONFTEST_INIT)
    pytester.makepyfile(test_inside=FIELDS_INSIDE_TESTS)
    result, by_id = run_markers_only(pytester, run_plugin)
    result.assert_outcomes(passed=4)
    assert by_id["test_inside.py::test_marked_1"]["mode"] == "fork"


def test_a_field_the_conftest_makes_at_import_survives_every_marked_test(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makeconftest(
        """
        import pytest
        import taichi as ti

        ti.init(arch=ti.cpu)
        shared = ti.field(ti.i32, shape=4)

        @pytest.fixture
        def grid():
            return shared
        """
    )
    pytester.makepyfile(
        test_uses_conftest="""
        import pytest
        import taichi as ti

        @ti.kernel
        def fill(target: ti.template(), value: ti.i32):
            for i in target:
                target[i] = value

        @pytest.mark.taichi_limits(mem_mb=2048)
        def test_marked(grid):
            fill(grid, 5)
            assert grid[1] == 5

        def test_unmarked(grid):
            fill(grid, 6)
            assert grid[1] == 6

        @pytest.mark.taichi_limits(mem_mb=2048)
        def test_marked_again(grid):
            fill(grid, 7)
            assert grid[1] == 7
        """
    )
    result, by_id = run_markers_only(pytester, run_plugin)
    result.assert_outcomes(passed=3)
    assert by_id["test_uses_conftest.py::test_marked"]["mode"] == "spawn"


def test_a_module_fixture_that_holds_a_field_works_around_marked_tests(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makeconftest(CONFTEST_INIT)
    pytester.makepyfile(
        test_fixture="""
        import pytest
        import taichi as ti

        @ti.kernel
        def add(target: ti.template(), value: ti.i32):
            for i in target:
                target[i] += value

        @pytest.fixture(scope="module")
        def counter():
            data = ti.field(ti.i32, shape=4)
            yield data

        def test_unmarked_1(counter):
            add(counter, 1)
            assert counter[0] >= 1

        @pytest.mark.taichi_limits(mem_mb=2048)
        def test_marked(counter):
            add(counter, 100)
            assert counter[0] >= 100

        def test_unmarked_2(counter):
            add(counter, 1)
            assert counter[0] >= 1
        """
    )
    result, _ = run_markers_only(pytester, run_plugin)
    result.assert_outcomes(passed=3)


def test_forced_fork_mode_refuses_the_marked_test_instead_of_breaking_the_others(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_a=MARKED_WITHOUT_TAICHI, test_b=FIELD_AT_IMPORT)
    result = run_plugin("--taichi-limits-mode=fork")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*not started: --taichi-limits-mode=fork, but this test cannot simply be forked: "
            "the pytest process holds Taichi fields*"
        ]
    )


def test_markers_only_under_xdist_keeps_each_workers_taichi_state(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # --dist loadfile: the module's four tests share one xdist worker, in order.
    pytester.makepyfile(test_mixed=ALTERNATING)
    result, by_id = run_markers_only(pytester, run_plugin, "-n", "2", "--dist", "loadfile")
    result.assert_outcomes(passed=4)
    assert sorted(by_id) == ["test_mixed.py::test_marked_1", "test_mixed.py::test_marked_2"]
