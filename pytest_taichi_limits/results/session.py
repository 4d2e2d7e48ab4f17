"""Session results: usage records, JSON report, baseline save and compare, summary, suggestions.

Two plugin objects, each registered only where its work is done (as pytest's junitxml is):
- `RecordMaker`, in every process that runs tests (an xdist worker, or the only process): through
  the runner's `pytest_taichi_limits_reports` hook, before the reports are logged, it compares the
  test with the baseline (so that a grown test fails like any other test) and puts the test's
  record on its teardown report;
- `SessionResults`, where reports are logged and the session ends (the only process, or the
  xdist controller): it collects the records and writes the JSON report, the baseline, the
  terminal summary and, through results/ci.py, the Markdown and HTML reports.
The baseline is loaded once per process, here, and handed to admission (admission/gate.py).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytest

from ..config.options import Options, is_xdist_worker
from ..formats import baseline as baselines
from ..formats import jsonreport
from ..formats.environment import run_source, session_environment
from ..formats.jsonreport import BaselineSection, Report, Source
from ..model.records import Calibration, Regression, Usage, UsageRecord, Violation
from ..model.warnings import TaichiLimitsRegressionWarning
from ..render import suggest, summary
from . import ci, pytesthtml
from .collect import RecordCollector, attach
from .outcomes import (
    combined_outcome,
    failure_reason,
    give_durations,
    interrupted_report,
    is_parent_made,
    parent_report,
)
from .outputs import (
    STEP_SUMMARY_NAME,
    STEP_SUMMARY_VARIABLE,
    OutputError,
    check_distinct,
    check_replaceable,
    resolve,
    step_summary_problem,
)
from .speed import RunSpeed
from .usagelog import UsageLog

PLUGIN_NAME = "taichi_limits_reports"
RECORDS_PLUGIN_NAME = "taichi_limits_records"
LOG_PLUGIN_NAME = "taichi_limits_log"


def load_baseline(options: Options) -> baselines.Baseline | None:
    """The baseline of --taichi-limits-compare, loaded once per process; None without one."""
    if options.compare_path is None:
        return None
    try:
        return baselines.load(options.compare_path)
    except baselines.BaselineError as error:
        raise pytest.UsageError(f"--taichi-limits-compare: {error}") from None


def _step_summary(options: Options) -> str | None:
    """GitHub's job summary, where the Markdown summary goes to it: neither asked for
    elsewhere nor switched off, and the variable set."""
    if options.outputs.markdown is not None or options.outputs.markdown_off:
        return None
    return os.environ.get(STEP_SUMMARY_VARIABLE) or None


def _usable_step_summary(config: pytest.Config, options: Options) -> str | None:
    """The job summary to append to, or None: a courtesy, so an unusable one is warned about
    once and left out, and the run goes on."""
    step_summary = _step_summary(options)
    if step_summary is None:
        return None
    problem = step_summary_problem(resolve(step_summary))
    if problem is None:
        return step_summary
    config.issue_config_time_warning(
        pytest.PytestConfigWarning(
            f"taichi-limits: the Markdown summary is not appended to the job summary "
            f"{STEP_SUMMARY_NAME}={step_summary!r}: {problem}; the run goes on without it"
        ),
        stacklevel=2,
    )
    return None


def check_outputs(config: pytest.Config, options: Options) -> ci.CiOutputs:
    """Before any test: every output can be written, and no two share a file (the log is
    checked where it is opened, in every process: UsageLog.check). Raises pytest.UsageError
    naming the options. Returns where the Markdown and HTML reports go."""
    outputs = options.outputs
    step_summary = _usable_step_summary(config, options)
    junitxml = config.getoption("xmlpath", None)
    try:
        check_distinct(
            {
                **outputs.named(),
                "--junitxml": str(junitxml) if junitxml else None,
                STEP_SUMMARY_NAME: step_summary,
            }
        )
        for option, typed in outputs.named().items():
            if typed is not None and option != "--taichi-limits-log":
                check_replaceable(option, typed)
    except OutputError as error:
        raise pytest.UsageError(str(error)) from None
    if outputs.save_baseline is not None:
        try:  # a corrupt, conflicted or old file would be found only after every test ran
            baselines.previous_for_save(resolve(outputs.save_baseline), options.replace_baseline)
        except baselines.BaselineError as error:
            raise pytest.UsageError(
                f"--taichi-limits-save-baseline: {error} (or overwrite it with "
                "--taichi-limits-baseline-replace)"
            ) from None
    markdown = outputs.markdown if step_summary is None else step_summary
    return ci.CiOutputs(
        markdown_path=None if markdown is None else resolve(markdown),
        markdown_append=step_summary is not None,
        html_path=None if outputs.html is None else resolve(outputs.html),
    )


def register(config: pytest.Config, options: Options, baseline: baselines.Baseline | None) -> None:
    """Register the results' plugins, each where it works (see the module's docstring).
    `baseline`: load_baseline's."""
    writes = not is_xdist_worker(config)  # the xdist controller checked the outputs already
    ci_outputs = check_outputs(config, options) if writes else None
    if options.outputs.log is not None:  # every process that runs tests appends to it
        log = UsageLog(options.outputs.log)
        log.check()
        config.pluginmanager.register(log, LOG_PLUGIN_NAME)
    outputs = options.outputs
    wanted = baseline is not None or outputs.save_baseline is not None or outputs.json is not None
    speed = RunSpeed(options.calibration, wanted)  # each process measures its own
    config.pluginmanager.register(RecordMaker(options, baseline, speed), RECORDS_PLUGIN_NAME)
    if ci_outputs is not None:
        results = SessionResults(config, options, baseline, speed)
        config.pluginmanager.register(results, PLUGIN_NAME)
        ci.register(config, ci_outputs, results, options.top)
    if writes:
        pytesthtml.register(config)  # columns and extras in pytest-html's report, if active


def _mark_interrupted(item: pytest.Item, reports: list[pytest.TestReport], reason: str) -> None:
    """The phase the test stopped the session in is reported skipped, never passed: without a
    report of the child's for it, the parent would otherwise have made a passing one."""
    if is_parent_made(reports[0]) and reports[0].passed:
        reports[0] = interrupted_report(item, "setup", reason)
    elif reports[0].passed and not any(report.when == "call" for report in reports):
        reports.insert(1, interrupted_report(item, "call", reason))


class RecordMaker:
    """In the process that ran the test: durations, the baseline compare, the record."""

    def __init__(
        self, options: Options, baseline: baselines.Baseline | None, speed: RunSpeed
    ) -> None:
        self.options = options
        self.baseline = baseline
        self.speed = speed

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
            record, self.baseline.tests[item.nodeid], self.options.tolerance, self.speed.start()
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
            self.options.outputs.json,
            shared_start=record.worker_test_number == 1
            and self.options.settings.isolation != "test",
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


class SessionResults:
    """Where reports are logged: records, JSON report, baseline, suggestions and the terminal
    summary of one session."""

    def __init__(
        self,
        config: pytest.Config,
        options: Options,
        baseline: baselines.Baseline | None,
        speed: RunSpeed,
    ) -> None:
        self.config = config
        self.options = options
        self.speed = speed
        self.environment = session_environment()
        self.collector = RecordCollector()
        self.baseline = baseline
        outputs = options.outputs
        self.json_path = None if outputs.json is None else resolve(outputs.json)
        self.save_path = None if outputs.save_baseline is None else resolve(outputs.save_baseline)
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
            speed = self._speed_line(self.speed.start())
            if speed:
                lines.append(f"taichi-limits: {speed}")
        if self.save_path is not None:
            how = "replacing it" if self.options.replace_baseline else "merging into it"
            lines.append(
                f"taichi-limits: saving the figures of passed tests to "
                f"{self._shown(self.save_path)} ({how})"
            )
        return lines

    def _speed_line(self, now: Calibration | None) -> str:
        """How fast the machine runs against the baseline's runs ("" where either side was not
        calibrated)."""
        then = None if self.baseline is None else self.baseline.calibration()
        if now is None or then is None:
            return ""
        return baselines.speed_text(now, then)

    # -- records, where reports are logged ------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
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
            calibration=self.baseline.calibration(),
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
            calibration=self.speed.run(),
        )

    # First: before xdist tears its workers down (seconds, in which a second Ctrl-C would end
    # pytest with no report at all); every record is in by then.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        records = self.collector.records
        self.write_errors += self.collector.problems
        complete = self._complete(exitstatus, records)
        self.speed.finish()  # the end's calibration: with the start's, the run's figure
        if self.json_path is not None:
            report = self.session_report(exitstatus)
            self._write("JSON report", self.json_path, lambda path: jsonreport.write(path, report))
        if self.save_path is not None:
            if not complete:
                self.written.append(
                    f"baseline not saved to "
                    f"{self._shown(self.save_path)}: the session was "
                    "interrupted"
                )
            else:
                self._save_baseline(self.save_path, records)
        if self.write_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _save_baseline(self, path: str, records: list[UsageRecord]) -> None:
        def save(target: str) -> None:
            written, total = baselines.save(
                target,
                records,
                self.environment,
                self.options.replace_baseline,
                timelines=self.options.timeline_in_baseline,
                calibration=self.speed.run().figure,
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
        records = self.collector.records
        lines: list[str] = []
        if records:
            lines += summary.top_consumers(records, self.options.top)
            lines += summary.violations(records)
            lines += summary.leaks(records)
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
            speed = self._speed_line(self.speed.run().figure)
            if speed:
                lines.append(f"machine speed: {speed}")
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
