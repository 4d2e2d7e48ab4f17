"""The pytest entry point: options, marker, and the plugin object that owns all state."""

from __future__ import annotations

from typing import Any

import pytest

from . import hookspecs
from .admission import gate
from .config.budget import (
    DEFAULT_LEAK_ROUNDS,
    MARKER_NAME,
    Budget,
    BudgetError,
    check_budget,
    marker_arch,
    marker_isolation,
    marker_leak_rounds,
    marker_values,
    resolve,
)
from .config.options import Options, add_options, is_spawn_worker, read_options
from .config.settings import BUDGET_KEY, LEAK_ROUNDS_KEY, SETTINGS_KEY, isolation_text
from .formats import baseline as baselines
from .ipc.protocol import Exit
from .launch.runner import Refused, Runner
from .launch.spawn import SpawnError
from .launch.startplan import InitRecorder
from .measure import gpu
from .model.records import RunResult
from .render import text as render
from .results import replay
from .results import session as reports
from .supervise.signals import Terminated, die_of
from .taichi_support.fixtures import taichi_limits_ti  # noqa: F401 - pytest finds fixtures in plugin modules

_PLUGIN_NAME = "taichi_limits_plugin"
_INIT_RECORDER_KEY = pytest.StashKey[InitRecorder]()
#: The name pytest's "plugins:" header line prints (the distribution's, without "pytest-").
#: The entry point is registered as `taichi_limits`, so `-p no:taichi_limits` blocks it before
#: it loads; `-p no:taichi-limits`, the printed name, is honoured here: nothing is set up.
PRINTED_NAME = "taichi-limits"


def _switched_off(pluginmanager: pytest.PytestPluginManager) -> bool:
    return pluginmanager.is_blocked(PRINTED_NAME)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not _switched_off(pluginmanager):
        add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    # Also when switched off: a conftest that implements the hooks must still load.
    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Before any conftest is imported: note where ti.init is called in this process
    # (launch/spawn.py).
    if not is_spawn_worker(early_config) and not _switched_off(early_config.pluginmanager):
        _init_recorder(early_config).install()


def _init_recorder(config: pytest.Config) -> InitRecorder:
    if _INIT_RECORDER_KEY not in config.stash:
        config.stash[_INIT_RECORDER_KEY] = InitRecorder()
    return config.stash[_INIT_RECORDER_KEY]


def pytest_configure(config: pytest.Config) -> None:
    if _switched_off(config.pluginmanager):
        return
    config.addinivalue_line(
        "markers",
        f"{MARKER_NAME}(cpu_s=None, mem_mb=None, wall_s=None, gpu_gb=None, leak_mb=None, "
        "arch=None, isolation=None, leak_rounds=None): run the test in a supervised child "
        "process with this budget (keyword arguments only; None means no limit; isolation: "
        "test, module or session; leak_mb or leak_rounds='W:N' hunts leaks by running it in "
        "rounds). Precedence per key: marker > command line > ini > built-in default.",
    )
    options = read_options(config)  # every option, validated, before anything else starts
    if is_spawn_worker(config):
        # A spawn-mode worker runs tests for the parent: options and fixtures, nothing else
        # (no results plugin, so no log, JSON or baseline written from there).
        config.pluginmanager.register(TaichiLimitsPlugin(config, options, None), _PLUGIN_NAME)
        return
    baseline = reports.load_baseline(options)  # once per process: compare and admission
    config.pluginmanager.register(TaichiLimitsPlugin(config, options, baseline), _PLUGIN_NAME)
    reports.register(config, options, baseline)


class TaichiLimitsPlugin:
    """Decides which tests are supervised, runs them, and turns the results into reports."""

    def __init__(
        self, config: pytest.Config, options: Options, baseline: baselines.Baseline | None
    ) -> None:
        self.config = config
        self.options = options
        config.stash[SETTINGS_KEY] = options.settings
        recorder = _init_recorder(config)
        spawn_worker = is_spawn_worker(config)
        if not spawn_worker:
            recorder.install()  # no-op when pytest_load_initial_conftests did it already
        self.runner = Runner(config, options.settings, recorder)
        self.admission = gate.start(config, options, baseline, spawn_worker=spawn_worker)
        self._terminated_by: int | None = None  # the signal that ended the session
        if not spawn_worker:
            self.runner.choose_memory()  # a usage error here, before any test, if it must be

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        if isinstance(excinfo.value, Terminated):
            self._terminated_by = excinfo.value.signum

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        self.runner.close()  # the last worker, the zygote, their temporary directories
        if self._terminated_by is not None:
            # SIGTERM, SIGHUP or SIGQUIT stopped a supervised test: its tree is gone and the
            # reports are written (complete: false); now end as the signal would have.
            die_of(self._terminated_by)

    # The innermost wrapper: the fork server starts right before the first test and is gone
    # (its children's CPU time accounted to pytest) when any other wrapper's loop ends.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        try:
            if not is_spawn_worker(self.config):
                self.runner.session_starts()  # the fork server, before the first test
            return (yield)
        finally:
            # -x, Ctrl-C: the worker's fixtures still tear down; then the fork server leaves
            self.runner.session_ends()

    # -- collection -------------------------------------------------------------------------

    def pytest_report_header(self) -> list[str]:
        options = self.options
        scope = "every test" if options.supervise_all else "tests marked taichi_limits"
        rounds = options.leak_rounds
        defaults = resolve({}, options.cli_budget, options.ini_budget, rounds is not None)
        settings = options.settings
        plan = self.runner.memory_plan
        lines = [
            f"taichi-limits: supervising {scope}; default budget {render.budget_text(defaults)}; "
            f"sampling down to every {settings.interval_s:g} s, grace {settings.grace_s:g} s; "
            f"start mode {settings.mode}, {isolation_text(settings)}",
            *([] if plan is None else [plan.header_line()]),
        ]
        if defaults.leak_mb is not None:
            rounds = rounds or DEFAULT_LEAK_ROUNDS
            lines.append(
                f"taichi-limits: hunting leaks: each supervised test runs {rounds.warmup} "
                f"warm-up and {rounds.measured} measured rounds; it fails when it grows in "
                f"nearly every measured round (own memory by more than leak_mb="
                f"{defaults.leak_mb:g} MiB per round)"
            )
        return lines

    def pytest_report_collectionfinish(self, items: list[pytest.Item]) -> list[str]:
        if not any(BUDGET_KEY in item.stash for item in items):
            return []
        lines = self.runner.header_lines()
        no_gpu = gpu.no_gpu_reason()
        if no_gpu is not None:  # once here, instead of in every test's report
            lines.append(f"taichi-limits: GPU memory not measured: no NVIDIA GPU ({no_gpu})")
        return lines

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
                isolation[item.nodeid] = (
                    marker_isolation(item.nodeid, markers) or self.options.settings.isolation
                )
                rounds = marker_leak_rounds(item.nodeid, markers)
            except BudgetError as error:
                self._collection_error(item, str(error))
                continue
            asked = rounds is not None or self.options.leak_rounds is not None
            budget = resolve(marked, self.options.cli_budget, self.options.ini_budget, asked)
            item.stash[BUDGET_KEY] = budget  # the one place a test's budget is kept
            # The rounds hold wherever leak_mb is set: by now, or by the budget hook at run time.
            item.stash[LEAK_ROUNDS_KEY] = rounds or self.options.leak_rounds or DEFAULT_LEAK_ROUNDS
            kept.append(item)
        # A test with a bad marker is a collection error (reported above), never run.
        items[:] = kept
        if not is_spawn_worker(config):
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
            self.runner.plain_test_starts(item)
            if nextitem is not None and BUDGET_KEY in nextitem.stash:
                # Fixtures set up here must be torn down here: a forked child would inherit
                # them and run their finalizers a second time.
                item.ihook.pytest_runtest_protocol(item=item, nextitem=None)
                return True
            return None  # plain pytest runs it, untouched
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        text = None
        try:
            budget = _hook_budget(item, budget)
            # Reserved before the child starts, released when it is gone, whatever happens.
            with self.admission.admitted(item.nodeid, budget) as grant:
                result = self.runner.run(item, nextitem, budget, grant.env, grant.facts())
        except (Refused, gate.AdmissionRefused) as error:
            text = str(error)
        except SpawnError as error:
            text = f"taichi_limits: {error}"
        except BudgetError as error:
            text = f"taichi_limits: {error}"
        if text is not None:  # never hang: this test fails, the run goes on (outside `except`,
            # or pytest chains the two)
            replay.fail_without_running(item, text, budget, self.runner.mode_of(item))
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return True
        exit_request = self._replay(item, result)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        if exit_request is not None:
            self.runner.stop_worker()
            if exit_request.reason == "interrupt":
                raise KeyboardInterrupt
            pytest.exit(exit_request.message, exit_request.returncode)
        return True

    def _replay(self, item: pytest.Item, result: RunResult) -> Exit | None:
        """Hand the child's reports to pytest as if the test had run here; the exit request
        (pytest.exit, Ctrl-C) the test made, if any."""
        exits = result.of_kind(Exit)
        replay.replay(item, result, gate.report_lines(result.usage.admission))
        return exits[-1] if exits else None


def _hook_budget(item: pytest.Item, budget: Budget) -> Budget:
    """The budget after the `pytest_taichi_limits_budget` hook, checked as a marker's values are.

    The implementations are called in pluggy's order (the first non-None result wins), so that
    a bad result names the plugin or conftest that returned it. Raises BudgetError.
    """
    caller = item.config.hook.pytest_taichi_limits_budget
    implementations = caller.get_hookimpls()
    if any(impl.hookwrapper or impl.wrapper for impl in implementations):
        # A wrapper may change the result: let pluggy run them all; the source is unknown.
        result = caller(item=item, budget=budget)
        source = "a pytest_taichi_limits_budget implementation"
    else:
        result, source = None, ""
        arguments = {"item": item, "budget": budget}
        for impl in reversed(implementations):  # pluggy calls the last registered first
            result = impl.function(*(arguments[name] for name in impl.argnames))
            if result is not None:
                source = f"pytest_taichi_limits_budget of {impl.plugin_name}"
                break
    if result is None:
        return budget
    try:
        return check_budget(result)
    except BudgetError as error:
        raise BudgetError(f"{item.nodeid}: {source} returned a bad budget: {error}") from None
