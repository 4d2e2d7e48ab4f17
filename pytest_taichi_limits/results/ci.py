"""Reports for CI and reviewers, written at the end of a session: the Markdown summary
(`--taichi-limits-markdown`, or GitHub's job summary on its own) and the HTML report
(`--taichi-limits-html`). Both are made from the session's `Report`, which the results plugin
(results/session.py) builds; this plugin only renders and writes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from ..formats.jsonreport import Report, write_atomic
from ..render import html as htmlreport
from ..render import markdown
from .outputs import OutputError, check_replaceable, resolve

PLUGIN_NAME = "taichi_limits_ci_reports"
#: The results plugin that holds the session's records (reports.PLUGIN_NAME; named here because
#: results/session.py imports this module).
REPORTS_PLUGIN_NAME = "taichi_limits_reports"
#: The option's dest; results/session.py reads it when it saves the baseline.
TIMELINE_IN_BASELINE = "taichi_limits_timeline_in_baseline"
#: Set by GitHub Actions in every step: a file whose Markdown shows on the run's summary page.
STEP_SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"
OFF = "off"


class _SessionReport(Protocol):
    def session_report(self, exitstatus: int) -> Report: ...


@dataclass(frozen=True)
class OutputOptions:
    markdown_path: str | None
    markdown_append: bool  # GitHub's job summary: appended to, as every step does
    html_path: str | None


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("taichi-limits")
    group.addoption(
        "--taichi-limits-markdown",
        dest="taichi_limits_markdown",
        metavar="PATH|off",
        default=None,
        help="write a Markdown summary (verdict, violations, regressions, top consumers, new and "
        f"missing tests) to PATH. Without it, under GitHub Actions (${STEP_SUMMARY_VARIABLE} "
        "set) the summary is appended to the job summary; 'off' stops that "
        "(ini: taichi_limits_markdown)",
    )
    parser.addini("taichi_limits_markdown", "write the Markdown summary here ('off': nowhere)")
    group.addoption(
        "--taichi-limits-html",
        dest="taichi_limits_html",
        metavar="PATH",
        default=None,
        help="write a self-contained HTML report (sortable table, a memory/CPU chart per test, "
        "violations and regressions) to PATH (ini: taichi_limits_html)",
    )
    parser.addini("taichi_limits_html", "write the HTML report here")
    group.addoption(
        "--taichi-limits-timeline-in-baseline",
        dest=TIMELINE_IN_BASELINE,
        action="store_true",
        default=False,
        help="with --taichi-limits-save-baseline: store each test's timeline in the baseline too "
        "(larger file; off by default)",
    )


def _value(config: pytest.Config, name: str) -> str | None:
    cli = config.getoption(name)
    if cli is not None:
        return str(cli)
    ini = config.getini(name)
    return str(ini) if ini not in (None, "", []) else None


def read_options(config: pytest.Config) -> OutputOptions:
    markdown_path = _value(config, "taichi_limits_markdown")
    append = False
    if markdown_path is not None and markdown_path.strip().lower() == OFF:
        markdown_path = None
    elif markdown_path is None and os.environ.get(STEP_SUMMARY_VARIABLE):
        markdown_path, append = os.environ[STEP_SUMMARY_VARIABLE], True
    html_path = _value(config, "taichi_limits_html")
    for option, path in (
        ("--taichi-limits-markdown", None if append else markdown_path),
        ("--taichi-limits-html", html_path),
    ):
        if path is not None:
            try:
                check_replaceable(option, path)
            except OutputError as error:
                raise pytest.UsageError(str(error)) from None
    # Fixed now: a test that changes the working directory must not move them.
    if markdown_path is not None and not append:
        markdown_path = resolve(markdown_path)
    return OutputOptions(markdown_path, append, None if html_path is None else resolve(html_path))


def register(config: pytest.Config) -> None:
    options = read_options(config)
    config.pluginmanager.register(TaichiLimitsCiReports(config, options), PLUGIN_NAME)


class TaichiLimitsCiReports:
    """Writes the Markdown summary and the HTML report where the session ends."""

    def __init__(self, config: pytest.Config, options: OutputOptions) -> None:
        self.config = config
        self.options = options
        self.is_worker = hasattr(config, "workerinput")  # the xdist controller writes
        self.written: list[str] = []
        self.errors: list[str] = []

    @pytest.hookimpl(tryfirst=True)  # as the JSON report (results/session.py)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        nothing_asked = self.options.markdown_path is None and self.options.html_path is None
        if self.is_worker or nothing_asked:
            return
        source: _SessionReport | None = self.config.pluginmanager.get_plugin(REPORTS_PLUGIN_NAME)
        if source is None:
            return
        report = source.session_report(int(exitstatus))
        top = int(getattr(getattr(source, "options", None), "top", 5))
        # An automatic job summary only for a run that supervised something: a plain pytest
        # step of the same job must not add an empty one.
        if self.options.markdown_path is not None and (
            not self.options.markdown_append or report.records
        ):
            self._markdown(self.options.markdown_path, markdown.summary(report, top))
        if self.options.html_path is not None:
            self._write(
                "HTML report",
                self.options.html_path,
                lambda path: write_atomic(path, htmlreport.render(report)),
            )
        if self.errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _markdown(self, path: str, text: str) -> None:
        if not self.options.markdown_append:
            self._write("Markdown summary", path, lambda target: write_atomic(target, text))
            return

        def append(target: str) -> None:
            with open(target, "a", encoding="utf-8") as stream:
                stream.write(text)

        self._write(f"Markdown summary (${STEP_SUMMARY_VARIABLE})", path, append)

    def _write(self, what: str, path: str, write: Any) -> None:
        try:
            write(path)
        except OSError as error:
            self.errors.append(f"cannot write the {what} to {path}: {error}")
            return
        self.written.append(f"{what} written to {path}")

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.written:
            terminalreporter.write_line(line)
        for line in self.errors:
            terminalreporter.write_line(f"ERROR: {line}", red=True)
