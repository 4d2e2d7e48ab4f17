"""pytest TestReports for outcomes that the parent decides (a violation, a crash, a regression)."""

from __future__ import annotations

import pytest


def parent_report(item: pytest.Item, when: str, failure_text: str | None = None,
                  keep: pytest.TestReport | None = None) -> pytest.TestReport:
    """A report for `item`'s `when` phase: passed, or failed with `failure_text` (no traceback).

    `keep` is the child's own report of that phase, if it sent one: what it captured stays
    visible. The short test summary gets only the first line of `failure_text`.
    """

    def outcome() -> None:
        if failure_text is not None:
            pytest.fail(failure_text, pytrace=False)

    call = pytest.CallInfo.from_call(outcome, when=when)  # type: ignore[arg-type]
    report = pytest.TestReport.from_item_and_call(item, call)
    if failure_text is not None:
        _shorten_summary_line(report, failure_text.partition("\n")[0])
    if keep is not None:
        report.sections = list(keep.sections)
        report.user_properties = list(keep.user_properties)
        report.duration = keep.duration
    return report


def _shorten_summary_line(report: pytest.TestReport, headline: str) -> None:
    # On CI pytest prints a failure's whole message in the short test summary; the full report
    # already stands above it, so the summary line carries the headline alone.
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and hasattr(crash, "message"):
        crash.message = headline
