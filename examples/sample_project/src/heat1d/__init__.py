"""heat1d: heat diffusion along a rod, one explicit finite-difference step per kernel launch.

The ends of the rod keep their temperature; the interior evolves by
t[i] += alpha * (t[i - 1] - 2 t[i] + t[i + 1]), stable for alpha <= 0.5.
"""

# No `from __future__ import annotations` here: Taichi reads kernel annotations as types.

import numpy as np
import taichi as ti

__all__ = ["Rod"]


@ti.data_oriented
class Rod:
    """A rod of `cells` cells. Call `ti.init` before making one."""

    def __init__(self, cells: int, alpha: float = 0.25) -> None:
        if cells < 3:
            raise ValueError(f"a rod needs at least 3 cells, got {cells}")
        if not 0 < alpha <= 0.5:
            raise ValueError(f"alpha must be in (0, 0.5] for a stable step, got {alpha}")
        self.cells = cells
        self.alpha = alpha
        self.temperature = ti.field(ti.f32, shape=cells)
        self._next = ti.field(ti.f32, shape=cells)

    def heat(self, values: np.ndarray) -> None:
        self.temperature.from_numpy(values.astype(np.float32))

    def step(self, steps: int = 1) -> None:
        for _ in range(steps):
            self._step(self.alpha)

    def temperatures(self) -> np.ndarray:
        return self.temperature.to_numpy()

    @ti.kernel
    def _step(self, alpha: ti.f32):
        for i in range(1, self.cells - 1):
            left, here, right = self.temperature[i - 1], self.temperature[i], self.temperature[i + 1]
            self._next[i] = here + alpha * (left - 2.0 * here + right)
        for i in range(1, self.cells - 1):
            self.temperature[i] = self._next[i]
