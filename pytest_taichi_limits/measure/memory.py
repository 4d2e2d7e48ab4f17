"""What a test makes the machine hold: the figure `mem_mb` is checked against.

`mem_mb` counts the memory that exists because the test ran, wherever it lives:

- anonymous memory that the test's processes hold and that no process outside the tree held
  before: new allocations, inherited pages the test wrote to (copy-on-write made them new), and
  pages shared copy-on-write between the test's own processes, each counted once;
- shared memory it created: memfds it holds open, files it wrote to tmpfs mounts (/dev/shm, and
  /tmp where it is tmpfs) and still leaves there, and MAP_SHARED anonymous mappings.

The anonymous part comes from /proc/<pid>/smaps_rollup. While the test is one process, it is that
process's Private_Dirty (less its shared memory): what it allocated or copied on write, one
rollup. With more processes, Pss_Anon: it splits each page among the
processes that map it, so summed over every process that can share a page with the test (the
test's processes, the plugin's keeper, and the process the test was forked from: the *origin*)
each page counts once; the origin's own resident anonymous memory (`Anonymous`) is then taken
away, since it was there before. Anonymous pages are shared only through fork, so no process
outside that set holds a part of them (a process the origin forked for another purpose, such as
a multiprocessing pool made by a fixture, would lower the figure of a test that forks by its
share of the origin's pages).

The shared part is the larger of two views that may see the same pages: the tree's Pss_Shmem
(mapped shared memory) and the growth of the tmpfs mounts plus the size of memfds the tree holds
open (shared memory whether mapped or not). docs/memory.md has the table of what is counted and
what is not.

smaps_rollup walks every page table entry: about 5.5 ms per GB of RSS. The supervisor reads it
at a rate scaled to its cost (supervise/supervisor.py) and reads only statm in between.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..config.units import MIB
from ..platform import linux
from . import cgroup
from .proctree import ProcessTree, TreeSample, read_proc

_KB = 1024
#: Files the plugin itself keeps in memfds (the stack file): never the test's.
_OWN_MEMFD_PREFIX = "/memfd:pytest-taichi-limits"
#: Past this many fds in one process, the rest are not looked at (a sample must stay cheap).
_MAX_FDS_SCANNED = 4096


def rollup(pid: int) -> dict[str, int] | None:
    """/proc/<pid>/smaps_rollup as bytes per field; None when it cannot be read."""
    text = read_proc(f"/proc/{pid}/smaps_rollup", 1 << 14)
    if not text:
        return None
    figures: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(b":")
        words = rest.split()
        if words and words[0].isdigit():
            figures[name.decode()] = int(words[0]) * _KB
    return figures or None


@functools.cache
def smaps_rollup_available() -> bool:
    return rollup(os.getpid()) is not None


def tmpfs_mounts(
    candidates: Iterable[str] = ("/dev/shm", "/tmp"), mounts_text: str | None = None
) -> tuple[str, ...]:
    """Which of `candidates` are tmpfs mount points (memory, not disk)."""
    if mounts_text is None:
        try:
            with open("/proc/self/mounts") as handle:
                mounts_text = handle.read()
        except OSError:
            return ()
    tmpfs = {
        words[1]
        for words in (line.split() for line in mounts_text.splitlines())
        if len(words) >= 3 and words[2] == "tmpfs"
    }
    return tuple(path for path in candidates if path in tmpfs)


def tmpfs_used_bytes(mounts: Iterable[str]) -> int:
    total = 0
    for mount in mounts:
        try:
            found = os.statvfs(mount)
        except OSError:
            continue
        total += (found.f_blocks - found.f_bfree) * found.f_frsize
    return total


def memfd_bytes(pids: Iterable[int]) -> int:
    """Memory held in memfds that `pids` keep open, each file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(base)[:_MAX_FDS_SCANNED]
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{base}/{fd}")
                if not target.startswith("/memfd:") or target.startswith(_OWN_MEMFD_PREFIX):
                    continue
                found = os.stat(f"{base}/{fd}")
            except OSError:
                continue
            key = (found.st_dev, found.st_ino)
            if key not in seen:
                seen.add(key)
                total += found.st_blocks * 512
    return total


def shm_entries(directory: str = "/dev/shm") -> frozenset[tuple[str, int]]:
    """(name, inode) of what a tmpfs directory holds now, top level only."""
    try:
        with os.scandir(directory) as found:
            return frozenset((entry.name, entry.inode()) for entry in found)
    except OSError:
        return frozenset()


def files_left(before: frozenset[tuple[str, int]], directory: str = "/dev/shm") -> tuple[str, ...]:
    """Paths in `directory` that were not there (by name and inode) in `before`."""
    return tuple(
        sorted(os.path.join(directory, name) for name, _ in shm_entries(directory) - before)
    )


def remove_files(paths: Iterable[str]) -> list[str]:
    """Remove what a test left in /dev/shm; return what could not be removed, with why."""
    failed: list[str] = []
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            failed.append(f"{path}: {error.strerror}")
    return failed


@dataclass(frozen=True)
class Reading:
    """One exact reading: bytes the machine holds for the test, before the baseline is taken."""

    anon_bytes: int  # Pss_Anon over the sharers minus the origin's resident anonymous memory
    mapped_shm_bytes: int  # Pss_Shmem over the test's processes
    unmapped_shm_bytes: int  # tmpfs mounts in use plus memfds held open
    cpu_s: float  # what reading it cost the parent


@dataclass
class MemoryMeter:
    """Exact readings for one test: the test's pids are given per reading.

    `origin_pid` is the process the test was forked from (pytest in fork mode, the zygote in
    spawn mode); `keeper_pid` the plugin's subreaper between them (the same as the origin in
    spawn mode). Both share copy-on-write pages with the test.
    """

    origin_pid: int
    keeper_pid: int
    mounts: tuple[str, ...] = field(default_factory=tmpfs_mounts)
    reads: int = 0
    cost_s: float = 0.0  # CPU time of the last reading

    def read(self, test_pids: list[int]) -> Reading | None:
        """None when smaps_rollup cannot be read (not Linux, kernel before 4.14, /proc hidden)."""
        cpu_before = time.thread_time()
        found = self._single(test_pids) if len(test_pids) == 1 else None
        if found is None:
            found = self._shared(test_pids)
        if found is None:
            return None
        anon, mapped_shm = found
        unmapped_shm = tmpfs_used_bytes(self.mounts) + memfd_bytes(test_pids)
        self.reads += 1
        self.cost_s = time.thread_time() - cpu_before
        return Reading(anon, mapped_shm, unmapped_shm, self.cost_s)

    @staticmethod
    def _single(test_pids: list[int]) -> tuple[int, int] | None:
        """One process: its private dirty pages that are not shared memory (one rollup).

        Pages it shares with the origin or the keeper were there before; the ones it copied
        on write are private. This leaves out the keeper's own few pages, which the
        many-process formula counts: a step of well under a megabyte when the test forks.
        """
        figures = rollup(test_pids[0])
        if figures is None:
            return None
        shm = figures.get("Pss_Shmem", 0)
        return figures.get("Private_Dirty", 0) - shm, shm

    def _shared(self, test_pids: list[int]) -> tuple[int, int] | None:
        """Several processes: Pss_Anon over every sharer, minus the origin's own."""
        origin = rollup(self.origin_pid)
        if origin is None:
            return None
        anon = origin.get("Pss_Anon", 0) - origin.get("Anonymous", 0)
        if self.keeper_pid != self.origin_pid:
            keeper = rollup(self.keeper_pid) or {}
            anon += keeper.get("Pss_Anon", 0)
        mapped_shm = 0
        for pid in test_pids:
            figures = rollup(pid)
            if figures is None:
                continue  # it ended between the listing and the read
            anon += figures.get("Pss_Anon", 0)
            mapped_shm += figures.get("Pss_Shmem", 0)
        return anon, mapped_shm


def own_bytes(reading: Reading, baseline: Reading) -> int:
    """What the test holds at `reading`, above what was there at `baseline` (its start)."""
    anon = reading.anon_bytes - baseline.anon_bytes
    shm = max(
        reading.mapped_shm_bytes - baseline.mapped_shm_bytes,
        reading.unmapped_shm_bytes - baseline.unmapped_shm_bytes,
    )
    return max(0, anon + max(0, shm))


#: Exact readings (smaps_rollup: about 5.5 ms per GB of RSS) take at most this share of a core
#: on average, and at least this long apart, ...
_EXACT_CPU_SHARE = 0.005
_MIN_EXACT_GAP_S = 0.05
#: ... unless the cheap estimate (statm) says the limit may have been crossed: then this share.
_FORCED_CPU_SHARE = 0.25


@dataclass
class MemoryWatch:
    """The test's own memory (measure/memory.py), by the best method this machine offers.

    - "cgroup": the test's own cgroup v2 (measure/cgroup.py): anon + shmem from memory.stat, one
    small
      read per sample, and memory.max as a hard cap the kernel enforces between samples;
    - "smaps": exact readings from smaps_rollup (measure/memory.py) at a rate scaled to their cost,
    and
      a cheap estimate in between: the last exact figure plus the growth of the tree's RSS
      since (statm: new memory, mapped shared memory, and each fork by the child's inherited
      pages, which are no new memory). The estimate only decides when to read the exact
      figure again, never a verdict;
    - "rss": where neither can be read, the old figure: the tree's RSS above the child's at its
      start.
    """

    meter: MemoryMeter | None
    limit: int | None
    start_rss_bytes: int
    test_cgroup: cgroup.TestCgroup | None = None
    started: bool = False
    baseline: Reading | None = None
    cgroup_baseline: int = 0
    own_bytes: int = 0
    peak_bytes: int = 0
    rss_at_exact: int = 0
    next_exact_at: float = 0.0
    next_forced_at: float = 0.0

    @classmethod
    def start_for(
        cls,
        origin_pid: int,
        keeper_pid: int,
        limit: int | None,
        test_cgroup: cgroup.TestCgroup | None = None,
        exact: bool = True,
    ) -> MemoryWatch:
        """`exact=False`: the cheap RSS figure only (a forked child's start-up, which runs
        none of the test's code, is not worth an smaps_rollup read)."""
        meter = MemoryMeter(origin_pid, keeper_pid) if exact and smaps_rollup_available() else None
        return cls(meter, limit, linux.rss_bytes(origin_pid), test_cgroup)

    def begin(self, child_pid: int, tree: ProcessTree, sample: TreeSample, now: float) -> None:
        """The child is idle, waiting for its next command: the start figures, read here."""
        tree.sample(sample)
        self.start_rss_bytes = linux.rss_bytes(child_pid) or self.start_rss_bytes
        self.started = True
        if self.test_cgroup is not None and self._begin_cgroup(self.test_cgroup):
            return
        self.test_cgroup = None
        if self.meter is not None:
            self.baseline = self.meter.read(tree.members())
            if self.baseline is None:
                self.meter = None
            else:
                self._schedule(self.baseline, sample, now)

    def _begin_cgroup(self, test_cgroup: cgroup.TestCgroup) -> bool:
        held = test_cgroup.held_bytes()
        if held is None:
            return False
        self.cgroup_baseline = held
        if self.limit is not None:
            # A backstop between two samples; the sampled check fires at the limit itself.
            # memory.current counts page cache and kernel memory too (reclaimed or small):
            # the cap leaves room for them.
            current = test_cgroup.current_bytes() or held
            try:
                test_cgroup.set_max(current + self.limit + max(64 * MIB, self.limit // 8))
            except OSError:
                pass
        return True

    def _schedule(self, reading: Reading, sample: TreeSample, now: float) -> None:
        self.rss_at_exact = sample.rss_bytes
        self.next_exact_at = now + max(_MIN_EXACT_GAP_S, reading.cpu_s / _EXACT_CPU_SHARE)
        self.next_forced_at = now + reading.cpu_s / _FORCED_CPU_SHARE

    @property
    def method(self) -> str:
        if not self.started:
            return "not measured"
        if self.test_cgroup is not None:
            return "cgroup"
        return "smaps" if self.meter is not None and self.baseline is not None else "rss"

    def estimate(self, sample: TreeSample) -> int:
        method = self.method
        if method == "rss":
            own = max(0, sample.rss_bytes - self.start_rss_bytes)
            self.peak_bytes = max(self.peak_bytes, own)
            return own
        if method == "smaps":
            return self.own_bytes + max(0, sample.rss_bytes - self.rss_at_exact)
        return self.own_bytes

    def due(self, sample: TreeSample, now: float) -> bool:
        method = self.method
        if method == "cgroup":
            return True  # one small read: every sample
        if method != "smaps":
            return False
        if now >= self.next_exact_at:
            return True
        return (
            self.limit is not None
            and now >= self.next_forced_at
            and self.estimate(sample) > self.limit
        )

    def exact(self, tree: ProcessTree, sample: TreeSample, now: float) -> None:
        if self.test_cgroup is not None:
            held = self.test_cgroup.held_bytes()
            if held is not None:
                self._note(held - self.cgroup_baseline)
            return
        if self.meter is None or self.baseline is None:
            return
        reading = self.meter.read(tree.members())
        if reading is None:
            return
        self._note(own_bytes(reading, self.baseline))
        self._schedule(reading, sample, now)

    def _note(self, own: int) -> None:
        self.own_bytes = max(0, own)
        self.peak_bytes = max(self.peak_bytes, self.own_bytes)

    def over(self, limit: int, sample: TreeSample) -> bool:
        return self.started and self.verdict_bytes(sample) > limit

    def verdict_bytes(self, sample: TreeSample) -> int:
        return self.estimate(sample) if self.method == "rss" else self.own_bytes

    def describe(self) -> str:
        return {
            "cgroup": "anonymous and shared memory of the test's cgroup, memory.stat",
            "smaps": "private and shared memory of the process tree, smaps_rollup",
        }.get(self.method, "RSS of the process tree")

    def method_name(self) -> str:
        return self.method

    def cgroup_oom_kills(self) -> int:
        return 0 if self.test_cgroup is None else self.test_cgroup.oom_kills()
