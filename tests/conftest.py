from __future__ import annotations

import os

# Imported once for the whole test process: the `pytester` fixture removes modules first imported
# during a test from sys.modules, and numpy 2 refuses to be imported a second time in a process
# ("cannot load module more than once per process"). Taichi depends on numpy, so it is there.
import numpy  # noqa: F401
import pytest
from helpers import memory
from helpers.plugin_types import RunPlugin

pytest_plugins = ["pytester"]

# Each ti.init otherwise starts a thread that tries the network.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")

#: Hard outer limit for every pytester run: a hang in the plugin fails the test, never CI.
RUN_TIMEOUT_S = 120


@pytest.fixture
def run_plugin(pytester: pytest.Pytester) -> RunPlugin:
    """Run pytest in a subprocess (real forks, real signals) with a hard timeout, under the
    memory method the suite runs with (helpers/memory.py).

    Inner runs use `--taichi-limits-isolation=test` unless they give an isolation themselves
    (or `default_isolation=True`: the plugin's own default, module): most of the suite checks
    what a fresh child per test guarantees (the strictest case), as it was written to."""

    def run(
        *args: str, timeout: float = RUN_TIMEOUT_S, default_isolation: bool = False
    ) -> pytest.RunResult:
        # Switched off (-p no:taichi_limits, or the name pytest prints): no option of it is known.
        disabled = any(arg in ("no:taichi_limits", "no:taichi-limits") for arg in args)
        method = [] if disabled else memory.option_args()
        given = any(arg.startswith("--taichi-limits-isolation") for arg in args)
        if not (disabled or given or default_isolation):
            method.append("--taichi-limits-isolation=test")
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", *method, *args, timeout=timeout
        )

    return run
