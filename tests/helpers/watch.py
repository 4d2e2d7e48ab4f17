"""Shared by the reliability tests: watch the inner pytest process and the processes a test starts.

`WATCH_CONFTEST` goes into a pytester directory: around every test it records the parent pytest
process's open fds, threads, children and zombies, and `assert_parent_restored` checks that
every test left them as it found them. Inner tests call `record_pid()` (from `PID_RECORDER`) in
every process they start; `assert_none_alive` then checks that none of those processes, nor any
other member of their process groups, outlived the run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil

RESOURCES_FILE = "parent_resources.jsonl"
PIDS_FILE = "pids.txt"

WATCH_CONFTEST = """
import json, os, threading
import psutil
import pytest

_RECORD = os.path.join(__ROOT__, 'parent_resources.jsonl')


def _snapshot():
    me = psutil.Process()
    children, zombies = [], 0
    for child in me.children():
        children.append(child.pid)
        try:
            zombies += child.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            pass
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "native_threads": me.num_threads(),
        "children": sorted(children),
        "zombies": zombies,
        "rss": me.memory_info().rss,
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = _snapshot()
    yield
    after = _snapshot()
    with open(_RECORD, "a") as handle:
        handle.write(json.dumps({"nodeid": item.nodeid, "pid": os.getpid(),
                                  "before": before, "after": after}) + "\\n")
"""

#: Pasted at the top of inner test modules: `record_pid()` appends "pid starttime pgid" of this
#: process (`record_pid(pid)`: of another one, e.g. a command it started).
PID_RECORDER = """
import os as _os

_PIDS = _os.path.join(__ROOT__, 'pids.txt')


def record_pid(pid=None):
    pid = _os.getpid() if pid is None else pid
    stat = open(f"/proc/{pid}/stat").read()
    start_ticks = stat.rsplit(")", 1)[1].split()[19]
    line = f"{pid} {start_ticks} {_os.getpgid(pid)}\\n"
    fd = _os.open(_PIDS, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT, 0o644)
    _os.write(fd, line.encode())
    _os.close(fd)
"""


def watch(pytester: Any) -> Path:
    """Install the resource recorder in `pytester`'s directory; return that directory."""
    root = Path(pytester.path)
    pytester.makeconftest(WATCH_CONFTEST.replace("__ROOT__", repr(str(root))))
    (root / PIDS_FILE).write_text("")
    return root


def pid_recorder(root: Path) -> str:
    return PID_RECORDER.replace("__ROOT__", repr(str(root)))


def resource_records(root: Path) -> list[dict[str, Any]]:
    path = root / RESOURCES_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_parent_restored(root: Path, expected_tests: int | None = None) -> None:
    """Every test left the parent's fds, threads, children and zombies as it found them."""
    records = resource_records(root)
    assert records, "the inner run recorded no test"
    if expected_tests is not None:
        assert len(records) == expected_tests, [r["nodeid"] for r in records]
    for record in records:
        before, after = record["before"], record["after"]
        for key in ("fds", "threads", "children", "zombies"):
            assert after[key] == before[key], (record["nodeid"], key, before[key], after[key])
        # Native threads may end during a test (a thread Taichi's import started), never start.
        assert after["native_threads"] <= before["native_threads"], record
        assert after["zombies"] == 0, record


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def recorded_processes(root: Path) -> list[tuple[int, str, int]]:
    lines = (root / PIDS_FILE).read_text().split("\n")
    found = []
    for line in lines:
        words = line.split()
        if len(words) == 3:
            found.append((int(words[0]), words[1], int(words[2])))
    return found


def _running(process: psutil.Process) -> bool:
    try:
        running: bool = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        return running
    except psutil.Error:
        return False


def survivors(root: Path, settle_s: float = 3.0) -> list[str]:
    """Recorded processes (same pid and start time) or members of their process groups that
    still run after `settle_s`. Zombies do not count: they run nothing and their parent (init,
    once the inner pytest has gone) reaps them."""
    recorded = recorded_processes(root)
    # Our own group holds this pytest process (and its xdist siblings): never the test's.
    groups = {pgid for _, _, pgid in recorded} - {os.getpgid(0)}
    deadline = time.monotonic() + settle_s
    while True:
        alive = []
        for pid, ticks, _ in recorded:
            if _start_ticks(pid) != ticks:
                continue
            try:
                if _running(psutil.Process(pid)):
                    alive.append(f"pid {pid} ({psutil.Process(pid).cmdline()[:3]})")
            except psutil.Error:
                continue
        for process in psutil.process_iter():
            try:
                if (
                    os.getpgid(process.pid) in groups
                    and process.pid != os.getpid()
                    and _running(process)
                ):
                    alive.append(f"pid {process.pid} in process group {os.getpgid(process.pid)}")
            except (OSError, psutil.Error):
                continue
        if not alive or time.monotonic() > deadline:
            return sorted(set(alive))
        time.sleep(0.1)


def assert_none_alive(root: Path, at_least: int = 1) -> None:
    assert len(recorded_processes(root)) >= at_least, (root / PIDS_FILE).read_text()
    assert survivors(root) == []


def assert_clean(root: Path, expected_tests: int | None = None, processes: int = 1) -> None:
    assert_parent_restored(root, expected_tests)
    assert_none_alive(root, processes)


#: Pasted into inner tests: the report channel is the child's only close-on-exec, write-only
#: pipe (fds 0-2 and pytest's saved copies of them are files or pipes without O_CLOEXEC).
FIND_CHANNEL = """
def channel_fds():
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            flags = int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError):
            continue
        if fd > 2 and target.startswith("pipe:") and flags & 0o3 == os.O_WRONLY \\
                and flags & os.O_CLOEXEC:
            found.append(fd)
    assert found, "no report channel found"
    return found
"""
