"""pytest-taichi-limits: a resource budget on every Taichi test, enforced from outside."""

from __future__ import annotations

from .budget import Budget
from .records import Crash, Ending, Usage, Violation

__version__ = "0.1.0"
__all__ = ["Budget", "Crash", "Ending", "Usage", "Violation", "__version__"]
