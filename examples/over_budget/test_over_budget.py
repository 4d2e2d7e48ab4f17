"""Tests that exceed each budget on purpose, to show the reports.

    pytest --taichi-limits examples/over_budget

Every test here fails; none of them can take the machine down.
"""

import ctypes
import time

import pytest
import taichi as ti


@pytest.mark.taichi_limits(mem_mb=128)
def test_field_larger_than_mem_mb():
    ti.init(arch=ti.cpu)
    big = ti.field(ti.f32, shape=64 * 1024 * 1024)  # 256 MB

    @ti.kernel
    def touch():
        for i in big:
            big[i] = 1.0

    touch()


@pytest.mark.taichi_limits(cpu_s=1)
def test_kernel_loop_over_cpu_s():
    ti.init(arch=ti.cpu, cpu_max_num_threads=1)

    @ti.kernel
    def spin(n: ti.i64) -> ti.f64:
        acc = 0.0
        ti.loop_config(serialize=True)
        for i in range(n):
            acc = ti.sin(acc + i)
        return acc

    while True:
        spin(50_000_000)


@pytest.mark.taichi_limits(wall_s=1)
def test_sleep_over_wall_s():
    time.sleep(60)


@pytest.mark.taichi_limits(wall_s=2)
def test_endless_kernel_holding_the_gil():
    # A kernel launch holds the GIL: pytest-timeout cannot stop this; the supervisor can.
    ti.init(arch=ti.cpu, cpu_max_num_threads=1)
    flag = ti.field(ti.i32, shape=())

    @ti.kernel
    def forever():
        ti.loop_config(serialize=True)
        for _ in range(1):
            while flag[None] == 0:
                flag[None] = 0

    forever()


def test_segfault():
    ctypes.string_at(0)
