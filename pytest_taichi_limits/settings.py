"""How supervision works, as opposed to a Budget (how much a test may use)."""

from __future__ import annotations

from dataclasses import dataclass

from .budget import ISOLATIONS  # how many tests share one supervised child

#: How a supervised test is started: in a forked child, or in a fresh interpreter.
MODES = ("auto", "fork", "spawn")

__all__ = ["ISOLATIONS", "MODES", "Settings"]


@dataclass(frozen=True)
class Settings:
    interval_s: float = 0.01
    grace_s: float = 2.0
    mode: str = "auto"
    arch: str | None = None
    isolation: str = "test"
