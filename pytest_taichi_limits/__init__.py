"""pytest-taichi-limits: a resource budget on every Taichi test, enforced from outside.

The public names live here (the subpackages are the plugin's own layout and may move):
`Budget`, `Usage` (with its `Admitted`), `Violation`, `Crash`, `Ending` and
`TaichiLimitsRegressionWarning`.
"""

from __future__ import annotations

from .config.budget import Budget
from .model.records import Admitted, Crash, Ending, Usage, Violation
from .model.warnings import TaichiLimitsRegressionWarning

__version__ = "0.1.0"
__all__ = [
    "Admitted",
    "Budget",
    "Crash",
    "Ending",
    "TaichiLimitsRegressionWarning",
    "Usage",
    "Violation",
    "__version__",
]
