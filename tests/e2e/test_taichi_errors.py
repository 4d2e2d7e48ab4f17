"""Taichi's own failures: a crash inside ti.init, and device out-of-memory errors as gpu_gb."""

from __future__ import annotations

import pytest
from helpers.plugin_types import RunPlugin

CUDA_DRIVER_OOM = (
    "RuntimeError: [cuda_driver.h:operator()@92] CUDA Error CUDA_ERROR_OUT_OF_MEMORY: out of "
    "memory while calling malloc_async (cuMemAllocAsync)"
)


def test_device_out_of_memory_is_a_gpu_gb_violation(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # On the CPU backend Taichi never uses its device_memory_GB pool (measured: device_memory_GB
    # =0.001 on x64 still activates 1 GiB of a pointer field), so the real pool cannot run out
    # here. The test raises exactly what Taichi raises on CUDA; everything after it is real.
    pytester.makepyfile(
        test_oom=f"""
        import pytest
        import taichi as ti

        @pytest.mark.taichi_limits(gpu_gb=1)
        def test_pool_exhausted():
            ti.init(arch=ti.cpu, device_memory_GB=4)
            raise RuntimeError({CUDA_DRIVER_OOM.split(": ", 1)[1]!r})

        @pytest.mark.taichi_limits()
        def test_same_error_without_a_cap_is_the_tests_own():
            raise RuntimeError({CUDA_DRIVER_OOM.split(": ", 1)[1]!r})
        """
    )
    result = run_plugin("-rf")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: gpu_gb exceeded: the test needed more than the limit gpu_gb=1*",
            "*caught by   Taichi (device memory: the GPU driver is out of memory; ti.init capped at "
            "device_memory_GB<=1), during call*",
            "*detail      CUDA_ERROR_OUT_OF_MEMORY: out of memory while calling malloc_async*",
            # The arch is really x64 here: the report says the cap does not apply on it.
            "*gpu cap     ti.init device_memory_GB=4 (from argument): the gpu_gb cap does not apply "
            "on arch x64*",
        ]
    )
    # Without a gpu_gb budget it stays the test's own failure, with Taichi's message.
    result.stdout.fnmatch_lines(
        [
            "*test_same_error_without_a_cap_is_the_tests_own*",
            "*RuntimeError: *CUDA_ERROR_OUT_OF_MEMORY*",
        ]
    )


def test_crash_inside_ti_init_names_the_arch_and_the_way_out(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Here ti.init(arch=ti.gpu) really segfaults while probing OpenGL; the child takes the hit.
    monkeypatch.delenv("TI_ARCH", raising=False)
    pytester.makepyfile(
        test_crash="""
        import pytest
        import taichi as ti

        @pytest.mark.taichi_limits()
        def test_gpu_init():
            ti.init(arch=ti.gpu)
        """
    )
    result = run_plugin()
    if "passed" in result.parseoutcomes():
        pytest.skip("ti.init(arch=ti.gpu) works on this machine: nothing crashes")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: the test process was killed by signal 11 (SIGSEGV)*",
            "*hint        it crashed inside ti.init with arch=gpu (argument), while Taichi set up "
            "that backend. Use a backend that works on this machine: set TI_ARCH=x64*",
            "*stack written by faulthandler:*",
        ]
    )
    # The test's own frame stays in the stack, below Taichi's (the plugin's wrapper is hidden).
    result.stdout.fnmatch_lines(
        [
            "*misc.py*in adaptive_arch_select*",
            "*misc.py*in init*",
            "*test_crash.py*line 6 in test_gpu_init*",
        ]
    )
    assert "taichi_support" not in result.stdout.str()
