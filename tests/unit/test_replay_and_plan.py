"""Session logic with small fakes, no subprocess (as pytest-xdist tests its scheduler with a
MockNode): replay's phases, the record collector, and the per-module start plan.

Items come from `pytester.getitem`, which collects in this process: no child, no fork.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytest
from helpers.fakes import make_record, make_usage

from pytest_taichi_limits.ipc.protocol import Exit, Report
from pytest_taichi_limits.launch.startplan import InitSite, TaichiEvent, plan_modules
from pytest_taichi_limits.model.records import RunResult
from pytest_taichi_limits.results.collect import RECORD_ATTRIBUTE, RecordCollector, attach
from pytest_taichi_limits.results.replay import complete_phases, received_reports

# -- replay: the child's reports back into pytest ---------------------------------------------


def _report(
    item: pytest.Item,
    when: Literal["setup", "call", "teardown"],
    outcome: Literal["passed", "failed", "skipped"] = "passed",
) -> pytest.TestReport:
    return pytest.TestReport(item.nodeid, item.location, {}, outcome, None, when)


def _sent(item: pytest.Item, report: pytest.TestReport) -> Report:
    """A Report message as the child sends it (through pytest's own serialization hook)."""
    return Report(item.config.hook.pytest_report_to_serializable(config=item.config, report=report))


def _result(item: pytest.Item, *messages: Report | Exit) -> RunResult:
    return RunResult(list(messages), make_usage(nodeid=item.nodeid))


def test_three_passing_phases_are_logged_as_the_child_sent_them(pytester: pytest.Pytester) -> None:
    item = pytester.getitem("def test_func(): pass")
    phases: tuple[Literal["setup", "call", "teardown"], ...] = ("setup", "call", "teardown")
    sent = {when: _report(item, when) for when in phases}
    result = _result(item, *(_sent(item, report) for report in sent.values()))
    received, problem = received_reports(item, result)
    assert problem is None
    reports = complete_phases(item, received, None)
    assert [(r.when, r.outcome) for r in reports] == [
        ("setup", "passed"),
        ("call", "passed"),
        ("teardown", "passed"),
    ]


def test_a_failure_is_put_on_the_call_and_keeps_the_teardown(pytester: pytest.Pytester) -> None:
    item = pytester.getitem("def test_func(): pass")
    phases: tuple[Literal["setup", "call", "teardown"], ...] = ("setup", "call", "teardown")
    received: dict[str, pytest.TestReport] = {when: _report(item, when) for when in phases}
    reports = complete_phases(item, received, "mem_mb exceeded")
    assert [(r.when, r.outcome) for r in reports] == [
        ("setup", "passed"),
        ("call", "failed"),
        ("teardown", "passed"),
    ]
    assert "mem_mb exceeded" in reports[1].longreprtext


def test_a_failure_after_a_failed_setup_goes_to_the_teardown(pytester: pytest.Pytester) -> None:
    item = pytester.getitem("def test_func(): pass")
    received = {"setup": _report(item, "setup", "failed")}
    reports = complete_phases(item, received, "the child crashed")
    assert [(r.when, r.outcome) for r in reports] == [("setup", "failed"), ("teardown", "failed")]
    assert "the child crashed" in reports[1].longreprtext


def test_a_missing_call_report_is_a_problem_never_a_pass(pytester: pytest.Pytester) -> None:
    item = pytester.getitem("def test_func(): pass")
    result = _result(
        item, _sent(item, _report(item, "setup")), _sent(item, _report(item, "teardown"))
    )
    _, problem = received_reports(item, result)
    assert problem == "the child sent no report for the call phase"


def test_a_report_for_another_test_is_refused(pytester: pytest.Pytester) -> None:
    item = pytester.getitem("def test_func(): pass")
    other = pytest.TestReport("test_other.py::test_b", item.location, {}, "passed", None, "call")
    result = _result(item, _sent(item, _report(item, "setup")), _sent(item, other))
    received, problem = received_reports(item, result)
    assert problem == "the child sent a report that is not for this test"
    assert set(received) == {"setup"}


def test_an_exit_request_excuses_the_missing_phases(pytester: pytest.Pytester) -> None:
    """pytest.exit inside the test: the session ends, the test's later phases never come."""
    item = pytester.getitem("def test_func(): pass")
    result = _result(item, _sent(item, _report(item, "setup")), Exit("exit", "stop", 3))
    _, problem = received_reports(item, result)
    assert problem is None


# -- the record collector ---------------------------------------------------------------------


def _teardown_with(item: pytest.Item, outcome: str) -> pytest.TestReport:
    report = _report(item, "teardown")
    attach(report, make_record(nodeid=item.nodeid, outcome=outcome))
    return report


def test_one_record_per_test_from_its_teardown_report(pytester: pytest.Pytester) -> None:
    first = pytester.getitem("def test_func(): pass")
    collector = RecordCollector()
    assert collector.add(_report(first, "call")) is None  # only teardown carries it
    assert collector.add(_report(first, "teardown")) is None  # not supervised
    collector.add(_teardown_with(first, "failed"))
    collector.add(_teardown_with(first, "passed"))  # a rerun replaces the first attempt
    assert [(r.nodeid, r.outcome) for r in collector.records] == [(first.nodeid, "passed")]
    assert collector.problems == []


def test_a_record_of_another_shape_is_a_problem_not_a_crash(pytester: pytest.Pytester) -> None:
    item = pytester.getitem("def test_func(): pass")
    report = _report(item, "teardown")
    setattr(report, RECORD_ATTRIBUTE, {"nodeid": item.nodeid, "outcome": "exploded"})
    collector = RecordCollector()
    assert collector.add(report) is None
    assert collector.records == []
    assert len(collector.problems) == 1 and item.nodeid in collector.problems[0]


# -- the start plan: which module forks, which is imported again -------------------------------


def _event(kind: str, site: Path, *importing: Path) -> TaichiEvent:
    return TaichiEvent(kind, InitSite(str(site), 3, "<module>"), tuple(map(str, importing)))


def test_a_module_whose_import_called_ti_init_starts_fresh(tmp_path: Path) -> None:
    stateful, plain = tmp_path / "test_stateful.py", tmp_path / "test_plain.py"
    plans = plan_modules(
        {str(stateful): None, str(plain): None},
        [_event("init", stateful, stateful)],
        [],
        str(tmp_path),
    )
    assert plans[str(stateful)].fresh
    assert plans[str(stateful)].reason == (
        "ti.init at test_stateful.py:3 (module level) while it was imported"
    )
    assert not plans[str(plain)].fresh and plans[str(plain)].reason == ""


def test_fields_made_by_a_conftest_make_every_module_below_it_fresh(tmp_path: Path) -> None:
    conftest = tmp_path / "sim" / "conftest.py"
    below, beside = tmp_path / "sim" / "test_a.py", tmp_path / "test_b.py"
    plans = plan_modules(
        {str(below): None, str(beside): None},
        [_event("object", conftest, conftest)],
        [str(conftest)],
        str(tmp_path),
    )
    assert plans[str(below)].fresh
    assert "while a conftest.py above it was imported" in plans[str(below)].reason
    assert not plans[str(beside)].fresh


def test_a_conftest_that_only_calls_ti_init_keeps_the_fork_path(tmp_path: Path) -> None:
    """Its init is replayed in each forked child; nothing it made is destroyed by a reset."""
    conftest = tmp_path / "conftest.py"
    test_file = tmp_path / "test_a.py"
    plans = plan_modules(
        {str(test_file): None}, [_event("init", conftest, conftest)], [str(conftest)], str(tmp_path)
    )
    assert not plans[str(test_file)].fresh


def test_the_plan_is_keyed_by_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_a.py").write_text("")
    plans = plan_modules({"test_a.py": None}, [], [], str(tmp_path))
    assert list(plans) == [os.path.join(str(tmp_path), "test_a.py")]
