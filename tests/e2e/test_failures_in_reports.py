"""No test dropped from a report, no failure left unnamed (issue 16, items 8 and 9): a test that
admission refused before it started, a failed assertion and a segfault are failed tests with
their one-line reason in the JSON report, JUnit, the Markdown summary and the HTML report."""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from helpers.plugin_types import RunPlugin

from pytest_taichi_limits.formats import jsonreport

jsonschema = pytest.importorskip("jsonschema")

TESTS = """
import ctypes

import pytest


@pytest.mark.taichi_limits(mem_mb=4096)
def test_refused():
    pass


@pytest.mark.taichi_limits(mem_mb=256)
def test_assert():
    assert 1 + 1 == 3, "arithmetic is broken"


@pytest.mark.taichi_limits(mem_mb=256)
def test_segfault():
    ctypes.string_at(0)


@pytest.mark.taichi_limits(mem_mb=256)
def test_fine():
    pass
"""

REFUSED = "test_mixed.py::test_refused"
ASSERT = "test_mixed.py::test_assert"
SEGFAULT = "test_mixed.py::test_segfault"


@pytest.mark.parametrize("workers", [("-p", "no:xdist"), ("-n", "2")], ids=["plain", "xdist"])
def test_every_failure_is_in_every_report_with_its_reason(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: tuple[str, str],
) -> None:
    monkeypatch.setenv("PYTEST_TAICHI_LIMITS_LEDGER", str(tmp_path / "ledger"))
    pytester.makepyfile(test_mixed=TESTS)
    result = run_plugin(
        *workers,
        "--taichi-limits-admit",
        "--taichi-limits-capacity=mem=1GB",
        "--taichi-limits-json=report.json",
        "--taichi-limits-markdown=summary.md",
        "--taichi-limits-html=report.html",
        "--junitxml=junit.xml",
    )
    result.assert_outcomes(passed=1, failed=3)

    document = json.loads((pytester.path / "report.json").read_text())
    jsonschema.validate(document, jsonreport.REPORT_SCHEMA)
    records = {record["nodeid"]: record for record in document["records"]}
    assert set(records) == {REFUSED, ASSERT, SEGFAULT, "test_mixed.py::test_fine"}
    refused = records[REFUSED]
    assert (refused["outcome"], refused["started"], refused["pid"]) == ("failed", False, 0)
    assert refused["reason"].startswith(f"taichi_limits admission: {REFUSED} needs memory ")
    assert records[ASSERT]["reason"].startswith("AssertionError: arithmetic is broken")
    assert records[SEGFAULT]["reason"] == "the test process was killed by signal 11 (SIGSEGV)"
    assert records["test_mixed.py::test_fine"]["reason"] == ""

    summary = (pytester.path / "summary.md").read_text()
    assert "#### Failures that are not budget violations (3)" in summary
    assert (
        "| test\\_mixed.py::test\\_refused | failed (not started) | taichi\\_limits admission:"
        in summary
    )
    assert (
        "| test\\_mixed.py::test\\_assert | failed | AssertionError: arithmetic is broken"
        in summary
    )
    assert "| failed | the test process was killed by signal 11 (SIGSEGV) |" in summary

    page = (pytester.path / "report.html").read_text()
    assert "Failures that are not budget violations (3)" in page
    for nodeid in (REFUSED, ASSERT, SEGFAULT):
        assert html.escape(records[nodeid]["reason"]) in page

    cases = {
        f"{case.get('classname')}::{case.get('name')}": case
        for case in ElementTree.parse(pytester.path / "junit.xml").iter("testcase")
    }
    refused_case = cases["test_mixed::test_refused"].find("failure")
    assert refused_case is not None
    assert "could never start" in (refused_case.get("message") or "")
