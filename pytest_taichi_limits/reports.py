"""Session results: usage records, JSON report, baseline save and compare, summary, suggestions.

One plugin object, registered next to the runner's. Where each part runs:
- compare: in the process that ran the test (an xdist worker, or the only process), through the
  runner's `pytest_taichi_limits_reports` hook, before the reports are logged, so that a grown
  test fails like any other test; each worker reads the baseline itself, read-only;
- records, JSON, baseline save, summary: where reports are logged and the session ends, which is
  the controller under xdist (workers write nothing).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pytest

from . import baseline as baselines
from . import jsonreport, suggest, summary
from .collect import REGRESSION_ATTRIBUTE, RecordCollector, UsageRecord, record_from_usage
from .environment import session_environment
from .jsonreport import refuse_unsafe_target
from .outcomes import parent_report
from .records import Usage, Violation

PLUGIN_NAME = "taichi_limits_reports"
DEFAULT_TOP = 5


class TaichiLimitsRegressionWarning(pytest.PytestWarning):
    """A supervised test grew beyond the baseline's tolerance (--taichi-limits-compare-warn)."""


@dataclass(frozen=True)
class ReportOptions:
    json_path: str | None
    top: int
    save_path: str | None
    replace: bool
    compare_path: str | None
    tolerance: baselines.Tolerance
    warn_only: bool
    suggest: bool


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("taichi-limits")
    group.addoption(
        "--taichi-limits-json", dest="taichi_limits_json", metavar="PATH", default=None,
        help="write one JSON document with every supervised test's usage record and every "
        "violation to PATH, atomically (ini: taichi_limits_json)")
    parser.addini("taichi_limits_json", "write the session's JSON report here")
    group.addoption(
        "--taichi-limits-top", dest="taichi_limits_top", metavar="N", default=None,
        help=f"terminal summary: the N largest users of own memory, CPU and GPU (default "
        f"{DEFAULT_TOP}; 0 hides the tables) (ini: taichi_limits_top)")
    parser.addini("taichi_limits_top", "how many top consumers the terminal summary lists")
    group.addoption(
        "--taichi-limits-save-baseline", dest="taichi_limits_save_baseline", metavar="PATH",
        default=None,
        help="save the per-test peaks of the tests that passed to PATH (atomically); tests "
        "this run did not measure keep their entries unless --taichi-limits-baseline-replace")
    group.addoption(
        "--taichi-limits-baseline-replace", dest="taichi_limits_baseline_replace",
        action="store_true", default=False,
        help="with --taichi-limits-save-baseline: write only this run's tests, dropping the rest")
    group.addoption(
        "--taichi-limits-compare", dest="taichi_limits_compare", metavar="PATH", default=None,
        help="compare every supervised test with the baseline in PATH: a test that grew beyond "
        "the tolerance fails")
    group.addoption(
        "--taichi-limits-tolerance", dest="taichi_limits_tolerance", metavar="SPEC", default=None,
        help="allowed growth per resource, relative plus absolute, e.g. "
        f"'mem=10%%+8MB,cpu=25%%+0.5s,wall=off'; keys mem, cpu, wall, gpu; unnamed keys keep "
        f"their default ({baselines.DEFAULT_TOLERANCE_SPEC.replace('%', '%%')}) "
        "(ini: taichi_limits_tolerance)")
    parser.addini("taichi_limits_tolerance", "allowed growth against the baseline, per resource")
    group.addoption(
        "--taichi-limits-compare-warn", dest="taichi_limits_compare_warn", action="store_true",
        default=False,
        help="with --taichi-limits-compare: a test that grew gets a warning instead of failing")
    group.addoption(
        "--taichi-limits-suggest", dest="taichi_limits_suggest", action="store_true",
        default=False,
        help="after the tests, print the taichi_limits marker each supervised test should "
        "carry (measured peaks plus headroom) and an ini snippet every test fits under")


def read_options(config: pytest.Config) -> ReportOptions:
    def value(name: str) -> str | None:
        cli = config.getoption(name)
        if cli is not None:
            return str(cli)
        try:
            ini = config.getini(name)
        except ValueError:  # not an ini key
            return None
        return str(ini) if ini not in (None, "", []) else None

    top_text = value("taichi_limits_top")
    try:
        top = DEFAULT_TOP if top_text is None else int(top_text)
    except ValueError:
        top = -1
    if top < 0:
        raise pytest.UsageError(
            f"--taichi-limits-top / ini taichi_limits_top must be a whole number >= 0, got "
            f"{top_text!r}")
    try:
        tolerance = baselines.parse_tolerance(value("taichi_limits_tolerance"))
    except baselines.BaselineError as error:
        raise pytest.UsageError(f"--taichi-limits-tolerance: {error}") from None
    for option, path in (("--taichi-limits-json", value("taichi_limits_json")),
                         ("--taichi-limits-save-baseline", value("taichi_limits_save_baseline"))):
        if path is not None:
            try:
                refuse_unsafe_target(path)
            except OSError as error:
                raise pytest.UsageError(f"{option}: cannot write {path!r}: {error}") from None
    return ReportOptions(
        json_path=value("taichi_limits_json"),
        top=top,
        save_path=value("taichi_limits_save_baseline"),
        replace=bool(config.getoption("taichi_limits_baseline_replace")),
        compare_path=value("taichi_limits_compare"),
        tolerance=tolerance,
        warn_only=bool(config.getoption("taichi_limits_compare_warn")),
        suggest=bool(config.getoption("taichi_limits_suggest")),
    )


def register(config: pytest.Config) -> None:
    config.pluginmanager.register(TaichiLimitsReports(config, read_options(config)), PLUGIN_NAME)


class TaichiLimitsReports:
    """Records, JSON report, baseline, suggestions and the terminal summary of one session."""

    def __init__(self, config: pytest.Config, options: ReportOptions) -> None:
        self.config = config
        self.options = options
        self.environment = session_environment()
        # An xdist worker: it compares, but the controller records and writes.
        self.is_worker = hasattr(config, "workerinput")
        self.collector = RecordCollector()
        self.baseline: baselines.Baseline | None = None
        if options.compare_path is not None:
            try:
                self.baseline = baselines.load(options.compare_path)
            except baselines.BaselineError as error:
                raise pytest.UsageError(f"--taichi-limits-compare: {error}") from None
        self.written: list[str] = []  # what the summary tells about files written
        self.write_errors: list[str] = []

    # -- header ---------------------------------------------------------------------------------

    def pytest_report_header(self) -> list[str]:
        lines = []
        if self.baseline is not None:
            verdict = "warn" if self.options.warn_only else "fail"
            lines.append(f"taichi-limits: comparing with baseline {self.baseline.path} "
                         f"({len(self.baseline.tests)} tests); tolerance "
                         f"{self.options.tolerance.describe()}; a test that grew beyond it "
                         f"will {verdict}")
            lines += [f"taichi-limits: WARNING: {line}"
                      for line in self.baseline.environment_warnings(self.environment)]
        if self.options.save_path is not None:
            how = "replacing it" if self.options.replace else "merging into it"
            lines.append(f"taichi-limits: saving the peaks of passed tests to "
                         f"{self.options.save_path} ({how})")
        return lines

    # -- compare, in the process that ran the test ----------------------------------------------

    def pytest_taichi_limits_reports(self, item: pytest.Item, usage: Usage,
                                     violation: Violation | None,
                                     reports: list[pytest.TestReport]) -> None:
        if self.baseline is None or item.nodeid not in self.baseline.tests:
            return  # nothing to compare with: listed as new by the controller
        call_index = next((i for i, report in enumerate(reports) if report.when == "call"), None)
        if call_index is None or reports[call_index].skipped:
            return  # the test body did not run: its figures say nothing
        record = record_from_usage(item.nodeid, "passed", usage.as_dict(), None, None)
        compared = baselines.compare(record, self.baseline.tests[item.nodeid],
                                     self.options.tolerance)
        exceeded = [growth for growth in compared if growth.exceeded]
        if not exceeded:
            return
        warn_only = self.options.warn_only
        text = baselines.regression_report(exceeded, compared, self.baseline, item.nodeid,
                                           record, warn_only)
        if warn_only:
            try:
                # Attributed to the test's own line, where the user will look.
                path, line_index, _ = item.location
                warnings.warn_explicit(TaichiLimitsRegressionWarning(text),
                                       TaichiLimitsRegressionWarning,
                                       str(item.config.rootpath / path), (line_index or 0) + 1)
            except TaichiLimitsRegressionWarning:
                warn_only = False  # -W error::...: the user asked for warnings to fail
        setattr(reports[-1], REGRESSION_ATTRIBUTE, {
            "warn_only": warn_only, "text": text,
            "growths": [growth.as_dict() for growth in compared],
        })
        call = reports[call_index]
        if warn_only:
            return
        if call.passed and not hasattr(call, "wasxfail"):
            reports[call_index] = parent_report(item, "call", text, call)
        else:  # already failed (or an xfail): the regression is added to what it says
            call.sections.append(("taichi_limits regression", text))

    # -- records, where reports are logged ------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.is_worker:
            self.collector.add(report)

    def _baseline_section(self, records: list[UsageRecord]) -> dict[str, Any] | None:
        if self.baseline is None:
            return None
        measured = {record.nodeid for record in records if record.measured}
        return {
            "path": self.baseline.path,
            "tolerance": self.options.tolerance.describe(),
            "warn_only": self.options.warn_only,
            "regressions": [record.nodeid for record in records if record.regression],
            "new_tests": sorted(measured - set(self.baseline.tests)),
            "missing_tests": sorted(set(self.baseline.tests) - {r.nodeid for r in records}),
            "environment_warnings": self.baseline.environment_warnings(self.environment),
        }

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            return
        records = self.collector.records
        complete = int(exitstatus) not in (int(pytest.ExitCode.INTERRUPTED),
                                           int(pytest.ExitCode.INTERNAL_ERROR),
                                           int(pytest.ExitCode.USAGE_ERROR))
        if self.options.json_path is not None:
            document = jsonreport.document([record.as_dict() for record in records],
                                           self.environment, complete, int(exitstatus),
                                           self._baseline_section(records))
            self._write("JSON report", self.options.json_path,
                        lambda path: jsonreport.write(path, document))
        if self.options.save_path is not None:
            if not complete:
                self.written.append(f"baseline not saved to {self.options.save_path}: the "
                                    "session was interrupted")
            else:
                self._save_baseline(self.options.save_path, records)
        if self.write_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _save_baseline(self, path: str, records: list[UsageRecord]) -> None:
        def save(target: str) -> None:
            written, total = baselines.save(target, records, self.environment,
                                            self.options.replace)
            skipped = len(records) - written
            self.written.append(
                f"baseline saved to {target}: {written} tests written"
                + (f", {skipped} not (failed or skipped)" if skipped else "")
                + f", {total} in the file")

        self._write("baseline", path, save, announce=False)

    def _write(self, what: str, path: str, write: Any, announce: bool = True) -> None:
        try:
            write(path)
        except (OSError, baselines.BaselineError) as error:
            self.write_errors.append(f"cannot write the {what} to {path}: {error}")
            return
        if announce:
            self.written.append(f"{what} written to {path}")

    # -- terminal summary -----------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        records = self.collector.records
        lines: list[str] = []
        if records:
            lines += summary.top_consumers(records, self.options.top)
            lines += summary.violations(records)
        section = self._baseline_section(records)
        if section is not None:
            lines += summary.regressions(records, section["path"])
            lines += summary.test_lists(section["new_tests"], section["missing_tests"],
                                        self.config.get_verbosity() > 0)
            if not section["regressions"]:
                lines.append(f"no test grew beyond tolerance ({self.options.tolerance.describe()})"
                             f" against {section['path']}")
        if self.options.suggest:
            lines += suggest.lines(suggest.suggestions(records))
        lines += self.written
        if not lines and not self.write_errors:
            return
        terminalreporter.write_sep("=", "taichi-limits summary")
        for line in lines:
            terminalreporter.write_line(line)
        for line in self.write_errors:
            terminalreporter.write_line(f"ERROR: {line}", red=True)
