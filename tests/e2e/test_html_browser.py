"""The HTML report in a real browser: it sorts, filters, draws every chart, logs no error, and
fits a phone. Skips, saying why, where no Chromium (or no Playwright package) is found."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import browser, report_files

from pytest_taichi_limits.formats.jsonreport import Report
from pytest_taichi_limits.render import html as htmlreport

EXECUTABLE, WHY = browser.find_browser()
pytestmark = pytest.mark.skipif(
    EXECUTABLE is None, reason=f"no browser for the HTML report test: {WHY}"
)

MANY = 5000


def _big_report() -> Report:
    """The examples' kinds of records plus MANY plain ones, like a big suite."""
    records = list(report_files.over_budget_document()["records"]) + list(
        report_files.with_baseline_document()["records"]
    )
    records.append(report_files.record("tests/test_a.py::test_no_timeline", timeline=None))
    for index in range(MANY):
        records.append(
            report_files.record(
                f"tests/test_x_many.py::test_{index:04d}",
                memory_mb=(index * 7919) % 1000 / 10,
                cpu_s=(index * 104729) % 997 / 100,
                timeline=report_files.timeline(0.5, 3.0, 0.2),
            )
        )
    return report_files.report(
        records, report_files.with_baseline_document()["baseline"], exit_status=1
    )


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    assert EXECUTABLE is not None
    with browser.browser(EXECUTABLE) as launched:
        yield launched


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(htmlreport.render(_big_report()), encoding="utf-8")
    return path


@pytest.fixture
def page(chromium: Any, report_page: Path) -> Iterator[Any]:
    opened = chromium.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    opened.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(report_page.as_uri())
    yield opened
    assert errors == [], f"errors in the browser console: {errors}"
    opened.close()


def _visible_ids(page: Any) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#table tbody tr:not(.detail)",
        "rows => rows.filter(r => !r.hidden).map(r => r.cells[0].firstChild.textContent.trim())",
    )
    return ids


def _column(page: Any, index: int) -> list[float]:
    values: list[float] = page.eval_on_selector_all(
        "#table tbody tr:not(.detail)",
        f"rows => rows.map(r => parseFloat(r.dataset.k.split(' ')[{index}]))",
    )
    return values


def test_violation_charts_render_on_load(page: Any) -> None:
    charts = page.locator("#violations .charts")
    assert charts.count() == 2
    for index in range(charts.count()):
        chart = charts.nth(index)
        assert chart.locator("svg").count() == 2  # memory and CPU
        points = chart.locator("polyline").first.get_attribute("points")
        assert points and len(points.split()) > 2
        assert chart.locator("line.vio").count() == 2  # the moment is marked on both
    assert (
        page.locator("#violations pre")
        .first.inner_text()
        .startswith("taichi_limits: mem_mb exceeded: 281.5 MiB when caught")
    )


def test_every_row_chart_renders(page: Any) -> None:
    """Each named test's charts, and every 50th shown of the many (all alike), open and draw."""
    positions = page.eval_on_selector_all(
        "#table tbody tr:not([hidden])",
        "rows => rows.filter((r, n) => "
        "!r.cells[0].textContent.includes('test_x_many') || n % 50 === 0).map(r => r.dataset.i)",
    )
    assert 9 + 8 <= len(positions) <= 9 + 10  # the named ones and every 50th
    for position in positions:
        row = page.locator(f'#table tbody tr[data-i="{position}"]')
        row.locator("button.show").click()
        assert row.locator("button.show").get_attribute("aria-expanded") == "true"
        detail = page.locator(f'#table tbody tr[data-i="{position}"] + tr.detail')
        if "test_no_timeline" in row.inner_text():
            assert "No timeline" in detail.inner_text()
            continue
        assert detail.locator("svg").count() >= 2
        assert len((detail.locator("polyline").first.get_attribute("points") or "").split()) > 2
    # a GPU-measured test gets its third chart
    gpu = page.locator("#table tbody tr.detail svg").filter(has_text="GPU memory")
    assert gpu.count() == 1


def test_table_sorts_by_each_column(page: Any) -> None:
    total = MANY + 9
    memory_header = page.locator("#table thead button", has_text="Own memory")
    memory_header.click()
    values = _column(page, 0)
    assert len(values) == total and values == sorted(values)
    memory_header.click()
    assert _column(page, 0) == sorted(values, reverse=True)
    assert (
        page.locator("#table thead th", has_text="Own memory").get_attribute("aria-sort")
        == "descending"
    )
    page.locator("#table thead button", has_text="CPU").click()
    cpu = _column(page, 1)
    assert cpu == sorted(cpu)
    page.locator("#table thead button", has_text="Test").click()
    ids = _visible_ids(page)
    assert ids == sorted(ids)


def test_only_a_page_of_rows_is_laid_out_until_asked(page: Any) -> None:
    assert len(_visible_ids(page)) == htmlreport.PAGE_ROWS
    assert "the first 500 shown" in page.inner_text("#count")
    page.click("#more")
    assert len(_visible_ids(page)) == MANY + 9
    assert page.locator("#more").is_hidden()


def test_filter_by_text_and_kind(page: Any) -> None:
    page.fill("#filter", "::TEST_BIG")
    assert _visible_ids(page) == ["tests/test_big.py::test_big"]
    assert page.inner_text("#count") == f"1 of {MANY + 9} match"
    page.fill("#filter", "")
    page.select_option("#show", "violation")
    assert _visible_ids(page) == ["tests/test_big.py::test_big", "tests/test_big.py::test_spin"]
    page.select_option("#show", "regression")
    assert _visible_ids(page) == ["tests/test_a.py::test_grown", "tests/test_a.py::test_warned"]
    page.select_option("#show", "skipped")
    assert _visible_ids(page) == ["tests/test_small.py::test_skipped"]


def test_regressions_show_before_and_after(page: Any) -> None:
    rows = page.locator("#regressions tbody tr")
    assert rows.count() == 2
    first = rows.first.inner_text()
    assert "100.0 MiB" in first and "200.0 MiB" in first and "+100.0 MiB (+100.0%)" in first
    assert rows.first.locator("svg.bars rect").count() == 2


def test_the_regression_view_has_allowed_a_legend_the_range_and_what_to_do(page: Any) -> None:
    """Issue 21 item 4: "allowed up to" beside before and after, a legend for the bars, the
    baseline's range on the grown test's chart, and the one line saying what to do."""
    section = page.locator("#regressions")
    header = section.locator("thead").inner_text()
    assert "Before" in header and "After" in header and "Allowed up to" in header
    assert "126.0 MiB" in section.locator("tbody tr").first.inner_text()
    assert section.locator("tbody tr").first.locator("svg.bars line.allowed").count() == 1
    assert "allowed up to: before plus the tolerance" in section.locator(".legend").inner_text()
    todo = section.locator(".todo").inner_text()
    assert "taichi-limits accept baseline.json REPORT.json TEST ..." in todo
    grown = section.locator("article.grown .charts").first
    memory = grown.locator("svg").first
    assert memory.locator("rect.band").count() == 1  # the baseline's range
    assert memory.locator("line.allow").count() == 1  # and what is allowed


#: A phone's width: narrower than any laptop window, as wide as a big phone held upright.
PHONE_WIDTH_PX = 400

#: What a page at PHONE_WIDTH_PX shows that a person could not reach without scrolling sideways:
#: the page's own overflow, every box that scrolls sideways (a table or a stack wider than the
#: screen), and every control (button, field, menu, fold) that lies partly off the screen or under
#: another element.
_OFF_SCREEN = """() => {
  const width = window.innerWidth;
  // As a reader finds the page: nothing scrolled sideways (a click may have scrolled a box).
  for (const e of document.querySelectorAll("body *")) { e.scrollLeft = 0; }
  const boxes = Array.from(document.querySelectorAll("body *"))
    .filter(e => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== "visible")
    .map(e => `${e.tagName.toLowerCase()}.${e.className} ${e.scrollWidth}px in ${e.clientWidth}px`);
  const controls = [];
  for (const e of document.querySelectorAll("button, input, select, summary, a[href]")) {
    if (e.offsetParent === null) { continue; }
    // Scrolled to vertically only: a sideways scroll is what must not be needed.
    window.scrollBy(0, e.getBoundingClientRect().top - window.innerHeight / 2);
    const box = e.getBoundingClientRect();
    const name = `${e.tagName.toLowerCase()} "${(e.textContent || e.id).trim().slice(0, 30)}"`;
    if (box.left < 0 || box.right > width + 0.5) {
      controls.push(`${name} at ${Math.round(box.left)}..${Math.round(box.right)}px`);
      continue;
    }
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    if (hit === null || !(hit === e || e.contains(hit))) {
      controls.push(`${name} is covered`);
    }
  }
  window.scrollTo(0, 0);
  return {page: document.documentElement.scrollWidth - width, boxes, controls};
}"""


def _phone_documents() -> dict[str, Report]:
    return {
        "violations": report_files.over_budget(),
        "regressions": report_files.with_baseline(),
        "awkward_ids": report_files.awkward_ids(),
    }


@pytest.mark.parametrize("name", sorted(_phone_documents()))
def test_fits_a_phone_with_every_control_reachable(
    chromium: Any, tmp_path: Path, name: str
) -> None:
    """At 400 px the page never scrolls sideways, no table or stack needs a sideways scroll,
    and every control can be reached and clicked, also with every test's charts open."""
    path = tmp_path / "report.html"
    path.write_text(htmlreport.render(_phone_documents()[name]), encoding="utf-8")
    phone = chromium.new_page(viewport={"width": PHONE_WIDTH_PX, "height": 800})
    phone.goto(path.as_uri())
    closed = phone.evaluate(_OFF_SCREEN)
    for button in phone.locator("#table button.show").all():
        button.click()
    assert phone.locator("#table tr.detail").count() == phone.locator("#table button.show").count()
    opened = phone.evaluate(_OFF_SCREEN)
    phone.close()
    assert closed == {"page": 0, "boxes": [], "controls": []}
    assert opened == {"page": 0, "boxes": [], "controls": []}


def test_a_big_report_fits_a_phone(chromium: Any, report_page: Path) -> None:
    phone = chromium.new_page(viewport={"width": PHONE_WIDTH_PX, "height": 844})
    phone.goto(report_page.as_uri())
    found = phone.evaluate(_OFF_SCREEN)
    phone.close()
    assert found == {"page": 0, "boxes": [], "controls": []}


def test_the_phone_check_sees_a_control_off_screen(chromium: Any, tmp_path: Path) -> None:
    path = tmp_path / "wide.html"
    path.write_text(
        '<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width">'
        '</head><body><div style="overflow-x:auto"><table><tr><td style="min-width:600px">'
        'wide</td><td><button type="button">far</button></td></tr></table></div></body></html>',
        encoding="utf-8",
    )
    phone = chromium.new_page(viewport={"width": PHONE_WIDTH_PX, "height": 800})
    phone.goto(path.as_uri())
    found = phone.evaluate(_OFF_SCREEN)
    phone.close()
    assert found["page"] == 0
    assert len(found["boxes"]) == 1 and found["boxes"][0].startswith("div.")
    assert len(found["controls"]) == 1 and found["controls"][0].startswith('button "far" at ')
