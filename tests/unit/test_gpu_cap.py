"""The gpu_gb cap on ti.init, seen through Taichi's applied configuration on the CPU backend.

`taichi.lang.impl.current_cfg()` shows device_memory_GB / device_memory_fraction on the CPU
backend too (which otherwise ignores them), so every combination of ti.init argument, TI_*
environment variable and budget is checked here without a GPU. Each combination is one test of
one pytester run (real forks, real ti.init), which records what Taichi applied.
"""

from __future__ import annotations

import pytest

from pytest_taichi_limits.taichi_support.cap import (
    MemoryRequest,
    cap_memory,
    memory_request,
)


@pytest.mark.parametrize(
    ("request_", "cap", "total", "granted", "clamped"),
    [
        (MemoryRequest(1.0, "Taichi's default", 0.0, "Taichi's default"), 2.0, None, 1.0, False),
        (MemoryRequest(3.0, "argument", 0.0, "Taichi's default"), 2.0, None, 2.0, True),
        (MemoryRequest(1.0, "Taichi's default", 0.5, "argument"), 2.0, None, 2.0, True),
        # With the device's size known, a fraction within the cap is kept as its size in GB.
        (MemoryRequest(1.0, "Taichi's default", 0.25, "argument"), 2.0, 4 * 1024**3, 1.0, False),
        (MemoryRequest(1.0, "Taichi's default", 0.75, "argument"), 2.0, 4 * 1024**3, 2.0, True),
    ],
)
def test_cap_memory(
    request_: MemoryRequest, cap: float, total: int | None, granted: float, clamped: bool
) -> None:
    capped = cap_memory(request_, cap, total)
    assert capped.device_memory_GB == pytest.approx(granted)
    assert capped.device_memory_fraction == 0.0
    assert capped.clamped is clamped


def test_memory_request_follows_taichis_precedence() -> None:
    environ = {"TI_DEVICE_MEMORY_GB": "4", "TI_DEVICE_MEMORY_FRACTION": "0.3"}
    assert memory_request({"device_memory_GB": 0.5}, environ) == MemoryRequest(
        0.5, "argument", 0.3, "TI_DEVICE_MEMORY_FRACTION"
    )
    assert memory_request({}, {"TI_DEVICE_MEMORY_GB": ""}) == MemoryRequest(
        1.0, "Taichi's default", 0.0, "Taichi's default"
    )
