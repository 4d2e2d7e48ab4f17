"""Start the test's child, watch its process tree, enforce the budget, and leave nothing behind.

The parent measures; it renders nothing. What it hands back is a `RunResult`: the messages the
child sent, the usage figures, and a Violation or a Crash when there was one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import select
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import gpu, linux, taichi_support
from .budget import Budget
from .channel import ChannelReader
from .child import EXIT_DONE, STACK_SIGNAL
from .proctree import (
    ProcessTree,
    TreeSample,
    child_pids,
    send_signal,
    stop_then_kill,
    tree_pids,
)
from .records import RSS_GROWTH, Crash, Ending, Usage, Violation, signal_name

_MB = 1024 * 1024
#: How long the parent waits for faulthandler to write the child's stacks.
_STACK_WAIT_S = 0.25
_STACK_POLL_S = 0.001
#: Longest sleep between two samples. Each wake-up costs the parent about 0.2 ms of CPU on a
#: VM, so far from every limit it samples at this pace and only near one at `interval_s`.
_MAX_SLEEP_S = 0.1
#: Growth assumed when judging how far a limit is: faster than a test can page in memory
#: (about 1-4 GB/s per core), so the supervisor is never late.
_WORST_RSS_GROWTH_BYTES_PER_S = 8 * 1024**3
_CPU_COUNT = os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """How supervision works (as opposed to Budget: how much a test may use)."""

    interval_s: float = 0.01
    grace_s: float = 2.0
    mode: str = "auto"
    arch: str | None = None


@dataclass(frozen=True)
class ExitInfo:
    ending: Ending
    maxrss_bytes: int
    cpu_s: float


class Launched(Protocol):
    """A started child: the pid to watch, where it writes, and how to learn that it ended."""

    pid: int
    channel_fd: int
    stack_fd: int

    def wait_fd(self) -> int | None:
        """An fd that becomes readable when the child ends (or None: poll)."""

    def poll_exit(self, block: bool) -> ExitInfo | None: ...

    def close(self) -> None: ...


@dataclass
class RunResult:
    messages: list[dict[str, Any]]
    usage: Usage
    violation: Violation | None = None
    crash: Crash | None = None
    channel_problem: str | None = None
    phase: str = "setup"
    survivors_killed: list[int] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in self.messages if message["t"] == kind]


class ForkLaunch:
    """The fast path: fork this pytest process; the child runs the item's hooks itself."""

    def __init__(self, run_in_child: Callable[[int, int, int], None]) -> None:
        read_fd, write_fd = os.pipe()
        linux.enlarge_pipe(write_fd)
        self.stack_fd = _stack_file()
        parent_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would print the parent's buffered text again
        pid = os.fork()
        if pid == 0:
            if isinstance(signal.getsignal(signal.SIGTERM), TerminateInOrder):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's, not the test's
            os.close(read_fd)
            run_in_child(write_fd, self.stack_fd, parent_pid)
            os._exit(EXIT_DONE)  # run_in_child never returns; this is a seatbelt
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.pid = pid
        self.channel_fd = read_fd
        self._pidfd: int | None = _pidfd_open(pid)

    def wait_fd(self) -> int | None:
        return self._pidfd

    def poll_exit(self, block: bool) -> ExitInfo | None:
        flags = 0 if block else os.WNOHANG
        try:
            pid, status, rusage = os.wait4(self.pid, flags)
        except ChildProcessError:
            return ExitInfo(Ending(None, None), 0, 0.0)
        if pid == 0:
            return None
        if os.WIFSIGNALED(status):
            ending = Ending(None, os.WTERMSIG(status))
        else:
            ending = Ending(os.waitstatus_to_exitcode(status), None)
        return ExitInfo(ending, rusage.ru_maxrss * 1024, rusage.ru_utime + rusage.ru_stime)

    def close(self) -> None:
        for fd in (self.channel_fd, self.stack_fd, self._pidfd):
            if fd is not None:
                os.close(fd)


class _Terminated(BaseException):
    """SIGTERM reached the pytest process (a CI time-out, `kill`) while a test ran."""


class TerminateInOrder:
    """While a supervised test runs, SIGTERM to pytest ends the test's whole tree first.

    With the default action pytest would die at once, and whatever the test had `setsid`'d or
    double-forked, re-parented to init, would run on. Here SIGTERM raises inside the watch loop,
    whose handler stops the tree; then the orphans are reaped and pytest dies of SIGTERM as it
    would have. Installed only over the default action, and only in the main thread.
    """

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self.installed = False

    def __call__(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.owner_pid:  # a forked child, before it reset the handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise _Terminated()

    def __enter__(self) -> TerminateInOrder:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self)
            self.installed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: types.TracebackType | None) -> None:
        if not self.installed:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if isinstance(error, _Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # the tree is gone: now die of it
            os._exit(128 + signal.SIGTERM)  # seatbelt; the signal ends the process first


class Supervisor:
    """Watches one launched child against one budget."""

    def __init__(self, nodeid: str, budget: Budget, settings: Settings, mode: str) -> None:
        self.nodeid = nodeid
        self.budget = budget
        self.settings = settings
        self.mode = mode

    def run(self, launch: Callable[[], Launched]) -> RunResult:
        with TerminateInOrder():
            return self._run(launch)

    def _run(self, launch: Callable[[], Launched]) -> RunResult:
        own_children_before = set(child_pids(os.getpid()))
        # Orphans of a killed child come to us, not to init, so they can be reaped.
        linux.set_child_subreaper(True)
        try:
            child = launch()
            try:
                return self._watch(child)
            finally:
                child.close()
        finally:
            # Still a subreaper while reaping: children of a killed orphan come here too,
            # never to init, where nothing would ever end them.
            _reap_orphans(own_children_before)
            linux.set_child_subreaper(False)

    def _watch(self, child: Launched) -> RunResult:
        tree = ProcessTree(child.pid)
        try:
            return self._watch_tree(child, tree)
        finally:
            tree.close()

    def _watch_tree(self, child: Launched, tree: ProcessTree) -> RunResult:
        started_at = time.time()
        start = time.monotonic()
        reader = ChannelReader(child.channel_fd)
        gpu_probe = gpu.probe_for(child.pid)
        gpu_measured = isinstance(gpu_probe, gpu.NvmlProbe)
        sample = TreeSample()
        # The child's own figure arrives with its hello; until then ours is the best guess.
        progress = _Progress(start_rss=linux.rss_bytes())
        peaks = _Peaks()
        violation: Violation | None = None
        exit_info: ExitInfo | None = None
        waitables = [fd for fd in (child.channel_fd, child.wait_fd()) if fd is not None]
        sampled_at = heard_at = -math.inf
        try:
            while exit_info is None:
                # Each wake-up costs the parent about 0.2 ms of CPU, and a short test sends eight
                # messages: after one wake for the channel, the next waits an interval (the
                # 1 MiB pipe holds what the child writes meanwhile); the child's exit wakes at once.
                quiet_s = time.monotonic() - heard_at
                listen = not reader.closed and quiet_s >= self.settings.interval_s
                ready, _, _ = select.select(
                    waitables if listen else waitables[1:], [], [],
                    self._next_sleep(sample, progress, time.monotonic() - start, gpu_measured))
                if child.channel_fd in ready:
                    heard_at = time.monotonic()
                reader.drain()
                progress.update(reader.messages)
                now = time.monotonic()
                # A message wakes the loop several times per test (hello, phases, reports): a
                # sample taken less than one interval ago is still fresh; skipping it saves the
                # parent about 0.4 ms of CPU per short test (benchmarks/bench_overhead.py).
                if not ready or now - sampled_at >= self.settings.interval_s:
                    tree.sample(sample)
                    peaks.take(sample, gpu_probe)
                    sampled_at = now
                elapsed = now - start
                violation = self._check(peaks, sample, progress, elapsed, child, tree)
                if violation is not None:
                    exit_info, signals = self._stop(child, tree, reader)
                    violation = dataclasses.replace(violation, signals_sent=signals)
                    break
                exit_info = child.poll_exit(block=False)
        except BaseException:
            # Ctrl-C, or a bug of ours: the tree must not outlive the parent's attention.
            self._stop(child, tree, reader, grace_s=min(self.settings.grace_s, 0.5))
            raise
        reader.drain()
        progress.update(reader.messages)
        start_rss, phase = progress.start_rss, progress.phase
        wall_s = time.monotonic() - start
        survivors = tree.kill_survivors()
        usage = self._usage(child, started_at, wall_s, start_rss, peaks, exit_info, gpu_probe)
        usage = dataclasses.replace(
            usage, gpu_clamps=tuple(taichi_support.clamp_notes(reader.messages)))
        if violation is None:
            violation = self._after_the_fact(usage, exit_info, child, phase)
        if violation is None:
            violation = self._taichi_device_oom(reader.messages, usage, child)
        result = RunResult(reader.messages, usage, violation, None, reader.problem, phase,
                           survivors)
        if violation is None:
            result.crash = self._crash(result, exit_info, child, phase)
        return result

    def _next_sleep(self, sample: TreeSample, progress: _Progress, elapsed: float,
                    gpu_measured: bool) -> float:
        """A quarter of the shortest time in which any limit could be reached, within bounds."""
        budget = self.budget
        headroom_s = _MAX_SLEEP_S * 4
        if budget.mem_bytes is not None:
            own_bytes = sample.rss_bytes - progress.start_rss
            headroom_s = min(headroom_s,
                             (budget.mem_bytes - own_bytes) / _WORST_RSS_GROWTH_BYTES_PER_S)
        if budget.cpu_s is not None:
            headroom_s = min(headroom_s, (budget.cpu_s - sample.cpu_s) / _CPU_COUNT)
        # No safe growth rate to assume for GPU memory. Without NVML nothing is sampled for it
        # (the ti.init cap still holds), so gpu_gb alone must not make the loop spin: at 0.01 s
        # that cost 2.8 % of a core per test on CPU-only CI (benchmarks/bench_supervisor_cost.py).
        if budget.gpu_gb is not None and gpu_measured:
            headroom_s = 0.0
        sleep_s = min(_MAX_SLEEP_S, max(self.settings.interval_s, headroom_s / 4))
        if budget.wall_s is not None:  # the wall-clock deadline is known exactly
            sleep_s = min(sleep_s, max(0.0, budget.wall_s - elapsed) + 0.001)
        return sleep_s

    def _check(self, peaks: _Peaks, sample: TreeSample, progress: _Progress, elapsed: float,
               child: Launched, tree: ProcessTree) -> Violation | None:
        budget = self.budget
        phase = progress.phase
        own_bytes = sample.rss_bytes - progress.start_rss
        if budget.mem_bytes is not None and own_bytes > budget.mem_bytes:
            return self._violate("mem_mb", budget.mem_mb, own_bytes / _MB, child, tree, phase,
                                 "supervisor (RSS of the process tree, sampled)")
        if budget.cpu_s is not None and sample.cpu_s > budget.cpu_s:
            detected = "supervisor (CPU time of the process tree, sampled)"
            if os.fstat(child.stack_fd).st_size:  # faulthandler already answered SIGXCPU
                detected = "kernel (RLIMIT_CPU sent SIGXCPU) and supervisor"
            return self._violate("cpu_s", budget.cpu_s, sample.cpu_s, child, tree, phase, detected)
        if budget.wall_s is not None and elapsed > budget.wall_s:
            return self._violate("wall_s", budget.wall_s, elapsed, child, tree, phase,
                                 "supervisor (wall clock)")
        if budget.gpu_bytes is not None and peaks.gpu_now is not None \
                and peaks.gpu_now > budget.gpu_bytes:
            return self._violate("gpu_gb", budget.gpu_gb, peaks.gpu_now / 1024**3, child, tree,
                                 phase, "supervisor (GPU memory of the process tree, NVML)")
        return None

    def _violate(self, resource_key: str, limit: float | None, measured: float,
                 child: Launched, tree: ProcessTree, phase: str, detected_by: str) -> Violation:
        tree.remember_tree()
        stack = _request_stack(child)
        return Violation(self.nodeid, resource_key, float(limit or 0), measured, detected_by,
                         phase, child.pid, time.time(), (), stack)

    def _stop(self, child: Launched, tree: ProcessTree, reader: ChannelReader,
              grace_s: float | None = None) -> tuple[ExitInfo, tuple[str, ...]]:
        """SIGTERM the tree, wait out the grace period, then SIGKILL whatever is left."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        tree.signal_tree(signal.SIGTERM)
        deadline = time.monotonic() + grace
        exit_info: ExitInfo | None = None
        while time.monotonic() < deadline:
            reader.drain()
            if exit_info is None:
                exit_info = child.poll_exit(block=False)
            # Done only when the whole tree is gone: a grandchild that ignores SIGTERM
            # outlives the child and gets SIGKILL below.
            if exit_info is not None and not tree.any_alive():
                return exit_info, ("SIGTERM",)
            time.sleep(min(0.01, grace))
        tree.kill_descendants()
        tree.kill_survivors()
        if exit_info is not None:
            return exit_info, ("SIGTERM", "SIGKILL")
        send_signal(child.pid, signal.SIGKILL)
        exit_info = child.poll_exit(block=True) or ExitInfo(Ending(None, signal.SIGKILL), 0, 0.0)
        return exit_info, ("SIGTERM", "SIGKILL")

    def _usage(self, child: Launched, started_at: float, wall_s: float, start_rss: int,
               peaks: _Peaks, exit_info: ExitInfo, gpu_probe: gpu.GpuProbe) -> Usage:
        return Usage(
            nodeid=self.nodeid,
            pid=child.pid,
            started_at=started_at,
            wall_s=wall_s,
            cpu_s=max(peaks.cpu_s, exit_info.cpu_s),
            start_rss_bytes=start_rss,
            peak_own_rss_bytes=max(0, peaks.rss_bytes - start_rss),
            # Until the own-memory measure of issue 10 lands, mem_mb's figure is the RSS growth.
            peak_own_memory_bytes=max(0, peaks.rss_bytes - start_rss),
            memory_method=RSS_GROWTH,
            peak_rss_bytes=peaks.rss_bytes,
            peak_vms_bytes=peaks.vms_bytes,
            kernel_maxrss_bytes=exit_info.maxrss_bytes,
            gpu_peak_bytes=peaks.gpu_bytes,
            gpu_note=gpu_probe.note,
            samples=peaks.samples,
            budget=self.budget,
            mode=self.mode,
            ending=exit_info.ending,
        )

    def _after_the_fact(self, usage: Usage, exit_info: ExitInfo, child: Launched,
                        phase: str) -> Violation | None:
        """The kernel's own accounting can show a peak that fell between two samples."""
        budget = self.budget
        ending = exit_info.ending
        if budget.cpu_s is not None and ending.signal_number in (signal.SIGXCPU, signal.SIGKILL) \
                and exit_info.cpu_s >= budget.cpu_s:
            return self._late("cpu_s", budget.cpu_s, exit_info.cpu_s, child, phase,
                              f"kernel (RLIMIT_CPU: {signal_name(ending.signal_number)})")
        if budget.mem_bytes is not None and usage.kernel_own_rss_bytes > budget.mem_bytes:
            return self._late("mem_mb", budget.mem_mb, usage.kernel_own_rss_bytes / _MB, child,
                              phase, "kernel (peak RSS from wait4, between two samples)")
        if budget.cpu_s is not None and exit_info.cpu_s > budget.cpu_s:
            return self._late("cpu_s", budget.cpu_s, exit_info.cpu_s, child, phase,
                              "kernel (CPU time from wait4, between two samples)")
        return None

    def _late(self, resource_key: str, limit: float | None, measured: float, child: Launched,
              phase: str, detected_by: str) -> Violation:
        return Violation(self.nodeid, resource_key, float(limit or 0), measured, detected_by,
                         phase, child.pid, time.time(), (), _read_stack(child.stack_fd))

    def _crash(self, result: RunResult, exit_info: ExitInfo, child: Launched,
               phase: str) -> Crash | None:
        ending = exit_info.ending
        finished = bool(result.of_kind("done") or result.of_kind("exit"))
        if ending.signal_number is None and ending.exit_code == EXIT_DONE and finished:
            return None
        if ending.signal_number is not None:
            reason = f"the test process was {ending.describe}"
            if ending.signal_number == signal.SIGKILL:
                reason += " from outside the plugin (the kernel's OOM killer does this)"
        elif result.of_kind("internal-error"):
            reason = "the plugin failed inside the test process: " \
                     + result.of_kind("internal-error")[-1]["text"]
        elif not finished and result.channel_problem is not None:
            # It did send, but what arrived was unusable: say that, not "it sent nothing".
            reason = (f"{result.channel_problem}; the test process {ending.describe} and its "
                      "own result is unknown")
        elif not finished:
            reason = (f"the test process {ending.describe} before it sent its reports "
                      "(os._exit, sys.exit from a thread, or a closed report channel)")
        else:
            reason = f"the test process {ending.describe}"
        return Crash(self.nodeid, reason, phase, _read_stack(child.stack_fd),
                     hint=taichi_support.init_crash_hint(result.messages))

    def _taichi_device_oom(self, messages: list[dict[str, Any]], usage: Usage,
                           child: Launched) -> Violation | None:
        """Taichi's own device out-of-memory error, under a gpu_gb cap, is that budget's."""
        found = taichi_support.device_oom(messages)
        if found is None or self.budget.gpu_gb is None:
            return None
        measured = (usage.gpu_peak_bytes or 0) / 1024**3
        return Violation(
            self.nodeid, "gpu_gb", self.budget.gpu_gb, measured,
            f"Taichi (device memory: {found.get('what')}; ti.init capped at "
            f"device_memory_GB<={self.budget.gpu_gb:g})",
            str(found.get("phase") or "call"), child.pid, time.time(), (), "",
            detail=str(found.get("line")),
        )


@dataclass
class _Peaks:
    rss_bytes: int = 0
    vms_bytes: int = 0
    cpu_s: float = 0.0
    gpu_bytes: int | None = None
    gpu_now: int | None = None
    samples: int = 0

    def take(self, sample: TreeSample, gpu_probe: gpu.GpuProbe) -> None:
        self.samples += 1
        if sample.processes == 0:
            return
        self.rss_bytes = max(self.rss_bytes, sample.rss_bytes)
        self.vms_bytes = max(self.vms_bytes, sample.vms_bytes)
        self.cpu_s = max(self.cpu_s, sample.cpu_s)
        self.gpu_now = gpu_probe.sample()
        if self.gpu_now is not None:
            self.gpu_bytes = max(self.gpu_bytes or 0, self.gpu_now)


@dataclass
class _Progress:
    """What the child has told so far: its starting RSS and the phase it is in."""

    start_rss: int
    phase: str = "setup"
    seen: int = 0

    def update(self, messages: list[dict[str, Any]]) -> None:
        for message in messages[self.seen:]:
            if message["t"] == "hello" and isinstance(message.get("rss"), int):
                self.start_rss = message["rss"]
            elif message["t"] == "phase" and isinstance(message.get("when"), str):
                self.phase = message["when"]
        self.seen = len(messages)


def _request_stack(child: Launched) -> str:
    # Only the stack of this moment: an earlier SIGXCPU dump would be read as part of it.
    os.ftruncate(child.stack_fd, 0)
    os.lseek(child.stack_fd, 0, os.SEEK_SET)  # the offset is shared with the child
    try:
        os.kill(child.pid, STACK_SIGNAL)
    except ProcessLookupError:
        return _read_stack(child.stack_fd)
    deadline = time.monotonic() + _STACK_WAIT_S
    size = -1
    unchanged_polls = 0
    while time.monotonic() < deadline:
        # faulthandler writes a dump in well under a millisecond, and the test keeps running
        # meanwhile: a test allocating 1 GB/s grew 20 MB past mem_mb during the 10 ms polls
        # used before (benchmarks/bench_latency.py). Done once the size held for 2 polls.
        time.sleep(_STACK_POLL_S)
        new_size = os.fstat(child.stack_fd).st_size
        unchanged_polls = unchanged_polls + 1 if new_size and new_size == size else 0
        if unchanged_polls >= 2:
            break
        size = new_size
    return _read_stack(child.stack_fd)


def _read_stack(stack_fd: int) -> str:
    size = os.fstat(stack_fd).st_size
    if not size:
        return ""
    return os.pread(stack_fd, min(size, 1 << 20), 0).decode("utf-8", "replace")


def _stack_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("pytest-taichi-limits-stack")
    import tempfile

    handle = tempfile.TemporaryFile()
    return os.dup(handle.fileno())


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _reap_orphans(before: set[int], rounds: int = 100) -> None:
    """Kill and reap processes that were re-parented to us while a test ran.

    Each round freezes every orphan's whole subtree before killing it (a stopped process cannot
    fork), and the next round finds whatever a dying orphan left behind: a fork storm ends.
    """
    for _ in range(rounds):
        orphans = set(child_pids(os.getpid())) - before
        if not orphans:
            return
        stop_then_kill([pid for orphan in orphans for pid in tree_pids(orphan)])
        for pid in orphans:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
