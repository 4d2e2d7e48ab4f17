"""The supervised runner end to end: real forks, real Taichi kernels, real signals."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import cast

import psutil
import pytest
from helpers import memory
from helpers.plugin_types import RunPlugin

TAICHI_FIELD_TEST = """
import pytest
import taichi as ti

@pytest.mark.taichi_limits(mem_mb={mem_mb})
def test_big_field():
    ti.init(arch=ti.cpu)
    big = ti.field(ti.f32, shape={elements})

    @ti.kernel
    def touch():
        for i in big:
            big[i] = 1.0

    touch()

def test_after():
    pass
"""


def test_field_larger_than_mem_mb_fails_with_report(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(TAICHI_FIELD_TEST.format(mem_mb=100, elements=64 * 1024 * 1024))
    result = run_plugin()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: mem_mb exceeded: * limit mem_mb=100*",
            memory.caught_by_pattern() + ", during call",
            memory.peak_line_pattern(),
            "*budget      cpu_s=off mem_mb=100 wall_s=600 gpu_gb=off",
            "*stopped     signals sent: SIGTERM*",
            "*process     pid *, caught at *",
            "*stack at the moment of violation (all threads):",
            "*test_big_field*",
            "*FAILED test_*.py::test_big_field*",
        ]
    )


def test_field_within_mem_mb_passes_and_records_usage(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(TAICHI_FIELD_TEST.format(mem_mb=400, elements=16 * 1024 * 1024))
    junit = pytester.path / "junit.xml"
    result = run_plugin(f"--junitxml={junit}")
    result.assert_outcomes(passed=2)
    tree = ET.parse(junit)
    case = next(c for c in tree.iter("testcase") if c.get("name") == "test_big_field")
    properties = cast(
        "dict[str, str]", {p.get("name"): p.get("value") for p in case.iter("property")}
    )
    own_bytes = int(properties["taichi_limits_own_rss_bytes"])
    # 64 MB of field data really was touched, and it is charged to the test.
    assert 60 * 2**20 < own_bytes < 400 * 2**20
    assert properties["taichi_limits_budget_mem_mb"] == "400.0"
    assert properties["taichi_limits_gpu_bytes"].startswith("not measured")


def test_cpu_loop_over_cpu_s(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.taichi_limits(cpu_s=0.5)
        def test_spin():
            while True:
                pass
        """
    )
    result = run_plugin()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: cpu_s exceeded: * s when caught, limit cpu_s=0.5*",
            "*test_spin*",
        ]
    )


def test_taichi_kernel_over_cpu_s(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(
        """
        import pytest
        import taichi as ti

        @pytest.mark.taichi_limits(cpu_s=1)
        def test_kernel_spin():
            ti.init(arch=ti.cpu, cpu_max_num_threads=1)

            @ti.kernel
            def spin(n: ti.i64) -> ti.f64:
                acc = 0.0
                ti.loop_config(serialize=True)
                for i in range(n):
                    acc = ti.sin(acc + i)
                return acc

            while True:
                spin(50_000_000)
        """
    )
    result = run_plugin()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*cpu_s exceeded*", "*test_kernel_spin*"])


def test_sleep_over_wall_s_shows_where_it_was(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.taichi_limits(wall_s=0.5)
        def test_sleeper():
            time.sleep(60)

        def test_next():
            pass
        """
    )
    result = run_plugin("--taichi-limits")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*wall_s exceeded: * s when caught, limit wall_s=0.5*",
            '*File "*test_sleep_over_wall_s_shows_where_it_was.py", line 6 in test_sleeper',
        ]
    )
    assert result.duration < 60


def test_gil_holding_kernel_over_wall_s(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    # A Taichi kernel launch holds the GIL, so no in-process timer could stop this.
    pytester.makepyfile(
        """
        import pytest
        import taichi as ti

        @pytest.mark.taichi_limits(wall_s=2)
        def test_forever():
            ti.init(arch=ti.cpu, cpu_max_num_threads=1)
            flag = ti.field(ti.i32, shape=())

            @ti.kernel
            def forever():
                ti.loop_config(serialize=True)
                for _ in range(1):
                    while flag[None] == 0:
                        flag[None] = 0

            forever()
        """
    )
    result = run_plugin()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*wall_s exceeded*", "*line * in test_forever"])


def test_segfault_is_reported_and_the_run_goes_on(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        """
        import ctypes
        import pytest

        @pytest.mark.taichi_limits(wall_s=30)
        def test_crash():
            ctypes.string_at(0)

        @pytest.mark.taichi_limits(wall_s=30)
        def test_after_crash():
            pass
        """
    )
    result = run_plugin()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: the test process was killed by signal 11 (SIGSEGV)",
            "*during      call",
            "*Fatal Python error: Segmentation fault*",
        ]
    )


def test_exit_without_reporting_is_a_failure(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.taichi_limits(wall_s=30)
        def test_leaves():
            os._exit(0)
        """
    )
    result = run_plugin()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*exited with status 0 before it sent its reports*"])


GRANDCHILDREN_TEST = """
import os, subprocess, sys, time
import pytest

CHILD = '''
import os, signal, sys, time
if sys.argv[1] == "setsid":
    if os.fork():
        os._exit(0)
    os.setsid()
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[2], "a") as f:
    f.write(f"{{os.getpid()}}\\\\n")
time.sleep(300)
'''

@pytest.mark.taichi_limits(wall_s={wall_s})
def test_spawns():
    for kind in ("plain", "setsid", "stubborn"):
        subprocess.Popen([sys.executable, "-c", CHILD, kind, {pid_file!r}])
    deadline = time.time() + 10
    while len(open({pid_file!r}).read().split()) < 3 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep({sleep_s})
"""


def _alive(pids: list[int]) -> list[int]:
    return [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]


def test_grandchildren_are_all_killed(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pid_file = pytester.path / "pids.txt"
    pid_file.write_text("")
    pytester.makepyfile(GRANDCHILDREN_TEST.format(pid_file=str(pid_file), wall_s=3, sleep_s=60))
    result = run_plugin("--taichi-limits-grace=0.5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*wall_s exceeded*", "*signals sent: SIGTERM, SIGKILL*"])
    pids = [int(word) for word in pid_file.read_text().split()]
    assert len(pids) == 3
    assert _alive(pids) == []


def test_passing_test_leaves_no_daemon_behind(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pid_file = pytester.path / "pids.txt"
    pid_file.write_text("")
    pytester.makepyfile(GRANDCHILDREN_TEST.format(pid_file=str(pid_file), wall_s=30, sleep_s=0))
    run_plugin().assert_outcomes(passed=1)
    pids = [int(word) for word in pid_file.read_text().split()]
    assert len(pids) == 3
    assert _alive(pids) == []


PRECEDENCE_TEST = """
import pytest

pytestmark = pytest.mark.taichi_limits(cpu_s=11)

class TestA:
    pytestmark = pytest.mark.taichi_limits(cpu_s=22, wall_s=33)

    @pytest.mark.taichi_limits(wall_s=44)
    def test_marked(self):
        pass

def test_module_only():
    pass
"""


def _budgets_from_junit(path: Path) -> dict[str, dict[str, str]]:
    budgets: dict[str, dict[str, str]] = {}
    for case in ET.parse(path).iter("testcase"):
        props = cast(
            "dict[str, str]", {p.get("name"): p.get("value") for p in case.iter("property")}
        )
        budgets[cast(str, case.get("name"))] = {
            key: props[f"taichi_limits_budget_{key}"]
            for key in ("cpu_s", "mem_mb", "wall_s", "gpu_gb")
        }
    return budgets


def test_precedence_marker_over_cli_over_ini_over_default(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(PRECEDENCE_TEST)
    pytester.makeini(
        """
        [pytest]
        taichi_limits_mem_mb = 700
        taichi_limits_wall_s = 70
        taichi_limits_gpu_gb = 7
        """
    )
    junit = pytester.path / "junit.xml"
    result = run_plugin(
        "--taichi-limits-gpu-gb=3", "--taichi-limits-cpu-s=99", f"--junitxml={junit}"
    )
    result.assert_outcomes(passed=2)
    budgets = _budgets_from_junit(junit)
    # function marker > class marker > module marker > command line > ini > built-in default
    assert budgets["test_marked"] == {
        "cpu_s": "22.0",
        "mem_mb": "700.0",
        "wall_s": "44.0",
        "gpu_gb": "3.0",
    }
    assert budgets["test_module_only"] == {
        "cpu_s": "11.0",
        "mem_mb": "700.0",
        "wall_s": "70.0",
        "gpu_gb": "3.0",
    }


def test_builtin_defaults_and_off(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile("def test_a():\n    pass\n")
    junit = pytester.path / "junit.xml"
    result = run_plugin("--taichi-limits", "--taichi-limits-wall-s=off", f"--junitxml={junit}")
    result.assert_outcomes(passed=1)
    assert _budgets_from_junit(junit)["test_a"] == {
        "cpu_s": "off",
        "mem_mb": "4096.0",
        "wall_s": "off",
        "gpu_gb": "off",
    }
    result.stdout.fnmatch_lines(
        [
            "taichi-limits: supervising every test; default budget cpu_s=off"
            " mem_mb=4096 wall_s=off gpu_gb=off*"
        ]
    )


def test_unsupervised_tests_run_in_the_pytest_process(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makeconftest(
        """
        import os
        def pytest_configure(config):
            config.main_pid = os.getpid()
        """
    )
    pytester.makepyfile(
        """
        import os
        import pytest

        def test_plain(request):
            assert os.getpid() == request.config.main_pid

        @pytest.mark.taichi_limits(wall_s=30)
        def test_marked(request):
            assert os.getpid() != request.config.main_pid
        """
    )
    run_plugin().assert_outcomes(passed=2)


def test_plugin_can_be_disabled(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.taichi_limits(wall_s=30)
        def test_marked():
            pass
        """
    )
    result = run_plugin("-p", "no:taichi_limits", "--strict-markers")
    result.stdout.fnmatch_lines(["*'taichi_limits' not found in `markers`*"])
    result = run_plugin("-p", "no:taichi_limits")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*taichi-limits*")


def test_capture_logging_properties_and_outcomes_arrive(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        """
        import logging
        import sys
        import warnings
        import pytest

        def test_fails_with_output(record_property):
            record_property("answer", 42)
            print("to stdout")
            print("to stderr", file=sys.stderr)
            logging.getLogger("mine").warning("a log line")
            assert 1 == 2, "numbers differ"

        def test_warns():
            warnings.warn("careful now", UserWarning)

        @pytest.mark.xfail(reason="known bug")
        def test_xfail():
            assert False

        @pytest.mark.xfail(reason="fixed?")
        def test_xpass():
            pass

        @pytest.mark.skip(reason="not today")
        def test_skip():
            pass

        def test_skip_inside():
            pytest.skip("decided at run time")

        def test_pytest_fail():
            pytest.fail("explicit failure message")

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        def test_error(broken):
            pass
        """
    )
    junit = pytester.path / "junit.xml"
    result = run_plugin("--taichi-limits", "-rA", f"--junitxml={junit}")
    result.assert_outcomes(failed=2, passed=1, xfailed=1, xpassed=1, skipped=2, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "*- Captured stdout call -*",
            "to stdout",
            "*- Captured stderr call -*",
            "to stderr",
            "*- Captured log call -*",
            "*a log line*",
            "*AssertionError: numbers differ*",
            "*UserWarning: careful now*",
            "*explicit failure message*",
            "*RuntimeError: fixture broke*",
            "SKIPPED [[]1[]] test_capture_*.py:*: not today",
            "*decided at run time*",
            "XFAIL *test_xfail* - known bug",
        ]
    )
    case = next(
        c for c in ET.parse(junit).iter("testcase") if c.get("name") == "test_fails_with_output"
    )
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["answer"] == "42"
    assert "taichi_limits_own_rss_bytes" in properties


def test_log_file_and_logger(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        def test_ok():
            pass

        @pytest.mark.taichi_limits(wall_s=0.3)
        def test_slow():
            time.sleep(30)
        """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits",
        f"--taichi-limits-log={log}",
        "-rA",
        "-o",
        "log_cli=true",
        "--log-cli-level=WARNING",
    )
    result.assert_outcomes(passed=1, failed=1)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["nodeid"].split("::")[1]) for e in events] == [
        ("usage", "test_ok"),
        ("usage", "test_slow"),
        ("violation", "test_slow"),
    ]
    violation = events[2]
    assert violation["resource"] == "wall_s" and violation["limit"] == 0.3
    assert violation["measured"] >= 0.3 and violation["signals_sent"] == ["SIGTERM"]
    usage = events[0]
    assert usage["kernel_maxrss_bytes"] > 0 and usage["budget"]["wall_s"] == 600.0
    assert usage["gpu_peak_bytes"] is None and usage["gpu_note"].startswith("not measured")
    result.stdout.fnmatch_lines(["*WARNING*pytest_taichi_limits*wall_s exceeded*test_slow*"])


def test_session_scoped_fixture_finalizers_run_in_the_child(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    marker = pytester.path / "torn-down.txt"
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.fixture(scope="session")
        def resource():
            yield "r"
            with open({str(marker)!r}, "a") as f:
                f.write("down\\n")

        def test_one(resource):
            assert resource == "r"

        def test_two(resource):
            assert resource == "r"
        """
    )
    run_plugin("--taichi-limits").assert_outcomes(passed=2)
    # Each child set the fixture up and tore it down; nothing was left half-done.
    assert marker.read_text().splitlines() == ["down", "down"]


def test_pytest_exit_in_a_child_stops_the_session(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_stop():
            pytest.exit("enough", returncode=3)

        def test_never():
            pass
        """
    )
    result = run_plugin("--taichi-limits")
    assert result.ret == 3
    result.stdout.fnmatch_lines(["*Exit: enough*"])
    result.stdout.no_fnmatch_line("*test_never*PASSED*")


def test_mixed_supervised_and_plain_tests_run_each_finalizer_once(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    events = pytester.path / "events.txt"
    pytester.makepyfile(
        f"""
        import os
        import pytest

        def log(text):
            with open({str(events)!r}, "a") as f:
                f.write(text + "\\n")

        @pytest.fixture(scope="module")
        def resource():
            log("up")
            yield
            log("down")

        def test_plain_first(resource):
            pass

        @pytest.mark.taichi_limits(wall_s=30)
        def test_supervised(resource):
            pass

        def test_plain_last(resource):
            pass
        """
    )
    run_plugin().assert_outcomes(passed=3)
    # Every set-up is matched by exactly one tear-down, in the process that did it.
    assert events.read_text().split() == ["up", "down", "up", "down", "up", "down"]


WAKE_COUNTER = """
import atexit, json, os, select as real_select
from pytest_taichi_limits.supervise import supervisor

WAKES = {"timeouts": 0, "shortest": 1.0}


class CountingSelect:
    def select(self, readers, writers, errors, timeout):
        ready = real_select.select(readers, writers, errors, timeout)
        if not ready[0]:
            WAKES["timeouts"] += 1
            WAKES["shortest"] = min(WAKES["shortest"], timeout)
        return ready


supervisor.select = CountingSelect()  # the watch loop's select, counted
atexit.register(lambda: open(os.environ["WAKES_FILE"], "w").write(json.dumps(WAKES)))
"""


def test_the_watch_loop_sleeps_while_a_test_sleeps(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Far from every limit the loop sleeps up to 0.1 s between looks. A bug made it poll every
    # millisecond from a test's start (a "just told" test of an infinite time): 8 % of a core
    # for each running test (benchmarks/bench_supervisor_cost.py). Counted, not timed: the
    # loop's timeouts for a 2 s sleep are at most 2 s / 10 ms (the interval), plus a few
    # 1 ms looks once the child says it is done, however slow or busy the machine; they were
    # 1,620 with the bug.
    pytester.makeconftest(WAKE_COUNTER)
    pytester.makepyfile("import time\n\ndef test_sleeps():\n    time.sleep(2)\n")
    wakes = pytester.path / "wakes.json"
    monkeypatch.setenv("WAKES_FILE", str(wakes))
    result = run_plugin("--taichi-limits", timeout=120)
    result.assert_outcomes(passed=1)
    counted = json.loads(wakes.read_text())
    assert counted["timeouts"] <= 200, counted
