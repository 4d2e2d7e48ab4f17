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
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..config.budget import BUDGET_KEYS, Budget
from ..config.tolerance import KINDS
from ..config.units import GIB, MIB
from ..ipc.protocol import Message
from . import timeline as timelines
from .leaks import LeakRecordError, Leaks

#: The arch of a supervised test that never called ti.init.
NO_TAICHI = "not initialised"


UNITS = {"cpu_s": "s", "wall_s": "s", "mem_mb": "MiB", "gpu_gb": "GiB", "leak_mb": "MiB/round"}

#: How a record's memory figure was measured (`memory_method`), docs/memory.md: the worker's
#: memory cgroup, /proc/<pid>/smaps_rollup, or (neither readable) the tree's RSS growth.
MEMORY_METHODS = ("cgroup-v2", "cgroup-v1", "smaps", "rss", "not measured")

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
        if self.exit_code is None:  # a spawn-mode zygote that stopped answering never said
            return UNKNOWN_ENDING
        return f"exited with status {self.exit_code}"

    @classmethod
    def from_text(cls, text: str) -> Ending:
        """The inverse of `describe` (a record's JSON carries the text). RecordError else."""
        if text == UNKNOWN_ENDING:
            return cls(None, None)
        killed = _KILLED.fullmatch(text)
        if killed is not None:
            return cls(None, int(killed.group(1)))
        exited = _EXITED.fullmatch(text)
        if exited is not None:
            return cls(int(exited.group(1)), None)
        raise RecordError(f"ending {text!r} is neither 'exited with status N' nor 'killed by ...'")


#: How a process ended that was seen to end by no one who could say how.
UNKNOWN_ENDING = "ended, and its exit status is unknown (no process that saw it end said how)"
_KILLED = re.compile(r"killed by signal (\d+) \(.*\)")
_EXITED = re.compile(r"exited with status (-?\d+)")


@dataclass(frozen=True)
class Admitted:
    """What admission (--taichi-limits-admit) reserved for a test before it started, and how
    long the test waited for it."""

    wait_s: float
    mem_bytes: int  # reserved for the test
    gpu_bytes: int
    source: str  # where the figure came from: "its budget", "baseline peak plus tolerance..."
    device: int | None  # the GPU it was pointed at (NVML index), if any
    reserved_mem_bytes: int  # held on the machine right after its admission (all sessions)
    reserved_gpu_bytes: int  # held on its device right after its admission
    capacity_mem_bytes: int  # the memory capacity it was admitted against

    def to_json(self) -> dict[str, Any]:
        """The record's and the log line's `admission` object (names prefixed, as in
        version 2)."""
        return {f"admission_{name}": getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Admitted:
        fields = _object(data, f"{where}: admission")
        where = f"{where}: admission"
        device = fields.get("admission_device")
        if device is not None and (not isinstance(device, int) or isinstance(device, bool)):
            raise RecordError(f"{where}: admission_device must be a whole number or null")
        return cls(
            wait_s=_number(fields, "admission_wait_s", where),
            mem_bytes=_integer(fields, "admission_mem_bytes", where),
            gpu_bytes=_integer(fields, "admission_gpu_bytes", where),
            source=_text(fields, "admission_source", where),
            device=device,
            reserved_mem_bytes=_integer(fields, "admission_reserved_mem_bytes", where),
            reserved_gpu_bytes=_integer(fields, "admission_reserved_gpu_bytes", where),
            capacity_mem_bytes=_integer(fields, "admission_capacity_mem_bytes", where),
        )


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
    #: The figure mem_mb is checked against and every report shows: the peak of what the test
    #: made the machine hold, measured as memory_method says (docs/memory.md).
    peak_own_memory_bytes: int
    memory_method: str  # one of MEMORY_METHODS
    #: why this method where it is not a cgroup, or what it could not attribute ("": nothing)
    memory_note: str = ""
    #: file pages charged to the test's cgroup at its end: reported apart, never in the figure
    #: (None: not a cgroup method)
    page_cache_bytes: int | None = None
    ending: Ending | None = None
    worker_pid: int = 0  # the supervised child (or spawn-mode worker) that ran the test
    worker_test_number: int = 1  # 1 for its first test; more where a child runs several
    arch: str = NO_TAICHI  # Taichi arch of the child's last ti.init
    gpu_clamps: tuple[str, ...] = ()  # what the gpu_gb cap took from the test's ti.init calls
    interrupted: str = ""  # why the test stopped the session (pytest.exit, Ctrl-C); "" if not
    #: what admission reserved and how long the test waited for it; None when admission is off
    admission: Admitted | None = None
    timeline: Mapping[str, Any] | None = None  # timeline.Timeline.to_json(): for the reports
    shm_files_left: tuple[str, ...] = ()  # what the test made in /dev/shm and left there
    #: --taichi-limits-clean-shm: "path (why)" for each new /dev/shm entry that was kept
    shm_not_removed: tuple[str, ...] = ()
    leaks: Leaks | None = None  # leak hunting's rounds and verdict (model/leaks.py); None: off

    @property
    def kernel_own_rss_bytes(self) -> int:
        return max(0, self.kernel_maxrss_bytes - self.start_rss_bytes)

    @property
    def own_memory_bytes(self) -> int:
        """The test's own memory as every output shows it: `peak_own_memory_bytes`, one figure
        (the supervisor folds the kernel's exact peak into it where the method allows)."""
        return self.peak_own_memory_bytes

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (the --taichi-limits-log line, the logger's extra)."""
        data = dataclasses.asdict(self)
        data["budget"] = self.budget.as_dict()
        data["ending"] = None if self.ending is None else self.ending.describe
        data["gpu_clamps"] = list(self.gpu_clamps)
        data["shm_files_left"] = list(self.shm_files_left)
        data["shm_not_removed"] = list(self.shm_not_removed)
        data["kernel_own_rss_bytes"] = self.kernel_own_rss_bytes
        data["own_memory_bytes"] = self.own_memory_bytes
        data["admission"] = None if self.admission is None else self.admission.to_json()
        data["leaks"] = None if self.leaks is None else self.leaks.to_json()
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


#: Compared resources: tolerance key -> (baseline field, kind, words a person reads).
RESOURCES: dict[str, tuple[str, str, str]] = {
    "mem": ("own_memory_bytes", KINDS["mem"], "own memory"),
    "cpu": ("cpu_s", KINDS["cpu"], "CPU time"),
    "wall": ("wall_s", KINDS["wall"], "wall time"),
    "gpu": ("gpu_bytes", KINDS["gpu"], "GPU memory"),
    "leak": ("leak_bytes_per_round", KINDS["leak"], "own memory growth per round"),
}


#: Resources a machine's speed changes (tolerance keys): compared scaled by the calibration.
TIMED = ("cpu", "wall")
#: Within this share of each other, two calibrations say "about as fast".
SAME_SPEED = 0.1


@dataclass(frozen=True)
class Calibration:
    """What the calibration loop (measure/calibration.py) cost in one run: CPU seconds (how
    much work a CPU second buys) and wall seconds (how much CPU the run could get)."""

    cpu_s: float
    wall_s: float

    def ratio(self, resource: str, baseline: Calibration) -> float:
        """How much slower this run is than `baseline` for a TIMED resource: the factor a
        baseline's figure is multiplied by before it is compared (2.0: twice as slow now)."""
        if resource == "cpu":
            return self.cpu_s / baseline.cpu_s
        return self.wall_s / baseline.wall_s

    @staticmethod
    def combined(first: Calibration, second: Calibration | None) -> Calibration:
        """A run's figure from its start and end calibrations: their mean."""
        if second is None:
            return first
        return Calibration((first.cpu_s + second.cpu_s) / 2, (first.wall_s + second.wall_s) / 2)

    def to_json(self) -> dict[str, float]:
        return {"cpu_s": self.cpu_s, "wall_s": self.wall_s}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Calibration:
        fields = _object(data, where)
        figures = (_number(fields, "cpu_s", where), _number(fields, "wall_s", where))
        if min(figures) <= 0:
            raise RecordError(f"{where}: cpu_s and wall_s must be positive")
        return cls(*figures)


@dataclass(frozen=True)
class Growth:
    """One resource of one test, compared with the largest value the baseline saw.

    `scale`: how much slower the machine was than when the baseline was saved, for CPU and
    wall time (the ratio of the two runs' calibrations; 1.0 for memory, or where a run was not
    calibrated). The baseline's figures are compared multiplied by it: `allowed` is already
    scaled, `before` and `before_min` are the figures as the baseline stores them."""

    resource: str  # tolerance key
    before: float  # the baseline's max
    before_min: float  # the baseline's min (== before after one run)
    runs: int  # how many runs the baseline's range spans
    after: float
    allowed: float  # the largest `after` within tolerance
    tolerance: str  # e.g. "10%+16MiB"
    scale: float = 1.0

    @property
    def kind(self) -> str:
        return RESOURCES[self.resource][1]

    @property
    def words(self) -> str:
        """What a person calls the resource: "own memory", "CPU time", ..."""
        return RESOURCES[self.resource][2]

    @property
    def exceeded(self) -> bool:
        return self.after > self.allowed

    @property
    def before_now(self) -> float:
        """The baseline's max at this run's speed."""
        return self.before * self.scale

    @property
    def growth(self) -> float:
        """Above the baseline's max (at this run's speed): a figure inside the range seen
        before did not grow."""
        return self.after - self.before_now

    @property
    def growth_percent(self) -> float | None:
        return None if self.before_now <= 0 else 100.0 * self.growth / self.before_now

    def to_json(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "before": self.before,
            "before_min": self.before_min,
            "runs": self.runs,
            "after": self.after,
            "growth": self.growth,
            "growth_percent": self.growth_percent,
            "allowed": self.allowed,
            "tolerance": self.tolerance,
            "exceeded": self.exceeded,
            "unit": "B" if self.kind == "bytes" else "s",
            "scale": self.scale,
        }

    @classmethod
    def from_json(cls, data: Any) -> Growth:
        """The inverse of to_json (the derived fields are recomputed). RecordError else."""
        fields = _object(data, "growth")
        resource = _text(fields, "resource", "growth")
        if resource not in RESOURCES:
            raise RecordError(f"growth: resource {resource!r} is not one of {', '.join(RESOURCES)}")
        return cls(
            resource,
            _number(fields, "before", "growth"),
            _number(fields, "before_min", "growth"),
            _integer(fields, "runs", "growth"),
            _number(fields, "after", "growth"),
            _number(fields, "allowed", "growth"),
            _text(fields, "tolerance", "growth"),
            _number(fields, "scale", "growth") if "scale" in fields else 1.0,
        )


@dataclass(frozen=True)
class Regression:
    """A test that grew beyond the baseline's tolerance: every compared resource, and the text
    it failed (or warned) with."""

    warn_only: bool
    text: str
    growths: tuple[Growth, ...]  # every compared resource, exceeded or not

    @property
    def exceeded(self) -> list[Growth]:
        """The growths beyond tolerance, by resource: the rows of the regression views."""
        return sorted((g for g in self.growths if g.exceeded), key=lambda g: g.resource)

    def to_json(self) -> dict[str, Any]:
        return {
            "warn_only": self.warn_only,
            "text": self.text,
            "growths": [growth.to_json() for growth in self.growths],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "regression") -> Regression:
        fields = _object(data, where)
        warn_only = _field(fields, "warn_only", where)
        growths = _field(fields, "growths", where)
        if not isinstance(warn_only, bool) or not isinstance(growths, list):
            raise RecordError(f"{where}: warn_only must be true or false, growths a list")
        return cls(
            warn_only, _text(fields, "text", where), tuple(Growth.from_json(g) for g in growths)
        )


#: The unit of each budget key, in bytes or seconds (budget_use compares a figure with it).
_BUDGET_SCALE = {"mem_mb": MIB, "cpu_s": 1.0, "wall_s": 1.0, "gpu_gb": GIB}


@dataclass(frozen=True)
class UsageRecord:
    """What one supervised test used, and how it ended: the one shape every output reads.

    Bytes and seconds. `to_json()` gives plain JSON values (the JSON report's record, the value
    carried on the teardown report); `from_json()` rebuilds the record and refuses any other shape.
    """

    nodeid: str
    outcome: str  # one of OUTCOMES
    #: the test's memory figure: what mem_mb was checked against, what every report shows
    #: and what a baseline compares (the same value as peak_own_memory_bytes: both names are
    #: in the JSON report since version 2)
    own_memory_bytes: int
    peak_own_memory_bytes: int
    memory_method: str  # how it was measured: one of MEMORY_METHODS
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
    budget: Budget  # the limits in force (None: off)
    pid: int  # 0: the test never started (refused)
    started_at: float  # Unix time
    mode: str  # fork, reimport or spawn
    arch: str  # Taichi arch of the child's last ti.init, or "not initialised"
    violation: Violation | None
    regression: Regression | None  # the baseline comparison that failed or warned
    worker_pid: int = 0  # the supervised child that ran the test (several tests may share one)
    worker_test_number: int = 1  # 1 for the first test that child ran, 2 for the next, ...
    admission: Admitted | None = None  # admission's reservation and wait, if it was on
    timeline: Mapping[str, Any] | None = None  # model/timeline.py: what the supervisor sampled
    shm_files_left: tuple[str, ...] = ()  # what the test made in /dev/shm and left there
    memory_note: str = ""  # why this memory method, or what it could not attribute
    page_cache_bytes: int | None = None  # cgroup methods: page cache, never charged
    shm_not_removed: tuple[str, ...] = ()  # --taichi-limits-clean-shm: "path (why)" kept
    ending: Ending | None = None  # how the test's process ended, where it ended with the test
    #: Why a failed test failed, in one line: the assertion's first line, the crash, the budget
    #: it went over, why it could not start. "" for a test that did not fail.
    reason: str = ""
    started: bool = True  # False: refused before it started (admission, start mode)
    leaks: Leaks | None = None  # leak hunting's rounds and verdict (version 4); None: off

    @property
    def measured(self) -> bool:
        """False for a test whose figures mean nothing: it never started, never ran its body
        (skipped in setup) or stopped the session before it finished."""
        return self.started and self.outcome not in ("skipped", "interrupted")

    @property
    def comparable(self) -> bool:
        """Whether a baseline comparison compares this test: its body ran and was not skipped
        (an xfail counts as skipped there). An error in setup cannot be told from one in
        teardown here; its figures are the setup's, small, so comparing them does not fail it
        falsely."""
        return self.started and self.outcome in ("passed", "failed", "xpassed", "error")

    @property
    def failing(self) -> bool:
        """A failed or erroring test, a violation, or a regression that fails (not a warning)."""
        return (
            self.outcome in ("failed", "error")
            or self.violation is not None
            or (self.regression is not None and not self.regression.warn_only)
        )

    @property
    def failed_by_growth(self) -> bool:
        """Failed only because it grew beyond the baseline's tolerance: its reason is the
        regression's headline (a record of version 2, without a reason, reads so too)."""
        regression = self.regression
        if self.outcome != "failed" or self.violation is not None:
            return False
        if regression is None or regression.warn_only:
            return False
        headline = regression.text.partition("\n")[0].removeprefix("taichi_limits: ")
        return headline.startswith(self.reason.removesuffix("…"))

    @property
    def violation_at_s(self) -> float | None:
        """Seconds after the start at which the violation was caught, where known: the
        timeline's mark, else (a violation the kernel found after the exit) the violation's
        wall-clock time against the test's start."""
        moment = (self.timeline or {}).get("violation_at_s")
        if isinstance(moment, (int, float)):
            return float(moment)
        if self.violation is None:
            return None
        return max(0.0, self.violation.at - self.started_at)

    def budget_use(self) -> dict[str, float]:
        """Per limited resource, the share of its budget the test used (1.0 = all of it)."""
        figures = {
            "mem_mb": self.own_memory_bytes,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "gpu_gb": self.gpu_peak_bytes,
        }
        use = {}
        for key, figure in figures.items():
            limit = getattr(self.budget, key)
            if limit is not None and limit > 0 and figure is not None:
                use[key] = float(figure) / (float(limit) * _BUDGET_SCALE[key])
        return use

    @classmethod
    def from_usage(
        cls,
        usage: Usage,
        outcome: str,
        violation: Violation | None,
        regression: Regression | None = None,
        reason: str = "",
    ) -> UsageRecord:
        """The record of a test the supervisor watched: every figure of `usage` that the record
        keeps (the same name in both), and how the test ended."""
        figures = {name: getattr(usage, name) for name in _FROM_USAGE if name not in _RECORD_ONLY}
        return cls(
            **figures,
            outcome=outcome,
            violation=violation,
            regression=regression,
            reason=reason,
            worker_pid=usage.worker_pid or usage.pid,
            timeline=None if usage.timeline is None else dict(usage.timeline),
        )

    @classmethod
    def not_started(cls, nodeid: str, budget: Budget, reason: str, mode: str) -> UsageRecord:
        """The record of a test that failed before any process ran it (admission refused it,
        its module cannot start in the start mode asked for): no figure, only the reason."""
        return cls(
            nodeid=nodeid,
            outcome="failed",
            own_memory_bytes=0,
            peak_own_memory_bytes=0,
            memory_method="not measured",
            peak_own_rss_bytes=0,
            kernel_own_rss_bytes=0,
            peak_rss_bytes=0,
            start_rss_bytes=0,
            peak_vms_bytes=0,
            cpu_s=0.0,
            wall_s=0.0,
            gpu_peak_bytes=None,
            gpu_note="not measured (the test never started)",
            gpu_clamps=(),
            budget=budget,
            pid=0,
            started_at=time.time(),
            mode=mode,
            arch=NO_TAICHI,
            violation=None,
            regression=None,
            reason=reason,
            started=False,
        )

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["gpu_clamps"] = list(self.gpu_clamps)
        data["budget"] = self.budget.as_dict()
        data["violation"] = None if self.violation is None else self.violation.to_json()
        data["regression"] = None if self.regression is None else self.regression.to_json()
        data["admission"] = None if self.admission is None else self.admission.to_json()
        data["timeline"] = None if self.timeline is None else dict(self.timeline)
        data["shm_files_left"] = list(self.shm_files_left)
        data["shm_not_removed"] = list(self.shm_not_removed)
        data["ending"] = None if self.ending is None else self.ending.describe
        data["leaks"] = None if self.leaks is None else self.leaks.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any) -> UsageRecord:
        """The inverse of to_json. Raises RecordError naming the first field that is wrong.

        Fields added in version 3 of the JSON report (`ending`, `reason`, `started`) and in
        version 4 (`leaks`) may be absent: an earlier record reads with their defaults."""
        fields = _object(data, "record")
        where = f"record of {fields.get('nodeid')!r}"
        outcome = _text(fields, "outcome", where)
        if outcome not in OUTCOMES:
            raise RecordError(f"{where}: outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        clamps = _field(fields, "gpu_clamps", where)
        if not isinstance(clamps, list) or not all(isinstance(note, str) for note in clamps):
            raise RecordError(f"{where}: gpu_clamps must be a list of strings")
        gpu = fields.get("gpu_peak_bytes")
        violation = fields.get("violation")
        regression = fields.get("regression")
        ending = fields.get("ending")
        try:
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
                budget=_budget(fields, where),
                pid=_integer(fields, "pid", where),
                started_at=_number(fields, "started_at", where),
                mode=_text(fields, "mode", where),
                arch=_text(fields, "arch", where),
                violation=None if violation is None else Violation.from_json(violation),
                regression=None
                if regression is None
                else Regression.from_json(regression, f"{where}: regression"),
                worker_pid=_integer(fields, "worker_pid", where),
                worker_test_number=_integer(fields, "worker_test_number", where),
                admission=None
                if fields.get("admission") is None
                else Admitted.from_json(fields["admission"], where),
                timeline=_timeline(fields, where),
                shm_files_left=_texts(fields, "shm_files_left", where),
                memory_note=_text(fields, "memory_note", where) if "memory_note" in fields else "",
                page_cache_bytes=_optional_integer(fields, "page_cache_bytes", where),
                shm_not_removed=_texts(fields, "shm_not_removed", where),
                ending=None if ending is None else Ending.from_text(_text(fields, "ending", where)),
                reason=_text(fields, "reason", where) if "reason" in fields else "",
                started=_flag(fields, "started", where, default=True),
                leaks=_leaks(fields, where),
            )
        except RecordError as error:
            if str(error).startswith(where):
                raise
            raise RecordError(f"{where}: {error}") from None


#: Fields a record copies from the usage under the same name.
_FROM_USAGE = (
    *(name for name in UsageRecord.__dataclass_fields__ if name in Usage.__dataclass_fields__),
    "kernel_own_rss_bytes",
    "own_memory_bytes",
)
#: Fields of both that the record takes from elsewhere (from_usage sets them itself).
_RECORD_ONLY = frozenset({"worker_pid", "timeline"})


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


#: Budget keys added after version 2 of the JSON report: a record written before may lack them.
_LATER_BUDGET_KEYS = frozenset({"leak_mb"})  # version 4


def _budget(fields: Mapping[str, Any], where: str) -> Budget:
    budget = _object(_field(fields, "budget", where), f"{where}: budget")
    if not set(BUDGET_KEYS) - _LATER_BUDGET_KEYS <= set(budget) <= set(BUDGET_KEYS) or not all(
        value is None or (_is_number(value) and value > 0) for value in budget.values()
    ):
        raise RecordError(
            f"{where}: budget must map {', '.join(BUDGET_KEYS)} to positive numbers or null"
        )
    return Budget(**{key: None if value is None else float(value) for key, value in budget.items()})


def _leaks(fields: Mapping[str, Any], where: str) -> Leaks | None:
    if fields.get("leaks") is None:
        return None
    try:
        return Leaks.from_json(fields["leaks"])
    except LeakRecordError as error:
        raise RecordError(f"{where}: {error}") from None


def _optional_integer(fields: Mapping[str, Any], name: str, where: str) -> int | None:
    """An optional whole number (absent or null in a report written without it)."""
    return None if fields.get(name) is None else _integer(fields, name, where)


def _texts(fields: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    values = fields.get(name) or []
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise RecordError(f"{where}: {name} must be a list of strings")
    return tuple(values)


def _flag(fields: Mapping[str, Any], name: str, where: str, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise RecordError(f"{where}: {name} must be true or false, got {value!r}")
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


M = TypeVar("M", bound=Message)


@dataclass
class RunResult:
    """One test's end: what the child said (decoded, checked messages), what it used, and what
    that means."""

    messages: list[Message]
    usage: Usage
    violation: Violation | None = None
    crash: Crash | None = None
    channel_problem: str | None = None
    phase: str = "setup"
    #: fixtures above function scope that were set up when the child died without tearing them
    #: down (killed at the end of the grace period, crashed): "name (scope)"
    fixtures_not_torn_down: tuple[str, ...] = ()

    def of_kind(self, kind: type[M]) -> list[M]:
        return [message for message in self.messages if isinstance(message, kind)]
