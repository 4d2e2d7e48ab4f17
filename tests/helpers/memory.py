"""Which memory method the plugin's own suite runs under, and what its reports then say.

CI runs the suite twice: as the machine allows (a memory cgroup where one can be made, as on a
root runner with cgroup v1, or a delegated cgroup v2), and with smaps forced:
`TAICHI_LIMITS_TEST_MEMORY_METHOD=smaps python -m pytest tests`. The `run_plugin` fixture
(tests/conftest.py) passes it on as `--taichi-limits-memory-method` to every inner run.
"""

from __future__ import annotations

import functools
import os

from pytest_taichi_limits.measure import cgroup

#: auto, cgroup or smaps: the inner runs' --taichi-limits-memory-method (unset: auto)
ENV = "TAICHI_LIMITS_TEST_MEMORY_METHOD"


def forced() -> str | None:
    value = os.environ.get(ENV) or None
    if value not in (None, "auto", "cgroup", "smaps"):
        raise ValueError(f"{ENV} must be auto, cgroup or smaps, got {value!r}")
    return value


def option_args() -> list[str]:
    """What run_plugin adds to every inner run (first: a test's own option wins)."""
    value = forced()
    return [] if value is None else [f"--taichi-limits-memory-method={value}"]


@functools.cache
def _support() -> cgroup.CgroupSupport | str:
    return cgroup.detect()


def expected_method() -> str:
    """The `memory_method` an inner run's records will carry."""
    support = _support()
    if forced() == "smaps" or not isinstance(support, cgroup.CgroupSupport):
        return "smaps"
    return support.method


def uses_cgroup() -> bool:
    return expected_method().startswith("cgroup")


def support() -> cgroup.CgroupSupport | None:
    found = _support()
    return found if isinstance(found, cgroup.CgroupSupport) else None


def caught_by_pattern(method: str | None = None) -> str:
    """fnmatch pattern of a mem_mb violation's "caught by" line, for `method` (default: the
    expected one)."""
    method = method or expected_method()
    if method.startswith("cgroup"):
        return f"*caught by   *anonymous and shared memory of the test's cgroup, {method}*"
    return "*caught by   supervisor (private and shared memory of the process tree, smaps_rollup*"


def peak_line_pattern(method: str | None = None) -> str:
    """fnmatch pattern of the start of the report's peak line, for `method`."""
    method = method or expected_method()
    if method.startswith("cgroup"):
        return f"*peak usage  own memory +* ({method}; page cache +*"
    return "*peak usage  own memory +* (smaps; kernel peak +*"
