"""One meter per worker: everything the supervisor reads, once per tick, whatever the method.

The supervisor asks its `Meter` for a `Tick` (`sample`) and compares it with the budget; it never
reads /proc or a cgroup itself. Behind the meter:

- the process tree below the keeper (measure/proctree.py): RSS, virtual memory, CPU time;
- the memory figure `mem_mb` is checked against, by the method chosen at start-up (`choose`):
  - `CgroupMemory` (`cgroup-v2`, `cgroup-v1`): the worker's own memory cgroup
    (measure/cgroup.py): anonymous + shared memory from memory.stat at every tick, and the
    kernel's cap between two ticks;
  - `SmapsMemory` (`smaps`): exact readings from smaps_rollup (measure/memory.py) at a rate
    scaled to their cost, a cheap estimate in between that only decides when to read again
    (never a verdict), and the shared memory the test's processes hold (measure/shm.py);
  - `MemoryMethod` itself (`rss`): where neither can be read, the tree's RSS above its start;
- GPU memory of the tree through NVML (measure/gpu.py).

How to add a method: CONTRIBUTING.md, "How to add a measurement method".
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from . import cgroup, gpu, shm
from .memory import MemoryMeter, Reading, own_bytes, smaps_rollup_available
from .proctree import ProcessTree, TreeSample, read_proc

#: `--taichi-limits-memory-method` values.
METHOD_SETTINGS = ("auto", "cgroup", "smaps")

#: Exact readings (smaps_rollup: about 5.5 ms per GB of RSS) take at most this share of a core
#: on average, and at least this long apart, ...
EXACT_CPU_SHARE = 0.005
MIN_EXACT_GAP_S = 0.05
#: ... unless the cheap estimate says the limit may have been crossed: then this share.
FORCED_CPU_SHARE = 0.25


class MeterError(Exception):
    """The measurement asked for cannot be had here; the message says why and what to do."""


@dataclass
class Tick(TreeSample):
    """One tick's figures. One object per meter, refilled: the watch loop allocates none."""

    #: the figure mem_mb is checked against, at the last exact reading (every tick for a
    #: cgroup); what the report and the timeline show
    own_memory_bytes: int = 0
    gpu_bytes: int | None = None  # the tree's GPU memory now; None: not measured


@dataclass(frozen=True)
class MemoryPlan:
    """How this pytest process measures memory, chosen once at start-up."""

    support: cgroup.CgroupSupport | None  # where per-worker cgroups are made; None: smaps
    reason: str = ""  # why no cgroup (forced smaps, or none usable)

    @property
    def method(self) -> str:
        return self.support.method if self.support is not None else "smaps"

    def header_line(self) -> str:
        if self.support is not None:
            return (
                f"taichi-limits: memory measured by {self.method}: a memory cgroup per "
                f"worker under {self.support.parent} (page cache not charged; the kernel caps "
                "each test a little above mem_mb)"
            )
        return f"taichi-limits: memory measured by smaps (/proc): {self.reason}"


@functools.cache
def _detected() -> cgroup.CgroupSupport | str:
    return cgroup.detect()


def choose(setting: str) -> MemoryPlan:
    """The plan for `--taichi-limits-memory-method` (auto, cgroup, smaps). Raises MeterError
    when a cgroup is asked for and none can be made here."""
    if setting == "smaps":
        return MemoryPlan(None, "--taichi-limits-memory-method=smaps")
    found = _detected()
    if isinstance(found, cgroup.CgroupSupport):
        return MemoryPlan(found)
    if setting == "cgroup":
        raise MeterError(
            f"--taichi-limits-memory-method=cgroup, but {found}. docs/memory.md says how to "
            "get a delegated cgroup (or use auto: smaps where no cgroup can be made)"
        )
    return MemoryPlan(None, found)


class MemoryMethod:
    """The memory figure of one worker's tests. This base class is the last resort, `rss`:
    the tree's resident memory above what it held when the test began."""

    def __init__(self, note: str = "") -> None:
        self.note = note  # why this method, said in every record ("" for a cgroup)
        self.limit_bytes: int | None = None
        self.started = False
        self.own_bytes = 0  # at the last reading
        self.peak_bytes = 0  # since the test began
        self.start_rss_bytes = 0

    @property
    def name(self) -> str:
        return "rss"

    def describe(self) -> str:
        return "RSS of the process tree"

    def begin(
        self, tree: ProcessTree, tick: Tick, limit_bytes: int | None, now: float, exact: bool
    ) -> None:
        """A test begins (the child is idle): the start figures, read here."""
        self.limit_bytes = limit_bytes
        self.started = True
        self.own_bytes = self.peak_bytes = 0
        self.start_rss_bytes = tick.rss_bytes

    def begin_at_birth(
        self, tree: ProcessTree, tick: Tick, limit_bytes: int | None, now: float
    ) -> None:
        """A test begins with the child's birth (it is forked with its command and starts at
        once): the start figures, read before the fork. `tick.rss_bytes` is what the child
        inherits."""
        self.begin(tree, tick, limit_bytes, now, exact=True)

    def read(self, tree: ProcessTree, tick: Tick, now: float, settle: bool) -> None:
        """One tick (`settle`: the child is idle again, the test is over)."""
        self._note(tick.rss_bytes - self.start_rss_bytes)

    def estimate(self, tick: Tick) -> int:
        """The best guess of the figure now, for the supervisor's pace: never a verdict."""
        return self.own_bytes

    def final_bytes(self, kernel_own_rss_bytes: int) -> int:
        """The test's figure once it is over: what every report shows and the verdict uses.
        The kernel's exact peak RSS growth of the child catches a peak between two samples
        (a crash or a stop included: what the process held then is gone)."""
        return max(self.peak_bytes, kernel_own_rss_bytes)

    def _note(self, own: int) -> None:
        self.own_bytes = max(0, own)
        self.peak_bytes = max(self.peak_bytes, self.own_bytes)

    # -- the kernel's cap and the cgroup's extras (none here) ----------------------------------

    def cap_event_fd(self) -> int | None:
        return None

    def held_at_cap(self) -> bool:
        return False

    def release_reserve(self) -> None:
        """Wake the tasks held at the cap (one step more room below it), to run the stack dump
        the supervisor asked for; called again while the dump has not come."""

    def oom_kills(self) -> int:
        return 0

    def cap_detail(self) -> str:
        """What the kernel's cap did, for a mem_mb violation's report ("": no cap)."""
        return ""

    def escaped(self, tree: ProcessTree) -> int | None:
        """A process of the test's tree that left the place it is measured in, if any."""
        return None

    def page_cache_bytes(self) -> int | None:
        return None

    def cgroup_inode(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class CgroupMemory(MemoryMethod):
    """`cgroup-v1`, `cgroup-v2`: the worker's cgroup, read at every tick (one small read)."""

    def __init__(self, test_cgroup: cgroup.TestCgroup) -> None:
        super().__init__()
        self.test_cgroup = test_cgroup
        self.start_held_bytes = 0
        self.start_usage_bytes = 0
        self.start_cache_bytes = 0
        self.peak_reset = False  # the kernel's peak restarted at this test's start

    @property
    def name(self) -> str:
        return f"cgroup-v{self.test_cgroup.version}"

    def describe(self) -> str:
        return f"anonymous and shared memory of the test's cgroup, {self.name} memory.stat"

    def begin(
        self, tree: ProcessTree, tick: Tick, limit_bytes: int | None, now: float, exact: bool
    ) -> None:
        super().begin(tree, tick, limit_bytes, now, exact)
        found = self.test_cgroup
        self.start_held_bytes = found.held_bytes() or 0
        self.start_usage_bytes = found.usage_bytes() or self.start_held_bytes
        self.start_cache_bytes = found.page_cache_bytes()
        self.peak_reset = found.reset_peak()
        try:
            found.set_cap(self.start_usage_bytes, limit_bytes)
        except OSError as error:  # the sampled check still holds
            self.note = f"the kernel's cap could not be set ({error.strerror})"

    def read(self, tree: ProcessTree, tick: Tick, now: float, settle: bool) -> None:
        held = self.test_cgroup.held_bytes()
        if held is not None:
            self._note(held - self.start_held_bytes)

    def final_bytes(self, kernel_own_rss_bytes: int) -> int:
        # The cgroup's figure has no RSS in it: a mapped file (page cache) or another
        # process's shared memory the test maps are not the test's, RSS or not.
        return max(self.peak_bytes, self.kernel_peak_bytes())

    def kernel_peak_bytes(self) -> int:
        """The kernel's peak of the cgroup's charge during the test, less its start and the
        page cache the test added: for a test whose processes are gone (a crash, a stop)
        before a reading saw what they held last (a crash right after an allocation freed it
        before any sample, issue 22's matrix). Kernel memory (page tables) is in the charge:
        a few KiB per MiB. 0 where the peak could not be restarted at the test's start (it
        would hold an earlier test's)."""
        found = self.test_cgroup
        peak = found.peak_bytes()
        if not self.peak_reset or peak is None:
            return 0
        cache_growth = max(0, found.page_cache_bytes() - self.start_cache_bytes)
        return max(0, peak - self.start_usage_bytes - cache_growth)

    def cap_event_fd(self) -> int | None:
        return self.test_cgroup.cap_event_fd()

    def held_at_cap(self) -> bool:
        return self.limit_bytes is not None and self.test_cgroup.held_at_cap()

    def release_reserve(self) -> None:
        self.test_cgroup.release_reserve()

    def oom_kills(self) -> int:
        return self.test_cgroup.oom_kills()

    def cap_detail(self) -> str:
        cap, peak = self.test_cgroup.cap_bytes(), self.test_cgroup.peak_bytes()
        if cap is None or peak is None or self.limit_bytes is None:
            return ""
        above = max(0, peak - cap)
        return (
            f"the test's memory cgroup ({self.name}) was charged at most {peak} bytes against "
            f"its cap of {cap} ({above} bytes above it; the charge counts page cache and "
            "kernel memory too)"
        )

    def escaped(self, tree: ProcessTree) -> int | None:
        """A running process of the tree that is not in the cgroup: the test moved it out (as
        root it may write to another cgroup's cgroup.procs), out of the figure's reach."""
        inside = self.test_cgroup.pids()
        for pid in tree.members():
            if pid not in inside and _running(pid):
                return pid
        return None

    def page_cache_bytes(self) -> int | None:
        return self.test_cgroup.page_cache_bytes()

    def cgroup_inode(self) -> int | None:
        try:
            return os.stat(self.test_cgroup.path).st_ino
        except OSError:
            return None


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie is in no cgroup's cgroup.procs)."""
    stat = read_proc(f"/proc/{pid}/stat", 1024) or b""
    closing = stat.rfind(b")")
    return closing > 0 and stat[closing + 2 : closing + 3] not in (b"Z", b"X", b"")


class SmapsMemory(MemoryMethod):
    """`smaps`: exact readings from /proc at a rate scaled to their cost (measure/memory.py),
    a cheap estimate in between (statm RSS, /proc/meminfo Shmem) that only decides when to read
    again. Where smaps_rollup cannot be read, the `rss` figure of the base class."""

    def __init__(self, origin_pid: int, keeper_pid: int, note: str = "") -> None:
        super().__init__(note)
        self.reader = MemoryMeter(origin_pid, keeper_pid) if smaps_rollup_available() else None
        self.baseline: Reading | None = None
        #: the reading taken when the last test ended (the child idle since): the next start
        self.idle_reading: Reading | None = None
        self.rss_at_exact = 0
        self.shmem_at_exact = 0
        self.shmem_now = 0
        self.next_exact_at = 0.0
        self.next_forced_at = 0.0

    @property
    def name(self) -> str:
        return "smaps" if self.baseline is not None else "rss"

    def describe(self) -> str:
        if self.baseline is None:
            return super().describe()
        return "private and shared memory of the process tree, smaps_rollup"

    def begin(
        self, tree: ProcessTree, tick: Tick, limit_bytes: int | None, now: float, exact: bool
    ) -> None:
        """`exact=False`: the cheap RSS figure only (a forked child's start-up, which runs
        none of the test's code, is not worth an smaps_rollup read)."""
        super().begin(tree, tick, limit_bytes, now, exact)
        idle, self.idle_reading = self.idle_reading, None
        self.baseline = None
        if not exact or self.reader is None:
            return
        self.baseline = idle or self.reader.read(tree.members())
        if self.baseline is not None:
            self._schedule(self.baseline, tick, now)

    def begin_at_birth(
        self, tree: ProcessTree, tick: Tick, limit_bytes: int | None, now: float
    ) -> None:
        """No reading: at its fork a child has nothing of its own (measure/memory.py's formulas
        give 0 for a process that shares every page with the one it was forked from), only the
        tmpfs files and memfds it inherits. One exact reading per short test, at its end."""
        MemoryMethod.begin(self, tree, tick, limit_bytes, now, exact=True)
        self.idle_reading = None
        self.baseline = None if self.reader is None else self.reader.at_birth(tick.rss_bytes)
        if self.baseline is not None:
            self._schedule(self.baseline, tick, now)

    def read(self, tree: ProcessTree, tick: Tick, now: float, settle: bool) -> None:
        if self.baseline is None or self.reader is None:
            super().read(tree, tick, now, settle)
            return
        if self.limit_bytes is not None:
            self.shmem_now = shm.meminfo_shmem_bytes()
        if not (settle or self._due(tick, now)):
            return
        reading = self.reader.read(tree.members())
        if reading is None:
            return
        self._note(own_bytes(reading, self.baseline))
        self._schedule(reading, tick, now)
        if settle:
            self.idle_reading = reading

    def estimate(self, tick: Tick) -> int:
        if self.baseline is None:
            return self.own_bytes
        # New RSS and new shared memory on the machine since the last exact reading: an upper
        # bound of what the test may have made since (a fork counts its inherited pages).
        return (
            self.own_bytes
            + max(0, tick.rss_bytes - self.rss_at_exact)
            + max(0, self.shmem_now - self.shmem_at_exact)
        )

    def _due(self, tick: Tick, now: float) -> bool:
        if now >= self.next_exact_at:
            return True
        return (
            self.limit_bytes is not None
            and now >= self.next_forced_at
            and self.estimate(tick) > self.limit_bytes
        )

    def _schedule(self, reading: Reading, tick: Tick, now: float) -> None:
        self.rss_at_exact = tick.rss_bytes
        self.shmem_at_exact = self.shmem_now = shm.meminfo_shmem_bytes()
        self.next_exact_at = now + max(MIN_EXACT_GAP_S, reading.cpu_s / EXACT_CPU_SHARE)
        self.next_forced_at = now + reading.cpu_s / FORCED_CPU_SHARE

    @property
    def attribution(self) -> shm.Attribution | None:
        return None if self.reader is None else self.reader.attribution


class Meter:
    """What the supervisor reads of one worker: the tree, its memory by one method, its GPU."""

    def __init__(self, keeper_pid: int, child_pid: int, memory: MemoryMethod) -> None:
        # Every process below the keeper is the test's, its orphans included, none above it.
        self.tree = ProcessTree(keeper_pid, include_root=False)
        self.memory = memory
        self.gpu = gpu.probe_for(child_pid)
        if isinstance(self.gpu, gpu.NvmlProbe):  # orphans below the keeper count too
            tree = self.tree
            self.gpu.pids = lambda _root: tree.pids()
        self.tick = Tick()
        attribution = getattr(memory, "attribution", None)
        self.shm = attribution if isinstance(attribution, shm.Attribution) else shm.Attribution()

    @property
    def method(self) -> str:
        return self.memory.name if self.memory.started else "not measured"

    def begin(
        self,
        limit_bytes: int | None,
        now: float,
        exact: bool = True,
        birth_rss_bytes: int | None = None,
    ) -> Tick:
        """A test begins, the child idle: the start figures (and the cap, for a cgroup).
        `birth_rss_bytes`: the child is about to be forked with the test's command, inheriting
        this much resident memory."""
        tick = self.tick
        self.tree.sample(tick)
        if birth_rss_bytes is None:
            self.memory.begin(self.tree, tick, limit_bytes, now, exact)
        else:
            tick.rss_bytes = birth_rss_bytes
            self.memory.begin_at_birth(self.tree, tick, limit_bytes, now)
        tick.own_memory_bytes = 0
        return tick

    def sample(self, now: float, settle: bool = False) -> Tick:
        """One tick: the tree, the memory figure, GPU memory."""
        tick = self.tick
        self.tree.sample(tick)
        self.memory.read(self.tree, tick, now, settle)
        tick.own_memory_bytes = self.memory.own_bytes
        tick.gpu_bytes = self.gpu.sample() if tick.processes else None
        return tick

    def gpu_now(self) -> int | None:
        return self.gpu.sample()

    def over_memory(self, limit_bytes: int) -> bool:
        return self.memory.started and self.memory.own_bytes > limit_bytes

    def observe_shm(self) -> None:
        """At a test's end (the child idle): which tmpfs files its processes hold or map."""
        self.shm.observe(self.tree.members(), maps=True)

    def close(self) -> None:
        self.tree.close()
        self.memory.close()


def memory_for(
    origin_pid: int,
    keeper_pid: int,
    plan: MemoryPlan | None,
    test_cgroup: cgroup.TestCgroup | None,
    why_not: str = "",
) -> MemoryMethod:
    """The method for one worker: its cgroup where it has one, else smaps, saying why."""
    if test_cgroup is not None:
        return CgroupMemory(test_cgroup)
    note = why_not or (plan.reason if plan is not None else "")
    return SmapsMemory(origin_pid, keeper_pid, note)
