"""Types the tests share (the fixtures in conftest.py hand these out)."""

from __future__ import annotations

from typing import Protocol

import pytest


class RunPlugin(Protocol):
    """The `run_plugin` fixture: pytest in a subprocess, with the plugin, under a hard timeout."""

    def __call__(
        self, *args: str, timeout: float = ..., default_isolation: bool = ...
    ) -> pytest.RunResult: ...
