"""Hooks that other plugins and conftest.py files can implement (registered via pytest_addhooks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .config.budget import Budget
    from .model.records import Usage, Violation


@pytest.hookspec(firstresult=True)
def pytest_taichi_limits_budget(item: pytest.Item, budget: Budget) -> Budget | None:
    """Adjust a test's budget before it runs; return a new Budget, or None to keep it.

    Called in the process that runs the test (an xdist worker under xdist), after the marker,
    command line, ini and built-in defaults have been merged. The first non-None result wins.
    Example: scale every budget on a slow runner with ``budget.replace(wall_s=budget.wall_s*2)``.
    """


@pytest.hookspec
def pytest_taichi_limits_usage(item: pytest.Item, usage: Usage) -> None:
    """Called with the usage record of every supervised test, passing or not."""


@pytest.hookspec
def pytest_taichi_limits_violation(item: pytest.Item, violation: Violation, usage: Usage) -> None:
    """Called with each budget violation (for example, to post it to a dashboard)."""


@pytest.hookspec
def pytest_taichi_limits_reports(
    item: pytest.Item, usage: Usage, violation: Violation | None, reports: list[pytest.TestReport]
) -> None:
    """Called with a supervised test's setup/call/teardown reports just before they are logged.

    Runs in the process that ran the test (an xdist worker under xdist). An implementation may
    replace items of ``reports`` (the list itself); the plugin's baseline compare uses it to turn
    the call report of a test that grew beyond tolerance into a failure.
    """
