"""Fault injection: real crashes, real signals, real escapes; the session always goes on.

Every case runs an inner pytest (real forks) and then checks that: the faulty test is reported
with the right reason, the test after it still runs, no process the test started outlives the
run, and the inner pytest process's fds, threads, children and zombies are as they were before
each test (see _watch.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin
from helpers.watch import FIND_CHANNEL, assert_clean, pid_recorder, watch

#: After every faulty test: proves the session went on, in a fresh child.
AFTER = """

@pytest.mark.taichi_limits(wall_s=30)
def test_after():
    record_pid()
"""


def make_tests(pytester: pytest.Pytester, body: str, prelude: str = "") -> Path:
    root = watch(pytester)
    source = "import pytest\n" + pid_recorder(root) + prelude + textwrap.dedent(body) + AFTER
    pytester.makepyfile(test_fault=source)
    return root


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_reason(result: pytest.RunResult, name: str, headline: str) -> None:
    """The failure section of `name` starts with `headline` (a glob)."""
    result.stdout.fnmatch_lines([f"*_ {name} _*", headline], consecutive=True)


def usage_of(log: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(line for line in log if line["event"] == "usage" and line["nodeid"].endswith(name))


# -- 1. segfault and abort ----------------------------------------------------------------------


def test_segfault_and_abort_fail_with_the_signal(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        """
        import ctypes, os

        @pytest.mark.taichi_limits(wall_s=30)
        def test_null_read():
            record_pid()
            ctypes.string_at(0)

        @pytest.mark.taichi_limits(wall_s=30)
        def test_abort():
            record_pid()
            os.abort()
    """,
    )
    result = run_plugin()
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: the test process was killed by signal 11 (SIGSEGV)",
            "*during      call",
            "*stack written by faulthandler:",
            "*Fatal Python error: Segmentation fault*",
            "*in test_null_read",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: the test process was killed by signal 6 (SIGABRT)",
            "*Fatal Python error: Aborted*",
            "*in test_abort",
        ]
    )
    assert_clean(root, expected_tests=3, processes=3)


# -- 2. SIGKILL from outside (the OOM killer) ---------------------------------------------------


def test_sigkill_from_outside_says_so(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    root = make_tests(
        pytester,
        """
        import os, subprocess, time

        @pytest.mark.taichi_limits(wall_s=30)
        def test_killed():
            record_pid()
            # Another process sends it, as the kernel's OOM killer would.
            subprocess.run(["kill", "-KILL", str(os.getpid())])
            time.sleep(30)
    """,
    )
    result = run_plugin()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: the test process was killed by signal 9 (SIGKILL) from outside the "
            "plugin (the kernel's OOM killer does this)",
        ]
    )
    assert_reason(result, "test_killed", "taichi_limits: the test process was killed by signal 9*")
    assert_clean(root, expected_tests=2, processes=2)


# -- 3. SIGTERM ignored, blocked or swallowed: SIGKILL after the grace period ------------------


def test_sigterm_refused_is_escalated_to_sigkill_within_the_grace(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        """
        import signal, time

        @pytest.mark.taichi_limits(wall_s=1)
        def test_ignores():
            record_pid()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)

        @pytest.mark.taichi_limits(wall_s=1)
        def test_blocks():
            record_pid()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            time.sleep(60)

        @pytest.mark.taichi_limits(wall_s=1)
        def test_swallows():
            record_pid()
            signal.signal(signal.SIGTERM, lambda *_: None)
            while True:
                time.sleep(0.01)
    """,
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits-grace=0.5", f"--taichi-limits-log={log}")
    result.assert_outcomes(failed=3, passed=1)
    for name in ("test_ignores", "test_blocks", "test_swallows"):
        result.stdout.fnmatch_lines(
            [
                f"*_ {name} _*",
                "*wall_s exceeded: * s when caught, limit wall_s=1 *",
                "*stopped     signals sent: SIGTERM, SIGKILL; the test process killed by signal 9 "
                "(SIGKILL)",
            ]
        )
        # wall_s + grace, plus a generous margin for a loaded machine.
        assert usage_of(log_lines(log), name)["wall_s"] < 1 + 0.5 + 3
    assert_clean(root, expected_tests=4, processes=4)


# -- 4. native code holding the GIL -------------------------------------------------------------


def test_taichi_kernel_holding_the_gil_is_stopped_with_its_stack(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        """
        import taichi as ti

        @pytest.mark.taichi_limits(wall_s=5)
        def test_endless_kernel():
            record_pid()
            ti.init(arch=ti.cpu, cpu_max_num_threads=1)
            flag = ti.field(ti.i32, shape=())

            @ti.kernel
            def endless():
                ti.loop_config(serialize=True)
                for _ in range(1):
                    while flag[None] == 0:
                        flag[None] = 0

            endless()
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*wall_s exceeded: * s when caught, limit wall_s=5 *",
            "*caught by   supervisor (wall clock), during call",
            "*stack at the moment of violation (all threads):",
            "*line * in test_endless_kernel",
        ]
    )
    assert_clean(root, expected_tests=2, processes=2)


def test_c_call_holding_the_gil_is_stopped_with_its_stack(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # ctypes.PyDLL keeps the GIL across the call (CDLL would release it): no Python-level
    # timer or signal handler in the child can run while it waits in pause().
    root = make_tests(
        pytester,
        """
        import ctypes, ctypes.util

        @pytest.mark.taichi_limits(wall_s=1)
        def test_pause_with_the_gil():
            record_pid()
            libc = ctypes.PyDLL(ctypes.util.find_library("c"))
            while True:
                libc.pause()
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*wall_s exceeded: * s when caught, limit wall_s=1 *",
            "*stack at the moment of violation (all threads):",
            "*line * in test_pause_with_the_gil",
        ]
    )
    assert_clean(root, expected_tests=2, processes=2)


# -- 5. grandchildren ---------------------------------------------------------------------------

GRANDCHILD = """
import os, signal, sys, time
if sys.argv[1] == "setsid":        # double fork + setsid: a daemon that left the tree
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.path.insert(0, sys.argv[2])
from test_fault import record_pid
record_pid()
time.sleep(300)
"""


@pytest.mark.parametrize("outcome", ["violation", "pass"])
def test_grandchildren_are_all_reaped(
    pytester: pytest.Pytester, run_plugin: RunPlugin, outcome: str
) -> None:
    wall_s, sleep_s = (2, 60) if outcome == "violation" else (30, 0)
    root = make_tests(
        pytester,
        f"""
        import os, subprocess, sys, time

        GRANDCHILD = {GRANDCHILD!r}

        @pytest.mark.taichi_limits(wall_s={wall_s})
        def test_spawns():
            record_pid()
            for kind in ("plain", "setsid", "stubborn"):
                subprocess.Popen([sys.executable, "-c", GRANDCHILD, kind, os.path.dirname(__file__)])
            deadline = time.time() + 20
            while len(open(_PIDS).read().split("\\n")) < 5 and time.time() < deadline:
                time.sleep(0.05)
            time.sleep({sleep_s})
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5")
    if outcome == "violation":
        result.assert_outcomes(failed=1, passed=1)
        result.stdout.fnmatch_lines(["*wall_s exceeded*", "*signals sent: SIGTERM, SIGKILL*"])
    else:
        result.assert_outcomes(passed=2)
    # the test, its three grandchildren, and test_after
    assert_clean(root, expected_tests=2, processes=5)


# -- 6. fork storm ------------------------------------------------------------------------------


@pytest.mark.parametrize("on_sigterm", ["signal.SIG_IGN", "signal.SIG_DFL"])
def test_fork_storm_is_stopped_and_reaped(
    pytester: pytest.Pytester, run_plugin: RunPlugin, on_sigterm: str
) -> None:
    # Every process ignores SIGTERM (or dies of it, orphaning its children) and keeps forking (8 children each, 3 levels deep at most:
    # a bound that keeps the machine usable even if the supervisor failed; the budget stops it
    # far earlier). Each forked pytest process holds tens of MB of RSS, so mem_mb trips.
    root = make_tests(
        pytester,
        f"""
        import os, signal, time

        @pytest.mark.taichi_limits(mem_mb=300, wall_s=20)
        def test_storm():
            signal.signal(signal.SIGTERM, {on_sigterm})
            record_pid()
            depth = 0
            forked = 0
            while depth < 3 and forked < 8:
                try:
                    pid = os.fork()
                except OSError:
                    time.sleep(0.01)
                    continue
                if pid == 0:
                    record_pid()
                    depth += 1
                    forked = 0
                else:
                    forked += 1
                time.sleep(0.005)
            time.sleep(300)
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5", timeout=90)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            # (a memory cgroup's cap, which counts the storm's kernel memory too, may hold it
            # first: "the test needed more than the limit")
            "*mem_mb exceeded: * limit mem_mb=300*",
            "*signals sent: SIGTERM*",
        ]
    )
    # The storm really stormed before it was stopped, and not one of its processes is left.
    assert_clean(root, expected_tests=2, processes=6)


# -- 7. escape attempts -------------------------------------------------------------------------


def test_raising_its_own_rlimit_cpu_does_not_escape_cpu_s(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        """
        import resource

        @pytest.mark.taichi_limits(cpu_s=1, wall_s=30)
        def test_lifts_rlimit():
            record_pid()
            soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
            try:  # with CAP_SYS_RESOURCE the hard limit can go too
                resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY,) * 2)
            except ValueError:
                resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
            lifted = resource.getrlimit(resource.RLIMIT_CPU)[0]
            assert lifted == resource.RLIM_INFINITY or lifted > soft
            while True:
                pass
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*cpu_s exceeded: * s when caught, limit cpu_s=1 *",
            "*caught by   supervisor (CPU time of the process tree, sampled)*",
            "*in test_lifts_rlimit",
        ]
    )
    assert_clean(root, expected_tests=2, processes=2)


def test_asking_taichi_for_100_gb_does_not_turn_a_violation_into_a_pass(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        """
        import taichi as ti

        @pytest.mark.taichi_limits(gpu_gb=1, mem_mb=150, wall_s=60)
        def test_greedy():
            record_pid()
            ti.init(arch=ti.cpu, device_memory_GB=100)
            hog = b"x" * (400 * 1024 * 1024)
            assert len(hog)
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*mem_mb exceeded: * when caught, limit mem_mb=150 *"])
    assert_clean(root, expected_tests=2, processes=2)


def test_tampering_with_the_report_channel_is_a_failure(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        prelude="import os\n" + FIND_CHANNEL,
        body="""
        @pytest.mark.taichi_limits(wall_s=30)
        def test_closes_channel():
            record_pid()
            for fd in channel_fds():
                os.close(fd)

        @pytest.mark.taichi_limits(wall_s=30)
        def test_writes_garbage():
            record_pid()
            for fd in channel_fds():
                os.write(fd, b"\\x00garbage that is not JSON\\n")

        @pytest.mark.taichi_limits(wall_s=30)
        def test_forges_done_and_leaves():
            record_pid()
            for fd in channel_fds():
                os.write(fd, b'{"t": "done", "nodeid": "test_fault.py::test_forges_done_and_leaves"}\\n')
            os._exit(0)

        @pytest.mark.taichi_limits(wall_s=30)
        def test_half_a_message_then_exit():
            record_pid()
            for fd in channel_fds():
                os.write(fd, b'{"t": "report", "data": {"nodeid"')
            os._exit(0)

        @pytest.mark.taichi_limits(wall_s=1)
        def test_garbage_then_violation():
            record_pid()
            for fd in channel_fds():
                os.write(fd, b"garbage\\n")
            while True:
                pass
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5")
    result.assert_outcomes(failed=5, passed=1)
    assert_reason(
        result,
        "test_closes_channel",
        "taichi_limits: the test process exited with status 70 before it sent its reports*",
    )
    assert_reason(
        result,
        "test_writes_garbage",
        "taichi_limits: the report channel carried garbage: *; the test's own result is unknown",
    )
    assert_reason(
        result,
        "test_forges_done_and_leaves",
        "taichi_limits: the child sent no "
        "report for the call phase; the test's own result is unknown",
    )
    assert_reason(
        result,
        "test_half_a_message_then_exit",
        "taichi_limits: the report channel "
        "ended in the middle of a message; the test process exited with status 0 and "
        "its own result is unknown",
    )
    assert_reason(result, "test_garbage_then_violation", "taichi_limits: wall_s exceeded*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    assert_clean(root, expected_tests=6, processes=6)


def test_flooding_the_report_channel_is_a_failure_not_a_hang(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # 300 MB without a newline, past the channel's 256 MB limit. The parent used to stop
    # reading there, and the child, blocked on the full pipe, was only stopped by wall_s.
    root = make_tests(
        pytester,
        prelude="import os\n" + FIND_CHANNEL,
        body="""
        @pytest.mark.taichi_limits(wall_s=60, mem_mb=None)
        def test_floods_channel():
            record_pid()
            chunk = b"x" * (1024 * 1024)
            for fd in channel_fds():
                for _ in range(300):
                    os.write(fd, chunk)
    """,
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(f"--taichi-limits-log={log}")
    result.assert_outcomes(failed=1, passed=1)
    assert_reason(
        result,
        "test_floods_channel",
        "taichi_limits: the child sent more than "
        "268435456 bytes of reports; the test process exited with status 0 and its "
        "own result is unknown",
    )
    assert usage_of(log_lines(log), "test_floods_channel")["wall_s"] < 40
    assert_clean(root, expected_tests=2, processes=2)


def test_megabytes_on_stdout_do_not_break_the_report(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        """
        import sys, time

        @pytest.mark.taichi_limits(wall_s=30)
        def test_prints_and_passes():
            record_pid()
            for _ in range(20):
                sys.stdout.write("y" * (1024 * 1024) + "\\n")

        @pytest.mark.taichi_limits(wall_s=2)
        def test_prints_then_hangs():
            record_pid()
            for _ in range(20):
                sys.stdout.write("z" * (1024 * 1024) + "\\n")
            time.sleep(60)

        @pytest.mark.taichi_limits(wall_s=30)
        def test_prints_then_fails():
            record_pid()
            for _ in range(20):
                sys.stdout.write("w" * (1024 * 1024) + "\\n")
            assert False, "own failure"
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5")
    result.assert_outcomes(failed=2, passed=2)
    assert_reason(result, "test_prints_then_hangs", "taichi_limits: wall_s exceeded*")
    result.stdout.fnmatch_lines(["*FAILED test_fault.py::test_prints_then_fails - Assert*"])
    assert_clean(root, expected_tests=4, processes=4)


def test_os_exit_before_reporting_is_a_failure_never_a_pass(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        """
        import os

        @pytest.mark.taichi_limits(wall_s=30)
        def test_exit_zero():
            record_pid()
            os._exit(0)

        @pytest.fixture
        def leaves_in_teardown():
            yield
            os._exit(0)

        @pytest.mark.taichi_limits(wall_s=30)
        def test_exit_zero_in_teardown(leaves_in_teardown):
            record_pid()

        @pytest.mark.taichi_limits(mem_mb=50, wall_s=30)
        def test_violation_then_exit_zero():
            record_pid()
            hog = b"x" * (300 * 1024 * 1024)
            os._exit(0)
    """,
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(f"--taichi-limits-log={log}")
    # A crash in teardown fails the test itself: the plugin puts every failure on the call.
    result.assert_outcomes(failed=3, passed=1)
    for name in ("test_exit_zero", "test_exit_zero_in_teardown"):
        assert_reason(
            result,
            name,
            "taichi_limits: the test process exited with status 0 before it sent its reports*",
        )
    assert_reason(result, "test_violation_then_exit_zero", "taichi_limits: mem_mb exceeded*")
    assert_clean(root, expected_tests=4, processes=4)


# -- 10. an unwritable or full log --------------------------------------------------------------

TWO_TESTS = """
import pytest

@pytest.mark.taichi_limits(wall_s=30)
def test_first():
    pass

@pytest.mark.taichi_limits(wall_s=30)
def test_second():
    pass
"""


@pytest.mark.parametrize(
    "where, reason",
    [
        ("file/usage.jsonl", "* is not a directory"),
        (".", "Is a directory"),
    ],
)
def test_unwritable_log_path_stops_before_any_test(
    pytester: pytest.Pytester, run_plugin: RunPlugin, where: str, reason: str
) -> None:
    pytester.makepyfile(TWO_TESTS)
    (pytester.path / "file").write_text("")
    result = run_plugin(f"--taichi-limits-log={where}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --taichi-limits-log: cannot append to '{where}' (*): {reason} (give a regular "
            "file, or a FIFO that is being read, in a writable directory)",
        ]
    )
    result.stdout.no_fnmatch_line("*test_first*")
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_log_on_a_full_device_is_a_clear_error_after_the_results(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(TWO_TESTS)
    result = run_plugin("--taichi-limits-log=/dev/full")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*1 passed*"])  # the test that ran is still reported
    result.stderr.fnmatch_lines(
        [
            "ERROR: --taichi-limits-log: cannot append to '/dev/full': ?Errno 28? No space left on "
            "device; the lines already in it are left as they were",
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.fixture
def tiny_tmpfs(pytester: pytest.Pytester) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up (needs root, as in CI containers)."""
    mount_point = pytester.path / "full_disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_full_disk_never_corrupts_an_existing_log(
    pytester: pytest.Pytester, run_plugin: RunPlugin, tiny_tmpfs: Path
) -> None:
    log = tiny_tmpfs / "usage.jsonl"
    lines = [json.dumps({"event": "usage", "nodeid": f"old::{n}"}) + "\n" for n in range(3)]
    # The log's only page is full but for 300 bytes: a usage line (about 1 KB) fits in part.
    pad = 4096 - 300 - len("".join(lines))
    lines[0] = json.dumps({"event": "usage", "nodeid": "old::0", "pad": "x" * (pad - 11)}) + "\n"
    existing = "".join(lines)
    log.write_text(existing)
    # Fill every other page of the device.
    fd = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    pytester.makepyfile(TWO_TESTS)
    result = run_plugin(f"--taichi-limits-log={log}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*passed*"])
    # Part of a line was written before the device filled up: the plugin took it back.
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --taichi-limits-log: cannot append to '{log}': "
            "?Errno 28? only * of * bytes written; the lines already in it "
            "are left as they were"
        ]
    )
    text = log.read_text()
    assert text.startswith(existing)
    assert text.endswith("\n")
    for line in text.splitlines():
        json.loads(line)  # every line whole
