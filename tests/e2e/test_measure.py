"""What the supervisor measures and whose processes it may touch (issue 10, items 1-3).

Every case runs an inner pytest (real forks, real processes). Verdicts never depend on timing:
memory a test holds is still held when its child stops itself after its last phase for the
parent's exact reading (child/loop.py, supervise/supervisor.py `Worker._exact_reading`).
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import memory
from helpers.plugin_types import RunPlugin
from helpers.watch import (
    FIND_CHANNEL,
    WATCH_CONFTEST,
    assert_clean,
    assert_none_alive,
    pid_recorder,
)

AFTER = """

@pytest.mark.taichi_limits(wall_s=30)
def test_after():
    record_pid()
"""


def make_tests(
    pytester: pytest.Pytester, body: str, conftest_extra: str = "", prelude: str = ""
) -> Path:
    root = Path(pytester.path)
    pytester.makeconftest(
        WATCH_CONFTEST.replace("__ROOT__", repr(str(root))) + textwrap.dedent(conftest_extra)
    )
    (root / "pids.txt").write_text("")
    source = "import pytest\n" + pid_recorder(root) + prelude + textwrap.dedent(body) + AFTER
    pytester.makepyfile(test_measured=source)
    return root


def usage_of(log: Path, name: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return next(
        line for line in lines if line["event"] == "usage" and line["nodeid"].endswith("::" + name)
    )


def assert_reason(result: pytest.RunResult, name: str, headline: str) -> None:
    result.stdout.fnmatch_lines([f"*_ {name} _*", headline], consecutive=True)


# -- 1. many processes, few file descriptors ----------------------------------------------------

LOW_FD_LIMIT = """
import resource
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, _hard), _hard))
"""


def test_600_processes_under_ulimit_1024_do_not_end_the_session(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        conftest_extra=LOW_FD_LIMIT,
        body="""
        import subprocess, time

        def start_sleepers():
            return [subprocess.Popen(["sleep", "300"]) for _ in range(600)]

        @pytest.mark.taichi_limits(wall_s=120)
        def test_starts_and_kills_600():
            record_pid()
            sleepers = start_sleepers()
            time.sleep(0.5)  # sampled meanwhile, or not: the verdict is the same
            for process in sleepers:
                process.kill()
                process.wait()

        @pytest.mark.taichi_limits(mem_mb=100, wall_s=120)
        def test_600_then_over_mem_mb():
            record_pid()
            sleepers = start_sleepers()
            hold = b"\\x01" * (300 << 20)
            time.sleep(300)
    """,
    )
    result = run_plugin("--taichi-limits-grace=0.5", timeout=240)
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.assert_outcomes(passed=2, failed=1)
    assert_reason(result, "test_600_then_over_mem_mb", "taichi_limits: mem_mb exceeded*")
    # every sleeper is in the test's process group: none of them outlives the run
    assert_clean(root, expected_tests=3, processes=3)


# -- 2. pytest's own children are not the test's ------------------------------------------------

CONFTEST_THREAD = """
import subprocess, sys, threading, time

_RESULTS = os.path.join(__ROOT__, "thread_results.json")
_RELEASE = os.path.join(__ROOT__, "release")
_STARTED = os.path.join(__ROOT__, "sub_started")
_SUB = (
    "import os, sys, time\\n"
    "open(sys.argv[1], 'w').close()\\n"
    "while not os.path.exists(sys.argv[2]):\\n"
    "    time.sleep(0.01)\\n"
)


class _ThreadPlugin:
    # A thread of pytest's own that runs subprocess.run while the supervised test runs.

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        results = []
        thread = None
        if item.name == "test_waits_for_pytests_subprocess":
            thread = threading.Thread(target=_run, args=(results,))
            thread.start()
        yield
        if thread is not None:
            open(_RELEASE, "w").close()
            thread.join()
            with open(_RESULTS, "w") as handle:
                json.dump(results, handle)


def pytest_configure(config):
    config.pluginmanager.register(_ThreadPlugin())


def _run(results):
    # Waits until the supervised test runs, then starts a subprocess of pytest's own that
    # outlives the test: it must be left alone, and reaped by subprocess.run.
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(__ROOT__, "test_running")):
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)
    done = subprocess.run([sys.executable, "-c", _SUB, _STARTED, _RELEASE],
                          capture_output=True, text=True)
    results.append([done.returncode, done.stderr])
"""


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_a_conftest_thread_subprocess_is_not_taken_for_the_tests(
    pytester: pytest.Pytester, run_plugin: RunPlugin, mode: str
) -> None:
    root = make_tests(
        pytester,
        conftest_extra=CONFTEST_THREAD.replace("__ROOT__", repr(str(pytester.path))),
        body="""
        import os, time

        @pytest.mark.taichi_limits(wall_s=60)
        def test_waits_for_pytests_subprocess():
            record_pid()
            root = os.path.dirname(__file__)
            open(os.path.join(root, "test_running"), "w").close()
            while not os.path.exists(os.path.join(root, "sub_started")):
                time.sleep(0.01)
    """,
    )
    result = run_plugin(f"--taichi-limits-mode={mode}")
    result.assert_outcomes(passed=2)
    # The subprocess of pytest's thread ended by itself, with its own status: not killed by
    # the plugin (-9), and not reaped by it before subprocess.run could see it.
    assert json.loads((root / "thread_results.json").read_text()) == [[0, ""]]
    assert_none_alive(root, at_least=2)


# -- 3. mem_mb: what the test makes the machine hold ---------------------------------------------


def _run_logged(
    run_plugin: RunPlugin, pytester: pytest.Pytester, *args: str
) -> tuple[pytest.RunResult, Path]:
    log = Path(pytester.path) / "usage.jsonl"
    return run_plugin(f"--taichi-limits-log={log}", "--taichi-limits-grace=0.5", *args), log


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_pages_shared_copy_on_write_with_its_children_count_once(
    pytester: pytest.Pytester, run_plugin: RunPlugin, mode: str
) -> None:
    root = make_tests(
        pytester,
        body="""
        import os, time

        HELD = []

        @pytest.mark.taichi_limits(mem_mb=1024, wall_s=60)
        def test_holds_300_mb_then_forks_6():
            record_pid()
            HELD.append(b"\\x01" * (300 << 20))
            for _ in range(6):
                if os.fork() == 0:
                    time.sleep(300)  # killed with the test's tree
                    os._exit(0)
    """,
    )
    result, log = _run_logged(run_plugin, pytester, f"--taichi-limits-mode={mode}")
    result.assert_outcomes(passed=2)
    usage = usage_of(log, "test_holds_300_mb_then_forks_6")
    assert usage["memory_method"] == memory.expected_method()
    # (Pss of transparent huge pages shared after a fork reads a little low: 286 MiB here.)
    assert 250 << 20 < usage["peak_own_memory_bytes"] < 400 << 20, usage
    if mode == "fork":
        assert_clean(root, expected_tests=2, processes=2)
    else:  # the zygote's control socket stays open in pytest after the first test
        assert_none_alive(root, at_least=2)


INHERITED_CONFTEST = """
# Made by the pytest process: the supervised child inherits it, resident already.
INHERITED = bytearray(b"\\x01") * (400 << 20)
"""


def test_inherited_pages_the_test_overwrites_are_charged(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    make_tests(
        pytester,
        conftest_extra=INHERITED_CONFTEST,
        body="""
        from conftest import INHERITED

        @pytest.mark.taichi_limits(mem_mb=200, wall_s=60)
        def test_overwrites_inherited():
            record_pid()
            for offset in range(0, len(INHERITED), 4096):
                INHERITED[offset] = 2
    """,
    )
    result, log = _run_logged(run_plugin, pytester)
    result.assert_outcomes(failed=1, passed=1)
    assert_reason(
        result,
        "test_overwrites_inherited",
        "taichi_limits: mem_mb exceeded: * MiB when caught, limit mem_mb=200*",
    )
    assert usage_of(log, "test_overwrites_inherited")["peak_own_memory_bytes"] > 200 << 20


def test_memory_in_a_memfd_is_charged(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    make_tests(
        pytester,
        body="""
        import os

        FDS = []

        @pytest.mark.taichi_limits(mem_mb=200, wall_s=60)
        def test_fills_a_memfd():
            record_pid()
            fd = os.memfd_create("test-data")
            chunk = b"\\x01" * (1 << 20)  # never 300 MB of private memory at once
            for _ in range(300):
                os.write(fd, chunk)
            FDS.append(fd)  # held open to the end
    """,
    )
    result, _ = _run_logged(run_plugin, pytester)
    result.assert_outcomes(failed=1, passed=1)
    assert_reason(
        result,
        "test_fills_a_memfd",
        "taichi_limits: mem_mb exceeded: * MiB when caught, limit mem_mb=200*",
    )


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
@pytest.mark.parametrize("clean", [False, True])
def test_a_file_left_in_dev_shm_is_charged_reported_and_cleaned(
    pytester: pytest.Pytester, run_plugin: RunPlugin, clean: bool
) -> None:
    name = f"/dev/shm/taichi-limits-test-{uuid.uuid4().hex}"
    make_tests(
        pytester,
        body=f"""
        HELD = []

        @pytest.mark.taichi_limits(mem_mb=200, wall_s=60)
        def test_writes_dev_shm():
            record_pid()
            chunk = b"\\x01" * (1 << 20)  # never 300 MB of private memory at once
            handle = open({name!r}, "wb")
            HELD.append(handle)  # held open to its end: smaps sees whose file it is
            for _ in range(300):
                handle.write(chunk)
            handle.flush()
    """,
    )
    try:
        result, log = _run_logged(
            run_plugin, pytester, *(["--taichi-limits-clean-shm"] if clean else [])
        )
        result.assert_outcomes(failed=1, passed=1)
        assert_reason(
            result,
            "test_writes_dev_shm",
            "taichi_limits: mem_mb exceeded: * MiB when caught, limit mem_mb=200*",
        )
        assert usage_of(log, "test_writes_dev_shm")["shm_files_left"] == [name]
        assert os.path.exists(name) is not clean
    finally:
        if os.path.exists(name):
            os.unlink(name)


# -- 3b. the parent measures; it never takes the child's word -----------------------------------


def test_a_forged_hello_does_not_switch_mem_mb_off(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    make_tests(
        pytester,
        prelude="import os\n" + FIND_CHANNEL,
        body="""
        HELD = []

        @pytest.mark.taichi_limits(mem_mb=100, wall_s=60)
        def test_claims_10_tb_at_start():
            record_pid()
            for fd in channel_fds():
                os.write(fd, b'{"t": "hello", "pid": 1, "rss": 10000000000000}\\n')
            HELD.append(b"\\x01" * (300 << 20))
    """,
    )
    result, log = _run_logged(run_plugin, pytester)
    result.assert_outcomes(failed=1, passed=1)
    assert_reason(result, "test_claims_10_tb_at_start", "taichi_limits: mem_mb exceeded*")
    assert usage_of(log, "test_claims_10_tb_at_start")["start_rss_bytes"] < 10**12


# -- 3c. processes that leave the test's subtree -------------------------------------------------

ESCAPE = """
import ctypes, os, sys, time
sys.path.insert(0, sys.argv[2])
from test_measured import record_pid
record_pid()
held = b"\\x01" * (300 << 20)
open(sys.argv[1], "w").close()
time.sleep(300)
"""


def test_an_orphan_outside_the_childs_subtree_is_still_measured_and_killed(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        body=f"""
        import ctypes, os, subprocess, sys, time

        ESCAPE = {ESCAPE!r}

        @pytest.mark.taichi_limits(mem_mb=200, wall_s=60)
        def test_unsets_subreaper_and_daemonizes():
            record_pid()
            ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER off
            ready = os.path.join(os.path.dirname(__file__), "ready")
            if os.fork() == 0:  # the middle process leaves at once: its child is an orphan
                subprocess.Popen([sys.executable, "-c", ESCAPE, ready, os.path.dirname(__file__)])
                os._exit(0)
            while not os.path.exists(ready):
                time.sleep(0.01)
    """,
    )
    result, _ = _run_logged(run_plugin, pytester)
    result.assert_outcomes(failed=1, passed=1)
    assert_reason(result, "test_unsets_subreaper_and_daemonizes", "taichi_limits: mem_mb exceeded*")
    assert_clean(root, expected_tests=2, processes=3)


def test_a_clone_parent_sibling_is_still_measured_and_killed(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = make_tests(
        pytester,
        body=f"""
        import ctypes, os, sys, time

        ESCAPE = {ESCAPE!r}

        @pytest.mark.taichi_limits(mem_mb=200, wall_s=60)
        def test_clone_parent():
            record_pid()
            here = os.path.dirname(__file__)
            ready = os.path.join(here, "ready")
            libc = ctypes.CDLL(None, use_errno=True)
            # clone(CLONE_PARENT | SIGCHLD): the new process is a sibling of the test's child,
            # not its child; it execs at once (nothing else is safe after a raw clone).
            pid = libc.syscall(56, 0x00008000 | 17, 0, 0, 0, 0)
            if pid == 0:
                os.execv(sys.executable, [sys.executable, "-c", ESCAPE, ready, here])
            assert pid > 0, ctypes.get_errno()
            while not os.path.exists(ready):
                time.sleep(0.01)
    """,
    )
    result, _ = _run_logged(run_plugin, pytester)
    result.assert_outcomes(failed=1, passed=1)
    assert_reason(result, "test_clone_parent", "taichi_limits: mem_mb exceeded*")
    assert_clean(root, expected_tests=2, processes=3)
