"""Real Taichi tests that stay within their budgets: `pytest --taichi-limits examples/within_budget`."""

import numpy as np
import pytest
import taichi as ti


@pytest.fixture
def cpu_taichi():
    # Initialising inside a fixture (not at import time) keeps the fast fork mode available.
    ti.init(arch=ti.cpu)
    yield
    ti.reset()


@pytest.mark.taichi_limits(mem_mb=512, cpu_s=30)
def test_fill_a_64_mb_field(cpu_taichi):
    values = ti.field(ti.f32, shape=16 * 1024 * 1024)

    @ti.kernel
    def fill():
        for i in values:
            values[i] = i * 0.5

    fill()
    assert values[10] == 5.0


@pytest.mark.taichi_limits(cpu_s=10, wall_s=60)
def test_parallel_reduction(cpu_taichi):
    @ti.kernel
    def triangle(n: ti.i32) -> ti.i64:
        total = ti.i64(0)
        for i in range(n):
            total += i
        return total

    assert triangle(100_000) == 100_000 * 99_999 // 2


def test_ndarray_round_trip(cpu_taichi):
    array = ti.ndarray(ti.f32, shape=(256, 256))

    @ti.kernel
    def double(a: ti.types.ndarray()):
        for i, j in a:
            a[i, j] = 2.0 * (i + j)

    double(array)
    expected = 2.0 * np.add.outer(np.arange(256), np.arange(256))
    assert np.allclose(array.to_numpy(), expected)


@pytest.mark.taichi_limits(mem_mb=256)
class TestSmallFields:
    def test_vector_field(self, cpu_taichi):
        positions = ti.Vector.field(3, ti.f32, shape=10_000)

        @ti.kernel
        def place():
            for i in positions:
                positions[i] = ti.Vector([i, 2 * i, 3 * i])

        place()
        assert positions[3][2] == 9.0

    @pytest.mark.taichi_limits(wall_s=120)  # closest marker wins for wall_s; mem_mb stays 256
    def test_matrix_field(self, cpu_taichi):
        rotations = ti.Matrix.field(2, 2, ti.f32, shape=100)

        @ti.kernel
        def identity():
            for i in rotations:
                rotations[i] = ti.Matrix.identity(ti.f32, 2)

        identity()
        assert rotations[7][1, 1] == 1.0
