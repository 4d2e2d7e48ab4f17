"""The test's process tree: find it, measure it, and end it.

The tree is found through /proc/<pid>/task/<tid>/children (one small read per thread), which is
far cheaper than psutil's scan of every process on the machine. Each member's memory and CPU
time are two reads of /proc files: for the first `keep_open` members through files kept open (two
preads), for the others through open-read-close, so a test with thousands of processes never
makes the parent run out of file descriptors. Every process ever seen is remembered by pid and
start time (so a recycled pid is never mistaken for it) so that the end of a test can kill even
the ones that left the tree.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import psutil

from ..platform import linux

_HAS_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")

#: Members whose /proc files stay open (two fds each). Past this, a sample opens, reads and
#: closes: about 10 us more per process, and never more than a few fds in use at once.
KEEP_OPEN_MEMBERS = 64


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads), or [] when it is gone."""
    if not _HAS_CHILDREN_FILES:
        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except (psutil.Error, OSError):
            return []
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        text = read_proc(f"/proc/{pid}/task/{tid}/children")
        if text:
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


def read_proc(path: str, size: int = 1 << 16) -> bytes | None:
    """One /proc file, opened, read and closed; None when it cannot be read (gone, EMFILE)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_proc_all(path: str, limit: int = 1 << 24) -> bytes | None:
    """A /proc file that may be longer than one read returns (maps: a page per read), up to
    `limit` bytes; None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


@dataclass
class TreeSample:
    rss_bytes: int = 0
    vms_bytes: int = 0
    cpu_s: float = 0.0
    processes: int = 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_ticks(stat: bytes) -> int:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot."""
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def process_cpu_s(pid: int) -> float:
    """One process's CPU time, its reaped children's included (utime stime cutime cstime): what
    wait4 will say when it ends; 0.0 when it cannot be read."""
    stat = read_proc(f"/proc/{pid}/stat", 1024)
    if not stat:
        return 0.0
    try:
        fields = stat[stat.rindex(b")") + 2 :].split()
        return sum(int(fields[index]) for index in (11, 12, 13, 14)) / _CLOCK_TICKS
    except (ValueError, IndexError):
        return 0.0


def _add_figures(statm_text: bytes, stat: bytes, into: TreeSample) -> bool:
    statm = statm_text.split()
    if len(statm) < 2 or not stat:
        return False
    into.vms_bytes += int(statm[0]) * _PAGE_SIZE
    into.rss_bytes += int(statm[1]) * _PAGE_SIZE
    # Fields after the command name (which may hold spaces): utime stime cutime cstime are
    # fields 14-17 of proc(5). Reaped descendants are folded into cutime/cstime.
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    into.cpu_s += ticks / _CLOCK_TICKS
    into.processes += 1
    return True


class _Member:
    """One process of the tree; its /proc files are kept open when `keep` (two preads)."""

    __slots__ = ("pid", "stat_fd", "statm_fd")

    def __init__(self, pid: int, keep: bool) -> None:
        self.pid = pid
        self.statm_fd = self.stat_fd = -1
        if not keep:
            return
        try:
            self.statm_fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
            self.stat_fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.close()  # read through open-read-close instead

    @property
    def kept(self) -> bool:
        return self.stat_fd >= 0

    def read(self, into: TreeSample) -> bool:
        try:
            if self.kept:
                statm = os.pread(self.statm_fd, 256, 0)
                stat = os.pread(self.stat_fd, 1024, 0)
            else:
                statm = read_proc(f"/proc/{self.pid}/statm", 256) or b""
                stat = read_proc(f"/proc/{self.pid}/stat", 1024) or b""
            return _add_figures(statm, stat, into)
        except (OSError, ValueError, IndexError):
            return False

    def close(self) -> None:
        for fd in (self.statm_fd, self.stat_fd):
            if fd >= 0:
                os.close(fd)
        self.statm_fd = self.stat_fd = -1


@dataclass(frozen=True)
class _Seen:
    """A process once seen in the tree: the pid, and its start time to tell a recycled pid."""

    pid: int
    ticks: int

    def running(self) -> bool | None:
        """True/False; None when /proc cannot tell (out of file descriptors)."""
        try:
            fd = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        try:
            stat = os.read(fd, 1024)
        except ProcessLookupError:
            return False
        except OSError:
            return None
        finally:
            os.close(fd)
        if not stat or start_ticks(stat) != self.ticks:
            return False
        state = stat[stat.rindex(b")") + 2 :][:1]
        return state not in (b"Z", b"X")


def _seen(pid: int) -> _Seen | None:
    stat = read_proc(f"/proc/{pid}/stat", 1024)
    if not stat:
        return None
    try:
        return _Seen(pid, start_ticks(stat))
    except (ValueError, IndexError):
        return None


class ProcessTree:
    """Measures and ends the tree under one root pid.

    With `include_root=False` the root is a keeper (the plugin's own subreaper process, which
    holds the test's orphans): it is neither measured, signalled nor killed; every process below
    it is the test's.
    """

    def __init__(
        self, root_pid: int, include_root: bool = True, keep_open: int = KEEP_OPEN_MEMBERS
    ) -> None:
        self.root_pid = root_pid
        self.include_root = include_root
        self.keep_open = keep_open
        self._known: dict[int, _Seen] = {}
        self._members: dict[int, _Member] = {}
        self._kept = 0

    def pids(self) -> list[int]:
        """The test's processes now, parents before children."""
        found = tree_pids(self.root_pid)
        return found if self.include_root else found[1:]

    def _remember(self, pid: int) -> bool:
        if pid in self._known:
            return True
        seen = _seen(pid)
        if seen is None:
            return False
        self._known[pid] = seen
        return True

    def _discover(self) -> None:
        current = self.pids()
        for pid in current:
            if pid not in self._members and self._remember(pid):
                member = _Member(pid, keep=self._kept < self.keep_open)
                self._kept += member.kept
                self._members[pid] = member
        gone = set(self._members).difference(current)
        for pid in gone:
            member = self._members.pop(pid)
            self._kept -= member.kept
            member.close()

    def sample(self, into: TreeSample) -> TreeSample:
        """Fill `into` with the tree's current totals (reused to keep the watch loop lean)."""
        self._discover()
        into.rss_bytes = into.vms_bytes = into.processes = 0
        into.cpu_s = 0.0
        for member in self._members.values():
            member.read(into)
        return into

    def members(self) -> list[int]:
        """The pids measured by the last sample."""
        return list(self._members)

    def close(self) -> None:
        for member in self._members.values():
            member.close()
        self._members.clear()
        self._kept = 0

    def descendants(self) -> list[int]:
        return tree_pids(self.root_pid)[1:]

    def remember_tree(self) -> None:
        for pid in self.pids():
            self._remember(pid)

    def signal_tree(self, signum: int, main_thread: bool = False) -> None:
        """`main_thread`: to each process's main thread (linux.signal_main_thread), where a
        Python handler must run."""
        for pid in self.pids():
            self._remember(pid)
            if not (main_thread and linux.signal_main_thread(pid, signum)):
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
                self._remember(pid)
            stop_then_kill(pids)
            time.sleep(0.001)

    def any_alive(self) -> bool:
        """Whether any process ever seen in this tree still runs (zombies do not count)."""
        return any(seen.running() is not False for seen in self._known.values())

    def kill_survivors(self) -> list[int]:
        """SIGKILL every process ever seen in this tree that is still running; return their pids."""
        survivors: list[int] = []
        for pid, seen in self._known.items():
            if pid != self.root_pid and seen.running():
                send_signal(pid, signal.SIGKILL)
                survivors.append(pid)
        return survivors


def stop_then_kill(pids: list[int]) -> None:
    """SIGSTOP all first, so none of them can fork while the others are being killed."""
    for signum in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            send_signal(pid, signum)


def send_signal(pid: int, signum: int) -> None:
    """os.kill that ignores processes already gone (or no longer ours). Never a process group
    (a pid of 0 or below: a child not forked yet is no target, and must not become one)."""
    if pid <= 0:
        return
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def reap_own_children(rounds: int = 100) -> None:
    """Kill and reap every child of this process (a subreaper's inherited orphans).

    Each round freezes every child's whole subtree before killing it (a stopped process cannot
    fork), and the next round finds whatever a dying one left behind: a fork storm ends.
    """
    me = os.getpid()
    for _ in range(rounds):
        children = child_pids(me)
        if not children:
            break
        stop_then_kill([pid for child in children for pid in tree_pids(child)])
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    while True:  # zombies that child_pids no longer lists
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return
