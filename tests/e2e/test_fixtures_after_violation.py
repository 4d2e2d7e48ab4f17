"""Fixtures above function scope when a test breaks its budget (issue 16, item 3).

The supervisor's SIGTERM raises in the test's main thread: the test's fixtures and every higher-
scoped one are torn down before the child leaves, in per-test and in module isolation. Where
that cannot happen (native code that never returns to Python), the test's report names the
fixtures whose teardown never ran. Every run goes through `run_plugin` (hard timeout).
"""

from __future__ import annotations

import pytest
from helpers.plugin_types import RunPlugin

#: Two of three tests break a budget while Python code runs (a sleep, an allocation then a
#: sleep): both are interruptible, so each setup of the module fixture has its teardown. (The
#: allocation stays below the cap a memory cgroup sets a little above mem_mb: a test held at the
#: cap waits in the kernel and cannot tear down; tests/e2e/test_memory_method.py has that case.)
INTERRUPTIBLE = """
import os
import time

import pytest

EVENTS = os.path.join(os.path.dirname(__file__), "events.txt")
HELD = []


def note(text):
    with open(EVENTS, "a") as handle:
        handle.write(text + "\\n")


@pytest.fixture(scope="module")
def resource():
    note("setup")
    yield
    note("teardown")


@pytest.mark.taichi_limits(wall_s=1)
def test_a_hangs(resource):
    time.sleep(120)


def test_b_passes(resource):
    pass


@pytest.mark.taichi_limits(mem_mb=100)
def test_c_allocates(resource):
    HELD.append(b"\\x01" * (108 << 20))
    time.sleep(120)
"""


def _events(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "events.txt"
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize(
    ("isolation", "mode", "workers"),
    [("test", "auto", 3), ("module", "auto", 2), ("module", "spawn", 2)],
)
def test_every_setup_has_its_teardown_when_tests_break_their_budgets(
    pytester: pytest.Pytester, run_plugin: RunPlugin, isolation: str, mode: str, workers: int
) -> None:
    pytester.makepyfile(test_module=INTERRUPTIBLE)
    # A long grace period: the teardown is quick, and the verdict must not depend on the clock.
    result = run_plugin(
        "--taichi-limits",
        f"--taichi-limits-isolation={isolation}",
        f"--taichi-limits-mode={mode}",
        "--taichi-limits-grace=30",
    )
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_a_hangs - wall_s exceeded*",
            "*test_c_allocates - mem_mb exceeded*",
        ]
    )
    # One worker per test (isolation=test); with isolation=module the violation of test_a ends
    # its worker, and test_b and test_c share the next one.
    assert _events(pytester) == ["setup", "teardown"] * workers
    result.stdout.no_fnmatch_line("*not torn down*")


#: A Taichi kernel that fills 400 MB of a numpy array (the only moment the test's memory grows,
#: so the violation comes while the kernel runs) and then spins: a kernel launch holds the GIL,
#: so the child's SIGTERM handler never runs, and the supervisor's SIGKILL ends it.
HOLDS_THE_GIL = """
import os

import numpy as np
import pytest
import taichi as ti

EVENTS = os.path.join(os.path.dirname(__file__), "events.txt")


def note(text):
    with open(EVENTS, "a") as handle:
        handle.write(text + "\\n")


@pytest.fixture(scope="module")
def recorder():
    note("setup")
    yield
    note("teardown")


def test_1_sets_the_fixture_up(recorder):
    pass


@pytest.mark.taichi_limits(mem_mb=150)
def test_2_kernel_never_returns(recorder):
    ti.init(arch=ti.cpu)

    @ti.kernel
    def fill_then_spin(values: ti.types.ndarray(dtype=ti.u8, ndim=1), rounds: ti.i64) -> ti.u64:
        for i in range(values.shape[0]):
            values[i] = ti.u8(1)
        state = ti.u64(1)
        done = ti.i64(0)
        while done < rounds:
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            done += 1
        return state

    fill_then_spin(np.empty(16, dtype=np.uint8), 1)  # compiled: nothing held yet
    fill_then_spin(np.empty(400 << 20, dtype=np.uint8), 1 << 62)
"""


def test_a_kernel_holding_the_gil_names_the_fixtures_whose_teardown_never_ran(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_kernel=HOLDS_THE_GIL)
    result = run_plugin(
        "--taichi-limits", "--taichi-limits-isolation=module", "--taichi-limits-grace=0.5"
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*mem_mb exceeded: * when caught, limit mem_mb=150*",
            "*not torn down  recorder (module): the test process ended before its teardown ran*",
            "*signals sent: SIGTERM, SIGKILL*",
        ]
    )
    # Set up in test_1, kept for test_2 (same worker), never torn down.
    assert _events(pytester) == ["setup"]


def test_a_crash_names_the_fixtures_whose_teardown_never_ran(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        test_crash="""
        import os
        import signal

        import pytest

        @pytest.fixture(scope="session")
        def server():
            yield

        @pytest.fixture(scope="module")
        def database(server):
            yield

        def test_segfaults(database):
            os.kill(os.getpid(), signal.SIGSEGV)
    """
    )
    result = run_plugin("--taichi-limits")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the test process was killed by signal 11 (SIGSEGV)*",
            "*not torn down  server (session), database (module): the test process ended*",
        ]
    )


#: The violation comes while the test's own teardown runs: the function fixture's finalizer
#: allocates past mem_mb, then sleeps, so the supervisor's SIGTERM lands inside pytest's
#: teardown (issue 16, item 3: a stop there must not leave pytest's own machinery half done).
OVER_IN_TEARDOWN = """
import os
import time

import pytest

EVENTS = os.path.join(os.path.dirname(__file__), "events.txt")
HELD = []


def note(text):
    with open(EVENTS, "a") as handle:
        handle.write(text + "\\n")


@pytest.fixture(scope="module")
def resource():
    note("setup")
    yield
    note("teardown")


@pytest.fixture
def grows_when_torn_down():
    yield
    note("finalizer")
    HELD.append(b"\\x01" * (108 << 20))  # below a memory cgroup's cap: it can tear down
    time.sleep(120)


@pytest.mark.taichi_limits(mem_mb=100)
def test_over_in_teardown(resource, grows_when_torn_down):
    pass


def test_after(resource):
    pass
"""


@pytest.mark.parametrize("isolation", ["test", "module"])
def test_a_violation_during_teardown_is_the_tests_failure_and_nothing_else(
    pytester: pytest.Pytester, run_plugin: RunPlugin, isolation: str
) -> None:
    pytester.makepyfile(test_module=OVER_IN_TEARDOWN)
    result = run_plugin(
        "--taichi-limits", f"--taichi-limits-isolation={isolation}", "--taichi-limits-grace=30"
    )
    # Not an error from pytest's own teardown machinery (a KeyError of its logging plugin, run
    # a second time) on top of the violation.
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*test_over_in_teardown - mem_mb exceeded*"])
    result.stdout.no_fnmatch_line("*KeyError*")
    # The module fixture is torn down in the stopped child; test_after sets it up again.
    assert _events(pytester) == ["setup", "finalizer", "teardown", "setup", "teardown"]


#: The first test fails, and -x stops the session before the second, for which the worker kept
#: the module fixture up.
STOPPED_BY_X = """
import os

import pytest

EVENTS = os.path.join(os.path.dirname(__file__), "events.txt")


def note(text):
    with open(EVENTS, "a") as handle:
        handle.write(text + "\\n")


@pytest.fixture(scope="module")
def resource():
    note("setup")
    yield
    note("teardown")


def test_fails(resource):
    assert False


def test_never_runs(resource):
    pass
"""


@pytest.mark.parametrize("mode", ["auto", "spawn"])
def test_fixtures_kept_for_a_test_that_never_comes_are_torn_down(
    pytester: pytest.Pytester, run_plugin: RunPlugin, mode: str
) -> None:
    pytester.makepyfile(test_module=STOPPED_BY_X)
    result = run_plugin(
        "--taichi-limits", "--taichi-limits-isolation=module", f"--taichi-limits-mode={mode}", "-x"
    )
    result.assert_outcomes(failed=1)
    # pytest's teardown hooks run a second time for test_fails: before, its logging plugin's
    # KeyError stopped them before the module fixture's finalizer.
    assert _events(pytester) == ["setup", "teardown"]
