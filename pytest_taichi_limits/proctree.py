"""The test's process tree: find it, measure it, and end it.

The tree is found through /proc/<pid>/task/<tid>/children (one small read per thread), which is
far cheaper than psutil's scan of every process on the machine; psutil then reads each member's
memory and CPU time. Every process ever seen is remembered (psutil checks its start time, so a
recycled pid is never mistaken for it) so that the end of a test can kill even the ones that left
the tree.
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


class ProcessTree:
    """Measures and ends the tree under one root pid."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._known: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process | None:
        process = self._known.get(pid)
        if process is None:
            try:
                process = psutil.Process(pid)
            except psutil.Error:
                return None
            self._known[pid] = process
        return process

    def sample(self, into: TreeSample) -> TreeSample:
        """Fill `into` with the tree's current totals (reused to keep the watch loop lean)."""
        into.rss_bytes = into.vms_bytes = into.processes = 0
        into.cpu_s = 0.0
        for pid in tree_pids(self.root_pid):
            process = self._process(pid)
            if process is None:
                continue
            try:
                memory = process.memory_info()
                times = process.cpu_times()
            except psutil.Error:
                continue
            into.rss_bytes += memory.rss
            into.vms_bytes += memory.vms
            # Reaped descendants are folded into their parent's children_* times.
            into.cpu_s += times.user + times.system + times.children_user + times.children_system
            into.processes += 1
        return into

    def descendants(self) -> list[int]:
        return tree_pids(self.root_pid)[1:]

    def remember_tree(self) -> None:
        for pid in tree_pids(self.root_pid):
            self._process(pid)

    def signal_tree(self, signum: int) -> None:
        for pid in tree_pids(self.root_pid):
            self._process(pid)
            _send(pid, signum)

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
                _send(pid, signal.SIGSTOP)
            for pid in pids:
                _send(pid, signal.SIGKILL)
            time.sleep(0.001)

    def any_alive(self) -> bool:
        """Whether any process ever seen in this tree still runs (zombies do not count)."""
        for process in self._known.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    return True
            except psutil.Error:
                continue
        return False

    def kill_survivors(self) -> list[int]:
        """SIGKILL every process ever seen in this tree that is still running; return their pids."""
        survivors: list[int] = []
        for pid, process in self._known.items():
            if pid == self.root_pid:
                continue
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    process.kill()
                    survivors.append(pid)
            except psutil.Error:
                continue
        return survivors


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
