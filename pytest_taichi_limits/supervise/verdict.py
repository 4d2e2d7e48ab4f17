"""What a test's figures and messages mean: a Violation, a Crash, or nothing to say.

The supervisor measures; this module decides, from what it measured and what the child told,
including the Taichi facts: a clamp of ti.init's device memory, Taichi's own device
out-of-memory error (under a gpu_gb cap, that budget's violation), and a crash inside ti.init
(with a hint that names the arch).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Protocol

from ..config.budget import Budget
from ..config.units import MIB
from ..ipc.protocol import (
    CLAMP_NOTE,
    EXIT_DONE,
    ChildEnded,
    Exit,
    InternalError,
    Message,
    Note,
    Refused,
    TaichiDeviceOom,
    TaichiInit,
    TaichiInitDone,
)
from ..model.records import Crash, Ending, Usage, Violation, signal_name


@dataclass(frozen=True)
class ExitInfo:
    """How a child ended, from wait4: its exact peak RSS and CPU time over its whole life."""

    ending: Ending
    maxrss_bytes: int
    cpu_s: float

    @classmethod
    def of(cls, ended: ChildEnded) -> ExitInfo:
        """From the exit status line of the keeper or the zygote (ipc/protocol.py)."""
        return cls(Ending.from_wait_status(ended.wait_status), ended.maxrss_bytes, ended.cpu_s)


class _Child(Protocol):
    stack_fd: int

    def crash_cause(self) -> str | None: ...


def read_stack(stack_fd: int) -> str:
    size = os.fstat(stack_fd).st_size
    if not size:
        return ""
    return os.pread(stack_fd, min(size, 1 << 20), 0).decode("utf-8", "replace")


def after_the_fact(
    nodeid: str,
    budget: Budget,
    usage: Usage,
    exit_info: ExitInfo | None,
    pid: int,
    phase: str,
    stack_fd: int,
    cgroup_oom_kills: int = 0,
    memory_described: str = "RSS of the process tree",
    round_cpu_s: float | None = None,
) -> Violation | None:
    """The kernel's own accounting can show a peak that fell between two samples; and the test's
    final memory figure (`usage.own_memory_bytes`, read once it was over) is judged here.
    `round_cpu_s`: for a test run in rounds (leak hunting), the CPU time of the round it ended
    in, which cpu_s holds against (the test's own otherwise)."""
    cpu_s = usage.cpu_s if round_cpu_s is None else round_cpu_s

    def late(key: str, limit: float | None, measured: float, detected_by: str) -> Violation:
        return Violation(
            nodeid,
            key,
            float(limit or 0),
            measured,
            detected_by,
            phase,
            pid,
            time.time(),
            (),
            read_stack(stack_fd),
        )

    ending = exit_info.ending if exit_info is not None else Ending(None, None)
    if budget.mem_bytes is not None and cgroup_oom_kills:
        return late(
            "mem_mb",
            budget.mem_mb,
            usage.own_memory_bytes / MIB,
            "kernel (the test's memory cgroup reached its cap and the OOM killer ran)",
        )
    if (
        budget.cpu_s is not None
        and exit_info is not None
        and ending.signal_number in (signal.SIGXCPU, signal.SIGKILL)
        and cpu_s >= budget.cpu_s
    ):
        return late(
            "cpu_s",
            budget.cpu_s,
            cpu_s,
            f"kernel (RLIMIT_CPU: {signal_name(ending.signal_number or 0)})",
        )
    if budget.mem_bytes is not None and usage.own_memory_bytes > budget.mem_bytes:
        # The one figure every report shows: where the kernel's peak RSS of the test process
        # made it, the kernel caught what fell between two samples.
        by_kernel = usage.own_memory_bytes == usage.kernel_own_rss_bytes
        return late(
            "mem_mb",
            budget.mem_mb,
            usage.own_memory_bytes / MIB,
            "kernel (peak RSS of the test process, between two samples)"
            if by_kernel
            else f"supervisor ({memory_described}, at the test's end)",
        )
    if budget.cpu_s is not None and cpu_s > budget.cpu_s:
        return late(
            "cpu_s",
            budget.cpu_s,
            cpu_s,
            "kernel (CPU time of the test's processes, between two samples)",
        )
    return None


def device_oom(
    nodeid: str, budget: Budget, usage: Usage, messages: list[Message], pid: int
) -> Violation | None:
    """Taichi's own device out-of-memory error, under a gpu_gb cap, is that budget's."""
    found = next((m for m in messages if isinstance(m, TaichiDeviceOom)), None)
    if found is None or budget.gpu_gb is None:
        return None
    measured = (usage.gpu_peak_bytes or 0) / 1024**3
    return Violation(
        nodeid,
        "gpu_gb",
        budget.gpu_gb,
        measured,
        f"Taichi (device memory: {found.what}; ti.init capped at "
        f"device_memory_GB<={budget.gpu_gb:g})",
        found.phase or "call",
        pid,
        time.time(),
        (),
        "",
        detail=found.line,
    )


def crash(
    nodeid: str,
    exit_info: ExitInfo | None,
    messages: list[Message],
    phase: str,
    channel_problem: str | None,
    child: _Child,
) -> Crash | None:
    """Why a test that did not finish ended (None: it ended as the protocol says)."""
    ending = exit_info.ending if exit_info is not None else Ending(None, None)
    exited = any(isinstance(message, Exit) for message in messages)
    if exited and ending.signal_number is None and ending.exit_code == EXIT_DONE:
        return None
    cause = child.crash_cause()
    internal = [m for m in messages if isinstance(m, InternalError)]
    refused = [m for m in messages if isinstance(m, Refused)]
    if refused:
        reason = refused[-1].text
    elif cause is not None:
        reason = cause
    elif ending.signal_number is not None:
        reason = f"the test process was {ending.describe}"
        if ending.signal_number == signal.SIGKILL:
            reason += " from outside the plugin (the kernel's OOM killer does this)"
    elif internal:
        reason = "the plugin failed inside the test process: " + internal[-1].text
    elif channel_problem is not None:
        # It did send, but what arrived was unusable: say that, not "it sent nothing".
        reason = (
            f"{channel_problem}; the test process {ending.describe} and its own result is unknown"
        )
    else:
        reason = (
            f"the test process {ending.describe} before it sent its reports "
            "(os._exit, sys.exit from a thread, or a closed report channel)"
        )
    return Crash(nodeid, reason, phase, read_stack(child.stack_fd), hint=init_crash_hint(messages))


def clamp_notes(messages: list[Message]) -> list[str]:
    """Distinct clamp notes, in the order the child sent them."""
    notes: list[str] = []
    for message in messages:
        if isinstance(message, Note) and message.key == CLAMP_NOTE and message.text not in notes:
            notes.append(message.text)
    return notes


#: Taichi's GPU backends: asked for one of these and given a CPU arch, a test ran elsewhere.
GPU_ARCHS = frozenset(
    {"gpu", "cuda", "vulkan", "opengl", "gles", "metal", "amdgpu", "dx11", "dx12"}
)


def arch_fallback(messages: list[Message]) -> str:
    """What the test asked Taichi for and did not get, where a GPU arch fell back to the CPU
    (Taichi only warns: a test written for CUDA then passes on x64, its GPU budget unused);
    "" otherwise."""
    asked: TaichiInit | None = None
    for message in messages:
        if isinstance(message, TaichiInit):
            asked = message
        elif isinstance(message, TaichiInitDone) and asked is not None:
            if asked.arch in GPU_ARCHS and message.arch not in (None, *GPU_ARCHS):
                where = "TI_ARCH" if asked.arch_from == "TI_ARCH" else "arch"
                return (
                    f"not measured: the test asked for {where}={asked.arch} and Taichi ran it "
                    f"on {message.arch} (no usable {asked.arch} backend here)"
                )
            asked = None
    return ""


def init_crash_hint(messages: list[Message]) -> str:
    """A hint when the child died inside ti.init (a backend probe that crashed), else ""."""
    started: TaichiInit | None = None
    for message in messages:
        if isinstance(message, TaichiInit):
            started = message
        elif isinstance(message, TaichiInitDone):
            started = None
    if started is None:
        return ""
    arch, source = started.arch, started.arch_from
    where = f"TI_ARCH={arch}" if source == "TI_ARCH" else f"arch={arch} ({source})"
    return (
        f"it crashed inside ti.init with {where}, while Taichi set up that backend. "
        "Use a backend that works on this machine: set TI_ARCH=x64 in the environment "
        "(it overrides arch= in every ti.init; TI_ARCH=cpu is not a valid name), or pass "
        "arch=ti.cpu / --taichi-limits-arch=cpu"
    )
