"""Watch a started child's process tree, test by test, against each test's budget.

The parent measures; it neither renders nor launches. A `Worker` wraps one started child (forked,
or forked by the spawn-mode zygote): per test it sends the run command, samples the tree, and
hands back a `RunResult` (the messages, the usage figures, a Violation or Crash from
supervise/verdict.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..config.budget import Budget, LeakRounds, larger
from ..config.units import MIB
from ..formats.environment import taichi_arch
from ..ipc.channel import ChannelReader
from ..ipc.protocol import (
    ROUNDS_NOTE,
    STACK_SIGNAL,
    Done,
    Exit,
    Fixtures,
    Message,
    NextRoundCommand,
    Note,
    Phase,
    Ready,
    RunCommand,
    StopCommand,
    encode_command,
)
from ..measure import gpu, shm
from ..measure.meter import MemoryMethod, Meter, SmapsMemory, Tick
from ..measure.proctree import process_cpu_s, send_signal
from ..model.leaks import Leaks
from ..model.records import Admitted, Crash, Ending, RunResult, Usage, Violation
from ..model.timeline import Timeline
from ..platform import linux
from . import leaks, verdict
from .rounds import RoundWatch
from .signals import TerminateInOrder
from .verdict import ExitInfo, read_stack

if TYPE_CHECKING:
    from ..config.settings import Settings

__all__ = [
    "STOP_TIMEOUT_S",
    "ExitInfo",
    "Launched",
    "RunResult",
    "TerminateInOrder",
    "Worker",
    "WorkerGone",
    "control_pair",
    "pidfd_open",
    "stack_file",
]

#: Pages of the stack file allocated by the parent before the child writes its stacks.
STACK_FILE_BYTES = 1 << 20
#: How long the parent waits at most for faulthandler to write the child's stacks (a few
#: milliseconds when the child runs; the wait ends as soon as the dump is complete).
_STACK_WAIT_S = 1.0
_STACK_POLL_S = 0.001
#: Longest sleep between two samples. Each wake-up costs the parent about 0.2 ms of CPU on a
#: VM, so far from every limit it samples at this pace and only near one at `interval_s`.
_MAX_SLEEP_S = 0.1
#: Growth assumed when judging how far a limit is: faster than a test can page in memory
#: (about 1-4 GB/s per core), so the supervisor is never late.
_WORST_RSS_GROWTH_BYTES_PER_S = 8 * 1024**3
_CPU_COUNT = os.cpu_count() or 1
#: After a child says `done` (or `ready`), how long the parent looks for it waiting on the control
#: socket at this short pace before it goes back to its usual one: the real child is there within
#: microseconds, a test that forged the word may never be.
_WAIT_LOOK_S = 0.01
_WAIT_POLL_S = 0.001
_ROUND_POLL_S = 0.0002
#: How long a child may take to tear down after its last test (module and session fixtures'
#: finalizers, Taichi's offline cache) before it is killed.
STOP_TIMEOUT_S = 60.0
_STOP = encode_command(StopCommand())


class Launched(Protocol):
    """A started child: the pid to watch, where it writes and reads, how to learn it ended.

    A child forked by the fork server may be *unborn* until its first test: it is forked with
    that test's run command (`start`) and begins it at once, without a ready/command round trip.
    """

    pid: int  # 0 while unborn
    #: the plugin's subreaper above the test (the fork server; the zygote in spawn mode): every
    #: process below it is the test's, its orphans included, none above it
    keeper_pid: int
    #: the process the test was forked from (it shares copy-on-write pages with the test)
    origin_pid: int
    channel_fd: int
    stack_fd: int
    control_fd: int
    #: the inode of the child's end of the control socket: the parent sees in /proc when the
    #: child's main thread waits there for its next command, back in the plugin's hands
    control_inode: int

    def wait_fd(self) -> int | None:
        """An fd that becomes readable when the child ends (or None: poll)."""

    def poll_exit(self, block: bool) -> ExitInfo | None: ...

    def crash_cause(self) -> str | None:
        """Why the child died when its own end says nothing true (its zygote was killed)."""

    def close(self) -> None: ...

    @property
    def unborn(self) -> bool:
        """Not forked yet: `start` forks it with its first command."""

    def start(self, first: RunCommand | None) -> None:
        """Fork the child, which runs `first` at once (None: it reports ready and waits).
        Raises WorkerGone when it cannot."""

    def birth_rss_bytes(self) -> int:
        """What the child held in memory when it was forked (its parent's resident memory)."""


class WorkerGone(RuntimeError):
    """The child ended (or never became ready) before it could run the next test."""


@dataclass(frozen=True)
class _Told:
    """What a test's usage learns from outside the measurement: from the child's messages
    (its Taichi arch, the gpu_gb cap's clamps, a session stop), and from the plugin (what
    admission reserved)."""

    arch: str
    gpu_clamps: tuple[str, ...]
    interrupted: str  # why the test stopped the session; "" if it did not
    admission: Admitted | None
    arch_fallback: str  # a GPU arch asked for and the CPU given (the record's gpu_note); or ""

    @classmethod
    def of(cls, messages: list[Message], admission: Admitted | None) -> _Told:
        exits = [message for message in messages if isinstance(message, Exit)]
        return cls(
            taichi_arch(messages),
            tuple(verdict.clamp_notes(messages)),
            exits[-1].describe() if exits else "",
            admission,
            verdict.arch_fallback(messages),
        )


@dataclass(frozen=True)
class _Figures:
    """What the parent measured of a test: at its end, or, for the last test of its child, when
    it was over (`done`, the child waiting): what the child does afterwards (Taichi's reset,
    leaving) is not the test's work."""

    wall_s: float
    cpu_s: float  # from the test's own start (Worker._cpu_s)
    peaks: _Peaks  # a copy: the watch goes on updating its own
    kernel_peak_bytes: int
    own_memory_bytes: int  # the one figure: the verdict's, every report's, the chart's top
    memory_method: str
    memory_note: str
    page_cache_bytes: int | None
    timeline: Mapping[str, Any]
    ending: Ending | None


@dataclass
class _TestStart:
    nodeid: str
    budget: Budget
    started_at: float  # Unix time
    monotonic: float
    rss_bytes: int  # RSS of the child when the test started (measured here, not told)
    cpu_s: float  # CPU time of the tree when the test started
    child_cpu_s: float  # the child's own CPU time (its reaped children's included) then
    gpu_bytes: int  # GPU memory of the tree when the test started
    first_message: int  # index of the first message that belongs to this test
    tests_before: int  # tests this child ran before this one
    shm_before: dict[str, shm.FileKey]  # what /dev/shm held when the test started
    #: the last test of its child: its figures when it was over (`done`, the child waiting);
    #: its budget still holds until the child has exited
    at_done: _Figures | None = None
    rounds: RoundWatch | None = None  # leak hunting's rounds (supervise/rounds.py)

    def round_elapsed_s(self, now: float) -> float:
        """Wall-clock time the budget holds against: the test's, or its round's."""
        return now - self.monotonic if self.rounds is None else self.rounds.elapsed_s(now)

    def round_cpu_s(self, tree_cpu_s: float) -> float:
        """CPU time the budget holds against: the test's, or its round's."""
        return tree_cpu_s - self.cpu_s if self.rounds is None else self.rounds.cpu_s(tree_cpu_s)


class Worker:
    """One started child that runs tests on command, each watched against its own budget.

    `run_test` returns when the test's `done` message arrives (the child then waits for the
    next command), or when the child ended or went over the budget (it is then gone).
    """

    def __init__(
        self,
        child: Launched,
        settings: Settings,
        mode: str,
        memory: MemoryMethod | None = None,
    ) -> None:
        self.child = child
        self.settings = settings
        self.mode = mode
        # Everything measured of this worker, by the memory method in force (measure/meter.py)
        self.meter = Meter(
            child.keeper_pid,
            child.pid,
            memory or SmapsMemory(child.origin_pid, child.keeper_pid),
        )
        self.tree = self.meter.tree
        self.reader = ChannelReader(child.channel_fd)
        self.exit_info: ExitInfo | None = None
        #: what /dev/shm held when this worker started (--taichi-limits-clean-shm)
        self._shm_at_start = shm.entries() if settings.clean_shm else {}
        self.tests_run = 0
        self._terminate = TerminateInOrder()
        self._closed = False
        self._escaped: int | None = None  # a test process that left the worker's cgroup
        self._ready = False
        self._next_message = 0  # the first message that belongs to the next test
        self._fixtures_up: tuple[str, ...] = ()  # the child's last word on them (Fixtures)
        self._sees_waits = True  # False once /proc cannot show where the child waits

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def alive(self) -> bool:
        return self.exit_info is None

    def _gone_text(self) -> str:
        ending = self.exit_info.ending.describe if self.exit_info else "did not answer"
        cause = self.child.crash_cause()
        problem = self.reader.problem
        return "; ".join(part for part in (f"the test process {ending}", cause, problem) if part)

    # -- one test ---------------------------------------------------------------------------

    def run_test(
        self,
        index: int,
        next_index: int | None,
        nodeid: str,
        budget: Budget,
        admission: Admitted | None = None,
        rounds: LeakRounds | None = None,
    ) -> RunResult:
        """`admission`: what admission reserved for the test (admission.Grant.facts), for its
        usage. `rounds`: leak hunting's, where the budget has a leak_mb."""
        if self.exit_info is not None:
            raise WorkerGone(self._gone_text())
        with self._terminate:
            try:
                return self._run_test(index, next_index, nodeid, budget, admission, rounds)
            except Exception as error:  # noqa: BLE001 - a failure to watch fails this test only
                return self._watch_failed(nodeid, budget, error, admission)
            except BaseException:
                # Ctrl-C, SIGTERM, SIGHUP, SIGQUIT (supervise/signals.py): the tree must not
                # outlive our attention.
                self._stop_tree(grace_s=min(self.settings.grace_s, 0.5))
                raise

    def _watch_failed(
        self,
        nodeid: str,
        budget: Budget,
        error: Exception,
        admission: Admitted | None,
    ) -> RunResult:
        """An error while watching (out of file descriptors, /proc unreadable): the test fails
        with it, its whole tree is ended, and the session goes on."""
        try:
            self._stop_tree(grace_s=min(self.settings.grace_s, 0.5))
        except Exception:  # noqa: BLE001 - the first error is the one reported
            send_signal(self.child.pid, signal.SIGKILL)
            self.exit_info = self.exit_info or ExitInfo(Ending(None, signal.SIGKILL), 0, 0.0)
        usage = Usage(
            nodeid=nodeid,
            pid=self.child.pid,
            started_at=time.time(),
            wall_s=0.0,
            cpu_s=0.0,
            start_rss_bytes=0,
            peak_own_rss_bytes=0,
            peak_rss_bytes=0,
            peak_vms_bytes=0,
            kernel_maxrss_bytes=0,
            gpu_peak_bytes=None,
            gpu_note="not measured",
            samples=0,
            budget=budget,
            mode=self.mode,
            ending=None if self.exit_info is None else self.exit_info.ending,
            peak_own_memory_bytes=0,
            memory_method="not measured",
            worker_pid=self.child.pid,
            admission=admission,
        )
        crash = Crash(
            nodeid,
            f"taichi_limits could not watch this test ({type(error).__name__}: {error})",
            "call",
            "",
        )
        messages = self.reader.messages[self._next_message :]
        return RunResult(messages, usage, None, crash, None, "call", self._untorn(messages))

    def _run_test(
        self,
        index: int,
        next_index: int | None,
        nodeid: str,
        budget: Budget,
        admission: Admitted | None,
        rounds: LeakRounds | None = None,
    ) -> RunResult:
        if self.child.unborn:
            if rounds is None or budget.leak_mb is None:
                return self._run_at_birth(index, next_index, nodeid, budget, admission)
            # Leak hunting reads the child exactly between rounds, from a start read while it
            # waits: forked without a command, it reports ready first, as a worker always did.
            self._start_child(None)
        if not self._ready:
            # Starting up (a fresh interpreter's or a reimport worker's import and collection
            # of its modules: their ti.init, their work at import) is no test's: it is watched
            # under the session's default budget (or the first test's, where larger), and the
            # first test's figures start once the worker is ready.
            startup_budget = larger(self.settings.default_budget, budget)
            startup = self._begin(nodeid, startup_budget, exact=self.mode != "fork")
            peaks = _Peaks(rss_bytes=startup.rss_bytes, cpu_s=startup.cpu_s)
            violation, ready = self._watch(startup, peaks, Ready)
            if not ready:
                return self._result(startup, peaks, violation, False, admission)
            self._ready = True
        start = self._begin(nodeid, budget)
        self.tests_run += 1
        command = RunCommand(index, next_index, budget.cpu_s, budget.gpu_gb)
        if rounds is not None and budget.leak_mb is not None:
            start.rounds = RoundWatch(rounds, budget.leak_bytes, start.monotonic, start.cpu_s)
            command = dataclasses.replace(
                command, warmup_rounds=rounds.warmup, measured_rounds=rounds.measured
            )
        self._send(encode_command(command))
        peaks = _Peaks(rss_bytes=start.rss_bytes, cpu_s=start.cpu_s)
        violation, finished = self._watch(start, peaks, Done, last=next_index is None)
        return self._result(start, peaks, violation, finished, admission, next_index is None)

    def _run_at_birth(
        self,
        index: int,
        next_index: int | None,
        nodeid: str,
        budget: Budget,
        admission: Admitted | None,
    ) -> RunResult:
        """The child's first test, which it is forked with: the start figures are those of its
        birth (nothing of its own in memory or CPU time yet, the resident memory it inherits),
        taken before the fork, while nothing of the test runs."""
        birth_rss_bytes = self.child.birth_rss_bytes()
        start = self._begin(nodeid, budget, birth_rss_bytes=birth_rss_bytes)
        start.rss_bytes = birth_rss_bytes
        self._start_child(RunCommand(index, next_index, budget.cpu_s, budget.gpu_gb))
        self._ready = True
        self.tests_run += 1
        peaks = _Peaks(rss_bytes=start.rss_bytes, cpu_s=start.cpu_s)
        violation, finished = self._watch(start, peaks, Done, last=next_index is None)
        return self._result(start, peaks, violation, finished, admission, next_index is None)

    def _start_child(self, first: RunCommand | None) -> None:
        try:
            self.child.start(first)
        except WorkerGone:
            self.exit_info = ExitInfo(Ending(None, None), 0, 0.0)
            raise

    def _send(self, command: bytes) -> None:
        try:
            os.write(self.child.control_fd, command)
        except OSError:
            pass  # the child is gone: the watch finds out how

    def _begin(
        self,
        nodeid: str,
        budget: Budget,
        exact: bool = True,
        birth_rss_bytes: int | None = None,
    ) -> _TestStart:
        """The parent's own figures at the start, read while the child is idle (waiting for
        its command), or before it is forked (`birth_rss_bytes`: what it will inherit): never
        the child's word for them."""
        now = time.monotonic()
        tick = self.meter.begin(budget.mem_bytes, now, exact, birth_rss_bytes)
        born = birth_rss_bytes is None
        if born:
            linux.reset_peak_rss(self.child.pid)
        # What a child holds on the GPU before its first test is that test's (a fresh child
        # holds nothing; a fresh interpreter's module import is charged to its first test).
        gpu_start = self.meter.gpu_now() or 0 if self.tests_run else 0
        return _TestStart(
            nodeid,
            budget,
            time.time(),
            now,
            linux.rss_bytes(self.child.pid) if born else 0,
            tick.cpu_s,
            process_cpu_s(self.child.pid) if born else 0.0,
            gpu_start,
            self._next_message,
            self.tests_run,
            shm.entries(),
        )

    def _watch(
        self, start: _TestStart, peaks: _Peaks, until: _Until, last: bool = False
    ) -> tuple[Violation | None, bool]:
        """Sample and check until the child is back in the plugin's hands after `until` (ready,
        or done with the test), ended, or crossed a limit; (violation, whether it finished).

        The child's word is not enough: the test may forge it. The test is over once the parent
        sees (in /proc) the child's main thread wait on the control socket for its next command.
        The `last` test of a child is over when the child has exited: it is asked to stop then,
        and the budget holds until it is gone, while its figures are those of that moment."""
        child, reader, meter = self.child, self.reader, self.meter
        # The child rings the control socket after `ready` and `done`: those wake the loop at
        # once. Other messages wake it at most once per interval (each wake-up costs the parent
        # about 0.2 ms of CPU; the 1 MiB pipe holds what the child writes meanwhile).
        # The kernel's cap (a cgroup) wakes it too: the test's tasks wait there for their stack.
        cap_fd = meter.memory.cap_event_fd()
        always = [fd for fd in (child.control_fd, child.wait_fd(), cap_fd) if fd is not None]
        with_channel = [child.channel_fd, *always]
        progress = _Progress(
            start.first_message, until, start.nodeid, "setup" if until is Done else "collection"
        )
        sampled_at = heard_at = -math.inf
        told_at = held_at = math.inf  # when the child said `until`; when it was asked to stop
        overflow_stopped = holding = False
        while True:
            quiet_s = time.monotonic() - heard_at
            listen = not reader.closed and quiet_s >= self.settings.interval_s
            sleep_s = self._next_sleep(start, peaks, start.round_elapsed_s(time.monotonic()))
            # (told_at is infinite until the child says `until`: -inf is no "just told")
            if not holding and 0.0 <= time.monotonic() - told_at < _WAIT_LOOK_S:
                # It is about to wait: look again soon (sooner between two rounds of leak
                # hunting, where the test goes on as soon as the parent has read).
                pending = start.rounds is not None and start.rounds.pending
                sleep_s = min(sleep_s, _ROUND_POLL_S if pending else _WAIT_POLL_S)
            ready, _, _ = select.select(with_channel if listen else always, [], [], sleep_s)
            if child.channel_fd in ready:
                heard_at = time.monotonic()
            if child.control_fd in ready and not _take_bells(child.control_fd):
                # The child's end is closed (it is exiting): an end of file stays readable, and
                # would spin this loop until the exit is seen (wait_fd says when).
                always.remove(child.control_fd)
                with_channel.remove(child.control_fd)
            capped = False
            if cap_fd is not None and cap_fd in ready:
                capped = True
                _take_bells(cap_fd)  # the eventfd's count; the tick below reads the cap
            reader.drain()
            progress.update(reader.messages)
            now = time.monotonic()
            if self._round_over(start, peaks, progress, now):
                told_at = math.inf  # the next round is under way
            elif start.rounds is not None and start.rounds.pending and told_at == math.inf:
                told_at = now  # it is about to wait for its next round: look again soon
            if progress.told and told_at == math.inf:
                told_at = now
            back = progress.told and not holding and self._waits_for_command()
            if back:
                reader.drain()  # what it wrote before it began to wait is all this test's
                progress.update(reader.messages)
            if back or not ready or capped or now - sampled_at >= self.settings.interval_s:
                # Back in the plugin's hands, the child is idle: the exact figure of the
                # finished test.
                peaks.take(meter.sample(now, settle=back), start)
                self._escaped = self._escaped or meter.memory.escaped(self.tree)
                sampled_at = now
            if self._escaped is not None:  # out of the figure's reach: stopped, and said so
                self._stop_tree()
                return None, False
            violation = self._check(start, peaks, progress.phase, start.round_elapsed_s(now))
            if violation is not None:
                self._stop_tree()
                return _at_startup(violation) if until is Ready else violation, False
            if back:
                if not last:
                    return None, True
                # Its last test: what the child does until it has exited is still that test's.
                if shm.new_entries(start.shm_before):  # looked at while its processes are there
                    meter.observe_shm()
                start.at_done = self._figures(start, peaks, True, None)
                holding, held_at = True, now
                self._send(_STOP)
            if reader.overflowed and not overflow_stopped:
                # Its `done` can no longer be heard: let it finish and leave.
                overflow_stopped = True
                self._send(_STOP)
            self.exit_info = child.poll_exit(block=False)
            if self.exit_info is not None:
                reader.drain()
                # Said `done` and left cleanly without being seen to wait (os._exit): its
                # reports decide (results/replay.py); a crash is a crash.
                said_done = progress.told and until is Done
                return None, holding or (said_done and self.exit_info.ending.exit_code == 0)
            if holding and now - held_at > STOP_TIMEOUT_S:
                self._stop_tree()  # its teardown hangs: the test itself was over
                return None, True

    def _round_over(
        self, start: _TestStart, peaks: _Peaks, progress: _Progress, now: float
    ) -> bool:
        """Leak hunting: once the child said a round ended and waits, idle, for the next one,
        the round's reading, and the word to go on."""
        rounds = start.rounds
        if rounds is None or progress.told:
            return False
        rounds.update(self.reader.messages, start.first_message)
        if not rounds.pending or not self._waits_for_command():
            return False
        self.reader.drain()
        tick = self._exact_reading(now)
        peaks.take(tick, start)
        gpu_own = None if tick.gpu_bytes is None else max(0, tick.gpu_bytes - start.gpu_bytes)
        rounds.take(now, tick.cpu_s, tick.own_memory_bytes, gpu_own, self.child.pid, tick.processes)
        self._send(encode_command(NextRoundCommand()))
        return True

    def _exact_reading(self, now: float) -> Tick:
        """The figures now, the test's memory exact (the child idle): leak hunting's reading
        after each round, by the memory method in force (measure/meter.py)."""
        return self.meter.sample(now, settle=True)

    def _waits_for_command(self) -> bool:
        """Whether the child's main thread waits on the control socket, as the kernel shows it:
        the word `ready` or `done` can be forged by the test, that cannot. Where /proc cannot
        show it, the child's word is taken (docs/how-it-works.md says so)."""
        if not self._sees_waits:
            return True
        waiting = linux.blocked_reading(self.child.pid, self.child.control_inode)
        if waiting is None:
            self._sees_waits = False
            return True
        return waiting

    def _next_sleep(self, start: _TestStart, peaks: _Peaks, elapsed_s: float) -> float:
        """A quarter of the shortest time in which any limit could be reached, within bounds."""
        budget, tick, memory = start.budget, self.meter.tick, self.meter.memory
        headroom_s = _MAX_SLEEP_S * 4
        if budget.mem_bytes is not None and memory.started:
            headroom_s = min(
                headroom_s,
                (budget.mem_bytes - memory.estimate(tick)) / _WORST_RSS_GROWTH_BYTES_PER_S,
            )
        if budget.cpu_s is not None:
            headroom_s = min(
                headroom_s, (budget.cpu_s - start.round_cpu_s(tick.cpu_s)) / _CPU_COUNT
            )
        # No safe growth rate to assume for GPU memory. Without NVML nothing is sampled for it
        # (the ti.init cap still holds), so gpu_gb alone must not make the loop spin: at 0.01 s
        # that cost 2.8 % of a core per test on CPU-only CI (benchmarks/bench_supervisor_cost.py).
        if budget.gpu_gb is not None and isinstance(self.meter.gpu, gpu.NvmlProbe):
            headroom_s = 0.0
        sleep_s = min(_MAX_SLEEP_S, max(self.settings.interval_s, headroom_s / 4))
        if headroom_s < self.settings.interval_s:
            # Within one interval of a limit at the worst growth (a Taichi field filled at
            # several GB/s crosses a cgroup cap's margin in a few ms): look every millisecond,
            # so that the sample, not the cap, catches it, and the report gets its stack.
            sleep_s = min(sleep_s, _WAIT_POLL_S)
        if budget.wall_s is not None:  # the wall-clock deadline is known exactly
            sleep_s = min(sleep_s, max(0.0, budget.wall_s - elapsed_s) + 0.001)
        return sleep_s

    def _check(
        self, start: _TestStart, peaks: _Peaks, phase: str, elapsed_s: float
    ) -> Violation | None:
        budget, tick, memory = start.budget, self.meter.tick, self.meter.memory
        cpu_s = start.round_cpu_s(tick.cpu_s)
        if budget.mem_bytes is not None and memory.held_at_cap():
            return self._violate(
                start,
                "mem_mb",
                budget.mem_mb,
                memory.own_bytes / MIB,
                phase,
                f"kernel (the test's memory cgroup reached its cap, a little above mem_mb, and "
                f"held the test there) and supervisor ({memory.describe()})",
            )
        if budget.mem_bytes is not None and self.meter.over_memory(budget.mem_bytes):
            return self._violate(
                start,
                "mem_mb",
                budget.mem_mb,
                memory.own_bytes / MIB,
                phase,
                f"supervisor ({memory.describe()}, sampled)",
            )
        if budget.cpu_s is not None and cpu_s > budget.cpu_s:
            detected = "supervisor (CPU time of the process tree, sampled)"
            if os.fstat(self.child.stack_fd).st_size:  # faulthandler already answered SIGXCPU
                detected = "kernel (RLIMIT_CPU sent SIGXCPU) and supervisor"
            return self._violate(start, "cpu_s", budget.cpu_s, cpu_s, phase, detected)
        if budget.wall_s is not None and elapsed_s > budget.wall_s:
            return self._violate(
                start, "wall_s", budget.wall_s, elapsed_s, phase, "supervisor (wall clock)"
            )
        gpu_now = tick.gpu_bytes
        if (
            budget.gpu_bytes is not None
            and gpu_now is not None
            and gpu_now - start.gpu_bytes > budget.gpu_bytes
        ):
            return self._violate(
                start,
                "gpu_gb",
                budget.gpu_gb,
                (gpu_now - start.gpu_bytes) / 1024**3,
                phase,
                "supervisor (GPU memory of the process tree, NVML)",
            )
        return None

    def _violate(
        self,
        start: _TestStart,
        resource_key: str,
        limit: float | None,
        measured: float,
        phase: str,
        detected_by: str,
    ) -> Violation:
        self.tree.remember_tree()
        stack = request_stack(
            self.child.pid, self.child.stack_fd, self.meter.memory.release_reserve
        )
        # Frozen (SIGSTOP; _stop_tree continues it with its SIGTERM), then the figure at the
        # moment it is stopped (an exact reading, whatever the method's pace): every report
        # of this test shows it, whichever limit was broken, and nothing the test does after
        # the reading is left out of it (it allocated on between the reading and the stop).
        self.tree.signal_tree(signal.SIGSTOP)
        self.meter.sample(time.monotonic(), settle=True)
        detail = self.meter.memory.cap_detail() if resource_key == "mem_mb" else ""
        return Violation(
            start.nodeid,
            resource_key,
            float(limit or 0),
            measured,
            detected_by,
            phase,
            self.child.pid,
            time.time(),
            (),
            stack,
            detail=detail,
        )

    def _result(
        self,
        start: _TestStart,
        peaks: _Peaks,
        violation: Violation | None,
        finished: bool,
        admission: Admitted | None,
        worker_ends: bool = True,
    ) -> RunResult:
        messages = self.reader.messages[start.first_message :]
        self._next_message = len(self.reader.messages)
        phase = _Progress.last_phase(messages) if self._ready else "collection"
        if start.at_done is not None and violation is None:
            figures = start.at_done
        else:
            figures = self._figures(start, peaks, finished, violation)
        worker_ends = worker_ends or violation is not None or not finished
        shm_files = self._shm_left(start, worker_ends)
        told = _Told.of(messages, admission)
        hunt = _leaks(start, violation, finished, messages)
        usage = self._usage(start, figures, told, shm_files, hunt)
        result = RunResult(
            messages,
            usage,
            violation,
            None,
            self.reader.problem,
            phase,
            self._untorn(messages),
        )
        if violation is not None:
            result.violation = dataclasses.replace(violation, signals_sent=self._signals_sent)
            return result
        if self.exit_info is not None:
            self.tree.kill_survivors()
        if self._escaped is not None:
            result.crash = Crash(start.nodeid, _escape_reason(self._escaped), phase, "")
            return result
        result.violation = verdict.after_the_fact(
            start.nodeid,
            start.budget,
            usage,
            self.exit_info,
            self.child.pid,
            phase,
            self.child.stack_fd,
            self.meter.memory.oom_kills(),
            self.meter.memory.describe(),
            None if start.rounds is None else start.rounds.last_cpu_s(usage.cpu_s, start.cpu_s),
        )
        if result.violation is None:
            result.violation = verdict.device_oom(
                start.nodeid, start.budget, usage, messages, self.child.pid
            )
        if result.violation is None and not finished:
            result.crash = verdict.crash(
                start.nodeid,
                self.exit_info,
                result.messages,
                phase,
                self.reader.problem,
                self.child,
            )
        if result.violation is None and result.crash is None and usage.leaks is not None:
            result.violation = leaks.violation(
                start.nodeid,
                start.budget,
                usage.leaks,
                self.child.pid,
                self.meter.memory.describe(),
            )
        return result

    def _untorn(self, messages: list[Message]) -> tuple[str, ...]:
        """The fixtures above function scope still set up when the child ended: their teardown
        never ran (killed at the end of the grace period, or crashed)."""
        for message in messages:
            if isinstance(message, Fixtures):
                self._fixtures_up = message.up
        return self._fixtures_up if self.exit_info is not None else ()

    def _shm_left(self, start: _TestStart, worker_ends: bool) -> shm.LeftFiles:
        """What the test made in /dev/shm and left there (listed in its report): at its end,
        even for the last test of its child, what its teardown left counts. With
        --taichi-limits-clean-shm, at the worker's end, what its tests made and no process
        outside them uses is removed; what cannot be attributed to them is kept and listed."""
        new = shm.new_entries(start.shm_before)
        clean = self.settings.clean_shm and worker_ends
        if not new and not clean:
            return shm.LeftFiles()
        if self.exit_info is None:  # the child is idle: what its processes hold, map
            self.meter.observe_shm()
        inside = {self.child.pid, self.child.keeper_pid, *self.tree.members()}
        cgroup_inode = self.meter.memory.cgroup_inode()
        mine = shm.settle_left(new, self.meter.shm, cgroup_inode, inside, clean=False)
        if not clean:
            return mine
        since_worker_start = shm.new_entries(self._shm_at_start)
        cleaned = shm.settle_left(since_worker_start, self.meter.shm, cgroup_inode, inside, True)
        return shm.LeftFiles(mine.left, cleaned.not_removed, mine.unattributed)

    def _peak_rss(self, start: _TestStart, finished: bool) -> int:
        """The kernel's exact peak RSS of the child during this test (0: not known)."""
        if self.exit_info is not None and start.tests_before == 0:
            return self.exit_info.maxrss_bytes  # its whole life was this one test
        if finished:
            return linux.peak_rss_bytes(self.child.pid)
        return 0

    def _cpu_s(self, start: _TestStart, peaks: _Peaks) -> float:
        """CPU time from the test's own start: the tree's, or the kernel's figure for a child
        that ended (wait4), less what the child had used before the test began (a worker's
        import and ti.init, earlier tests)."""
        sampled_s = peaks.cpu_s - start.cpu_s
        if self.exit_info is None:
            return max(0.0, sampled_s)
        return max(0.0, sampled_s, self.exit_info.cpu_s - start.child_cpu_s)

    def _figures(
        self, start: _TestStart, peaks: _Peaks, finished: bool, violation: Violation | None
    ) -> _Figures:
        """The test's figures now: one memory figure (the one the verdict uses), which is also
        the highest point of its timeline (the last point holds it)."""
        memory, exit_info = self.meter.memory, self.exit_info
        kernel_peak_bytes = self._peak_rss(start, finished)
        own_bytes = memory.final_bytes(max(0, kernel_peak_bytes - start.rss_bytes))
        wall_s = time.monotonic() - start.monotonic
        cpu_s = self._cpu_s(start, peaks)
        gpu_own = None if peaks.gpu_bytes is None else max(0, peaks.gpu_bytes - start.gpu_bytes)
        peaks.timeline.add(wall_s, own_bytes, cpu_s, gpu_own)
        return _Figures(
            wall_s=wall_s,
            cpu_s=cpu_s,
            peaks=dataclasses.replace(peaks),
            kernel_peak_bytes=kernel_peak_bytes,
            own_memory_bytes=own_bytes,
            memory_method=self.meter.method,
            memory_note=memory.note,
            page_cache_bytes=memory.page_cache_bytes(),
            timeline=peaks.timeline.to_json(
                None if violation is None else violation.at - start.started_at
            ),
            ending=None if exit_info is None else exit_info.ending,
        )

    def _usage(
        self,
        start: _TestStart,
        figures: _Figures,
        told: _Told,
        shm_files: shm.LeftFiles,
        hunt: Leaks | None = None,
    ) -> Usage:
        """The test's usage, complete: built once, never replaced."""
        peaks = figures.peaks
        gpu_peak = None if peaks.gpu_bytes is None else max(0, peaks.gpu_bytes - start.gpu_bytes)
        # Without a cgroup, shared memory the test may have made but was not seen holding is
        # not charged: the record says so (with a cgroup, the kernel knows whose it is).
        unattributed = "" if self.meter.memory.cgroup_inode() else shm_files.unattributed_note()
        return Usage(
            nodeid=start.nodeid,
            pid=self.child.pid,
            started_at=start.started_at,
            wall_s=figures.wall_s,
            cpu_s=figures.cpu_s,
            start_rss_bytes=start.rss_bytes,
            peak_own_rss_bytes=max(0, peaks.rss_bytes - start.rss_bytes),
            peak_own_memory_bytes=figures.own_memory_bytes,
            memory_method=figures.memory_method,
            memory_note="; ".join(note for note in (figures.memory_note, unattributed) if note),
            page_cache_bytes=figures.page_cache_bytes,
            peak_rss_bytes=peaks.rss_bytes,
            peak_vms_bytes=peaks.vms_bytes,
            kernel_maxrss_bytes=figures.kernel_peak_bytes,
            gpu_peak_bytes=gpu_peak,
            gpu_note=told.arch_fallback or self.meter.gpu.note,
            samples=peaks.samples,
            budget=start.budget,
            mode=self.mode,
            ending=figures.ending,
            worker_pid=self.child.pid,
            worker_test_number=start.tests_before + 1,
            arch=told.arch,
            gpu_clamps=told.gpu_clamps,
            interrupted=told.interrupted,
            admission=told.admission,
            timeline=figures.timeline,
            shm_files_left=shm_files.left,
            shm_not_removed=shm_files.not_removed,
            leaks=hunt,
        )

    # -- ending the child -------------------------------------------------------------------

    _signals_sent: tuple[str, ...] = ()

    def _stop_tree(self, grace_s: float | None = None) -> None:
        """SIGTERM the tree, wait out the grace period, then SIGKILL whatever is left."""
        child, tree, reader = self.child, self.tree, self.reader
        grace = self.settings.grace_s if grace_s is None else grace_s
        # To each main thread: a process's signal goes to whichever thread runs first (after
        # the SIGCONT below, a Taichi worker's, say), and CPython then may not run its handler
        # until the main thread leaves a sleep or a loop: the test ran on to SIGKILL (found by
        # the truth matrix's cpu_s and wall_s cells in reimport workers). Then continued: it
        # was frozen for its last reading (_violate).
        tree.signal_tree(signal.SIGTERM, main_thread=True)
        tree.signal_tree(signal.SIGCONT)
        deadline = time.monotonic() + grace
        exit_info = self.exit_info
        while time.monotonic() < deadline:
            reader.drain()
            if exit_info is None:
                exit_info = child.poll_exit(block=False)
            # Done only when the whole tree is gone: a grandchild that ignores SIGTERM
            # outlives the child and gets SIGKILL below.
            if exit_info is not None and not tree.any_alive():
                self.exit_info, self._signals_sent = exit_info, ("SIGTERM",)
                return
            if self.meter.memory.held_at_cap():
                # Tasks held at the memory cgroup's cap wait in the kernel: no handler of
                # theirs can run (their teardown cannot either); the grace would be in vain.
                break
            time.sleep(min(0.01, grace))
        tree.kill_descendants()
        tree.kill_survivors()
        self._signals_sent = ("SIGTERM", "SIGKILL")
        if exit_info is None:
            send_signal(child.pid, signal.SIGKILL)
            exit_info = child.poll_exit(block=True) or ExitInfo(
                Ending(None, signal.SIGKILL), 0, 0.0
            )
        self.exit_info = exit_info
        reader.drain()  # its last words, as far as it got: which fixtures it tore down

    def stop(self, timeout_s: float) -> None:
        """Ask an idle child to tear down and leave; kill it if it has not within `timeout_s`
        (its teardown runs the last fixtures' finalizers and writes Taichi's kernel cache)."""
        if self.exit_info is None:
            self._send(_STOP)
            deadline = time.monotonic() + timeout_s
            wait_fd = self.child.wait_fd()
            while self.exit_info is None and time.monotonic() < deadline:
                self.reader.drain()
                self.exit_info = self.child.poll_exit(block=False)
                if self.exit_info is None:
                    select.select(
                        [wait_fd] if wait_fd is not None else [],
                        [],
                        [],
                        0.01 if wait_fd is None else 0.1,
                    )
            self.reader.drain()
        self.kill()

    def kill(self) -> None:
        """End the child and everything it started, now."""
        if self.child.unborn:  # never forked: nothing of it to end
            self.exit_info = self.exit_info or ExitInfo(Ending(None, None), 0, 0.0)
            return
        with self._terminate:
            if self.exit_info is None:
                self._stop_tree(grace_s=0.0)
            self.tree.kill_descendants()
            self.tree.kill_survivors()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.kill()
        self.meter.close()
        self.child.close()


@dataclass
class _Peaks:
    """The highest figures of one test's ticks, and its timeline (model/timeline.py)."""

    rss_bytes: int = 0
    vms_bytes: int = 0
    cpu_s: float = 0.0
    gpu_bytes: int | None = None
    samples: int = 0
    timeline: Timeline = field(default_factory=Timeline)

    def take(self, tick: Tick, start: _TestStart) -> None:
        self.samples += 1
        if tick.processes == 0:
            return
        self.rss_bytes = max(self.rss_bytes, tick.rss_bytes)
        self.vms_bytes = max(self.vms_bytes, tick.vms_bytes)
        self.cpu_s = max(self.cpu_s, tick.cpu_s)
        gpu_own = None
        if tick.gpu_bytes is not None:
            self.gpu_bytes = max(self.gpu_bytes or 0, tick.gpu_bytes)
            gpu_own = max(0, tick.gpu_bytes - start.gpu_bytes)
        # The figure itself, never an estimate: the chart's highest point is the report's.
        self.timeline.add(
            time.monotonic() - start.monotonic,
            tick.own_memory_bytes,
            tick.cpu_s - start.cpu_s,
            gpu_own,
        )


_Until = type[Ready] | type[Done]


@dataclass
class _Progress:
    """What the child has told about the running test: its phase, and whether it said `until`
    (ready: set up; done: the test `nodeid` is over). Only its word: see Worker._watch."""

    seen: int
    until: _Until
    nodeid: str
    phase: str = "setup"
    told: bool = False

    def update(self, messages: list[Message]) -> None:
        for index in range(self.seen, len(messages)):
            message = messages[index]
            if isinstance(message, Phase):
                self.phase = message.when
            elif isinstance(message, Done):
                self.told = self.told or (self.until is Done and message.nodeid == self.nodeid)
            elif isinstance(message, Ready):
                self.told = self.told or self.until is Ready
        self.seen = len(messages)

    @staticmethod
    def last_phase(messages: list[Message]) -> str:
        return next((m.when for m in reversed(messages) if isinstance(m, Phase)), "setup")


#: What a violation during a worker's start-up says (the budget in force is not the test's).
STARTUP_DETAIL = (
    "the worker went over while it started, before the test ran (a fresh interpreter or a "
    "reimport worker importing and collecting the module: its ti.init and its work at "
    "import), watched under the session's default budget, or the first test's where larger"
)


def _at_startup(violation: Violation) -> Violation:
    detail = "; ".join(part for part in (STARTUP_DETAIL, violation.detail) if part)
    return dataclasses.replace(violation, detail=detail)


def _leaks(
    start: _TestStart, violation: Violation | None, finished: bool, messages: list[Message]
) -> Leaks | None:
    """Leak hunting's verdict on the test's rounds (None: it did not hunt leaks), saying why
    where the rounds did not all run."""
    rounds = start.rounds
    if rounds is None:
        return None
    if len(rounds.readings) >= rounds.rounds.total:
        return rounds.verdict()
    where = f"the rounds stopped in round {rounds.in_progress()} of {rounds.rounds.total}"
    notes = [m.text for m in messages if isinstance(m, Note) and m.key == ROUNDS_NOTE]
    if violation is not None:
        why = f"{where}: {violation.resource} exceeded"
    elif not finished:
        why = f"{where}: the test process ended"
    elif notes:
        why = f"leak hunting ran the test once: {notes[-1]}"
    else:
        why = f"{where}: the test did not pass it"
    return rounds.verdict(why)


def _escape_reason(pid: int) -> str:
    return (
        f"taichi_limits: process {pid} of the test left the test's memory cgroup (it wrote to "
        "another cgroup's cgroup.procs, which root may do): its memory could no longer be "
        "measured or capped, so the test was stopped"
    )


def _take_bells(control_fd: int) -> bool:
    """Read the bells rung; False once the child's end is closed."""
    try:
        return bool(os.read(control_fd, 4096))
    except OSError:
        return False  # the child's end is gone: its exit is seen through wait_fd / poll_exit


def request_stack(
    pid: int, stack_fd: int, release: Callable[[], None], wait_s: float = _STACK_WAIT_S
) -> str:
    """faulthandler's dump of every thread of child `pid` into `stack_fd`, now. `release`
    wakes tasks the kernel's cap holds, to run the dump (they wait in the kernel until then);
    it is called on each poll while nothing has come."""
    # Only the stack of this moment: an earlier SIGXCPU dump would be read as part of it.
    os.ftruncate(stack_fd, 0)
    os.lseek(stack_fd, 0, os.SEEK_SET)  # the offset is shared with the child
    # The dump's pages are allocated here, charged to this process: a test held at its
    # memory cgroup's cap could not allocate them, and its dump would be lost.
    linux.preallocate(stack_fd, STACK_FILE_BYTES)
    # To the main thread, whose signal stack the child faulted in (child/loop.py): a thread
    # the kernel picks (a Taichi worker at the cap) would need new pages to run the handler.
    if not linux.signal_main_thread(pid, STACK_SIGNAL):
        try:
            os.kill(pid, STACK_SIGNAL)
        except ProcessLookupError:
            return read_stack(stack_fd)
    release()
    deadline = time.monotonic() + wait_s
    size = -1
    unchanged_polls = 0
    while time.monotonic() < deadline:
        # faulthandler writes a dump in well under a millisecond, and the test keeps running
        # meanwhile: a test allocating 1 GB/s grew 20 MB past mem_mb during the 10 ms polls
        # used before (benchmarks/bench_latency.py). Done once the size held for 2 polls.
        time.sleep(_STACK_POLL_S)
        new_size = os.fstat(stack_fd).st_size
        unchanged_polls = unchanged_polls + 1 if new_size and new_size == size else 0
        if unchanged_polls >= 2:
            break
        if not new_size:
            release()  # the main thread may have come to wait at the cap after the last wake
        size = new_size
    return read_stack(stack_fd)


def control_pair() -> tuple[int, int]:
    """(parent's end, child's end) of the control socket: commands one way, bells the other."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours.detach(), theirs.detach()


def stack_file() -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pytest-taichi-limits-stack")
        linux.preallocate(fd, STACK_FILE_BYTES)  # a crash dump at the cap has its pages
        return fd
    import tempfile

    with tempfile.TemporaryFile() as handle:  # deleted at once; the duplicate keeps it open
        return os.dup(handle.fileno())


def pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
