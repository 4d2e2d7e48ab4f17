"""The published hooks, implemented in a real conftest.py (the README's example)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin

CONFTEST = """
import json
import os


def pytest_taichi_limits_budget(item, budget):
    # A slow runner: give every test more time, and a fixed memory budget for one of them.
    factor = float(os.environ.get("SLOW_RUNNER_FACTOR", "1"))
    changes = {"wall_s": budget.wall_s * factor}
    if item.name == "test_memory_budget_from_hook":
        changes["mem_mb"] = 40
    return budget.replace(**changes)


def _append(line):
    with open("hook-calls.jsonl", "a") as stream:
        stream.write(json.dumps(line) + "\\n")


def pytest_taichi_limits_usage(item, usage):
    _append({"hook": "usage", "nodeid": item.nodeid, "own": usage.own_memory_bytes,
             "wall_s_budget": usage.budget.wall_s})


def pytest_taichi_limits_violation(item, violation, usage):
    _append({"hook": "violation", "nodeid": item.nodeid, "resource": violation.resource,
             "measured": violation.measured, "limit": violation.limit})


def pytest_taichi_limits_reports(item, usage, violation, reports):
    for report in reports:
        if report.when == "call":
            report.sections.append(("dashboard", f"posted usage of {item.name}"))
"""

TESTS = """
import time
import pytest


@pytest.mark.taichi_limits(wall_s=1)
def test_needs_more_time_on_a_slow_runner():
    time.sleep(1.5)


@pytest.mark.taichi_limits(mem_mb=4000)
def test_memory_budget_from_hook():
    block = bytearray(120 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
"""


def _calls(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    path = pytester.path / "hook-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_budget_usage_violation_and_reports_hooks(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_hooked=TESTS)
    monkeypatch.setenv("SLOW_RUNNER_FACTOR", "4")
    result = run_plugin("-rA", "--taichi-limits-grace=0.5")
    # wall_s 1 -> 4: the sleeper passes; mem_mb 4000 -> 40 (from the hook): 120 MB fails.
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "taichi_limits: mem_mb exceeded: * when caught, limit mem_mb=40 (over by *",
            "*budget      cpu_s=off mem_mb=40 wall_s=2400 gpu_gb=off",
        ]
    )
    result.stdout.fnmatch_lines(["*- dashboard -*", "posted usage of test_needs_more_time*"])
    calls = _calls(pytester)
    usage = {call["nodeid"].split("::")[1]: call for call in calls if call["hook"] == "usage"}
    assert usage["test_needs_more_time_on_a_slow_runner"]["wall_s_budget"] == 4.0
    assert usage["test_memory_budget_from_hook"]["own"] > 40 * 1024 * 1024
    [violation] = [call for call in calls if call["hook"] == "violation"]
    assert violation["nodeid"] == "test_hooked.py::test_memory_budget_from_hook"
    assert violation["resource"] == "mem_mb" and violation["limit"] == 40
    assert violation["measured"] > 40


def test_without_the_factor_the_budget_stays(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_hooked=TESTS)
    monkeypatch.setenv("SLOW_RUNNER_FACTOR", "1")
    result = run_plugin("--taichi-limits-grace=0.5", "-k", "slow_runner")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["taichi_limits: wall_s exceeded: * when caught, limit wall_s=1 *"])
    [violation] = [call for call in _calls(pytester) if call["hook"] == "violation"]
    assert violation["resource"] == "wall_s"
