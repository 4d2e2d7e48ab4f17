"""How supervision works, as opposed to a Budget (how much a test may use)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from .budget import ISOLATIONS, Budget, builtin_budget  # ISOLATIONS: tests per supervised child

#: How a supervised test is started: in a forked child, or in a fresh interpreter.
MODES = ("auto", "fork", "spawn")
#: How memory is measured: a memory cgroup per worker where one can be made (auto), always
#: (cgroup: an error where none can), or never (smaps: /proc/<pid>/smaps_rollup).
MEMORY_METHODS = ("auto", "cgroup", "smaps")

__all__ = ["BUDGET_KEY", "ISOLATIONS", "MEMORY_METHODS", "MODES", "SETTINGS_KEY", "Settings"]


@dataclass(frozen=True)
class Settings:
    interval_s: float = 0.01
    grace_s: float = 2.0
    mode: str = "auto"
    arch: str | None = None
    isolation: str = "test"
    clean_shm: bool = False  # --taichi-limits-clean-shm: remove what a test left in /dev/shm
    memory_method: str = "auto"  # --taichi-limits-memory-method: one of MEMORY_METHODS
    #: The budget of a test without a marker (command line > ini > built-in). A worker's
    #: start-up (a fresh interpreter's, or a reimport worker's import of its modules: their
    #: module-level ti.init and work) is no test's: it is watched under this budget, or the
    #: first test's where that is larger, never under a smaller test budget.
    default_budget: Budget = field(default_factory=builtin_budget)


#: A supervised test's resolved budget, on its item (the taichi_limits_ti fixture reads it).
BUDGET_KEY = pytest.StashKey[Budget]()
#: This run's settings, on the config.
SETTINGS_KEY = pytest.StashKey[Settings]()
