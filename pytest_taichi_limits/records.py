"""Records that the supervisor produces and the rendering layer reads: plain frozen data."""

from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from .budget import Budget

#: The arch of a supervised test that never called ti.init.
NO_TAICHI = "not initialised"

UNITS = {"cpu_s": "s", "wall_s": "s", "mem_mb": "MB", "gpu_gb": "GB"}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class Ending:
    """How the child process ended, from wait4."""

    exit_code: int | None  # set when it exited
    signal_number: int | None  # set when a signal killed it

    @classmethod
    def from_wait_status(cls, status: int) -> Ending:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.waitstatus_to_exitcode(status), None)

    @property
    def describe(self) -> str:
        if self.signal_number is not None:
            return f"killed by signal {self.signal_number} ({signal_name(self.signal_number)})"
        return f"exited with status {self.exit_code}"


@dataclass(frozen=True)
class Usage:
    """What one supervised test used. Memory in bytes, times in seconds."""

    nodeid: str
    pid: int
    started_at: float  # Unix time when the child was started
    wall_s: float
    cpu_s: float  # user + system of the whole tree (kernel's figure where the tree was reaped)
    start_rss_bytes: int  # what the child held when it started (inherited from the parent)
    peak_own_rss_bytes: int  # peak resident memory of the tree above start_rss_bytes
    peak_rss_bytes: int  # absolute peak resident memory of the tree
    peak_vms_bytes: int  # peak virtual memory of the tree
    kernel_maxrss_bytes: int  # ru_maxrss from wait4: the kernel's exact peak of one process
    gpu_peak_bytes: int | None  # None when not measured; gpu_note says why
    gpu_note: str
    samples: int
    budget: Budget
    mode: str  # "fork" or "spawn"
    ending: Ending | None = None
    worker_pid: int = 0  # the supervised child (or spawn-mode worker) that ran the test
    worker_test_number: int = 1  # 1 for its first test; more where a child runs several
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kernel_own_rss_bytes(self) -> int:
        return max(0, self.kernel_maxrss_bytes - self.start_rss_bytes)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["budget"] = self.budget.as_dict()
        data["ending"] = None if self.ending is None else self.ending.describe
        data["kernel_own_rss_bytes"] = self.kernel_own_rss_bytes
        return data


@dataclass(frozen=True)
class Violation:
    """A budget that a test went over, caught by the supervisor, the kernel, or Taichi."""

    nodeid: str
    resource: str  # budget key: cpu_s, mem_mb, wall_s, gpu_gb
    limit: float  # in the budget's unit
    measured: float  # in the budget's unit, when it was caught
    detected_by: str
    phase: str  # setup / call / teardown, as far as the child had told
    pid: int
    at: float  # Unix time
    signals_sent: tuple[str, ...]
    stack: str  # Python stacks of all threads at that moment ("" when none could be taken)
    detail: str = ""

    @property
    def unit(self) -> str:
        return UNITS[self.resource]

    @property
    def over_by(self) -> float:
        return self.measured - self.limit

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["signals_sent"] = list(self.signals_sent)
        data["unit"] = self.unit
        data["over_by"] = self.over_by
        return data


@dataclass(frozen=True)
class Crash:
    """A child that died on its own, or left without sending its reports."""

    nodeid: str
    reason: str
    phase: str
    stack: str  # what faulthandler wrote, if anything
    hint: str = ""  # what the user can do about it, where the plugin knows (a crash in ti.init)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
