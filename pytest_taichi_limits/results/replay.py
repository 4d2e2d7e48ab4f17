"""Hand a supervised test's results to pytest as if the test had run in this process.

The child's own reports come back through pytest's public serialization hooks and are checked
(a forged or missing report is a failure of the test, never a crash of the run); a violation,
crash or channel problem becomes the failure of the phase it belongs to; the warnings the test
raised are raised again here; the usage goes to the plugin's hooks and onto every report.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any

import pytest

from ..config.budget import Budget
from ..ipc.protocol import Exit, RaisedWarning, Report
from ..model.records import Crash, RunResult, Usage, UsageRecord, Violation
from ..render import leaks as leak_text
from ..render import text as render
from .collect import attach
from .outcomes import failure_reason, parent_report

logger = logging.getLogger("pytest_taichi_limits")

PHASES = ("setup", "call", "teardown")


def replay(item: pytest.Item, result: RunResult, usage_lines: list[str]) -> None:
    """Log the test's reports (and call the plugin's hooks) as a plain run would have.

    `usage_lines`: what the usage section shows besides the figures (admission, ...).
    """
    received, problem = received_reports(item, result)
    failure_text = failure_text_of(result, problem)
    reports = complete_phases(item, received, failure_text)
    emit_warnings(result)
    # Seam for the baseline compare: it may turn the call report into a failure.
    item.config.hook.pytest_taichi_limits_reports(
        item=item, usage=result.usage, violation=result.violation, reports=reports
    )
    _record(item, result, reports, usage_lines, show_usage=failure_text is None)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)


def fail_without_running(item: pytest.Item, text: str, budget: Budget, mode: str) -> None:
    """The test could not start (refused, no worker): it fails with `text`, the run goes on,
    and its record says why (every report lists it as a failed test)."""
    reports = complete_phases(item, {}, text)
    reason = failure_reason(reports)
    attach(reports[-1], UsageRecord.not_started(item.nodeid, budget, reason, mode))
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)


def received_reports(
    item: pytest.Item, result: RunResult
) -> tuple[dict[str, pytest.TestReport], str | None]:
    received: dict[str, pytest.TestReport] = {}
    problem = result.channel_problem
    for message in result.of_kind(Report):
        try:
            report = item.config.hook.pytest_report_from_serializable(
                config=item.config, data=message.data
            )
        except Exception as error:  # noqa: BLE001 - a forged report is a failure, not a crash
            problem = problem or f"the child sent an unreadable report ({error})"
            continue
        if (
            not isinstance(report, pytest.TestReport)
            or report.nodeid != item.nodeid
            or report.when not in PHASES
        ):
            problem = problem or "the child sent a report that is not for this test"
            continue
        received[report.when] = report
    if problem is None and not result.of_kind(Exit):
        missing = _missing_phase(item, received)
        if missing is not None:  # e.g. a forged "done": the test must not vanish
            problem = f"the child sent no report for the {missing} phase"
    return received, problem


def failure_text_of(result: RunResult, problem: str | None) -> str | None:
    if result.violation is not None:
        text = render.violation_report(result.violation, result.usage)
    elif result.crash is not None:
        text = render.crash_report(result.crash, result.usage)
    elif problem is not None:
        crash = Crash(
            result.usage.nodeid, problem + "; the test's own result is unknown", result.phase, ""
        )
        text = render.crash_report(crash, result.usage)
    else:
        return None
    if result.fixtures_not_torn_down:  # right below the headline, above the stacks
        headline, _, rest = text.partition("\n")
        text = "\n".join([headline, render.not_torn_down_line(result.fixtures_not_torn_down), rest])
    return text


def emit_warnings(result: RunResult) -> None:
    for message in result.of_kind(RaisedWarning):
        warnings.warn_explicit(
            message.message,
            _warning_category(message.category),
            message.filename,
            message.lineno,
        )


def _record(
    item: pytest.Item,
    result: RunResult,
    reports: list[pytest.TestReport],
    usage_lines: list[str],
    show_usage: bool,
) -> None:
    usage, violation = result.usage, result.violation
    properties = render.user_properties(usage, violation)
    section = "\n".join(
        [
            render.usage_line(usage),
            *render.gpu_cap_lines(usage),
            *leak_text.usage_lines(usage.leaks),
            *usage_lines,
        ]
    )
    for report in reports:
        report.user_properties = list(report.user_properties) + properties
        if show_usage:  # a failure's own report already has the figures
            report.sections.append(("taichi_limits usage", section))
    item.config.hook.pytest_taichi_limits_usage(item=item, usage=usage)
    if violation is not None:
        _log_violation(violation, usage)
        item.config.hook.pytest_taichi_limits_violation(item=item, violation=violation, usage=usage)


def _missing_phase(item: pytest.Item, received: dict[str, pytest.TestReport]) -> str | None:
    """The first phase whose report a child that ran the whole protocol must have sent."""
    if "setup" not in received:
        return "setup"
    if (
        received["setup"].passed
        and "call" not in received
        and not item.config.getoption("setuponly", False)
    ):
        return "call"
    return None if "teardown" in received else "teardown"


def complete_phases(
    item: pytest.Item, received: dict[str, pytest.TestReport], failure_text: str | None
) -> list[pytest.TestReport]:
    """setup, call (when setup passed) and teardown, with any failure put on the test itself."""
    setup = received.get("setup") or parent_report(item, "setup", None)
    reports = [setup]
    teardown = received.get("teardown") or parent_report(item, "teardown", None)
    if failure_text is None:
        if "call" in received:
            reports.append(received["call"])
        return [*reports, teardown]
    if not setup.passed:
        # The test never ran; what went wrong afterwards belongs to teardown.
        return [*reports, parent_report(item, "teardown", failure_text, keep=teardown)]
    reports.append(parent_report(item, "call", failure_text, keep=received.get("call")))
    return [*reports, teardown]


def _warning_category(path: str) -> type[Warning]:
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:  # noqa: BLE001 - a class defined inside a test cannot be found again
        return UserWarning
    return target if isinstance(target, type) and issubclass(target, Warning) else UserWarning


def _log_violation(violation: Violation, usage: Usage) -> None:
    logger.warning(
        "%s",
        render.violation_headline(violation) + f" in {violation.nodeid}",
        extra={
            "taichi_limits_violation": violation.to_json(),
            "taichi_limits_usage": usage.to_json(),
        },
    )
