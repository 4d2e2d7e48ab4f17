"""The warnings the plugin raises, public as `pytest_taichi_limits.<Name>` (for `-W error::...`)."""

from __future__ import annotations

import pytest


class TaichiLimitsRegressionWarning(pytest.PytestWarning):
    """A supervised test grew beyond the baseline's tolerance (--taichi-limits-compare-warn)."""
