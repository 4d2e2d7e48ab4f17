"""The pytest entry point: options, marker, and the plugin object that owns all state."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import warnings
from typing import Any

import pytest

from . import admission, environment, hookspecs, render, reports
from .budget import (
    MARKER_NAME,
    Budget,
    BudgetError,
    check_arch,
    marker_arch,
    marker_isolation,
    marker_values,
    resolve,
)
from .fixtures import taichi_limits_ti  # noqa: F401 - pytest finds fixtures in plugin modules
from .options import Options, add_options, read_options
from .outcomes import describe_exit, parent_report
from .protocol import Kind
from .records import Crash, Usage, Violation
from .runner import Refused, Runner
from .settings import BUDGET_KEY, SETTINGS_KEY
from .spawn import SpawnError
from .startplan import InitRecorder
from .supervisor import RunResult
from .worker import is_worker

logger = logging.getLogger("pytest_taichi_limits")

_PLUGIN_NAME = "taichi_limits_plugin"
_INIT_RECORDER_KEY = pytest.StashKey[InitRecorder]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    reports.add_options(parser)  # JSON report, baseline, summary, suggestions
    admission.add_options(parser)  # --taichi-limits-admit, --taichi-limits-capacity


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Before any conftest is imported: note where ti.init is called in this process (spawn.py).
    if not is_worker(early_config):
        _init_recorder(early_config).install()


def _init_recorder(config: pytest.Config) -> InitRecorder:
    if _INIT_RECORDER_KEY not in config.stash:
        config.stash[_INIT_RECORDER_KEY] = InitRecorder()
    return config.stash[_INIT_RECORDER_KEY]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER_NAME}(cpu_s=None, mem_mb=None, wall_s=None, gpu_gb=None, arch=None, "
        "isolation=None): run the test in a supervised child process with this budget "
        "(keyword arguments only; None means no limit; isolation: test, module or session). "
        "Precedence per key: marker > command line > ini > built-in default.",
    )
    if is_worker(config):
        # A spawn-mode worker runs one test for the parent: options and fixtures, nothing else
        # (no results plugin, so no log, JSON or baseline written from there).
        config.pluginmanager.register(TaichiLimitsPlugin(config, read_options(config)),
                                      _PLUGIN_NAME)
        return
    config.pluginmanager.register(TaichiLimitsPlugin(config, read_options(config)), _PLUGIN_NAME)
    reports.register(config)


class TaichiLimitsPlugin:
    """Decides which tests are supervised, runs them, and turns the results into reports."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        config.stash[SETTINGS_KEY] = options.settings
        recorder = _init_recorder(config)
        if not is_worker(config):
            recorder.install()  # no-op when pytest_load_initial_conftests did it already
        self.runner = Runner(config, options.settings, recorder)
        self._budgets: dict[str, Budget] = {}
        if options.settings.arch is not None:
            try:
                check_arch(options.settings.arch, "--taichi-limits-arch / ini taichi_limits_arch")
            except BudgetError as error:
                raise pytest.UsageError(str(error)) from None
        self.admission = admission.read(config, spawn_worker=is_worker(config))

    def pytest_unconfigure(self) -> None:
        self.runner.close()  # the last worker, the zygote, their temporary directories

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        try:
            return (yield)
        finally:
            self.runner.stop_worker()  # -x, Ctrl-C: the worker's fixtures still tear down

    # -- collection -------------------------------------------------------------------------

    def pytest_report_header(self) -> list[str]:
        options = self.options
        scope = "every test" if options.supervise_all else "tests marked taichi_limits"
        defaults = resolve({}, options.cli_budget, options.ini_budget)
        settings = options.settings
        return [
            f"taichi-limits: supervising {scope}; default budget {render.budget_text(defaults)}; "
            f"sampling down to every {settings.interval_s:g} s, grace {settings.grace_s:g} s; "
            f"start mode {settings.mode}, isolation {settings.isolation}",
        ]

    def pytest_report_collectionfinish(self) -> list[str]:
        return self.runner.header_lines() if self._budgets else []

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        kept: list[pytest.Item] = []
        isolation: dict[str, str] = {}
        for item in items:
            markers = list(item.iter_markers(MARKER_NAME))
            # The taichi_limits_ti fixture initialises Taichi: only ever in a supervised child.
            uses_fixture = "taichi_limits_ti" in getattr(item, "fixturenames", ())
            if not markers and not self.options.supervise_all and not uses_fixture:
                kept.append(item)
                continue
            try:
                marked = marker_values(item.nodeid, markers)
                marker_arch(item.nodeid, markers)
                isolation[item.nodeid] = marker_isolation(item.nodeid, markers) \
                    or self.options.settings.isolation
            except BudgetError as error:
                self._collection_error(item, str(error))
                continue
            budget = resolve(marked, self.options.cli_budget, self.options.ini_budget)
            item.stash[BUDGET_KEY] = budget
            self._budgets[item.nodeid] = budget
            kept.append(item)
        # A test with a bad marker is a collection error (reported above), never run.
        items[:] = kept
        if not is_worker(config):
            self.runner.plan(items, isolation)

    def _collection_error(self, item: pytest.Item, message: str) -> None:
        report = pytest.CollectReport(item.nodeid, "failed", message, [])
        item.config.hook.pytest_collectreport(report=report)

    # -- running ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        budget = item.stash.get(BUDGET_KEY, None)
        if budget is None:
            if nextitem is not None and BUDGET_KEY in nextitem.stash:
                # Fixtures set up here must be torn down here: a forked child would inherit
                # them and run their finalizers a second time.
                item.ihook.pytest_runtest_protocol(item=item, nextitem=None)
                return True
            return None  # plain pytest runs it, untouched
        adjusted = item.config.hook.pytest_taichi_limits_budget(item=item, budget=budget)
        if adjusted is not None:
            budget = adjusted
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        text = None
        try:
            # Reserved before the child starts, released when it is gone, whatever happens.
            with self.admission.admitted(item.nodeid, budget) as grant:
                result = self.runner.run(item, nextitem, budget, self._budgets, grant.env)
            result.usage = dataclasses.replace(result.usage, admission=grant.facts())
        except (Refused, admission.AdmissionRefused) as error:
            text = str(error)
        except SpawnError as error:
            text = f"taichi_limits: {error}"
        if text is not None:  # never hang: this test fails, the run goes on (outside `except`,
            for report in _complete_phases(item, {}, text):  # or pytest chains the two)
                item.ihook.pytest_runtest_logreport(report=report)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return True
        exit_request = self._replay(item, result)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        if exit_request is not None:
            self.runner.stop_worker()
            if exit_request.get("reason") == "interrupt":
                raise KeyboardInterrupt
            pytest.exit(str(exit_request.get("message")), exit_request.get("returncode"))
        return True

    def _replay(self, item: pytest.Item, result: RunResult) -> dict[str, Any] | None:
        """Hand the child's reports to pytest as if the test had run here."""
        exits = result.of_kind(Kind.EXIT)
        # Facts only the messages tell, before anything renders the usage (frozen: replaced).
        result.usage = dataclasses.replace(
            result.usage, arch=environment.taichi_arch(result.messages),
            interrupted=describe_exit(exits[-1]) if exits else "")
        received, problem = self._received_reports(item, result)
        failure_text = self._failure_text(result, problem)
        reports = _complete_phases(item, received, failure_text)
        self._emit_warnings(result)
        # Seam for the baseline compare: it may turn the call report into a failure.
        item.config.hook.pytest_taichi_limits_reports(
            item=item, usage=result.usage, violation=result.violation, reports=reports)
        self._record(item, result, reports, show_usage=failure_text is None)
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
        return exits[-1] if exits else None

    def _received_reports(
        self, item: pytest.Item, result: RunResult
    ) -> tuple[dict[str, pytest.TestReport], str | None]:
        received: dict[str, pytest.TestReport] = {}
        problem = result.channel_problem
        for message in result.of_kind(Kind.REPORT):
            try:
                report = item.config.hook.pytest_report_from_serializable(
                    config=item.config, data=message.get("data")
                )
            except Exception as error:  # noqa: BLE001 - a forged report is a failure, not a crash
                problem = problem or f"the child sent an unreadable report ({error})"
                continue
            if not isinstance(report, pytest.TestReport) or report.nodeid != item.nodeid \
                    or report.when not in ("setup", "call", "teardown"):
                problem = problem or "the child sent a report that is not for this test"
                continue
            received[report.when] = report
        if problem is None and not result.of_kind(Kind.EXIT):
            missing = _missing_phase(item, received)
            if missing is not None:  # e.g. a forged "done": the test must not vanish
                problem = f"the child sent no report for the {missing} phase"
        return received, problem

    @staticmethod
    def _failure_text(result: RunResult, problem: str | None) -> str | None:
        if result.violation is not None:
            return render.violation_report(result.violation, result.usage)
        if result.crash is not None:
            return render.crash_report(result.crash, result.usage)
        if problem is not None:
            crash = Crash(result.usage.nodeid, problem + "; the test's own result is unknown",
                          result.phase, "")
            return render.crash_report(crash, result.usage)
        return None

    def _emit_warnings(self, result: RunResult) -> None:
        for message in result.of_kind(Kind.WARNING):
            category = _warning_category(str(message.get("category", "")))
            warnings.warn_explicit(
                str(message.get("message")), category,
                str(message.get("filename", "?")), int(message.get("lineno") or 0),
            )

    def _record(self, item: pytest.Item, result: RunResult,
                reports: list[pytest.TestReport], show_usage: bool) -> None:
        usage, violation = result.usage, result.violation
        properties = render.user_properties(usage, violation)
        line = render.usage_line(usage)
        for report in reports:
            report.user_properties = list(report.user_properties) + properties
            if show_usage:  # a failure's own report already has the figures
                report.sections.append(("taichi_limits usage", "\n".join(
                    [line, *render.gpu_cap_lines(usage), *admission.report_lines(usage.admission)])))
        item.config.hook.pytest_taichi_limits_usage(item=item, usage=usage)
        if violation is not None:
            _log_violation(violation, usage)
            item.config.hook.pytest_taichi_limits_violation(
                item=item, violation=violation, usage=usage
            )


def _missing_phase(item: pytest.Item, received: dict[str, pytest.TestReport]) -> str | None:
    """The first phase whose report a child that ran the whole protocol must have sent."""
    if "setup" not in received:
        return "setup"
    if received["setup"].passed and "call" not in received \
            and not item.config.getoption("setuponly", False):
        return "call"
    return None if "teardown" in received else "teardown"


def _complete_phases(
    item: pytest.Item, received: dict[str, pytest.TestReport], failure_text: str | None
) -> list[pytest.TestReport]:
    """setup, call (when setup passed) and teardown, with any failure put on the test itself."""
    setup = received.get("setup") or parent_report(item, "setup", None)
    reports = [setup]
    teardown = received.get("teardown") or parent_report(item, "teardown", None)
    if failure_text is None:
        if "call" in received:
            reports.append(received["call"])
        return reports + [teardown]
    if not setup.passed:
        # The test never ran; what went wrong afterwards belongs to teardown.
        return reports + [parent_report(item, "teardown", failure_text, keep=teardown)]
    reports.append(parent_report(item, "call", failure_text, keep=received.get("call")))
    return reports + [teardown]


def _warning_category(path: str) -> type[Warning]:
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:  # noqa: BLE001 - a class defined inside a test cannot be found again
        return UserWarning
    return target if isinstance(target, type) and issubclass(target, Warning) else UserWarning


def _log_violation(violation: Violation, usage: Usage) -> None:
    logger.warning(
        "%s", render.violation_headline(violation) + f" in {violation.nodeid}",
        extra={"taichi_limits_violation": violation.to_json(),
               "taichi_limits_usage": usage.to_json()},
    )
