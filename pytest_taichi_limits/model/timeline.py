"""A compact timeline of one supervised test: what the supervisor sampled, at most ~200 points.

The supervisor calls `Timeline.add` once per sample, so it must stay cheap however long the test
runs: the figures live in fixed-size arrays allocated once. When they are full, neighbouring
points are merged pairwise (half the points are left) and each later point covers twice as many
samples (the stride doubles). A point keeps the largest memory and GPU figures of the samples it
covers, so a peak is never averaged away, and the time and CPU seconds of its last sample.

`to_json` gives the form stored on a JSON report's record:

    {"t_s": [...], "mem_bytes": [...], "cpu_s": [...], "gpu_bytes": [...] | null,
     "violation_at_s": float | null}

`t_s` are seconds since the test's child started, `mem_bytes` the tree's own resident memory
(above what the child started with), `cpu_s` the tree's CPU seconds so far, `gpu_bytes` the
tree's GPU memory where NVML measured it (null when it was never measured; a point without a
figure is null), `violation_at_s` the moment a budget violation was caught.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Points a test keeps at most; even, so that merging pairs leaves exactly half.
CAPACITY = 200
_NO_GPU = -1.0


class Timeline:
    """Samples of one test, downsampled in place. Not thread-safe: one supervisor loop owns it."""

    __slots__ = (
        "_count",
        "_cpu",
        "_gpu",
        "_gpu_seen",
        "_mem",
        "_pending",
        "_stride",
        "_t",
        "capacity",
    )

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError(f"a timeline's capacity must be an even number >= 2, got {capacity}")
        self.capacity = capacity
        zeros = bytes(8 * capacity)
        self._t = array("d", zeros)
        self._mem = array("d", zeros)
        self._cpu = array("d", zeros)
        self._gpu = array("d", zeros)
        self._count = 0  # points in use
        self._stride = 1  # samples per point
        self._pending = 0  # samples already in the last point, while it is not full
        self._gpu_seen = False

    def __len__(self) -> int:
        return self._count

    @property
    def stride(self) -> int:
        return self._stride

    def add(self, t_s: float, mem_bytes: float, cpu_s: float, gpu_bytes: int | None) -> None:
        """One sample: seconds since the start, own memory, CPU seconds, GPU memory or None."""
        gpu = _NO_GPU if gpu_bytes is None else float(gpu_bytes)
        if gpu_bytes is not None:
            self._gpu_seen = True
        if mem_bytes < 0:  # before the child's hello the parent's RSS is the guess
            mem_bytes = 0.0
        if self._pending == 0:  # the last point is full: start a new one
            if self._count == self.capacity:
                self._merge_pairs()
            index = self._count
            self._count += 1
            self._t[index] = t_s
            self._mem[index] = mem_bytes
            self._cpu[index] = cpu_s
            self._gpu[index] = gpu
        else:
            index = self._count - 1
            self._t[index] = t_s
            self._mem[index] = max(self._mem[index], mem_bytes)
            self._cpu[index] = max(self._cpu[index], cpu_s)
            self._gpu[index] = max(self._gpu[index], gpu)
        self._pending += 1
        if self._pending >= self._stride:
            self._pending = 0

    def _merge_pairs(self) -> None:
        """Full: point i becomes points 2i and 2i+1 together; later points cover twice as much."""
        for index in range(self.capacity // 2):
            first, second = 2 * index, 2 * index + 1
            self._t[index] = self._t[second]
            self._mem[index] = max(self._mem[first], self._mem[second])
            self._cpu[index] = max(self._cpu[first], self._cpu[second])
            self._gpu[index] = max(self._gpu[first], self._gpu[second])
        self._count = self.capacity // 2
        self._stride *= 2

    def to_json(self, violation_at_s: float | None = None) -> dict[str, Any]:
        """The stored form (see the module's docstring); plain JSON values."""
        count = self._count
        return {
            "t_s": [round(value, 4) for value in self._t[:count]],
            "mem_bytes": [int(value) for value in self._mem[:count]],
            "cpu_s": [round(value, 4) for value in self._cpu[:count]],
            "gpu_bytes": [None if value < 0 else int(value) for value in self._gpu[:count]]
            if self._gpu_seen
            else None,
            "violation_at_s": None if violation_at_s is None else round(violation_at_s, 4),
        }


class TimelineError(ValueError):
    """A stored timeline that is not in the documented form."""


def check(data: Mapping[str, Any]) -> None:
    """Raise TimelineError unless `data` is a timeline as `to_json` writes it."""
    lengths = set()
    for key in ("t_s", "mem_bytes", "cpu_s"):
        values = data.get(key)
        if not isinstance(values, list) or not all(
            isinstance(value, (int, float)) for value in values
        ):
            raise TimelineError(f"timeline: {key!r} must be a list of numbers")
        lengths.add(len(values))
    gpu = data.get("gpu_bytes")
    if gpu is not None:
        if not isinstance(gpu, list):
            raise TimelineError("timeline: 'gpu_bytes' must be a list or null")
        lengths.add(len(gpu))
    if len(lengths) != 1:
        raise TimelineError("timeline: the lists must have the same length")
    moment = data.get("violation_at_s")
    if moment is not None and not isinstance(moment, (int, float)):
        raise TimelineError("timeline: 'violation_at_s' must be a number or null")


@dataclass(frozen=True)
class Points:
    """A stored timeline as the charts read it (the form `to_json` writes, checked)."""

    t_s: tuple[float, ...]
    mem_bytes: tuple[float, ...]
    cpu_s: tuple[float, ...]
    gpu_bytes: tuple[float | None, ...] | None
    violation_at_s: float | None

    @classmethod
    def of(cls, data: Mapping[str, Any] | None) -> Points | None:
        """The points of a stored timeline; None where there is none or it is not valid."""
        if data is None:
            return None
        try:
            check(data)
        except TimelineError:
            return None
        gpu = data.get("gpu_bytes")
        moment = data.get("violation_at_s")
        return cls(
            tuple(map(float, data["t_s"])),
            tuple(map(float, data["mem_bytes"])),
            tuple(map(float, data["cpu_s"])),
            None if gpu is None else tuple(None if v is None else float(v) for v in gpu),
            None if moment is None else float(moment),
        )


_NUMBERS: dict[str, Any] = {"type": "array", "items": {"type": "number"}}

#: JSON Schema of the stored timeline (a record's optional "timeline" field).
TIMELINE_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["t_s", "mem_bytes", "cpu_s", "gpu_bytes", "violation_at_s"],
    "additionalProperties": False,
    "properties": {
        "t_s": _NUMBERS,
        "mem_bytes": _NUMBERS,
        "cpu_s": _NUMBERS,
        "gpu_bytes": {"type": ["array", "null"], "items": {"type": ["number", "null"]}},
        "violation_at_s": {"type": ["number", "null"]},
    },
}
