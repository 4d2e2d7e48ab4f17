"""How supervision works, as opposed to a Budget (how much a test may use)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

# ISOLATIONS: tests per supervised child
from .budget import ISOLATIONS, Budget, LeakRounds, builtin_budget

#: How a supervised test is started: in a forked child, or in a fresh interpreter.
MODES = ("auto", "fork", "spawn")
#: How memory is measured: a memory cgroup per worker where one can be made (auto), always
#: (cgroup: an error where none can), or never (smaps: /proc/<pid>/smaps_rollup).
MEMORY_METHODS = ("auto", "cgroup", "smaps")

#: Without --taichi-limits-isolation: one child per test module. Chosen from measurements
#: (docs/how-it-works.md, docs/performance.md): a module's tests share what they share in plain
#: pytest (module state, module fixtures, Taichi's program and kernels), which costs 1.1-1.3x
#: plain pytest on real suites where a fresh child per test costs 1.4-3.9x.
DEFAULT_ISOLATION = "module"

__all__ = [
    "BUDGET_KEY",
    "DEFAULT_ISOLATION",
    "ISOLATIONS",
    "LEAK_ROUNDS_KEY",
    "MEMORY_METHODS",
    "MODES",
    "SETTINGS_KEY",
    "Settings",
    "isolation_text",
]


@dataclass(frozen=True)
class Settings:
    interval_s: float = 0.01
    grace_s: float = 2.0
    mode: str = "auto"
    arch: str | None = None
    isolation: str = DEFAULT_ISOLATION
    #: where `isolation` was set: the flag or the ini key; "" for the built-in default
    isolation_from: str = ""
    clean_shm: bool = False  # --taichi-limits-clean-shm: remove what a test left in /dev/shm
    memory_method: str = "auto"  # --taichi-limits-memory-method: one of MEMORY_METHODS
    #: The budget of a test without a marker (command line > ini > built-in). A worker's
    #: start-up (a fresh interpreter's, or a reimport worker's import of its modules: their
    #: module-level ti.init and work) is no test's: it is watched under this budget, or the
    #: first test's where that is larger, never under a smaller test budget.
    default_budget: Budget = field(default_factory=builtin_budget)


#: A supervised test's resolved budget, on its item (the taichi_limits_ti fixture reads it).
BUDGET_KEY = pytest.StashKey[Budget]()
#: A supervised test's leak hunting rounds, on its item, where its budget has a leak_mb.
LEAK_ROUNDS_KEY = pytest.StashKey[LeakRounds]()
#: This run's settings, on the config.
SETTINGS_KEY = pytest.StashKey[Settings]()


def isolation_text(settings: Settings) -> str:
    """The isolation in force and why, for the header."""
    if settings.isolation_from:
        return f"isolation {settings.isolation} ({settings.isolation_from})"
    return (
        f"isolation {settings.isolation} (the default: one child per test module, sharing what "
        "the module's tests share in plain pytest; --taichi-limits-isolation=test gives each "
        "test a fresh child and figures that never depend on the tests before it)"
    )
