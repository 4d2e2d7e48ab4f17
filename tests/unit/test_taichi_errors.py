"""Taichi's own failures: a crash inside ti.init, and device out-of-memory errors as gpu_gb."""

from __future__ import annotations

import pytest

from pytest_taichi_limits.ipc.protocol import Hello, TaichiInit, TaichiInitDone
from pytest_taichi_limits.supervise.verdict import init_crash_hint
from pytest_taichi_limits.taichi_support.cap import recognise_device_oom

# Texts as Taichi 1.7.4 produces them (format strings from its source at tag v1.7.4, filled in
# the way the CUDA driver and the runtime fill them).
CUDA_POOL_ASSERT = (
    "Taichi JIT:0: allocate_from_reserved_memory: block: [0,0,0], thread: [0,0,0] Assertion "
    "`Out of CUDA pre-allocated memory.\nConsider using ti.init(device_memory_fraction=0.9) or "
    "ti.init(device_memory_GB=4) to allocate more GPU memory` failed."
)
HOST_POOL_ASSERT = "TaichiAssertionError: Out of pre-allocated memory"
CUDA_DRIVER_OOM = (
    "RuntimeError: [cuda_driver.h:operator()@92] CUDA Error CUDA_ERROR_OUT_OF_MEMORY: out of "
    "memory while calling malloc_async (cuMemAllocAsync)"
)
POOL_ALLOCATION_FAILED = (
    "RuntimeError: [device_memory_pool.cpp:allocate_raw_memory@83] Device memory allocation "
    "(2147483648 B) failed."
)


@pytest.mark.parametrize(
    ("text", "what", "line_start"),
    [
        (
            CUDA_POOL_ASSERT,
            "the device_memory_GB pool is exhausted",
            "Out of CUDA pre-allocated memory.",
        ),
        (HOST_POOL_ASSERT, "the device_memory_GB pool is exhausted", "Out of pre-allocated memory"),
        (CUDA_DRIVER_OOM, "the GPU driver is out of memory", "CUDA_ERROR_OUT_OF_MEMORY: out of"),
        (POOL_ALLOCATION_FAILED, "a device allocation failed", "Device memory allocation (2147"),
    ],
)
def test_recognises_taichis_device_out_of_memory_texts(
    text: str, what: str, line_start: str
) -> None:
    found = recognise_device_oom(text)
    assert found is not None
    assert found[0] == what
    assert found[1].startswith(line_start)


@pytest.mark.parametrize(
    "text",
    [
        "RuntimeError: [cuda_driver.h:operator()@92] CUDA Error CUDA_ERROR_ASSERT: device-side "
        "assert triggered while calling stream_synchronize (cuStreamSynchronize)",
        "MemoryError: out of memory",  # host memory: mem_mb's business, not gpu_gb's
        "TaichiAssertionError: List manager out of chunks.",
    ],
)
def test_other_errors_are_not_device_out_of_memory(text: str) -> None:
    assert recognise_device_oom(text) is None


def test_init_crash_hint_only_while_inside_ti_init() -> None:
    started = TaichiInit("cuda", "TI_ARCH")
    assert "TI_ARCH=cuda" in init_crash_hint([Hello("t.py::t"), started])
    assert init_crash_hint([started, TaichiInitDone(None)]) == ""
    assert init_crash_hint([]) == ""
