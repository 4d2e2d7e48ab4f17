"""GPU memory of the test's process tree, where NVML can tell; otherwise a reason why not."""

from __future__ import annotations


class GpuProbe:
    """Samples GPU memory used by one process tree; `note` says what is measured or why not."""

    def __init__(self, note: str) -> None:
        self.note = note

    def sample(self) -> int | None:
        return None


def probe_for(root_pid: int) -> GpuProbe:
    return GpuProbe("not measured (NVML support is not built yet)")
