import numpy as np
import pytest

from heat1d import Rod


def test_a_rod_needs_three_cells():
    with pytest.raises(ValueError, match="at least 3 cells"):
        Rod(2)


def test_a_uniform_rod_stays_uniform(taichi_cpu):
    rod = Rod(1_000)
    rod.heat(np.full(1_000, 20.0))
    rod.step(100)
    assert np.allclose(rod.temperatures(), 20.0)


def test_a_hot_spot_spreads_and_cools(taichi_cpu):
    rod = Rod(101)
    start = np.zeros(101)
    start[50] = 100.0
    rod.heat(start)
    rod.step(50)
    after = rod.temperatures()
    assert after[50] < 100.0 and after[45] > 0.0
    assert np.allclose(after, after[::-1], atol=1e-4)  # symmetric about the spot


# A long rod: 2 fields of 16 Mi cells (128 MiB) and 20 steps, within its own budget.
@pytest.mark.taichi_limits(mem_mb=768, cpu_s=60)
def test_a_long_rod_keeps_its_heat_in_the_interior(taichi_cpu):
    cells = 16 * 1024 * 1024
    rod = Rod(cells)
    start = np.zeros(cells, dtype=np.float32)
    start[cells // 2] = 1.0
    rod.heat(start)
    rod.step(20)
    assert rod.temperatures().sum() == pytest.approx(1.0, rel=1e-3)
