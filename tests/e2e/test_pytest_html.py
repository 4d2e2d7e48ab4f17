"""pytest-html users: with `--html`, each supervised test's figures are columns of pytest-html's
table and its violation (or regression) report an extra, also under xdist; without pytest-html,
or with it switched off, the plugin runs as before. Read from the HTML file pytest-html wrote."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import browser
from helpers.plugin_types import RunPlugin

pytest.importorskip("pytest_html", reason="pytest-html is in the test extra: pip install '.[test]'")

TESTS = """
import os

import pytest


@pytest.mark.taichi_limits(cpu_s=0.5)
def test_spin():
    while True:
        pass


@pytest.mark.taichi_limits(mem_mb=1024)
def test_holds_memory():
    size = int(os.environ.get("HOLD_MB", "64")) * 1024 * 1024
    held = bytearray(size)
    held[::4096] = b"x" * len(held[::4096])  # every page touched: resident


def test_plain():
    pass
"""

COLUMNS = ["Own memory", "CPU", "Wall", "GPU", "Budget use"]


def _report(path: Path) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """(the table's header texts, test id -> its rows) of a pytest-html 4 report."""
    text = path.read_text(encoding="utf-8")
    headers = [html.unescape(h) for h in re.findall(r"<th[^>]*>([^<]*)</th>", text)]
    blob = re.search(r'data-jsonblob="([^"]*)"', text)
    assert blob is not None, "no data-jsonblob in pytest-html's report"
    tests: dict[str, list[dict[str, Any]]] = json.loads(html.unescape(blob.group(1)))["tests"]
    return headers, tests


def _cells(row: dict[str, Any]) -> list[str]:
    """The texts of the row's figure cells (the hidden sort keys left out)."""
    cells = row["resultsTableRow"][-len(COLUMNS) :]
    return [re.sub(r"<[^>]*>", "", re.sub(r"<span hidden[^>]*>\d*</span>", "", c)) for c in cells]


def _extras(row: dict[str, Any]) -> dict[str, str]:
    found = {}
    for extra in row["extras"]:
        content = extra["content"]
        assert content.startswith("data:text/plain;charset=utf-8;base64,")
        found[extra["name"]] = base64.b64decode(content.split(",", 1)[1]).decode()
    return found


def test_figures_are_columns_and_the_violation_an_extra(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(TESTS)
    result = run_plugin("--html=report.html", "--self-contained-html")
    result.assert_outcomes(failed=1, passed=2)
    headers, tests = _report(pytester.path / "report.html")
    assert headers[-len(COLUMNS) :] == COLUMNS

    (spin,) = tests["test_figures_are_columns_and_the_violation_an_extra.py::test_spin"]
    memory, cpu, wall, gpu, use = _cells(spin)
    assert memory.endswith("iB") and cpu.endswith(" s") and wall.endswith(" s")
    assert float(cpu.removesuffix(" s")) > 0.5  # caught over its cpu_s budget
    assert gpu == "not measured" or gpu.endswith("iB")
    assert int(use.removesuffix("%")) >= 100
    extras = _extras(spin)
    assert list(extras) == ["taichi_limits violation"]
    assert (
        extras["taichi_limits violation"].startswith("taichi_limits: cpu_s exceeded: ")
        and "stack at the moment of violation" in extras["taichi_limits violation"]
    )

    (held,) = tests["test_figures_are_columns_and_the_violation_an_extra.py::test_holds_memory"]
    assert _cells(held)[0].endswith("MiB") and _extras(held) == {}
    (plain,) = tests["test_figures_are_columns_and_the_violation_an_extra.py::test_plain"]
    assert _cells(plain) == ["", "", "", "", ""]  # not supervised: empty, the columns still align


def test_a_regression_is_an_extra(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(TESTS)
    saved = run_plugin("-k", "holds", "--taichi-limits-save-baseline=base.json")
    saved.assert_outcomes(passed=1)
    monkeypatch.setenv("HOLD_MB", "400")  # the test now holds 400 MiB instead of 64
    grown = run_plugin(
        "-k", "holds", "--taichi-limits-compare=base.json", "--html=b.html", "--self-contained-html"
    )
    grown.assert_outcomes(failed=1)
    _, tests = _report(pytester.path / "b.html")
    (row,) = tests["test_a_regression_is_an_extra.py::test_holds_memory"]
    extras = _extras(row)
    assert list(extras) == ["taichi_limits regression"]
    assert "grew" in extras["taichi_limits regression"]


def test_under_xdist_the_controller_fills_the_columns(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(TESTS)
    result = run_plugin("-n", "2", "--html=report.html", "--self-contained-html")
    result.assert_outcomes(failed=1, passed=2)
    _, tests = _report(pytester.path / "report.html")
    (spin,) = tests["test_under_xdist_the_controller_fills_the_columns.py::test_spin"]
    assert _cells(spin)[1].endswith(" s")
    violation = _extras(spin)["taichi_limits violation"]
    assert violation.startswith("taichi_limits: cpu_s exceeded: ")  # not the worker's line


def test_without_pytest_html_the_plugin_runs_as_before(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(TESTS)
    result = run_plugin("-p", "no:html", "-k", "holds or plain")
    result.assert_outcomes(passed=2)
    assert not list(pytester.path.glob("*.html"))


EXECUTABLE, WHY = browser.find_browser()


@pytest.mark.skipif(EXECUTABLE is None, reason=f"no browser: {WHY}")
def test_columns_sort_by_their_figures_in_a_browser(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    """pytest-html sorts by a cell's text: the hidden keys make "9.0 MiB" sort below "10.0 MiB"."""
    pytester.makepyfile(
        "import pytest\n"
        + "".join(
            f"@pytest.mark.taichi_limits(mem_mb=1024)\ndef test_{mb}mb():\n"
            f"    held = bytearray({mb} * 1024 * 1024)\n"
            f"    held[::4096] = b'x' * len(held[::4096])\n"
            for mb in (9, 40, 200)
        )
    )
    run_plugin("--html=report.html", "--self-contained-html").assert_outcomes(passed=3)
    assert EXECUTABLE is not None
    with browser.browser(EXECUTABLE) as chromium:
        page = chromium.new_page()
        page.goto((pytester.path / "report.html").as_uri())
        page.click('th[data-column-type="taichi_limits_memory"]')
        first = page.eval_on_selector_all(
            "#results-table tbody tr.collapsible td.col-testId",
            "cells => cells.map(c => c.textContent.split('::')[1])",
        )
        page.click('th[data-column-type="taichi_limits_memory"]')
        second = page.eval_on_selector_all(
            "#results-table tbody tr.collapsible td.col-testId",
            "cells => cells.map(c => c.textContent.split('::')[1])",
        )
        page.close()
    assert {tuple(first), tuple(second)} == {
        ("test_9mb", "test_40mb", "test_200mb"),
        ("test_200mb", "test_40mb", "test_9mb"),
    }
