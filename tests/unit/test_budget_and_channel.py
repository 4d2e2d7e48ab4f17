"""Unit tests of the pure parts: budget parsing, precedence, channel framing, rendering."""

from __future__ import annotations

import math
import os

import pytest

from pytest_taichi_limits.config.budget import (
    Budget,
    BudgetError,
    check_value,
    larger,
    parse_text,
    resolve,
)
from pytest_taichi_limits.config.units import human_bytes
from pytest_taichi_limits.ipc.channel import ChannelReader, ChannelWriter
from pytest_taichi_limits.ipc.protocol import Report
from pytest_taichi_limits.render.text import trim_stack


def test_a_worker_s_start_up_is_watched_under_the_larger_of_two_budgets() -> None:
    """The session's default and the first test's: per key the larger, no limit the largest
    (a first test with mem_mb=24 never holds its worker's import to 24 MiB)."""
    default = Budget(cpu_s=None, mem_mb=4096, wall_s=600, gpu_gb=None)
    first = Budget(cpu_s=0.3, mem_mb=24, wall_s=6000, gpu_gb=2)
    assert larger(default, first) == Budget(cpu_s=None, mem_mb=4096, wall_s=6000, gpu_gb=None)
    assert larger(first, default) == larger(default, first)


@pytest.mark.parametrize("value", [True, "5", 0, -1, math.nan, math.inf, 1e12, None, [1]])
def test_check_value_refuses(value: object) -> None:
    with pytest.raises(BudgetError, match="mem_mb must be a positive number of MiB"):
        check_value("mem_mb", value)


def test_parse_text_accepts_numbers_and_off() -> None:
    assert parse_text("wall_s", " 2.5 ") == 2.5
    assert parse_text("wall_s", "OFF") is None
    with pytest.raises(BudgetError, match="or 'off' for no limit, got 'ten'"):
        parse_text("wall_s", "ten")


def test_resolve_takes_each_key_from_the_closest_layer() -> None:
    budget = resolve({"cpu_s": 1.0}, {"cpu_s": 2.0, "mem_mb": 3.0}, {"mem_mb": 4.0, "wall_s": None})
    assert budget == Budget(cpu_s=1.0, mem_mb=3.0, wall_s=None, gpu_gb=None)
    assert resolve({}, {}, {}) == Budget(cpu_s=None, mem_mb=4096.0, wall_s=600.0, gpu_gb=None)


def test_channel_round_trip_keeps_tuples_and_flags_garbage() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    ChannelWriter(write_fd).send(Report({"longrepr": ("file.py", 3, "Skipped: x")}))
    os.write(write_fd, b"not json\n")
    os.close(write_fd)
    reader = ChannelReader(read_fd)
    reader.drain()
    assert reader.messages == [Report({"longrepr": ("file.py", 3, "Skipped: x")})]
    assert reader.problem is not None and "garbage" in reader.problem
    assert reader.closed
    os.close(read_fd)


def test_channel_cut_mid_message_is_a_problem() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.write(write_fd, b'{"t": "hel')
    os.close(write_fd)
    reader = ChannelReader(read_fd)
    reader.drain()
    assert reader.problem == "the report channel ended in the middle of a message"
    os.close(read_fd)


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"
    assert human_bytes(-2 * 1024**2) == "-2.0 MiB"


def test_trim_stack_drops_plumbing_below_the_test() -> None:
    stack = "\n".join(
        [
            "Current thread 0x1 (most recent call first):",
            '  File "/x/test_a.py", line 5 in test_a',
            '  File "/y/site-packages/_pytest/python.py", line 166 in pytest_pyfunc_call',
            '  File "/y/site-packages/pytest_taichi_limits/child.py", line 9 in _run_phase',
            '  File "/y/site-packages/_pytest/main.py", line 1 in main',
            "",
            "Thread 0x2 (most recent call first):",
            '  File "/x/helper.py", line 2 in work',
        ]
    )
    assert trim_stack(stack).splitlines() == [
        "Current thread 0x1 (most recent call first):",
        '  File "/x/test_a.py", line 5 in test_a',
        "",
        "Thread 0x2 (most recent call first):",
        '  File "/x/helper.py", line 2 in work',
    ]


def test_replace_everywhere_swaps_module_namespaces_only() -> None:
    import types

    from pytest_taichi_limits.taichi_support.hooks import replace_everywhere

    def original() -> str:
        return "original"

    def wrapper() -> str:
        return "wrapper"

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    module = types.ModuleType("holder")
    module.init = original  # type: ignore[attr-defined]
    module.alias = original  # type: ignore[attr-defined]
    saved = types.SimpleNamespace(init=original)
    replace_everywhere(original, wrapper)
    assert module.init is wrapper and module.alias is wrapper
    assert wrapper.__wrapped__ is original
    assert saved.init is original
