"""Outcomes: pytest TestReports that the parent makes (a violation, a crash, a regression, a test
that stopped the session), and the one outcome of a test from its phase reports."""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

#: Reports this module made, as opposed to reports the child sent: a parent-made report of a phase
#: the child never reported gets the test's measured wall time (see `give_durations`).
_PARENT_MADE: weakref.WeakSet[pytest.TestReport] = weakref.WeakSet()

#: The outcome of a test that stopped the session (pytest.exit, KeyboardInterrupt).
INTERRUPTED = "interrupted"


def parent_report(
    item: pytest.Item,
    when: str,
    failure_text: str | None = None,
    keep: pytest.TestReport | None = None,
) -> pytest.TestReport:
    """A report for `item`'s `when` phase: passed, or failed with `failure_text` (no traceback).

    `keep` is the child's own report of that phase, if it sent one: what it captured stays
    visible, and so does its duration. The short test summary gets only the first line of
    `failure_text`.
    """

    def outcome() -> None:
        if failure_text is not None:
            pytest.fail(failure_text, pytrace=False)

    report = _report(item, when, outcome)
    if failure_text is not None:
        _shorten_summary_line(report, failure_text.partition("\n")[0])
    if keep is not None:
        report.sections = list(keep.sections)
        report.user_properties = list(keep.user_properties)
        report.duration = keep.duration
    if keep is None or is_parent_made(keep):
        _PARENT_MADE.add(report)
    return report


def interrupted_report(item: pytest.Item, when: str, reason: str) -> pytest.TestReport:
    """A skipped report for the phase a test stopped the session in: the test did not finish, so
    junitxml and the terminal must not count it as passed; it did not fail either."""

    def outcome() -> None:
        pytest.skip(f"taichi_limits: the test stopped the session ({reason}) before it finished")

    report = _report(item, when, outcome)
    _PARENT_MADE.add(report)
    return report


def _report(item: pytest.Item, when: str, outcome: Any) -> pytest.TestReport:
    call = pytest.CallInfo.from_call(outcome, when=when)  # type: ignore[arg-type]
    return pytest.TestReport.from_item_and_call(item, call)


def is_parent_made(report: pytest.TestReport) -> bool:
    """True for a report made here without any report of the child's for that phase."""
    return report in _PARENT_MADE


def give_durations(reports: Sequence[pytest.TestReport], wall_s: float) -> None:
    """Give the test's measured time to the phase the child never reported.

    A test stopped by a budget (or that crashed) sent no report for the phase it was in; the
    parent's report of that phase took microseconds to make. junitxml's `time` and --durations
    read `duration`: the phase gets what is left of the wall time after the phases the child did
    report, so the slow test is not shown as instant.
    """
    made = [report for report in reports if is_parent_made(report)]
    if not made:
        return
    reported_s = sum(report.duration for report in reports if not is_parent_made(report))
    target = next((report for report in made if report.failed), made[0])
    target.duration = max(target.duration, wall_s - reported_s)


def _shorten_summary_line(report: pytest.TestReport, headline: str) -> None:
    # On CI pytest prints a failure's whole message in the short test summary; the full report
    # already stands above it, so the summary line carries the headline alone. Elsewhere pytest
    # trims it to the terminal's width: without the "taichi_limits: " prefix what is left of it
    # starts with what went wrong ("mem_mb exceeded: ...") even after a long test id.
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and hasattr(crash, "message"):
        crash.message = headline.removeprefix("taichi_limits: ")


def combined_outcome(phases: Mapping[str, Any], interrupted: bool = False) -> str:
    """The test's outcome from its phase reports, as pytest's summary counts it.

    `phases` maps "setup"/"call"/"teardown" to a report (anything with pytest's `passed`,
    `failed`, `skipped` and optional `wasxfail`). A test that stopped the session is
    "interrupted" whatever its reports say, unless it had already failed or errored: it never
    finished, so it never "passed" and its figures are no baseline.
    """
    setup, call, teardown = (phases.get(when) for when in ("setup", "call", "teardown"))
    if setup is not None and setup.failed:
        return "error"
    if setup is not None and setup.skipped and not interrupted:
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
        outcome = "error"
    if interrupted and outcome not in ("failed", "error"):
        return INTERRUPTED
    return outcome


#: The longest reason a record keeps: one line a person reads, not a traceback.
MAX_REASON_CHARS = 300


def failure_reason(reports: Sequence[pytest.TestReport]) -> str:
    """Why the test failed, in one line: the first failed phase's own message (the assertion's
    first line, the exception, the crash or violation headline), "" where none failed."""
    for report in reports:
        if not report.failed:
            continue
        crash = getattr(report.longrepr, "reprcrash", None)
        message = getattr(crash, "message", None)
        text = message if isinstance(message, str) else report.longreprtext
        line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        line = line.removeprefix("taichi_limits: ") or f"failed in {report.when}"
        if len(line) > MAX_REASON_CHARS:
            line = line[: MAX_REASON_CHARS - 1] + "…"
        return line
    return ""
