import os

import pytest
import taichi as ti

# Otherwise every ti.init starts a thread that tries to reach the network for a version check.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")


@pytest.fixture
def taichi_cpu():
    # Initialised in a fixture, not at import: each test's process starts Taichi afresh.
    ti.init(arch=ti.cpu)
    yield
    ti.reset()
