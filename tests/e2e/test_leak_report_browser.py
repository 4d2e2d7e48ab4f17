"""Leak hunting in the HTML report, in a real browser: the section, and the per-round chart beside
each timeline drawn without a console error. Skips, saying why, where no Chromium (or no
Playwright package) is found."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import browser, report_files

from pytest_taichi_limits.render import html as htmlreport

EXECUTABLE, WHY = browser.find_browser()
pytestmark = pytest.mark.skipif(
    EXECUTABLE is None, reason=f"no browser for the HTML report test: {WHY}"
)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    assert EXECUTABLE is not None
    path = tmp_path / "report.html"
    path.write_text(htmlreport.render(report_files.with_leaks()), encoding="utf-8")
    with browser.browser(EXECUTABLE) as chromium:
        opened = chromium.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        opened.on(
            "console",
            lambda message: errors.append(message.text) if message.type == "error" else None,
        )
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.goto(path.as_uri())
        yield opened
        assert errors == [], f"errors in the browser console: {errors}"


def test_the_leak_and_its_rounds_are_drawn(page: Any) -> None:
    section = page.locator("#leaks")
    assert section.locator("h2").inner_text() == "Leak hunting (1 of 3 tests leaked)"
    rows = section.locator("tbody tr")
    assert rows.count() == 2  # the leak and the test whose rounds were not judged
    assert "1 new field per round, made at tests/test_sim.py:42 in step" in section.inner_text()
    # The leak is a violation: its charts are drawn on load, the per-round one beside them.
    charts = page.locator("#violations .charts").first
    rounds = charts.locator("svg").filter(has_text="own memory per round (MiB): leak")
    assert rounds.count() == 1
    assert rounds.locator("circle.round").count() == 7
    assert rounds.locator("line.lim").count() == 1  # warm-up | measured
    assert rounds.locator("line.allow").count() == 1  # what the allowance lets through
    # A test that hunted and did not leak: its row's chart opens with the rounds too.
    row = page.locator("#table tbody tr", has_text="test_clean")
    row.locator("button.show").click()
    detail = page.locator("#table tbody tr.detail")
    assert detail.locator("svg").filter(has_text="no leak").count() == 1
