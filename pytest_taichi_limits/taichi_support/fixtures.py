"""Fixtures for suites that let the plugin initialise Taichi."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..config.budget import MARKER_NAME, check_arch, marker_arch
from ..config.settings import BUDGET_KEY, SETTINGS_KEY

#: Where no marker, option or ini names an arch. Never `gpu`: probing every GPU backend can
#: crash the process on a machine without a working GPU driver (OpenGL here).
DEFAULT_ARCH = "cpu"


def fixture_arch(request: pytest.FixtureRequest) -> str:
    """marker `arch` > --taichi-limits-arch > ini taichi_limits_arch > cpu."""
    from_marker = marker_arch(request.node.nodeid, request.node.iter_markers(MARKER_NAME))
    if from_marker is not None:
        return from_marker
    settings = request.config.stash.get(SETTINGS_KEY, None)
    configured = settings.arch if settings is not None else None
    if configured:
        return check_arch(configured, "--taichi-limits-arch")  # checked at the start already
    return DEFAULT_ARCH


def taichi_arch(ti: Any, name: str) -> Any:
    """The value ti.init(arch=...) takes for an arch name (`cpu` and `gpu` are Taichi's own)."""
    return getattr(ti, name)


@pytest.fixture
def taichi_limits_ti(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Taichi, initialised for this test with the configured arch and the gpu_gb cap; reset after.

    A test that uses it is supervised (with the default budget unless a marker says otherwise),
    so Taichi is only ever initialised in the test's own child process.
    """
    if SETTINGS_KEY not in request.config.stash:
        # The plugin is switched off (-p no:taichi-limits): Taichi would be initialised in the
        # pytest process itself, unsupervised, which the fixture exists to prevent.
        pytest.fail(
            "the taichi_limits_ti fixture needs the taichi-limits plugin, which is switched off "
            "(-p no:taichi-limits)",
            pytrace=False,
        )
    import taichi as ti

    budget = request.node.stash.get(BUDGET_KEY, None)
    options: dict[str, Any] = {}
    if budget is not None and budget.gpu_gb is not None:
        # Ask for exactly the cap: the pool is then as large as the budget allows.
        options["device_memory_GB"] = budget.gpu_gb
    ti.init(arch=taichi_arch(ti, fixture_arch(request)), **options)
    try:
        yield ti
    finally:
        ti.reset()
