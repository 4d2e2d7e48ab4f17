"""One usage record per supervised test, collected from the reports pytest logs.

The record is made once, in the process that ran the test (results/session.py, through the runner's
`pytest_taichi_limits_reports` hook), and travels as `UsageRecord.to_json()` on the test's
teardown report. It is collected here in `pytest_runtest_logreport`, which runs wherever reports
are logged: in the only process of a plain run, and on the controller of a pytest-xdist run
(workers send every report there). So a record exists exactly once per supervised test, whichever
way the session was run.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..model.records import RecordError, UsageRecord

#: Report attribute that carries a supervised test's record (plain JSON values, so xdist sends it).
RECORD_ATTRIBUTE = "taichi_limits_record"


def attach(report: pytest.TestReport, record: UsageRecord) -> None:
    """Put `record` on `report` (the test's teardown report) as JSON."""
    setattr(report, RECORD_ATTRIBUTE, record.to_json())


class RecordCollector:
    """Turns logged reports into records: one per supervised test (the last run wins)."""

    def __init__(self) -> None:
        self._records: dict[str, UsageRecord] = {}
        self.problems: list[str] = []  # records that arrived in a shape this version cannot read

    def add(self, report: pytest.TestReport) -> UsageRecord | None:
        """Take one report; return the test's record if the report carries one."""
        if report.when != "teardown":
            return None
        data: Any = getattr(report, RECORD_ATTRIBUTE, None)
        if data is None:
            return None  # not supervised: plain pytest ran it
        try:
            record = UsageRecord.from_json(data)
        except RecordError as error:  # e.g. an xdist worker with another version of the plugin
            self.problems.append(f"the record of {report.nodeid} cannot be read: {error}")
            return None
        # A rerun (pytest-rerunfailures) replaces the earlier attempt: one record per test.
        self._records[report.nodeid] = record
        return record

    @property
    def records(self) -> list[UsageRecord]:
        """Sorted by test id, so that a run with -n 2 lists them as a run without xdist does."""
        return [self._records[nodeid] for nodeid in sorted(self._records)]
