"""pytest-html integration: where pytest-html is installed and `--html` asks for its report, each
supervised test's figures become columns of its results table (own memory, CPU, wall, GPU, budget
use) and its violation report, and its regression if it grew, become extras (links under "Links",
the text in the report), through pytest-html's own hooks.

Optional: pytest_html is imported only once pytest-html is active and a report was asked for;
without it nothing here runs. Registered where pytest-html writes its report (never in an xdist
worker): the figures come from the record each supervised test's teardown report carries.
"""

from __future__ import annotations

import html
from typing import Any

import pytest

from ..config.units import human_bytes
from ..model.records import RecordError, UsageRecord
from .collect import RECORD_ATTRIBUTE

PLUGIN_NAME = "taichi_limits_pytest_html"
#: pytest-html's plugin name (its pytest11 entry point) and the dest of its --html option.
PYTEST_HTML = "html"
HTML_PATH_DEST = "htmlpath"

#: (header, column type): the column type names the cells for pytest-html's sorting.
COLUMNS = (
    ("Own memory", "taichi_limits_memory"),
    ("CPU", "taichi_limits_cpu"),
    ("Wall", "taichi_limits_wall"),
    ("GPU", "taichi_limits_gpu"),
    ("Budget use", "taichi_limits_use"),
)
VIOLATION_EXTRA = "taichi_limits violation"
REGRESSION_EXTRA = "taichi_limits regression"
_VIOLATION_PREFIX = "taichi_limits: "


def register(config: pytest.Config) -> None:
    """Join pytest-html's report, if pytest-html is active and `--html` was given."""
    if hasattr(config, "workerinput"):  # the xdist controller writes pytest-html's report
        return
    if not config.pluginmanager.hasplugin(PYTEST_HTML) or not config.getoption(
        HTML_PATH_DEST, None
    ):
        return
    config.pluginmanager.register(PytestHtmlColumns(), PLUGIN_NAME)


def _sort_key(value: float) -> str:
    # pytest-html sorts a column by the text of its cells: a hidden, zero-padded key before the
    # figure makes that order numeric (a test without figures has no key and sorts first).
    return f'<span hidden="">{max(0, round(value * 1000)):020d}</span>'


def figure_cells(record: UsageRecord) -> list[str]:
    """The five cells of a supervised test's row, from its record."""
    memory, cpu, wall = float(record.own_memory_bytes), record.cpu_s, record.wall_s
    gpu = record.gpu_peak_bytes
    use = record.budget_use()
    use_max = max(use.values()) if use else None
    use_title = ", ".join(f"{key} {100 * share:.0f}%" for key, share in sorted(use.items()))
    gpu_text = (
        f"{_sort_key(float(gpu))}{human_bytes(float(gpu))}"
        if gpu is not None
        else f'<span title="{html.escape(record.gpu_note)}">not measured</span>'
    )
    texts = (
        f"{_sort_key(memory)}{human_bytes(memory)}",
        f"{_sort_key(cpu)}{cpu:.2f} s",
        f"{_sort_key(wall)}{wall:.2f} s",
        gpu_text,
        "—" if use_max is None else f"{_sort_key(use_max)}{100 * use_max:.0f}%",
    )
    cells = [
        f'<td class="col-{column}">{text}</td>'
        for (_, column), text in zip(COLUMNS, texts, strict=True)
    ]
    cells[-1] = cells[-1].replace("<td ", f'<td title="{html.escape(use_title)}" ', 1)
    return cells


def empty_cells() -> list[str]:
    return [f'<td class="col-{column}"></td>' for _, column in COLUMNS]


class PytestHtmlColumns:
    """Adds the columns and extras while pytest-html builds its report."""

    def __init__(self) -> None:
        self._cells: dict[str, list[str]] = {}  # test id -> its figure cells
        self._failures: dict[str, list[str]] = {}  # test id -> its failure texts, until teardown

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells += [
            f'<th class="sortable" data-column-type="{column}">{header}</th>'
            for header, column in COLUMNS
        ]

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: Any, cells: list[str]) -> None:
        cells += self._cells.get(str(getattr(report, "nodeid", "")), empty_cells())

    # Before pytest-html's own (trylast): it makes a test's rows when its teardown report comes.
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self._failures.setdefault(report.nodeid, []).append(report.longreprtext)
        if report.when != "teardown":
            return
        failures = self._failures.pop(report.nodeid, [])
        data = getattr(report, RECORD_ATTRIBUTE, None)
        if data is None:
            return  # not supervised
        try:
            record = UsageRecord.from_json(data)
        except RecordError:
            return  # results/collect.py reports it; the row keeps empty cells
        self._cells[report.nodeid] = figure_cells(record)
        self._add_extras(report, record, failures)

    @staticmethod
    def _add_extras(report: pytest.TestReport, record: UsageRecord, failures: list[str]) -> None:
        from pytest_html import extras  # an optional dependency: present, since we registered

        added = []
        if record.violation is not None:
            text = violation_text(failures, record.violation.resource)
            if text is not None:
                added.append(extras.text(text, name=VIOLATION_EXTRA))
        if record.regression is not None:
            added.append(extras.text(record.regression.text, name=REGRESSION_EXTRA))
        if added:
            report.extras = [*getattr(report, "extras", []), *added]  # type: ignore[attr-defined]


def violation_text(failures: list[str], resource: str) -> str | None:
    """The violation report among a test's failure texts, as the failed test showed it (from its
    headline on: under xdist a line naming the worker comes first)."""
    headline = f"{_VIOLATION_PREFIX}{resource} exceeded"
    for text in failures:
        start = text.find(headline)
        if start >= 0:
            return text[start:]
    return None
