"""The test's process tree: find it, measure it, and end it.

The tree is found through /proc/<pid>/task/<tid>/children (one small read per thread), which is
far cheaper than psutil's scan of every process on the machine. Each member's memory and CPU
time are two preads of /proc files kept open. Every process ever seen is remembered as a
psutil.Process (which checks its start time, so a recycled pid is never mistaken for it) so that
the end of a test can kill even the ones that left the tree.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import psutil

_HAS_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads), or [] when it is gone."""
    if not _HAS_CHILDREN_FILES:
        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                text = handle.read()
        except OSError:
            continue
        found.extend(int(word) for word in text.split())
    return found


def tree_pids(root_pid: int) -> list[int]:
    """`root_pid` and all its descendants, parents before children."""
    pids = [root_pid]
    index = 0
    while index < len(pids):
        pids.extend(child_pids(pids[index]))
        index += 1
    return pids


@dataclass
class TreeSample:
    rss_bytes: int = 0
    vms_bytes: int = 0
    cpu_s: float = 0.0
    processes: int = 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class _Member:
    """One process of the tree, with its /proc files kept open so a sample is two preads."""

    __slots__ = ("pid", "statm_fd", "stat_fd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.statm_fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.stat_fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self.statm_fd)
            raise

    def read(self, into: TreeSample) -> bool:
        try:
            statm = os.pread(self.statm_fd, 256, 0).split()
            stat = os.pread(self.stat_fd, 1024, 0)
        except OSError:
            return False
        if not statm or not stat:
            return False
        into.vms_bytes += int(statm[0]) * _PAGE_SIZE
        into.rss_bytes += int(statm[1]) * _PAGE_SIZE
        # Fields after the command name (which may hold spaces): utime stime cutime cstime are
        # fields 14-17 of proc(5). Reaped descendants are folded into cutime/cstime.
        fields = stat[stat.rindex(b")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        into.cpu_s += ticks / _CLOCK_TICKS
        into.processes += 1
        return True

    def close(self) -> None:
        os.close(self.statm_fd)
        os.close(self.stat_fd)


class ProcessTree:
    """Measures and ends the tree under one root pid."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._known: dict[int, psutil.Process] = {}
        self._members: dict[int, _Member] = {}

    def _process(self, pid: int) -> psutil.Process | None:
        process = self._known.get(pid)
        if process is None:
            try:
                process = psutil.Process(pid)
            except psutil.Error:
                return None
            self._known[pid] = process
        return process

    def _discover(self) -> None:
        current = tree_pids(self.root_pid)
        for pid in current:
            if pid not in self._members and self._process(pid) is not None:
                try:
                    self._members[pid] = _Member(pid)
                except OSError:
                    continue
        for pid in [pid for pid in self._members if pid not in current]:
            self._members.pop(pid).close()

    def sample(self, into: TreeSample) -> TreeSample:
        """Fill `into` with the tree's current totals (reused to keep the watch loop lean)."""
        self._discover()
        into.rss_bytes = into.vms_bytes = into.processes = 0
        into.cpu_s = 0.0
        for member in self._members.values():
            member.read(into)
        return into

    def close(self) -> None:
        for member in self._members.values():
            member.close()
        self._members.clear()

    def descendants(self) -> list[int]:
        return tree_pids(self.root_pid)[1:]

    def remember_tree(self) -> None:
        for pid in tree_pids(self.root_pid):
            self._process(pid)

    def signal_tree(self, signum: int) -> None:
        for pid in tree_pids(self.root_pid):
            self._process(pid)
            send_signal(pid, signum)

    def kill_descendants(self, rounds: int = 50) -> None:
        """Stop, then kill, every descendant until none is left (fork storms included).

        The root stays alive meanwhile: it is a child subreaper, so orphans of killed
        processes are re-parented to it and found by the next round.
        """
        for _ in range(rounds):
            pids = self.descendants()
            if not pids:
                return
            for pid in pids:
                self._process(pid)
            stop_then_kill(pids)
            time.sleep(0.001)

    def any_alive(self) -> bool:
        """Whether any process ever seen in this tree still runs (zombies do not count)."""
        return any(_running(process) for process in self._known.values())

    def kill_survivors(self) -> list[int]:
        """SIGKILL every process ever seen in this tree that is still running; return their pids."""
        survivors: list[int] = []
        for pid, process in self._known.items():
            if pid != self.root_pid and _running(process):
                send_signal(pid, signal.SIGKILL)
                survivors.append(pid)
        return survivors


def stop_then_kill(pids: list[int]) -> None:
    """SIGSTOP all first, so none of them can fork while the others are being killed."""
    for signum in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            send_signal(pid, signum)


def send_signal(pid: int, signum: int) -> None:
    """os.kill that ignores processes already gone (or no longer ours)."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _running(process: psutil.Process) -> bool:
    """Still the same process, and not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
