"""Taichi inside the supervised child: the GPU cap on ti.init, and a clean reset at the end."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .budget import Budget
from .channel import ChannelWriter

if TYPE_CHECKING:
    from .supervisor import Settings


def prepare_child(budget: Budget, settings: Settings, writer: ChannelWriter) -> None:
    """Called in the child before the test's phases run."""


def finish_child(writer: ChannelWriter) -> None:
    """Reset Taichi so that its offline kernel cache is written before the child exits."""
    taichi = sys.modules.get("taichi")
    if taichi is None:
        return
    try:
        taichi.reset()
    except Exception as error:  # noqa: BLE001 - a failing reset must not hide the test's result
        writer.send("note", key="taichi_reset_failed", text=f"{type(error).__name__}: {error}")
