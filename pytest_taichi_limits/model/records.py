"""Records: what the supervisor measured (Usage, Violation, Crash) and the one serialisable shape
of a supervised test's results (UsageRecord), used by every output.

A UsageRecord is built once, in the process that ran the test (an xdist worker, or the only
process), travels on the test's teardown report as `to_json()`, and is rebuilt with `from_json()`
where the results are written (the xdist controller). The JSON report, the baseline, the summary
and the suggestions all read that one shape.

Units: bytes and seconds in every field; where a person reads memory it is binary units (MiB =
2**20 bytes, GiB = 2**30 bytes), and the budget key `mem_mb` counts MiB, `gpu_gb` GiB.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.budget import BUDGET_KEYS, Budget
from ..ipc.protocol import Kind
from . import timeline as timelines

#: The arch of a supervised test that never called ti.init.
NO_TAICHI = "not initialised"


UNITS = {"cpu_s": "s", "wall_s": "s", "mem_mb": "MiB", "gpu_gb": "GiB"}

#: Every outcome a record can have: pytest's own words, and "interrupted" for a test that stopped
#: the session (pytest.exit, KeyboardInterrupt) before it finished: never "passed".
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "interrupted")


class RecordError(ValueError):
    """A record or violation in JSON that does not have the shape this version writes."""


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
    """What one supervised test used, as the supervisor measured it. Bytes and seconds.

    Frozen and complete when made: facts learnt later (the Taichi arch, why the session stopped)
    are added with dataclasses.replace, never by mutating a field.
    """

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
    #: The figure mem_mb is checked against: the peak of what the test made the machine hold,
    #: measured as memory_method says.
    peak_own_memory_bytes: int
    memory_method: str  # "smaps", "cgroup" or "rss" (measure/memory.py)
    ending: Ending | None = None
    worker_pid: int = 0  # the supervised child (or spawn-mode worker) that ran the test
    worker_test_number: int = 1  # 1 for its first test; more where a child runs several
    arch: str = NO_TAICHI  # Taichi arch of the child's last ti.init
    gpu_clamps: tuple[str, ...] = ()  # what the gpu_gb cap took from the test's ti.init calls
    interrupted: str = ""  # why the test stopped the session (pytest.exit, Ctrl-C); "" if not
    #: what admission reserved and how long the test waited for it (admission.Grant.facts);
    #: None when admission is off
    admission: Mapping[str, Any] | None = None
    timeline: Mapping[str, Any] | None = None  # timeline.Timeline.to_json(): for the reports
    shm_files_left: tuple[str, ...] = ()  # what the test created in /dev/shm and left there

    @property
    def kernel_own_rss_bytes(self) -> int:
        return max(0, self.kernel_maxrss_bytes - self.start_rss_bytes)

    @property
    def own_memory_bytes(self) -> int:
        """The test's own memory as every output shows it: the measured peak, or the kernel's
        exact peak growth where that is larger (a peak can fall between two samples)."""
        return max(self.peak_own_memory_bytes, self.kernel_own_rss_bytes)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (the --taichi-limits-log line, the logger's extra)."""
        data = dataclasses.asdict(self)
        data["budget"] = self.budget.as_dict()
        data["ending"] = None if self.ending is None else self.ending.describe
        data["gpu_clamps"] = list(self.gpu_clamps)
        data["shm_files_left"] = list(self.shm_files_left)
        data["kernel_own_rss_bytes"] = self.kernel_own_rss_bytes
        data["own_memory_bytes"] = self.own_memory_bytes
        del data["timeline"]  # for the JSON and HTML reports (on the record), never a log line
        return data

    as_dict = to_json  # the name of version 1 (README's hook example), kept for conftest code


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

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["signals_sent"] = list(self.signals_sent)
        data["unit"] = self.unit
        data["over_by"] = self.over_by
        return data

    as_dict = to_json

    @classmethod
    def from_json(cls, data: Any) -> Violation:
        """The inverse of to_json (the derived `unit` and `over_by` are recomputed)."""
        fields = _object(data, "violation")
        resource = _text(fields, "resource", "violation")
        if resource not in UNITS:
            raise RecordError(f"violation: resource {resource!r} is not one of {', '.join(UNITS)}")
        signals = fields.get("signals_sent")
        if not isinstance(signals, list) or not all(isinstance(s, str) for s in signals):
            raise RecordError("violation: signals_sent must be a list of signal names")
        return cls(
            nodeid=_text(fields, "nodeid", "violation"),
            resource=resource,
            limit=_number(fields, "limit", "violation"),
            measured=_number(fields, "measured", "violation"),
            detected_by=_text(fields, "detected_by", "violation"),
            phase=_text(fields, "phase", "violation"),
            pid=_integer(fields, "pid", "violation"),
            at=_number(fields, "at", "violation"),
            signals_sent=tuple(signals),
            stack=_text(fields, "stack", "violation"),
            detail=str(fields.get("detail", "")),
        )


@dataclass(frozen=True)
class Crash:
    """A child that died on its own, or left without sending its reports."""

    nodeid: str
    reason: str
    phase: str
    stack: str  # what faulthandler wrote, if anything
    hint: str = ""  # what the user can do about it, where the plugin knows (a crash in ti.init)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class UsageRecord:
    """What one supervised test used, and how it ended: the one shape every output reads.

    Bytes and seconds. `to_json()` gives plain JSON values (the JSON report's record, the value
    carried on the teardown report); `from_json()` rebuilds the record and refuses any other shape.
    """

    nodeid: str
    outcome: str  # one of OUTCOMES
    own_memory_bytes: int  # max(peak_own_memory_bytes, kernel_own_rss_bytes): compared, shown
    peak_own_memory_bytes: int  # the figure mem_mb was checked against during the run
    memory_method: str  # how peak_own_memory_bytes was measured: "smaps", "cgroup", "rss"
    peak_own_rss_bytes: int  # peak RSS of the process tree above its starting RSS (sampled)
    kernel_own_rss_bytes: int  # ru_maxrss of the child minus its starting RSS (exact)
    peak_rss_bytes: int  # absolute peak RSS of the tree
    start_rss_bytes: int
    peak_vms_bytes: int
    cpu_s: float
    wall_s: float
    gpu_peak_bytes: int | None  # None: not measured, gpu_note says why
    gpu_note: str
    gpu_clamps: tuple[str, ...]  # what the gpu_gb cap took from the test's ti.init calls
    budget: Mapping[str, float | None]  # budget key -> limit (None: off)
    pid: int
    started_at: float  # Unix time
    mode: str  # fork or spawn
    arch: str  # Taichi arch of the child's last ti.init, or "not initialised"
    violation: Violation | None
    regression: Mapping[str, Any] | None  # the baseline comparison that failed or warned
    worker_pid: int = 0  # the supervised child that ran the test (several tests may share one)
    worker_test_number: int = 1  # 1 for the first test that child ran, 2 for the next, ...
    admission: Mapping[str, Any] | None = None  # admission's reservation and wait, if it was on
    timeline: Mapping[str, Any] | None = None  # model/timeline.py: what the supervisor sampled
    shm_files_left: tuple[str, ...] = ()  # what the test created in /dev/shm and left there

    @property
    def measured(self) -> bool:
        """False for a test whose figures mean nothing: it never ran its body (skipped in setup)
        or it stopped the session before it finished."""
        return self.outcome not in ("skipped", "interrupted")

    @classmethod
    def from_usage(
        cls,
        usage: Usage,
        outcome: str,
        violation: Violation | None,
        regression: Mapping[str, Any] | None = None,
    ) -> UsageRecord:
        return cls(
            nodeid=usage.nodeid,
            outcome=outcome,
            own_memory_bytes=usage.own_memory_bytes,
            peak_own_memory_bytes=usage.peak_own_memory_bytes,
            memory_method=usage.memory_method,
            peak_own_rss_bytes=usage.peak_own_rss_bytes,
            kernel_own_rss_bytes=usage.kernel_own_rss_bytes,
            peak_rss_bytes=usage.peak_rss_bytes,
            start_rss_bytes=usage.start_rss_bytes,
            peak_vms_bytes=usage.peak_vms_bytes,
            cpu_s=usage.cpu_s,
            wall_s=usage.wall_s,
            gpu_peak_bytes=usage.gpu_peak_bytes,
            gpu_note=usage.gpu_note,
            gpu_clamps=usage.gpu_clamps,
            budget=usage.budget.as_dict(),
            pid=usage.pid,
            started_at=usage.started_at,
            mode=usage.mode,
            arch=usage.arch,
            violation=violation,
            regression=regression,
            worker_pid=usage.worker_pid or usage.pid,
            worker_test_number=usage.worker_test_number,
            admission=None if usage.admission is None else dict(usage.admission),
            timeline=None if usage.timeline is None else dict(usage.timeline),
            shm_files_left=usage.shm_files_left,
        )

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["gpu_clamps"] = list(self.gpu_clamps)
        data["budget"] = dict(self.budget)
        data["violation"] = None if self.violation is None else self.violation.to_json()
        data["regression"] = None if self.regression is None else dict(self.regression)
        data["admission"] = None if self.admission is None else dict(self.admission)
        data["timeline"] = None if self.timeline is None else dict(self.timeline)
        data["shm_files_left"] = list(self.shm_files_left)
        return data

    @classmethod
    def from_json(cls, data: Any) -> UsageRecord:
        """The inverse of to_json. Raises RecordError naming the first field that is wrong."""
        fields = _object(data, "record")
        where = f"record of {fields.get('nodeid')!r}"
        outcome = _text(fields, "outcome", where)
        if outcome not in OUTCOMES:
            raise RecordError(f"{where}: outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        budget = _object(_field(fields, "budget", where), f"{where}: budget")
        if set(budget) != set(BUDGET_KEYS) or not all(
            value is None or _is_number(value) for value in budget.values()
        ):
            raise RecordError(
                f"{where}: budget must map {', '.join(BUDGET_KEYS)} to numbers or null"
            )
        clamps = _field(fields, "gpu_clamps", where)
        if not isinstance(clamps, list) or not all(isinstance(note, str) for note in clamps):
            raise RecordError(f"{where}: gpu_clamps must be a list of strings")
        gpu = fields.get("gpu_peak_bytes")
        violation = fields.get("violation")
        regression = fields.get("regression")
        if regression is not None and not isinstance(regression, dict):
            raise RecordError(f"{where}: regression must be an object or null")
        return cls(
            nodeid=_text(fields, "nodeid", where),
            outcome=outcome,
            own_memory_bytes=_integer(fields, "own_memory_bytes", where),
            peak_own_memory_bytes=_integer(fields, "peak_own_memory_bytes", where),
            memory_method=_text(fields, "memory_method", where),
            peak_own_rss_bytes=_integer(fields, "peak_own_rss_bytes", where),
            kernel_own_rss_bytes=_integer(fields, "kernel_own_rss_bytes", where),
            peak_rss_bytes=_integer(fields, "peak_rss_bytes", where),
            start_rss_bytes=_integer(fields, "start_rss_bytes", where),
            peak_vms_bytes=_integer(fields, "peak_vms_bytes", where),
            cpu_s=_number(fields, "cpu_s", where),
            wall_s=_number(fields, "wall_s", where),
            gpu_peak_bytes=None if gpu is None else _integer(fields, "gpu_peak_bytes", where),
            gpu_note=_text(fields, "gpu_note", where),
            gpu_clamps=tuple(clamps),
            budget={key: None if value is None else float(value) for key, value in budget.items()},
            pid=_integer(fields, "pid", where),
            started_at=_number(fields, "started_at", where),
            mode=_text(fields, "mode", where),
            arch=_text(fields, "arch", where),
            violation=None if violation is None else Violation.from_json(violation),
            regression=None if regression is None else dict(regression),
            worker_pid=_integer(fields, "worker_pid", where),
            worker_test_number=_integer(fields, "worker_test_number", where),
            admission=_optional_object(fields, "admission", where),
            timeline=_timeline(fields, where),
            shm_files_left=tuple(str(path) for path in fields.get("shm_files_left") or ()),
        )


# -- checking JSON values -------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # bool is an int to Python, never a figure; NaN and infinity are no measurement either.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _field(fields: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in fields:
        raise RecordError(f"{where}: {name} is missing")
    return fields[name]


def _number(fields: Mapping[str, Any], name: str, where: str) -> float:
    value = _field(fields, name, where)
    if not _is_number(value):
        raise RecordError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _integer(fields: Mapping[str, Any], name: str, where: str) -> int:
    value = _field(fields, name, where)
    if not _is_number(value) or value != int(value):
        raise RecordError(f"{where}: {name} must be a whole number, got {value!r}")
    return int(value)


def _text(fields: Mapping[str, Any], name: str, where: str) -> str:
    value = _field(fields, name, where)
    if not isinstance(value, str):
        raise RecordError(f"{where}: {name} must be a string, got {value!r}")
    return value


def _timeline(fields: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    """The optional timeline (absent in a report written without one)."""
    data = _optional_object(fields, "timeline", where)
    if data is not None:
        try:
            timelines.check(data)
        except timelines.TimelineError as error:
            raise RecordError(f"{where}: {error}") from None
    return data


def _optional_object(fields: Mapping[str, Any], name: str, where: str) -> dict[str, Any] | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, dict):
        raise RecordError(f"{where}: {name} must be an object or null")
    return value


@dataclass
class RunResult:
    """One test's end: what the child said, what it used, and what that means."""

    messages: list[dict[str, Any]]
    usage: Usage
    violation: Violation | None = None
    crash: Crash | None = None
    channel_problem: str | None = None
    phase: str = "setup"

    def of_kind(self, kind: Kind) -> list[dict[str, Any]]:
        return [message for message in self.messages if message["t"] == kind.value]
