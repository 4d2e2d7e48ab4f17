"""The memory figure by method (issue 17): the kernel's figure in a memory cgroup per worker, the
cap, whose shared memory is whose, and nothing left behind. Real cgroups (v1 here, as root; v2
where delegated), real allocations, inner pytest runs.

Cases that need a cgroup run with `--taichi-limits-memory-method=cgroup` and are skipped with the
reason where none can be made; the smaps cases force `smaps`. No verdict depends on timing: what
a test holds it holds to its end, and what another process writes is written while the test
waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import memory
from helpers.plugin_types import RunPlugin

from pytest_taichi_limits.measure import cgroup

MB = 1 << 20
SUPPORT = memory.support()
needs_cgroup = pytest.mark.skipif(
    SUPPORT is None, reason=f"no memory cgroup can be made here: {cgroup.detect()}"
)
BOTH_METHODS = pytest.mark.parametrize(
    "method",
    [pytest.param("cgroup", marks=needs_cgroup), "smaps"],
)


def usages(log: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return {line["nodeid"].split("::")[-1]: line for line in lines if line["event"] == "usage"}


def own_cgroups(pid: int) -> list[str]:
    """Cgroups the pytest process `pid` made that are still there."""
    assert SUPPORT is not None
    prefix = f"{cgroup.NAME_PREFIX}{pid}-"
    return [name for name in os.listdir(SUPPORT.parent) if name.startswith(prefix)]


# -- the kernel's figure: held cases within 2 MiB ------------------------------------------------

HELD_CONFTEST = """
# Made by the pytest process: every supervised child inherits it, resident already.
INHERITED = bytearray(b"\\x01") * (100 << 20)
"""

HELD_CASES = """
import mmap, os, signal, time
import pytest
from conftest import INHERITED

SIZE = 100 << 20
CHUNK = b"\\x01" * (1 << 20)  # written in chunks: never the whole size privately at once
HELD = []

@pytest.mark.taichi_limits(mem_mb=1024)
def test_trivial():
    pass

@pytest.mark.taichi_limits(mem_mb=1024)
def test_plain_allocation():
    HELD.append(b"\\x01" * SIZE)

def _fork_idle_children():
    for _ in range(4):
        if os.fork() == 0:
            # Stopped at once, it copies next to nothing of what it shares; killed with the
            # test's tree (and not sampled alive, or sampled: the figure hardly differs).
            os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(0)

@pytest.mark.taichi_limits(mem_mb=1024)
def test_forks_only():
    _fork_idle_children()

@pytest.mark.taichi_limits(mem_mb=1024)
def test_fork_with_shared_pages():
    HELD.append(b"\\x01" * SIZE)
    _fork_idle_children()

@pytest.mark.taichi_limits(mem_mb=1024)
def test_dirtied_inherited_pages():
    for offset in range(0, len(INHERITED), 4096):
        INHERITED[offset] = 2

@pytest.mark.taichi_limits(mem_mb=1024)
def test_memfd():
    fd = os.memfd_create("held")
    for _ in range(SIZE >> 20):
        os.write(fd, CHUNK)
    HELD.append(fd)

@pytest.mark.taichi_limits(mem_mb=1024)
def test_map_shared_anonymous():
    mapping = mmap.mmap(-1, SIZE, flags=mmap.MAP_SHARED)
    for _ in range(SIZE >> 20):
        mapping.write(CHUNK)
    HELD.append(mapping)

@pytest.mark.taichi_limits(mem_mb=1024)
def test_tmpfs_file():
    with open(os.environ["HELD_SHM_FILE"], "wb") as handle:
        for _ in range(SIZE >> 20):
            handle.write(CHUNK)
"""


@needs_cgroup
def test_held_cases_are_within_2_mib_of_what_they_hold(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(HELD_CONFTEST)
    pytester.makepyfile(test_held=HELD_CASES)
    shm_file = f"/dev/shm/taichi-limits-held-{uuid.uuid4().hex}"
    monkeypatch.setenv("HELD_SHM_FILE", shm_file)
    log = pytester.path / "usage.jsonl"
    try:
        result = run_plugin("--taichi-limits-memory-method=cgroup", f"--taichi-limits-log={log}")
    finally:
        if os.path.exists(shm_file):
            os.unlink(shm_file)
    result.assert_outcomes(passed=8)
    found = usages(log)
    assert SUPPORT is not None
    assert {usage["memory_method"] for usage in found.values()} == {SUPPORT.method}
    # What running any test in a fresh child costs, from the child's birth (pytest's own pages
    # copied on write by Python's after-fork work, the plugin's start-up in the child and
    # pytest's hooks: about 5 MiB): the same in every case, so it is taken away before
    # comparing.
    machinery = found.pop("test_trivial")["own_memory_bytes"]
    assert machinery < 8 * MB
    # Four forked interpreters copy about 1 MiB each of their own (Python's after-fork work),
    # with their page tables and kernel stacks in the kernel's peak of the charge (the figure
    # is that peak where no sample saw as much): under 2.5 MiB each.
    forks = found.pop("test_forks_only")["own_memory_bytes"] - machinery
    assert 0 <= forks < 4 * 2.5 * MB
    for name, usage in found.items():
        figure = usage["own_memory_bytes"] - machinery
        children = 4 * 2.5 * MB if "fork" in name else 0  # the 100 MiB shared: counted once
        assert -2 * MB < figure - 100 * MB < 2 * MB + children, (name, figure / MB)
        assert usage["own_memory_bytes"] == usage["peak_own_memory_bytes"]
        assert usage["page_cache_bytes"] is not None


# -- whose shared memory ---------------------------------------------------------------------------

#: In the pytest process (outside the test's tree and cgroup): when the test asks, write a
#: 300 MB file to /dev/shm, as an unrelated process would, and say so.
OUTSIDE_WRITER = """
import os, threading, time
import pytest

ROOT = os.path.dirname(__file__)


def _write_when_asked(path, replace):
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(ROOT, "ask")):
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)
    target = path + ".new" if replace else path
    with open(target, "wb") as handle:
        for _ in range(300):
            handle.write(b"\\x01" * (1 << 20))
    if replace:
        os.replace(target, path)
    open(os.path.join(ROOT, "written"), "w").close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    thread = threading.Thread(
        target=_write_when_asked,
        args=(os.environ["OUTSIDE_SHM_FILE"], bool(os.environ.get("OUTSIDE_REPLACES"))),
    )
    thread.start()
    yield
    thread.join()
"""

WAITS_FOR_THE_WRITER = """
import os, time
import pytest

@pytest.mark.taichi_limits(mem_mb=150)
def test_sleeps_while_another_process_writes_shm():
    root = os.path.dirname(__file__)
    open(os.path.join(root, "ask"), "w").close()
    while not os.path.exists(os.path.join(root, "written")):
        time.sleep(0.01)
"""


@BOTH_METHODS
@pytest.mark.parametrize("clean", [False, True])
def test_another_processes_dev_shm_file_is_not_charged_nor_removed(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    clean: bool,
) -> None:
    """Issue 17 (a false mem_mb violation) and issue 16 item 5 (a): a file another process
    creates in /dev/shm while the test runs is neither charged to the test nor removed."""
    pytester.makeconftest(OUTSIDE_WRITER)
    pytester.makepyfile(WAITS_FOR_THE_WRITER)
    path = f"/dev/shm/taichi-limits-outside-{uuid.uuid4().hex}"
    monkeypatch.setenv("OUTSIDE_SHM_FILE", path)
    log = pytester.path / "usage.jsonl"
    args = [f"--taichi-limits-memory-method={method}", f"--taichi-limits-log={log}"]
    try:
        result = run_plugin(*args, *(["--taichi-limits-clean-shm"] if clean else []))
        result.assert_outcomes(passed=1)
        assert os.path.getsize(path) == 300 * MB  # not removed
        usage = usages(log)["test_sleeps_while_another_process_writes_shm"]
        assert usage["own_memory_bytes"] < 20 * MB, usage
        assert usage["shm_files_left"] == []
        if method == "smaps":  # the record says what it could not attribute
            assert "could not be attributed to the test" in usage["memory_note"]
        if clean:
            # (other processes' files may appear meanwhile too: all kept, all said)
            assert f"{path} (not attributable to the test: kept)" in usage["shm_not_removed"]
    finally:
        if os.path.exists(path):
            os.unlink(path)


@BOTH_METHODS
def test_a_file_replaced_by_another_process_is_kept(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Issue 16 item 5 (b): a file that was there before, replaced by another process while the
    test ran (a new inode under the old name), is not the test's."""
    pytester.makeconftest(OUTSIDE_WRITER)
    pytester.makepyfile(WAITS_FOR_THE_WRITER)
    path = f"/dev/shm/taichi-limits-replaced-{uuid.uuid4().hex}"
    Path(path).write_bytes(b"before")
    monkeypatch.setenv("OUTSIDE_SHM_FILE", path)
    monkeypatch.setenv("OUTSIDE_REPLACES", "1")
    try:
        result = run_plugin(f"--taichi-limits-memory-method={method}", "--taichi-limits-clean-shm")
        result.assert_outcomes(passed=1)
        assert os.path.getsize(path) == 300 * MB
    finally:
        if os.path.exists(path):
            os.unlink(path)


XDIST_SHM_TEST = """
import os, time
import pytest

HELD = []
ROOT = os.path.dirname(__file__)


def _barrier(mine, theirs):
    open(os.path.join(ROOT, mine), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(ROOT, theirs)):
        assert time.monotonic() < deadline, "the other worker never came"
        time.sleep(0.01)


@pytest.mark.taichi_limits(mem_mb=1024)
def test_writes_{name}():
    handle = open(os.environ["SHM_{upper}"], "wb")
    HELD.append(handle)  # held to the end, as multiprocessing.shared_memory holds its file
    for _ in range({size}):
        handle.write(b"\\x01" * (1 << 20))
    handle.flush()
    _barrier("{name}-written", "{other}-written")  # both files exist from here on
"""


@BOTH_METHODS
def test_two_xdist_workers_writing_shared_memory_are_each_charged_their_own(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    pytester.makepyfile(
        test_a=XDIST_SHM_TEST.format(name="a", upper="A", other="b", size=120),
        test_b=XDIST_SHM_TEST.format(name="b", upper="B", other="a", size=40),
    )
    paths = {name: f"/dev/shm/taichi-limits-xdist-{name}-{uuid.uuid4().hex}" for name in "AB"}
    for name, path in paths.items():
        monkeypatch.setenv(f"SHM_{name}", path)
    log = pytester.path / "usage.jsonl"
    try:
        result = run_plugin(
            "-n", "2", f"--taichi-limits-memory-method={method}", f"--taichi-limits-log={log}"
        )
        result.assert_outcomes(passed=2)
    finally:
        for path in paths.values():
            if os.path.exists(path):
                os.unlink(path)
    found = usages(log)
    for name, size in (("test_writes_a", 120), ("test_writes_b", 40)):
        figure = found[name]["own_memory_bytes"]
        assert size * MB <= figure < (size + 8) * MB, (name, figure / MB)


# -- the cap ----------------------------------------------------------------------------------


@needs_cgroup
def test_a_test_growing_at_1_gb_per_s_is_stopped_at_its_cap_with_a_stack(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        """
        import pytest

        HELD = []

        @pytest.mark.taichi_limits(mem_mb=200)
        def test_grows_fast():
            while True:  # about 1 GB/s: faster than any sampling interval can follow
                HELD.append(b"\\x01" * (1 << 20))

        @pytest.mark.taichi_limits(mem_mb=200)
        def test_after():
            pass
        """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits-memory-method=cgroup", f"--taichi-limits-log={log}")
    result.assert_outcomes(failed=1, passed=1)  # the session goes on
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: mem_mb exceeded: * limit mem_mb=200*",
            memory.caught_by_pattern(SUPPORT.method if SUPPORT else None) + "*",
            "*detail      the test's memory cgroup (cgroup-v*) was charged at most * bytes "
            "against its cap of * (0 bytes above it;*",
            "*stack at the moment of violation (all threads):",
            "*in test_grows_fast",
        ]
    )
    usage = usages(log)["test_grows_fast"]
    # Whoever caught it (the sampled check at mem_mb, or the kernel at the cap a little above
    # it), the figure never went past the cap's margin above the limit.
    assert usage["own_memory_bytes"] <= 200 * MB + cgroup.cap_margin(200 * MB) + 4 * MB


# -- a test that leaves its cgroup -------------------------------------------------------------


@needs_cgroup
@pytest.mark.skipif(os.geteuid() != 0, reason="only root can move a process between cgroups")
def test_a_test_that_moves_itself_out_of_its_cgroup_is_caught_and_stopped(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    """As root nothing refuses the write to another cgroup's cgroup.procs: the supervisor sees a
    process of the test's tree outside the worker's cgroup, stops the test and says why."""
    assert SUPPORT is not None
    pytester.makepyfile(
        f"""
        import os, time
        import pytest

        HELD = []

        @pytest.mark.taichi_limits(mem_mb=100, wall_s=60)
        def test_leaves_its_cgroup():
            with open({os.path.join(SUPPORT.parent, "cgroup.procs")!r}, "w") as handle:
                handle.write("0")
            HELD.append(b"\\x01" * (300 << 20))  # no longer in the figure: must not pass
            time.sleep(60)

        @pytest.mark.taichi_limits(mem_mb=100)
        def test_after():
            pass
        """
    )
    result = run_plugin("--taichi-limits-memory-method=cgroup", "--taichi-limits-grace=0.5")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        ["*taichi_limits: process * of the test left the test's memory cgroup*"]
    )


# -- nothing left behind ---------------------------------------------------------------------

RECORDS_ITS_PID = """
import os

def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        with open(os.path.join(os.path.dirname(__file__), "pytest.pid"), "w") as handle:
            handle.write(str(os.getpid()))
"""

LINGERS = """
import os, subprocess, sys, time
import pytest

ROOT = os.path.dirname(__file__)

@pytest.mark.taichi_limits(wall_s=120)
def test_leaves_an_orphan_and_waits():
    # An orphan in a session of its own: it outlives the child, the keeper and pytest itself
    # (no parent-death signal reaches it); only its cgroup knows it is the test's.
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    with open(os.path.join(ROOT, "orphan.pid"), "w") as handle:
        handle.write(str(orphan.pid))
    open(os.path.join(ROOT, "running"), "w").close()
    time.sleep(120)
"""


def _start(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"pytest ended before {path.name} (status {process.poll()})"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout_s} s"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@needs_cgroup
def test_no_cgroup_is_left_after_a_normal_end(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makeconftest(RECORDS_ITS_PID)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.taichi_limits(mem_mb=100, isolation="module")
        def test_one():
            pass

        @pytest.mark.taichi_limits(mem_mb=100)
        def test_two():
            pass
        """
    )
    run_plugin("--taichi-limits-memory-method=cgroup").assert_outcomes(passed=2)
    assert own_cgroups(int((pytester.path / "pytest.pid").read_text())) == []


@needs_cgroup
def test_no_cgroup_nor_process_is_left_after_ctrl_c(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(RECORDS_ITS_PID)
    pytester.makepyfile(test_lingers=LINGERS)
    process = _start(pytester, "--taichi-limits-memory-method=cgroup")
    orphan = 0
    try:
        _wait_for(pytester.path / "running", process)
        orphan = int((pytester.path / "orphan.pid").read_text())
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 2  # interrupted
        assert own_cgroups(process.pid) == []
        assert not _alive(orphan)
    finally:
        process.kill()
        if orphan and _alive(orphan):
            os.kill(orphan, signal.SIGKILL)


@needs_cgroup
def test_a_sigkilled_sessions_cgroup_and_processes_are_swept_by_the_next(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makeconftest(RECORDS_ITS_PID)
    pytester.makepyfile(test_lingers=LINGERS)
    process = _start(pytester, "--taichi-limits-memory-method=cgroup")
    orphan = 0
    try:
        _wait_for(pytester.path / "running", process)
        orphan = int((pytester.path / "orphan.pid").read_text())
        process.kill()  # SIGKILL: pytest cleans up nothing; its cgroup and the orphan stay
        process.wait(timeout=60)  # (until a session sweeps them: this suite's others may too)
        (pytester.path / "test_lingers.py").unlink()
        pytester.makepyfile(
            test_next="""
            import pytest

            @pytest.mark.taichi_limits(mem_mb=100)
            def test_next():
                pass
            """
        )
        run_plugin("--taichi-limits-memory-method=cgroup").assert_outcomes(passed=1)
        assert own_cgroups(process.pid) == []  # swept at the next start-up
        deadline = time.monotonic() + 10
        while _alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)  # killed by the sweep; init reaps it
        assert not _alive(orphan)
    finally:
        process.kill()
        if orphan and _alive(orphan):
            os.kill(orphan, signal.SIGKILL)


# -- cgroup v2 ---------------------------------------------------------------------------------


@pytest.mark.skipif(
    SUPPORT is None or SUPPORT.version != 2,
    reason=f"no writable cgroup v2 with the memory controller here: {cgroup.detect()}",
)
def test_cgroup_v2_measures_and_caps(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest

            HELD = []

            @pytest.mark.taichi_limits(mem_mb=400)
            def test_holds_100_mb():
                HELD.append(b"\\x01" * (100 << 20))

            @pytest.mark.taichi_limits(mem_mb=100)
            def test_over():
                while True:
                    HELD.append(b"\\x01" * (1 << 20))
            """
        )
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits-memory-method=cgroup", f"--taichi-limits-log={log}")
    result.assert_outcomes(passed=1, failed=1)
    found = usages(log)
    assert found["test_holds_100_mb"]["memory_method"] == "cgroup-v2"
    assert 100 * MB <= found["test_holds_100_mb"]["own_memory_bytes"] < 104 * MB
    result.stdout.fnmatch_lines(["*taichi_limits: mem_mb exceeded: * limit mem_mb=100*"])


# -- --taichi-limits-clean-shm: only what the test made (issue 16 item 5) ---------------------

XDIST_LIVE_FILE_A = """
import os, time
import pytest

ROOT = os.path.dirname(__file__)


def _wait(name):
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(ROOT, name)):
        assert time.monotonic() < deadline, f"no {name}"
        time.sleep(0.01)


@pytest.mark.taichi_limits(wall_s=120)
def test_a_holds_a_live_file():
    _wait("b-started")  # made while the other worker's test runs
    with open(os.environ["LIVE_FILE"], "wb") as handle:
        handle.write(b"\\x01" * (1 << 20))
    open(os.path.join(ROOT, "a-created"), "w").close()
    _wait("b-worker-ended")  # the other worker's test ended, and its worker with it
    with open(os.environ["LIVE_FILE"], "rb") as handle:  # still there, still ours
        assert len(handle.read()) == 1 << 20
"""

XDIST_LIVE_FILE_B = """
import os, time
import pytest

ROOT = os.path.dirname(__file__)


@pytest.mark.taichi_limits(wall_s=120)
def test_b_first():
    open(os.path.join(ROOT, "b-started"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(ROOT, "a-created")):
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.taichi_limits(wall_s=120)
def test_b_second():
    # A new worker: test_b_first's worker has ended, and anything it cleaned is gone.
    open(os.path.join(ROOT, "b-worker-ended"), "w").close()
"""


def test_clean_shm_under_xdist_keeps_the_other_workers_live_file(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 item 5 (c): the other xdist worker's file, made while this test ran, is not
    this test's to remove."""
    pytester.makepyfile(test_a=XDIST_LIVE_FILE_A, test_b=XDIST_LIVE_FILE_B)
    path = f"/dev/shm/taichi-limits-live-{uuid.uuid4().hex}"
    monkeypatch.setenv("LIVE_FILE", path)
    try:
        result = run_plugin("-n", "2", "--dist", "loadfile", "--taichi-limits-clean-shm")
        result.assert_outcomes(passed=3)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_clean_shm_leaves_a_module_fixtures_shared_memory_to_the_modules_end(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    """Issue 16 item 5 (d): with isolation=module, a module fixture's shared memory lives as
    long as the module's tests do; it is cleaned (if still there) at the worker's end only."""
    pytester.makepyfile(
        """
        from multiprocessing import shared_memory
        import pytest

        @pytest.fixture(scope="module")
        def block():
            made = shared_memory.SharedMemory(create=True, size=1 << 20)
            yield made
            made.close()
            made.unlink()

        @pytest.mark.parametrize("value", [1, 2, 3])
        def test_uses_the_block(block, value):
            block.buf[0] = value
            assert block.buf[0] == value
        """
    )
    result = run_plugin(
        "--taichi-limits", "--taichi-limits-isolation=module", "--taichi-limits-clean-shm"
    )
    result.assert_outcomes(passed=3)


@BOTH_METHODS
def test_clean_shm_removes_what_the_test_wrote_where_it_can_tell_it_was_the_test(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A file written and closed, with no process left holding it: its pages are charged to the
    test's cgroup (the kernel says whose, as root), so it is the test's and removed; smaps never
    saw a process of the test hold it, so it is kept and said so."""
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.taichi_limits(mem_mb=100)
        def test_writes_and_forgets():
            with open(os.environ["FORGOTTEN"], "wb") as handle:
                handle.write(b"\\x01" * (1 << 20))
        """
    )
    path = f"/dev/shm/taichi-limits-forgotten-{uuid.uuid4().hex}"
    monkeypatch.setenv("FORGOTTEN", path)
    log = pytester.path / "usage.jsonl"
    try:
        result = run_plugin(
            f"--taichi-limits-memory-method={method}",
            "--taichi-limits-clean-shm",
            f"--taichi-limits-log={log}",
        )
        result.assert_outcomes(passed=1)
        usage = usages(log)["test_writes_and_forgets"]
        if method == "cgroup" and os.geteuid() == 0:
            assert not os.path.exists(path)
            assert usage["shm_files_left"] == [path]
        else:
            assert os.path.exists(path)
            assert f"{path} (not attributable to the test: kept)" in usage["shm_not_removed"]
    finally:
        if os.path.exists(path):
            os.unlink(path)


# -- the choice, at start-up ---------------------------------------------------------------------

NO_CGROUP_PLUGIN = """
from pytest_taichi_limits.measure import meter

# As on a machine without a usable memory cgroup (loaded with -p, before the plugin configures).
meter._detected = lambda: "no usable memory cgroup (cgroup v2: not here; cgroup v1: not here)"
"""


def test_where_no_cgroup_can_be_made_auto_says_why_and_cgroup_is_a_usage_error(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(nocgroup=NO_CGROUP_PLUGIN, test_one="def test_one():\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    auto = run_plugin("-p", "nocgroup", "--taichi-limits", "--taichi-limits-memory-method=auto")
    auto.assert_outcomes(passed=1)
    auto.stdout.fnmatch_lines(
        ["taichi-limits: memory measured by smaps (/proc): no usable memory cgroup (*"]
    )
    forced = run_plugin("-p", "nocgroup", "--taichi-limits", "--taichi-limits-memory-method=cgroup")
    assert forced.ret == pytest.ExitCode.USAGE_ERROR
    forced.stderr.fnmatch_lines(
        ["ERROR: --taichi-limits-memory-method=cgroup, but no usable memory cgroup (*"]
    )


@needs_cgroup
def test_a_test_held_at_its_cap_is_killed_at_once_and_names_its_untorn_fixtures(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    """Held at the cap, the test waits in the kernel: its SIGTERM handler (and so its teardown)
    cannot run, so the grace period is not waited out, and the report names the fixture."""
    pytester.makepyfile(
        """
        import pytest

        HELD = []

        @pytest.fixture(scope="module")
        def recorder():
            yield

        @pytest.mark.taichi_limits(mem_mb=200)
        def test_grows_past_its_cap(recorder):
            HELD.append(b"\\x01" * (2 << 30))  # one allocation: no Python code runs meanwhile
        """
    )
    result = run_plugin(
        "--taichi-limits-memory-method=cgroup", "--taichi-limits-grace=60", timeout=50
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: mem_mb exceeded: *limit mem_mb=200*",
            "*not torn down  recorder (module): the test process ended before its teardown ran*",
            "*signals sent: SIGTERM, SIGKILL*",
        ]
    )


# -- a short hold under a large pytest -------------------------------------------------------------

LARGE_PYTEST_CONFTEST = """
# A large pytest process: every supervised child inherits 1.5 GB, resident, so an exact reading
# (smaps_rollup) of a test costs ~8 ms and is spaced seconds apart to stay cheap.
INHERITED = bytearray(b"\\x01") * (1536 << 20)
"""

SHORT_HOLDS = """
import mmap, os, time
import pytest

SIZE = 300 << 20

def fill(fd):
    os.ftruncate(fd, SIZE)
    with mmap.mmap(fd, SIZE) as view:
        for offset in range(0, SIZE, mmap.PAGESIZE):
            view[offset] = 1

@pytest.mark.taichi_limits(mem_mb=200)
def test_holds_a_memfd_for_one_second():
    fd = os.memfd_create("short-hold")
    fill(fd)
    time.sleep(1.0)
    os.close(fd)

@pytest.mark.taichi_limits(mem_mb=200)
def test_holds_a_dev_shm_file_for_one_second():
    path = f"/dev/shm/taichi-limits-short-hold-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fill(fd)
        time.sleep(1.0)
    finally:
        os.close(fd)
        os.unlink(path)
"""


@BOTH_METHODS
def test_a_one_second_hold_of_300_mb_under_a_large_pytest_is_caught(
    pytester: pytest.Pytester, run_plugin: RunPlugin, method: str
) -> None:
    """Issue 17: with 1.5 GB inherited from pytest, 300 MB held for 1 s in a memfd or a /dev/shm
    file passed mem_mb=200 (recorded ~3 MiB): the exact reading was spaced by its cost, and
    neither shows in the cheap estimate. The cgroup's cap holds it; without a cgroup the cheap
    signal (the tmpfs mounts' use, the test's memfds) forces an exact reading."""
    pytester.makeconftest(LARGE_PYTEST_CONFTEST)
    pytester.makepyfile(test_short_holds=SHORT_HOLDS)
    log = pytester.path / "usage.jsonl"
    try:
        result = run_plugin(
            f"--taichi-limits-memory-method={method}", f"--taichi-limits-log={log}", timeout=240
        )
    finally:  # a test stopped by SIGKILL never ran its own clean-up
        for left in Path("/dev/shm").glob("taichi-limits-short-hold-*"):
            left.unlink(missing_ok=True)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*mem_mb exceeded*"] * 2)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    violated = [event["resource"] for event in events if event["event"] == "violation"]
    assert violated == ["mem_mb", "mem_mb"], events
    for name, usage in usages(log).items():
        # Over the budget, and never twice what was held (a file held and mapped: issue 17)
        assert 200 * MB < usage["own_memory_bytes"] < 320 * MB, (name, usage)
