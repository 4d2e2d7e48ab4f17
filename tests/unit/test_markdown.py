"""The Markdown summary: golden files, escaping, shortening, the size limit, stable order.

Set TAICHI_LIMITS_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change (and
read the diff).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from helpers import report_files

from pytest_taichi_limits.formats.jsonreport import Report
from pytest_taichi_limits.render import markdown

GOLDEN = Path(__file__).parents[1] / "golden" / "markdown"


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("TAICHI_LIMITS_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"differs from {path}"


def test_golden_over_budget() -> None:
    _golden("over_budget.md", markdown.summary(report_files.over_budget()))


def test_golden_regressions_new_and_missing() -> None:
    _golden("with_baseline.md", markdown.summary(report_files.with_baseline()))


def test_golden_failures_with_their_reasons() -> None:
    """Failed and crashed tests, and a test refused before it started, are named with their
    one-line reason; a test failed by its growth alone is in the regressions, not twice."""
    text = markdown.summary(report_files.with_failures())
    _golden("with_failures.md", text)
    section = text.split("#### Failures that are not budget violations (3)")[1].split("####")[0]
    assert "test\\_assert | failed | assert 1 + 1 == 3 |" in section
    assert "test\\_refused | failed (not started) | taichi\\_limits admission:" in section
    assert "test\\_grown" not in section


def test_golden_awkward_ids() -> None:
    _golden("awkward_ids.md", markdown.summary(report_files.awkward_ids()))


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a|b", "a\\|b"),
        ("`x`", "\\`x\\`"),
        ("one\ntwo", "one\\\\ntwo"),
        ("[p]", "\\[p\\]"),
        ("<b>", "\\<b\\>"),
        ("a_b*c", "a\\_b\\*c"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert markdown.escape(raw) == shown


def test_every_table_row_keeps_its_column_count() -> None:
    """A pipe or newline in a test id must never split a table row."""
    text = markdown.summary(report_files.awkward_ids())
    for line in text.splitlines():
        if line.startswith("| "):
            cells = line.replace("\\|", "").count("|")
            assert cells == 3, line  # | Test | figure |


def test_long_ids_keep_their_start_and_their_test_name() -> None:
    nodeid = "tests/" + "a/" * 100 + "test_x.py::test_case[param-1]"
    short = markdown.shorten(nodeid)
    assert len(short) == markdown.MAX_ID_CHARS
    assert short.startswith("tests/a/") and short.endswith("test_x.py::test_case[param-1]")
    assert markdown.shorten("tests/t.py::test") == "tests/t.py::test"


def test_stays_under_the_limit_with_a_note() -> None:
    records = [
        report_files.record(
            f"tests/test_many.py::test_{index:05d}",
            violation=report_files.violation(
                f"tests/test_many.py::test_{index:05d}", "mem_mb", 1.0, 2.0
            ),
        )
        for index in range(3000)
    ]
    report = report_files.report(records)
    text = markdown.summary(report, limit_bytes=64 * 1024)
    assert len(text.encode("utf-8")) <= 64 * 1024
    assert "truncated to stay under 64 KiB" in text
    full = markdown.summary(report)
    assert "truncated" not in full and len(full.encode("utf-8")) <= markdown.LIMIT_BYTES


def test_order_does_not_depend_on_the_order_of_records() -> None:
    document = report_files.with_baseline_document()
    shuffled = dict(document, records=list(document["records"]))
    random.Random(7).shuffle(shuffled["records"])
    assert markdown.summary(Report.from_json(shuffled)) == markdown.summary(
        Report.from_json(document)
    )


def test_verdict_line() -> None:
    assert markdown.verdict(report_files.over_budget()) == (
        "### taichi-limits: ❌ FAILED — 2 budget violations, 4 supervised tests "
        "(1 passed, 2 failed, 1 skipped)"
    )
    passed = report_files.report([report_files.record("t.py::test_ok")])
    assert markdown.verdict(passed, marks=False) == (
        "### taichi-limits: PASSED — 0 budget violations, 1 supervised test (1 passed)"
    )


def test_an_interrupted_session_is_never_passed() -> None:
    ok = [report_files.record("t.py::test_ok")]
    interrupted = report_files.report(ok, complete=False, exit_status=2)
    assert markdown.verdict(interrupted) == (
        "### taichi-limits: ⚠️ INTERRUPTED — 0 budget violations, 1 supervised test (1 passed)"
        " — session interrupted, incomplete"
    )
    failed = [report_files.record("t.py::test_bad", outcome="failed")]
    assert markdown.verdict(
        report_files.report(failed, complete=False, exit_status=2), marks=False
    ).startswith("### taichi-limits: FAILED — ")


def test_a_long_test_name_keeps_its_file_and_both_ends() -> None:
    nodeid = "tests/dir/test_file.py::test_name[" + "x" * 200 + "-end]"
    short = markdown.shorten(nodeid)
    assert len(short) == markdown.MAX_ID_CHARS
    assert short.startswith("…/test_file.py::test_name[") and short.endswith("x-end]")
