"""The smaps method: what a test makes the machine hold, read from /proc where no cgroup can.

`mem_mb` counts the memory that exists because the test ran, wherever it lives:

- anonymous memory that the test's processes hold and that no process outside the tree held
  before: new allocations, inherited pages the test wrote to (copy-on-write made them new), and
  pages shared copy-on-write between the test's own processes, each counted once;
- shared memory it made: memfds it holds open, tmpfs files (/dev/shm, and /tmp where it is
  tmpfs) its processes were seen holding or mapping and that are still there, and MAP_SHARED
  anonymous mappings. Another process's file is never the test's, whatever the mount's total
  does (measure/shm.py says how a file is attributed).

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

The shared part is the files the test holds or left (shared memory whether mapped or not: memfds,
tmpfs files) plus the tree's mapped shared memory (Pss_Shmem) outside those files (MAP_SHARED
anonymous mappings): a page of a file the test also maps is counted once (the Pss of those
mappings, from /proc/<pid>/smaps, read only where a process maps one). docs/memory.md has the
table of what is counted and what is not.

smaps_rollup walks every page table entry: about 5.5 ms per GB of RSS. The smaps method
(measure/meter.py) reads it at a rate scaled to its cost and reads only statm in between.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field

from .proctree import read_proc
from .shm import Attribution, mapped_pss_bytes

_KB = 1024
#: What reading smaps_rollup costs per byte of the process's RSS (about 5.5 ms per GB here): the
#: pace of the first exact reading of a child that was never read (measure/meter.py).
ROLLUP_S_PER_BYTE = 5.5e-3 / (1 << 30)


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


#: Readings taken at most, where the test's shared memory moved while one was read.
CONSISTENT_ATTEMPTS = 3
#: How far the mapped shared memory may move between two reads of one reading (a few pages).
CONSISTENT_BYTES = 1 << 20


@functools.cache
def smaps_rollup_available() -> bool:
    return rollup(os.getpid()) is not None


@dataclass(frozen=True)
class Reading:
    """One exact reading: bytes the machine holds for the test, before the baseline is taken."""

    anon_bytes: int  # Pss_Anon over the sharers minus the origin's resident anonymous memory
    #: Pss_Shmem over the test's processes, less the mappings of the files counted beside it
    mapped_shm_bytes: int
    unmapped_shm_bytes: int  # memfds held open, tmpfs files the test held or left
    cpu_s: float  # what reading it cost the parent


@dataclass
class MemoryMeter:
    """Exact readings for one worker's tests: the test's pids are given per reading.

    `origin_pid` is the process the test was forked from (pytest in fork mode, the zygote in
    spawn mode); `keeper_pid` the plugin's subreaper between them (the same as the origin in
    spawn mode). Both share copy-on-write pages with the test.
    """

    origin_pid: int
    keeper_pid: int
    #: the tmpfs files and memfds the test's processes were seen with (measure/shm.py)
    attribution: Attribution = field(default_factory=Attribution)
    cost_s: float = 0.0  # CPU time of the last reading

    def read(self, test_pids: list[int]) -> Reading | None:
        """None when smaps_rollup cannot be read (not Linux, kernel before 4.14, /proc hidden)."""
        cpu_before = time.thread_time()
        reading: Reading | None = None
        for _ in range(CONSISTENT_ATTEMPTS):
            attempt = self._read_once(test_pids)
            if attempt is None:
                break
            candidate, consistent = attempt
            if consistent:
                reading = candidate
                break
            # Never the larger of two readings that saw the test move: no false violation.
            if reading is None or _total(candidate) < _total(reading):
                reading = candidate
        self.cost_s = time.thread_time() - cpu_before
        if reading is None:
            return None
        return dataclasses.replace(reading, cpu_s=self.cost_s)

    def _read_once(self, test_pids: list[int]) -> tuple[Reading, bool] | None:
        """One reading, and whether it is of one moment. A file the test holds and maps is in
        both the mapped shared memory (smaps_rollup) and the held files: its mapped pages are
        taken away once (mapped_pss_bytes, from smaps). Those are read one after the other: a
        test that unmaps a file it still holds between them (the end of a `with mmap(...)`)
        was charged the file twice (600 MiB for 300, under -n 2). Where both figures are in
        the reading, smaps_rollup is read again: a reading whose shared memory moved
        meanwhile is not consistent."""
        found = self._anon_and_shm(test_pids)
        if found is None:
            return None
        anon, mapped_shm = found
        held = self.attribution.observe(test_pids)
        unmapped_shm = self.attribution.held_bytes(held)
        overlap = mapped_pss_bytes(test_pids, self.attribution.counted(held))
        consistent = True
        if unmapped_shm and (mapped_shm or overlap):
            again = self._anon_and_shm(test_pids)
            consistent = again is not None and abs(again[1] - mapped_shm) <= CONSISTENT_BYTES
        return Reading(anon, max(0, mapped_shm - overlap), unmapped_shm, 0.0), consistent

    def _anon_and_shm(self, test_pids: list[int]) -> tuple[int, int] | None:
        found = self._single(test_pids) if len(test_pids) == 1 else None
        return found if found is not None else self._shared(test_pids)

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

    def at_birth(self, rss_bytes: int) -> Reading:
        """The reading of a child at its fork from the keeper, before it runs: no anonymous
        memory of its own (both formulas give 0 for a process that shares every page with the
        one it was forked from), and the tmpfs files and memfds it inherits open. Its cost is
        what reading a process of `rss_bytes` costs, so that the next reading is paced as if
        it had been read (a large child is not read again while it starts up)."""
        held = self.attribution.held_bytes(self.attribution.observe([self.keeper_pid]))
        return Reading(0, 0, held, rss_bytes * ROLLUP_S_PER_BYTE)

    def _shared(self, test_pids: list[int]) -> tuple[int, int] | None:
        """Several processes: Pss_Anon over every sharer, less what was there before the test.

        With a keeper (the fork server) between the origin (pytest) and the test, every page
        the test was forked with is the keeper's (its Anonymous), and pytest's own copies of
        pages it wrote since it forked the keeper are pytest's alone (its private ones): both
        are taken away, so that a test is never charged for how far pytest's memory has moved
        away from the keeper's. Without one (spawn mode: the zygote forked the test), the
        origin's Anonymous."""
        origin = rollup(self.origin_pid)
        if origin is None:
            return None
        if self.keeper_pid == self.origin_pid:
            anon = origin.get("Pss_Anon", 0) - origin.get("Anonymous", 0)
        else:
            keeper = rollup(self.keeper_pid) or {}
            anon = (
                origin.get("Pss_Anon", 0)
                - _private_anon(origin)
                + keeper.get("Pss_Anon", 0)
                - keeper.get("Anonymous", 0)
            )
        mapped_shm = 0
        for pid in test_pids:
            figures = rollup(pid)
            if figures is None:
                continue  # it ended between the listing and the read
            anon += figures.get("Pss_Anon", 0)
            mapped_shm += figures.get("Pss_Shmem", 0)
        return anon, mapped_shm


def _total(reading: Reading) -> int:
    return reading.anon_bytes + reading.mapped_shm_bytes + reading.unmapped_shm_bytes


def _private_anon(figures: dict[str, int]) -> int:
    """A process's anonymous pages that no other process maps (as the single-process formula
    counts them): its private dirty pages that are not shared memory."""
    return max(0, figures.get("Private_Dirty", 0) - figures.get("Pss_Shmem", 0))


def own_bytes(reading: Reading, baseline: Reading) -> int:
    """What the test holds at `reading`, above what was there at `baseline` (its start)."""
    anon = reading.anon_bytes - baseline.anon_bytes
    mapped = reading.mapped_shm_bytes - baseline.mapped_shm_bytes
    files = reading.unmapped_shm_bytes - baseline.unmapped_shm_bytes
    return max(0, anon + max(0, mapped) + max(0, files))
