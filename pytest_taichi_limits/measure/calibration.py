"""How fast this machine does a fixed piece of work now: the CPU seconds of a calibration loop.

A test's CPU time is a property of the test and of the machine: the same commit measured ~1.6x
more CPU in every test of Taichi's suite on a day the shared machine was busy (issue 22). A
baseline stores the calibration of the run it was saved from; a later run calibrates itself
too, and its CPU (and wall) figures are compared with the baseline's scaled by the ratio of the
two (formats/baseline.py). The report says how much slower or faster the machine was.

The loop is CPU time of this thread (time.thread_time): being descheduled does not count, only
how much work a CPU second buys (contention for caches and memory bandwidth, a sibling
hyperthread, a hypervisor's steal charged to the guest, frequency scaling: what makes a test's
CPU time grow with no change in the code). It mixes what tests spend CPU on: Python bytecode
(arithmetic, dicts, lists, calls) and memory traffic. The median of a few repeats, so that one
interruption does not decide.
"""

from __future__ import annotations

import statistics
import time

from ..model.records import Calibration

#: Repeats of the loop; the median is the figure. About 30 ms each on a 2.6 GHz x86-64 core.
REPEATS = 5
_ITERATIONS = 60_000
_COPY_BYTES = 4 << 20


def _work() -> int:
    """A fixed piece of work: bytecode and memory traffic. Returns a checksum (so that nothing
    of it can be skipped)."""
    table: dict[int, int] = {}
    values: list[int] = []
    total = 0
    for index in range(_ITERATIONS):
        key = (index * 2654435761) & 0xFFFF
        table[key] = table.get(key, 0) + index
        values.append(key ^ index)
        total += _mix(key, index)
    values.sort()
    block = bytearray(_COPY_BYTES)
    for _ in range(4):
        block = bytearray(block)  # memcpy of 4 MiB: the memory bandwidth a test also uses
        block[0] = (block[0] + 1) & 0xFF
    return total + len(table) + values[len(values) // 2] + block[0]


def _mix(key: int, index: int) -> int:
    return (key * 31 + index) % 1009


def calibrate(repeats: int = REPEATS) -> Calibration:
    """CPU and wall seconds of the calibration loop here and now (each the median of
    `repeats`). The wall figure says how much of a CPU the process got: a CPU hog on the same
    core doubles it and leaves the CPU figure as it was."""
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(repeats):
        cpu_start, wall_start = time.thread_time(), time.monotonic()
        _work()
        cpu.append(time.thread_time() - cpu_start)
        wall.append(time.monotonic() - wall_start)
    # thread_time ticks in nanoseconds, but a loop can round to 0 on a coarse clock
    return Calibration(max(statistics.median(cpu), 1e-6), max(statistics.median(wall), 1e-6))
