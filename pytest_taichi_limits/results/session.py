"""Session results: usage records, JSON report, baseline save and compare, summary, suggestions.

One plugin object, registered next to the runner's. Where each part runs:
- compare: in the process that ran the test (an xdist worker, or the only process), through the
  runner's `pytest_taichi_limits_reports` hook, before the reports are logged, so that a grown
  test fails like any other test; each worker reads the baseline itself, read-only;
- records, JSON, baseline save, summary: where reports are logged and the session ends, which is
  the controller under xdist (workers write nothing).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from ..formats import baseline as baselines
from ..formats import jsonreport
from ..formats.environment import run_source, session_environment
from ..formats.jsonreport import BaselineSection, Report, Source
from ..model.records import Regression, Usage, UsageRecord, Violation
from ..model.warnings import TaichiLimitsRegressionWarning
from ..render import suggest, summary
from . import ci
from .collect import RecordCollector, attach
from .outcomes import (
    combined_outcome,
    failure_reason,
    give_durations,
    interrupted_report,
    is_parent_made,
    parent_report,
)
from .outputs import OutputError, check_distinct, check_replaceable, resolve
from .usagelog import UsageLog

PLUGIN_NAME = "taichi_limits_reports"
LOG_PLUGIN_NAME = "taichi_limits_log"
DEFAULT_TOP = 5
#: The baseline of --taichi-limits-compare, once read (the results and admission share it).
_BASELINE_KEY = pytest.StashKey[baselines.Baseline]()


def compared_baseline(config: pytest.Config, path: str) -> baselines.Baseline:
    """The baseline at `path`, read once per process: the comparison and admission by baseline
    see the same figures, however the file changes during the run. Raises BaselineError."""
    if _BASELINE_KEY not in config.stash:
        config.stash[_BASELINE_KEY] = baselines.load(path)
    return config.stash[_BASELINE_KEY]


@dataclass(frozen=True)
class ReportOptions:
    json_path: str | None  # absolute, resolved at configure time
    top: int
    save_path: str | None  # absolute
    replace: bool
    compare_path: str | None
    tolerance: baselines.Tolerance
    warn_only: bool
    suggest: bool
    log_path: str | None  # absolute
    typed: Mapping[str, str | None]  # output option -> the path as the user gave it


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("taichi-limits")
    group.addoption(
        "--taichi-limits-json",
        dest="taichi_limits_json",
        metavar="PATH",
        default=None,
        help="write one JSON document with every supervised test's usage record and every "
        "violation to PATH, atomically (ini: taichi_limits_json)",
    )
    parser.addini("taichi_limits_json", "write the session's JSON report here")
    group.addoption(
        "--taichi-limits-log",
        dest="taichi_limits_log",
        metavar="PATH",
        default=None,
        help="append one JSON line per supervised test (usage) and per violation to PATH "
        "(ini: taichi_limits_log)",
    )
    parser.addini("taichi_limits_log", "append JSON lines of usage and violations here")
    group.addoption(
        "--taichi-limits-top",
        dest="taichi_limits_top",
        metavar="N",
        default=None,
        help=f"terminal summary: the N largest users of own memory, CPU and GPU (default "
        f"{DEFAULT_TOP}; 0 hides the tables) (ini: taichi_limits_top)",
    )
    parser.addini("taichi_limits_top", "how many top consumers the terminal summary lists")
    group.addoption(
        "--taichi-limits-save-baseline",
        dest="taichi_limits_save_baseline",
        metavar="PATH",
        default=None,
        help="save the figures of the tests that passed to PATH (atomically); saving again "
        "widens each test's range (min, max, number of runs); tests this run did not measure "
        "keep their entries unless --taichi-limits-baseline-replace",
    )
    group.addoption(
        "--taichi-limits-baseline-replace",
        dest="taichi_limits_baseline_replace",
        action="store_true",
        default=False,
        help="with --taichi-limits-save-baseline: write only this run's tests, dropping the rest "
        "and starting every range over",
    )
    group.addoption(
        "--taichi-limits-compare",
        dest="taichi_limits_compare",
        metavar="PATH",
        default=None,
        help="compare every supervised test with the baseline in PATH: a test that grew beyond "
        "the tolerance above the largest figure the baseline saw fails",
    )
    group.addoption(
        "--taichi-limits-tolerance",
        dest="taichi_limits_tolerance",
        metavar="SPEC",
        default=None,
        help="allowed growth per resource, relative plus absolute, e.g. "
        f"'mem=10%%+8MiB,cpu=25%%+0.5s,wall=off'; keys mem, cpu, wall, gpu, each once; byte "
        "units are binary (MB = MiB); unnamed keys keep their default "
        f"({baselines.DEFAULT_TOLERANCE_SPEC.replace('%', '%%')}) (ini: taichi_limits_tolerance)",
    )
    parser.addini("taichi_limits_tolerance", "allowed growth against the baseline, per resource")
    group.addoption(
        "--taichi-limits-compare-warn",
        dest="taichi_limits_compare_warn",
        action="store_true",
        default=False,
        help="with --taichi-limits-compare: a test that grew gets a warning instead of failing",
    )
    group.addoption(
        "--taichi-limits-suggest",
        dest="taichi_limits_suggest",
        action="store_true",
        default=False,
        help="after the tests, print the taichi_limits marker each supervised test should "
        "carry (measured peaks plus headroom) and an ini snippet every test fits under",
    )
    ci.add_options(parser)  # Markdown and HTML reports, timelines in the baseline


def _value(config: pytest.Config, name: str) -> tuple[str | None, str]:
    """(text, where it came from: the flag or the ini key, for error messages)."""
    flag = "--" + name.replace("_", "-")
    cli = config.getoption(name)
    if cli is not None:
        return str(cli), flag
    try:
        ini = config.getini(name)
    except ValueError:  # not an ini key
        return None, flag
    if ini in (None, "", []):
        return None, flag
    return str(ini), f"ini option {name}"


def _top(config: pytest.Config) -> int:
    text, where = _value(config, "taichi_limits_top")
    try:
        top = DEFAULT_TOP if text is None else int(text)
    except ValueError:
        top = -1
    if top < 0:
        raise pytest.UsageError(f"{where} must be a whole number >= 0, got {text!r}")
    return top


def _tolerance(config: pytest.Config) -> baselines.Tolerance:
    text, where = _value(config, "taichi_limits_tolerance")
    try:
        return baselines.parse_tolerance(text)
    except baselines.BaselineError as error:
        raise pytest.UsageError(f"{where}: {error}") from None


def _path(config: pytest.Config, name: str) -> str | None:
    text = _value(config, name)[0]
    return None if text is None else resolve(text)


#: Output options, by their dest.
OUTPUTS = {
    "taichi_limits_json": "--taichi-limits-json",
    "taichi_limits_save_baseline": "--taichi-limits-save-baseline",
    "taichi_limits_log": "--taichi-limits-log",
}


def read_options(config: pytest.Config) -> ReportOptions:
    """Validate every results option; raise pytest.UsageError naming the first bad one."""
    compare_path = _value(config, "taichi_limits_compare")[0]
    replace = bool(config.getoption("taichi_limits_baseline_replace"))
    warn_only = bool(config.getoption("taichi_limits_compare_warn"))
    save_path = _path(config, "taichi_limits_save_baseline")
    # A modifier without its option would be ignored silently: the user meant something.
    if replace and save_path is None:
        raise pytest.UsageError(
            "--taichi-limits-baseline-replace only works with --taichi-limits-save-baseline=PATH"
        )
    if warn_only and compare_path is None:
        raise pytest.UsageError(
            "--taichi-limits-compare-warn only works with --taichi-limits-compare=PATH"
        )
    return ReportOptions(
        json_path=_path(config, "taichi_limits_json"),
        top=_top(config),
        save_path=save_path,
        replace=replace,
        compare_path=compare_path,
        tolerance=_tolerance(config),
        warn_only=warn_only,
        suggest=bool(config.getoption("taichi_limits_suggest")),
        log_path=_path(config, "taichi_limits_log"),
        typed={option: _value(config, name)[0] for name, option in OUTPUTS.items()},
    )


def check_outputs(config: pytest.Config, options: ReportOptions) -> None:
    """Before any test: every output can be written, and no two share a file."""
    junitxml = getattr(config.option, "xmlpath", None)
    try:
        check_distinct({**options.typed, "--junitxml": str(junitxml) if junitxml else None})
        for option in ("--taichi-limits-json", "--taichi-limits-save-baseline"):
            typed = options.typed[option]
            if typed is not None:
                check_replaceable(option, typed)
    except OutputError as error:
        raise pytest.UsageError(str(error)) from None
    if options.save_path is not None:
        try:  # a corrupt, conflicted or old file would be found only after every test ran
            baselines.previous_for_save(options.save_path, options.replace)
        except baselines.BaselineError as error:
            raise pytest.UsageError(
                f"--taichi-limits-save-baseline: {error} (or overwrite it with "
                "--taichi-limits-baseline-replace)"
            ) from None


def register(config: pytest.Config) -> None:
    options = read_options(config)
    # The xdist controller checked the outputs already; its workers write only the log.
    if not hasattr(config, "workerinput"):
        check_outputs(config, options)
    typed_log = options.typed["--taichi-limits-log"]
    if typed_log is not None:
        log = UsageLog(typed_log)
        log.check()
        config.pluginmanager.register(log, LOG_PLUGIN_NAME)
    config.pluginmanager.register(TaichiLimitsReports(config, options), PLUGIN_NAME)
    ci.register(config)


def _mark_interrupted(item: pytest.Item, reports: list[pytest.TestReport], reason: str) -> None:
    """The phase the test stopped the session in is reported skipped, never passed: without a
    report of the child's for it, the parent would otherwise have made a passing one."""
    if is_parent_made(reports[0]) and reports[0].passed:
        reports[0] = interrupted_report(item, "setup", reason)
    elif reports[0].passed and not any(report.when == "call" for report in reports):
        reports.insert(1, interrupted_report(item, "call", reason))


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
                self.baseline = compared_baseline(config, options.compare_path)
            except baselines.BaselineError as error:
                raise pytest.UsageError(f"--taichi-limits-compare: {error}") from None
        self.written: list[str] = []  # what the summary tells about files written
        self.write_errors: list[str] = []
        self.interrupted = False  # Ctrl-C or pytest.exit, whatever the exit status says
        self.source: Source | None = None  # the run's commit, branch, command line
        self.loop_finished = False  # the run loop returned: every selected test had its turn
        self.interrupt_status = int(pytest.ExitCode.INTERRUPTED)  # what pytest exits with then

    # -- header ---------------------------------------------------------------------------------

    def pytest_report_header(self) -> list[str]:
        lines = []
        if self.baseline is not None:
            verdict = "warn" if self.options.warn_only else "fail"
            lines.append(
                f"taichi-limits: comparing with baseline {self.baseline.path} "
                f"({len(self.baseline.tests)} tests); tolerance "
                f"{self.options.tolerance.describe()}; a test that grew beyond it "
                f"will {verdict}"
            )
            lines += [
                f"taichi-limits: WARNING: {line}"
                for line in self.baseline.environment_warnings(self.environment)
            ]
        if self.options.save_path is not None:
            how = "replacing it" if self.options.replace else "merging into it"
            lines.append(
                f"taichi-limits: saving the figures of passed tests to "
                f"{self._shown(self.options.save_path)} ({how})"
            )
        return lines

    # -- in the process that ran the test: durations, compare, the record -----------------------

    @pytest.hookimpl(trylast=True)  # after any other implementation changed the reports
    def pytest_taichi_limits_reports(
        self,
        item: pytest.Item,
        usage: Usage,
        violation: Violation | None,
        reports: list[pytest.TestReport],
    ) -> None:
        if usage.interrupted:
            _mark_interrupted(item, reports, usage.interrupted)
        give_durations(reports, usage.wall_s)
        regression = None if usage.interrupted else self._compare(item, usage, reports)
        outcome = combined_outcome(
            {report.when: report for report in reports}, interrupted=bool(usage.interrupted)
        )
        reason = failure_reason(reports) if outcome in ("failed", "error") else ""
        attach(reports[-1], UsageRecord.from_usage(usage, outcome, violation, regression, reason))

    def _compare(
        self, item: pytest.Item, usage: Usage, reports: list[pytest.TestReport]
    ) -> Regression | None:
        """The regression against the baseline, if the test grew beyond tolerance (and the
        call report turned into a failure unless only warned)."""
        if self.baseline is None or item.nodeid not in self.baseline.tests:
            return None  # nothing to compare with: listed as new by the controller
        call_index = next((i for i, report in enumerate(reports) if report.when == "call"), None)
        if call_index is None or reports[call_index].skipped:
            return None  # the test body did not run: its figures say nothing
        record = UsageRecord.from_usage(usage, "passed", None)
        compared = baselines.compare(
            record, self.baseline.tests[item.nodeid], self.options.tolerance
        )
        exceeded = [growth for growth in compared if growth.exceeded]
        if not exceeded:
            return None
        warn_only = self.options.warn_only
        text = baselines.regression_report(
            exceeded,
            compared,
            self.baseline,
            item.nodeid,
            record,
            warn_only,
            self.options.typed.get("--taichi-limits-json"),
        )
        if warn_only:
            try:
                # Attributed to the test's own line, where the user will look.
                path, line_index, _ = item.location
                warnings.warn_explicit(
                    TaichiLimitsRegressionWarning(text),
                    TaichiLimitsRegressionWarning,
                    str(item.config.rootpath / path),
                    (line_index or 0) + 1,
                )
            except TaichiLimitsRegressionWarning:
                warn_only = False  # -W error::...: the user asked for warnings to fail
        call = reports[call_index]
        if not warn_only:
            if call.passed and not hasattr(call, "wasxfail"):
                reports[call_index] = parent_report(item, "call", text, call)
            else:  # already failed (or an xfail): the regression is added to what it says
                call.sections.append(("taichi_limits regression", text))
        return Regression(warn_only, text, tuple(compared))

    # -- records, where reports are logged ------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.is_worker:
            self.collector.add(report)

    def _baseline_section(self, records: list[UsageRecord]) -> BaselineSection | None:
        if self.baseline is None:
            return None
        measured = {record.nodeid for record in records if record.measured}
        return BaselineSection(
            path=self.baseline.path,
            tolerance=self.options.tolerance.describe(),
            warn_only=self.options.warn_only,
            regressions=tuple(record.nodeid for record in records if record.regression),
            new_tests=tuple(sorted(measured - set(self.baseline.tests))),
            missing_tests=tuple(sorted(set(self.baseline.tests) - {r.nodeid for r in records})),
            environment_warnings=tuple(self.baseline.environment_warnings(self.environment)),
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        # Raises when the loop was cut short (Ctrl-C, -x, pytest.exit, xdist's Interrupted).
        # A second Ctrl-C can land while pytest handles the first, before it sets the exit
        # status: the session then ends with status 0, and only this says it was cut short.
        result = yield
        self.loop_finished = True
        return result

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # Called for Ctrl-C and for pytest.exit, also pytest.exit(..., returncode=0): the exit
        # status alone cannot tell that tests were left unrun.
        self.interrupted = True
        returncode = getattr(excinfo.value, "returncode", None)
        if isinstance(excinfo.value, pytest.exit.Exception) and returncode is not None:
            self.interrupt_status = int(returncode)

    def _complete(self, exitstatus: int, records: list[UsageRecord]) -> bool:
        if not self.loop_finished or self.interrupted:
            return False
        if any(record.outcome == "interrupted" for record in records):
            return False
        return int(exitstatus) not in (
            int(pytest.ExitCode.INTERRUPTED),
            int(pytest.ExitCode.INTERNAL_ERROR),
            int(pytest.ExitCode.USAGE_ERROR),
        )

    def _exit_status(self, exitstatus: int) -> int:
        """pytest's exit status, except where a second Ctrl-C cut pytest short before it could
        set it (it says 0 then): what pytest sets for the interruption."""
        if int(exitstatus) == int(pytest.ExitCode.OK) and not self.loop_finished:
            return self.interrupt_status
        return int(exitstatus)

    def _shown(self, path: str) -> str:
        """A path as the user gave it: relative to where pytest was started, if inside it."""
        start = str(self.config.invocation_params.dir)
        relative = os.path.relpath(path, start)
        return path if relative.startswith(os.pardir) else relative

    def session_report(self, exitstatus: int) -> Report:
        """This session's report: the JSON report, and what the Markdown and HTML show."""
        records = self.collector.records
        if self.source is None:  # once: the JSON, Markdown and HTML reports each ask
            self.source = run_source(str(self.config.rootpath), self.config.invocation_params.args)
        return Report(
            records=tuple(records),
            environment=self.environment,
            complete=self._complete(exitstatus, records),
            exit_status=self._exit_status(exitstatus),
            baseline=self._baseline_section(records),
            source=self.source,
        )

    # First: before xdist tears its workers down (seconds, in which a second Ctrl-C would end
    # pytest with no report at all); every record is in by then.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            return
        records = self.collector.records
        self.write_errors += self.collector.problems
        complete = self._complete(exitstatus, records)
        if self.options.json_path is not None:
            report = self.session_report(exitstatus)
            self._write(
                "JSON report", self.options.json_path, lambda path: jsonreport.write(path, report)
            )
        if self.options.save_path is not None:
            if not complete:
                self.written.append(
                    f"baseline not saved to "
                    f"{self._shown(self.options.save_path)}: the session was "
                    "interrupted"
                )
            else:
                self._save_baseline(self.options.save_path, records)
        if self.write_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _save_baseline(self, path: str, records: list[UsageRecord]) -> None:
        def save(target: str) -> None:
            written, total = baselines.save(
                target,
                records,
                self.environment,
                self.options.replace,
                timelines=bool(self.config.getoption(ci.TIMELINE_IN_BASELINE, False)),
            )
            skipped = len(records) - written
            self.written.append(
                f"baseline saved to {self._shown(target)}: {written} tests written"
                + (f", {skipped} not (failed, skipped or interrupted)" if skipped else "")
                + f", {total} in the file"
            )

        self._write("baseline", path, save, announce=False)

    def _write(self, what: str, path: str, write: Any, announce: bool = True) -> None:
        try:
            write(path)
        except (OSError, baselines.BaselineError) as error:
            self.write_errors.append(f"cannot write the {what} to {self._shown(path)}: {error}")
            return
        if announce:
            self.written.append(f"{what} written to {self._shown(path)}")

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
            lines += summary.regressions(records, section.path)
            lines += summary.test_lists(
                section.new_tests, section.missing_tests, self.config.get_verbosity() > 0, records
            )
            if not section.regressions:
                lines.append(
                    f"no test grew beyond tolerance ({self.options.tolerance.describe()})"
                    f" against {section.path}"
                )
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
