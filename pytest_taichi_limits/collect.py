"""One usage record per supervised test, collected from the reports pytest logs.

Records are built in `pytest_runtest_logreport`, which runs wherever reports are logged: in the
only process of a plain run, and on the controller of a pytest-xdist run (workers send every
report there, with the usage and violation dicts attached to the teardown report). So a record
exists exactly once per supervised test, whichever way the session was run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from .records import NO_TAICHI

#: Report attributes the runner sets on a supervised test's teardown report (plugin._record) and
#: the baseline compare sets on it (baseline.py). Plain JSON values, so xdist carries them.
USAGE_ATTRIBUTE = "taichi_limits_usage"
VIOLATION_ATTRIBUTE = "taichi_limits_violation"
REGRESSION_ATTRIBUTE = "taichi_limits_regression"

#: Every outcome a record can have, in the words of pytest's own summary.
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


@dataclass(frozen=True)
class UsageRecord:
    """What one supervised test used, and how it ended. Bytes and seconds."""

    nodeid: str
    outcome: str  # one of OUTCOMES
    own_memory_bytes: int  # max(sampled tree growth, kernel's exact peak growth): compared
    peak_own_rss_bytes: int  # peak RSS of the process tree above its starting RSS (sampled)
    kernel_own_rss_bytes: int  # ru_maxrss of the child minus its starting RSS (exact)
    peak_rss_bytes: int  # absolute peak RSS of the tree
    start_rss_bytes: int
    peak_vms_bytes: int
    cpu_s: float
    wall_s: float
    gpu_peak_bytes: int | None  # None: not measured, gpu_note says why
    gpu_note: str
    budget: dict[str, float | None]
    pid: int
    started_at: float  # Unix time
    mode: str  # fork or spawn
    arch: str  # Taichi arch of the child's last ti.init, or "not initialised"
    violation: dict[str, Any] | None
    regression: dict[str, Any] | None
    worker_pid: int = 0  # the supervised child that ran the test (several tests may share one)
    worker_test_number: int = 1  # 1 for the first test that child ran, 2 for the next, ...

    @property
    def measured(self) -> bool:
        """False for a test that never ran its body (skipped in setup): its figures mean nothing."""
        return self.outcome != "skipped"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def record_from_usage(nodeid: str, outcome: str, usage: dict[str, Any],
                      violation: dict[str, Any] | None,
                      regression: dict[str, Any] | None) -> UsageRecord:
    """A record from Usage.as_dict() (as it arrives on the teardown report)."""
    own = int(usage["peak_own_rss_bytes"])
    kernel_own = int(usage.get("kernel_own_rss_bytes", 0))
    extra = usage.get("extra") or {}
    gpu = usage.get("gpu_peak_bytes")
    return UsageRecord(
        nodeid=nodeid,
        outcome=outcome,
        own_memory_bytes=max(own, kernel_own),
        peak_own_rss_bytes=own,
        kernel_own_rss_bytes=kernel_own,
        peak_rss_bytes=int(usage["peak_rss_bytes"]),
        start_rss_bytes=int(usage["start_rss_bytes"]),
        peak_vms_bytes=int(usage["peak_vms_bytes"]),
        cpu_s=float(usage["cpu_s"]),
        wall_s=float(usage["wall_s"]),
        gpu_peak_bytes=None if gpu is None else int(gpu),
        gpu_note=str(usage.get("gpu_note", "")),
        budget=dict(usage["budget"]),
        pid=int(usage["pid"]),
        started_at=float(usage["started_at"]),
        mode=str(usage.get("mode", "fork")),
        arch=str(extra.get("taichi_arch", NO_TAICHI)),
        worker_pid=int(usage.get("worker_pid") or usage["pid"]),
        worker_test_number=int(usage.get("worker_test_number") or 1),
        violation=violation,
        regression=regression,
    )


def combined_outcome(phases: dict[str, pytest.TestReport]) -> str:
    """The test's outcome from its phase reports, as pytest's summary counts it."""
    setup, call, teardown = (phases.get(when) for when in ("setup", "call", "teardown"))
    if setup is not None and setup.failed:
        return "error"
    if setup is not None and setup.skipped:
        return "skipped"
    outcome = "passed"
    if call is not None:
        xfail = hasattr(call, "wasxfail")
        if call.failed:
            outcome = "failed"
        elif call.skipped:
            outcome = "xfailed" if xfail else "skipped"
        elif xfail:
            outcome = "xpassed"
    if teardown is not None and teardown.failed and outcome in ("passed", "xpassed"):
        return "error"
    return outcome


class RecordCollector:
    """Turns logged reports into records: one per supervised test (the last run wins)."""

    def __init__(self) -> None:
        self._phases: dict[str, dict[str, pytest.TestReport]] = {}
        self._records: dict[str, UsageRecord] = {}

    def add(self, report: pytest.TestReport) -> UsageRecord | None:
        """Take one phase report; return the test's record once its teardown report arrives."""
        if report.when not in ("setup", "call", "teardown"):
            return None
        self._phases.setdefault(report.nodeid, {})[report.when] = report
        if report.when != "teardown":
            return None
        phases = self._phases.pop(report.nodeid)
        usage = getattr(report, USAGE_ATTRIBUTE, None)
        if not isinstance(usage, dict):
            return None  # not supervised: plain pytest ran it
        record = record_from_usage(
            report.nodeid, combined_outcome(phases), usage,
            getattr(report, VIOLATION_ATTRIBUTE, None),
            getattr(report, REGRESSION_ATTRIBUTE, None),
        )
        # A rerun (pytest-rerunfailures) replaces the earlier attempt: one record per test.
        self._records[report.nodeid] = record
        return record

    @property
    def records(self) -> list[UsageRecord]:
        """Sorted by test id, so that a run with -n 2 lists them as a run without xdist does."""
        return [self._records[nodeid] for nodeid in sorted(self._records)]
