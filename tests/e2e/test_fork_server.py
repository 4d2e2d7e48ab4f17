"""The fork server (issue 19, items 1 and 2): one process per pytest process forks every test's
child, and is the subreaper between pytest and the tests.

Every case is an inner pytest run (real forks, real signals) through `run_plugin`. What a test
checks is where its processes are (their parents, cgroups, whether they are still there), what
the records say, and how many exact readings the parent took: never how fast anything was.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import memory
from helpers.plugin_types import RunPlugin

MB = 1 << 20


def usages(log: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return {line["nodeid"].split("::")[-1]: line for line in lines if line["event"] == "usage"}


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


#: In the pytest process: whether it is a child subreaper, at the end of each test.
SUBREAPER_CONFTEST = """
import ctypes, json, os

PR_GET_CHILD_SUBREAPER = 37


def pytest_runtest_logfinish(nodeid):
    flag = ctypes.c_int(-1)
    ctypes.CDLL(None, use_errno=True).prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    with open(os.path.join(os.path.dirname(__file__), "pytest.jsonl"), "a") as out:
        out.write(json.dumps({"pid": os.getpid(), "subreaper": flag.value}) + "\\n")
"""

WHERE_AM_I = """
import json, os
import pytest


def _parent_of(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("n", range(3))
def test_where(n):
    with open(os.path.join(os.path.dirname(__file__), "where.jsonl"), "a") as out:
        parent = os.getppid()
        out.write(json.dumps({"pid": os.getpid(), "parent": parent,
                              "grandparent": _parent_of(parent)}) + "\\n")
"""


@pytest.mark.parametrize("isolation", ["test", "module"])
def test_every_test_child_is_one_fork_below_one_server_and_pytest_is_no_subreaper(
    pytester: pytest.Pytester, run_plugin: RunPlugin, isolation: str
) -> None:
    pytester.makeconftest(SUBREAPER_CONFTEST)
    pytester.makepyfile(test_where=WHERE_AM_I)
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits", f"--taichi-limits-isolation={isolation}", f"--taichi-limits-log={log}"
    )
    result.assert_outcomes(passed=3)
    seen = [json.loads(line) for line in (pytester.path / "where.jsonl").read_text().splitlines()]
    in_pytest = [
        json.loads(line) for line in (pytester.path / "pytest.jsonl").read_text().splitlines()
    ]
    pytest_pid = in_pytest[0]["pid"]
    assert {entry["subreaper"] for entry in in_pytest} == {0}  # pytest never is one
    # One server for the session, a child of pytest; every test's process is its child.
    servers = {entry["parent"] for entry in seen}
    assert len(servers) == 1 and pytest_pid not in servers
    assert {entry["grandparent"] for entry in seen} == {pytest_pid}
    children = {entry["pid"] for entry in seen}
    assert len(children) == (3 if isolation == "test" else 1)
    assert {usage["pid"] for usage in usages(log).values()} == children


#: Loaded with -p in the inner pytest: counts the parent's smaps_rollup readings per pid, and
#: takes the periodic readings away (a reading is then due only when the method asks for one
#: at a test's start or end), so that the count says what the method does, whatever the load.
COUNT_READINGS = """
import atexit, collections, json, os

from pytest_taichi_limits.measure import memory, meter

meter.MIN_EXACT_GAP_S = 1e9
READS = collections.Counter()
_rollup = memory.rollup


def counted(pid):
    READS[pid] += 1
    return _rollup(pid)


memory.rollup = counted


@atexit.register
def _dump():
    with open(os.environ["READINGS_FILE"], "w") as out:
        json.dump({str(pid): count for pid, count in READS.items()}, out)
"""


@pytest.mark.parametrize("isolation", ["test", "module"])
def test_a_trivial_test_pays_one_exact_reading_of_its_process(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    monkeypatch: pytest.MonkeyPatch,
    isolation: str,
) -> None:
    # Issue 19, item 2: smaps_rollup costs ~5.5 ms per GB of the process's RSS. A child forked
    # with its test's command has nothing of its own at birth: its start needs no reading; the
    # figure is read once, when the test is over (in a worker that runs more, that reading is
    # also the next test's start).
    pytester.makepyfile(
        counting=COUNT_READINGS,
        test_trivial="import pytest\n\n@pytest.mark.parametrize('n', range(3))\n"
        "def test_trivial(n):\n    assert n >= 0\n",
    )
    readings = pytester.path / "readings.json"
    monkeypatch.setenv("READINGS_FILE", str(readings))
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "-p",
        "counting",
        "--taichi-limits",
        "--taichi-limits-memory-method=smaps",
        "--taichi-limits-mem-mb=512",
        f"--taichi-limits-isolation={isolation}",
        f"--taichi-limits-log={log}",
    )
    result.assert_outcomes(passed=3)
    counts = json.loads(readings.read_text())
    found = usages(log)
    assert len(found) == 3
    tests_per_worker: dict[int, int] = {}
    for name, usage in found.items():
        assert usage["memory_method"] == "smaps", name
        tests_per_worker[usage["pid"]] = tests_per_worker.get(usage["pid"], 0) + 1
    assert len(tests_per_worker) == (3 if isolation == "test" else 1)
    for pid, tests in tests_per_worker.items():
        assert counts.get(str(pid)) == tests, (pid, counts)


STATEFUL_MARKED = """
import pytest

STATE = []


def test_1_plain_changes_module_state():
    STATE.append(1)


@pytest.mark.taichi_limits(mem_mb=512)
def test_2_supervised_sees_it():
    assert STATE == [1]


def test_3_plain_again():
    STATE.append(3)


@pytest.mark.taichi_limits(mem_mb=512)
def test_4_supervised_sees_both():
    assert STATE == [1, 3]
"""


def test_a_supervised_test_inherits_what_an_unsupervised_one_changed_before_it(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # Markers only: pytest runs the unsupervised tests itself, and a supervised one starts from
    # pytest's state as it is then, as with a fork of pytest per test (the fork server is
    # replaced after pytest ran a test of its own).
    pytester.makepyfile(test_state=STATEFUL_MARKED)
    result = run_plugin("-p", "no:randomly")
    result.assert_outcomes(passed=4)


KILLS_PYTEST = """
import os, signal, time


def _parent_of(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def test_kills_pytest():
    server = os.getppid()
    with open(os.path.join(os.path.dirname(__file__), "server.txt"), "w") as out:
        out.write(f"{server} {open(f'/proc/{server}/stat').read().rsplit(')', 1)[1].split()[19]}")
    os.kill(_parent_of(server), signal.SIGKILL)
    time.sleep(60)
"""


def _running(pid: int, ticks: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == ticks and fields[0] not in ("Z", "X")


def test_the_fork_server_and_the_test_never_outlive_pytest(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_kill=KILLS_PYTEST)
    result = run_plugin("--taichi-limits")
    assert result.ret == -signal.SIGKILL
    server, ticks = (pytester.path / "server.txt").read_text().split()
    # PDEATHSIG ends the server with pytest, and the test with the server: the kernel does it
    # at once; the wait only bounds how long a failure takes to show.
    deadline = time.monotonic() + 30
    while _running(int(server), ticks):
        assert time.monotonic() < deadline, "the fork server outlived pytest"
        time.sleep(0.05)


STOPS_ITS_PARENT = """
import os, signal


def _note():
    with open(os.path.join(os.path.dirname(__file__), "parents.txt"), "a") as out:
        out.write(f"{os.getppid()}\\n")


def test_1_stops_its_parent():
    _note()
    os.kill(os.getppid(), signal.SIGSTOP)


def test_2_after():
    _note()
"""


def test_a_test_that_stops_the_server_and_leaves_never_holds_the_run_up(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # The stopped server cannot report the child's end: the parent sees the end itself (a
    # pidfd), wakes the server (SIGCONT) and takes its report, instead of waiting out the 60 s
    # it gives a child's teardown (the run's hard timeout here is shorter than that); the next
    # test is forked by the same server.
    pytester.makepyfile(test_stop=STOPS_ITS_PARENT)
    result = run_plugin("--taichi-limits", "-p", "no:randomly", timeout=40)
    result.assert_outcomes(passed=2)
    parents = (pytester.path / "parents.txt").read_text().split()
    assert len(parents) == 2 and parents[0] == parents[1]


BORN_INSIDE = """
import os


def _memory_cgroup():
    for line in open("/proc/self/cgroup").read().splitlines():
        number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return ""


def test_born_in_its_cgroup():
    first = _memory_cgroup()  # before anything else of the test runs
    with open(os.path.join(os.path.dirname(__file__), "cgroup.txt"), "w") as out:
        out.write(first)
"""


@pytest.mark.skipif(memory.support() is None, reason="no memory cgroup can be made here")
def test_the_test_child_is_born_in_its_memory_cgroup(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_born=BORN_INSIDE)
    result = run_plugin("--taichi-limits", "--taichi-limits-memory-method=cgroup")
    result.assert_outcomes(passed=1)
    path = (pytester.path / "cgroup.txt").read_text()
    assert os.path.basename(path).startswith("taichi-limits-"), path
