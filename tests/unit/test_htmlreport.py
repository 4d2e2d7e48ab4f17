"""The HTML report's page, without a browser: self-contained, escaped, tolerant of old records."""

from __future__ import annotations

import html
import re

from helpers import report_files

from pytest_taichi_limits.render import html as htmlreport
from pytest_taichi_limits.render import text


def test_self_contained() -> None:
    page = htmlreport.render(report_files.with_baseline())
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert page.count("<script") == 2  # the data and the code, both inline


def test_ids_cannot_break_out_of_the_page() -> None:
    nodeid = 't.py::test_x[</script><script>alert(1)</script>"<b>]'
    page = htmlreport.render(
        report_files.report(
            [
                report_files.record(
                    nodeid, "failed", violation=report_files.violation(nodeid, "mem_mb", 1.0, 2.0)
                )
            ]
        )
    )
    assert "alert(1)</script>" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page
    assert page.count("<script") == 2


def test_verdict_environment_warning_and_regressions() -> None:
    page = htmlreport.render(report_files.with_baseline())
    assert 'class="verdict bad"' in page and "0 budget violations, 2 regressions" in page
    assert "measured with another taichi (taichi 1.7.3 -&gt; 1.7.4)" in page
    assert "+100.0 MiB (+100.0%)" in page and "cpu=50%+1s (warning only)" in page


def test_records_without_timelines_and_an_empty_report() -> None:
    old = report_files.record("t.py::test_old")
    del old["timeline"]  # a report written before timelines existed
    for added in ("ending", "reason", "started"):  # ... and before version 3
        old.pop(added, None)
    page = htmlreport.render(report_files.report([old]))
    assert "t.py::test_old" in page
    empty = htmlreport.render(report_files.report([]))
    assert "All supervised tests (0)" in empty and 'class="verdict good"' in empty


def test_the_violation_is_shown_as_the_failed_test_showed_it() -> None:
    """One renderer: the page shows the report pytest printed, from the record."""
    report = report_files.over_budget()
    record = next(r for r in report.records if r.violation)
    assert record.violation is not None
    shown = text.violation_report(record.violation, record)
    assert shown.splitlines()[0] == (
        "taichi_limits: mem_mb exceeded: 281.5 MiB when caught, "
        "limit mem_mb=256 (over by 25.5 MiB, +10.0%)"
    )
    assert "caught by   supervisor (RSS of the process tree, sampled), during call" in shown
    assert "signals sent: SIGTERM" in shown
    assert 'File "/src/tests/test_big.py", line 12 in test_big' in shown
    assert html.escape(shown) in htmlreport.render(report)


def test_failures_are_listed_with_their_reasons() -> None:
    page = htmlreport.render(report_files.with_failures())
    failures = page.split('<section id="failures">')[1].split("</section>")[0]
    assert "Failures that are not budget violations (3)" in failures
    assert "assert 1 + 1 == 3" in failures and "killed by signal 11 (SIGSEGV)" in failures
    assert "(not started)" in failures and "test_grown" not in failures
    assert '<span class="badge not-started">not-started</span>' in page
