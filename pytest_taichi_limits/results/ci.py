"""Reports for CI and reviewers, written at the end of a session: the Markdown summary
(`--taichi-limits-markdown`, or GitHub's job summary on its own) and the HTML report
(`--taichi-limits-html`). Both are made from the session's `Report`, which the results plugin
(results/session.py) builds; this plugin only renders and writes it. It is registered only where
the session's files are written (not in an xdist worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from ..formats.jsonreport import Report, write_atomic
from ..render import html as htmlreport
from ..render import markdown
from .outputs import STEP_SUMMARY_NAME

PLUGIN_NAME = "taichi_limits_ci_reports"


class SessionReport(Protocol):
    def session_report(self, exitstatus: int) -> Report: ...


@dataclass(frozen=True)
class CiOutputs:
    """Where the reports go: absolute paths, checked before any test ran (results/outputs.py)."""

    markdown_path: str | None
    markdown_append: bool  # GitHub's job summary: appended to, as every step does
    html_path: str | None


def register(config: pytest.Config, outputs: CiOutputs, source: SessionReport, top: int) -> None:
    config.pluginmanager.register(TaichiLimitsCiReports(outputs, source, top), PLUGIN_NAME)


class TaichiLimitsCiReports:
    """Writes the Markdown summary and the HTML report where the session ends."""

    def __init__(self, outputs: CiOutputs, source: SessionReport, top: int) -> None:
        self.outputs = outputs
        self.source = source
        self.top = top
        self.written: list[str] = []
        self.errors: list[str] = []
        self.notes: list[str] = []  # the job summary is a courtesy: its failure is only noted

    @pytest.hookimpl(tryfirst=True)  # as the JSON report (results/session.py)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.outputs.markdown_path is None and self.outputs.html_path is None:
            return
        report = self.source.session_report(int(exitstatus))
        # An automatic job summary only for a run that supervised something: a plain pytest
        # step of the same job must not add an empty one.
        if self.outputs.markdown_path is not None and (
            not self.outputs.markdown_append or report.records
        ):
            self._markdown(self.outputs.markdown_path, markdown.summary(report, self.top))
        if self.outputs.html_path is not None:
            self._write(
                "HTML report",
                self.outputs.html_path,
                lambda path: write_atomic(path, htmlreport.render(report)),
            )
        if self.errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _markdown(self, path: str, text: str) -> None:
        if not self.outputs.markdown_append:
            self._write("Markdown summary", path, lambda target: write_atomic(target, text))
            return
        try:
            with open(path, "a", encoding="utf-8") as stream:
                stream.write(text)
        except OSError as error:  # checked at the start; a courtesy, never the run's verdict
            self.notes.append(
                f"the Markdown summary was not appended to the job summary {STEP_SUMMARY_NAME} "
                f"({path}): {error}"
            )
            return
        self.written.append(f"Markdown summary ({STEP_SUMMARY_NAME}) written to {path}")

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
        for line in self.notes:
            terminalreporter.write_line(f"WARNING: {line}", yellow=True)
        for line in self.errors:
            terminalreporter.write_line(f"ERROR: {line}", red=True)
