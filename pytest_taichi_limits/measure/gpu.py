"""GPU memory of the test's process tree, where NVML can tell; otherwise a reason why not.

NVML (`nvidia-ml-py`, the optional extra `pytest-taichi-limits[gpu]`) lists, per device, the
processes that hold memory and how much. The probe sums that over the test's process tree, on
every device, counting a process that appears as both a compute and a graphics user once. This
is the figure that bounds dense fields and ndarrays (allocated outside Taichi's
device_memory_GB pool on CUDA 11.2+), the CUDA context and other libraries' allocations.

NVML calls cost around a millisecond per device, so the probe asks at most every `min_gap_s`
and hands back the last figure in between; a spike shorter than that can be missed.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .proctree import tree_pids

#: The note of every test on a machine without NVIDIA hardware: short, because it says nothing
#: about the test (the session's header says once why, `no_gpu_reason`).
NO_NVIDIA_GPU_NOTE = "not measured: no NVIDIA GPU"
#: NVML's answers that mean "no NVIDIA hardware or driver here", not "NVML failed".
_NO_HARDWARE = ("NVML Shared Library Not Found", "Driver Not Loaded", "sees no NVIDIA GPU")

#: usedGpuMemory when the driver cannot tell (Windows WDDM, some MIG setups): 2**64 - 1.
NVML_VALUE_NOT_AVAILABLE = (1 << 64) - 1

#: One device's processes: objects with `pid` and `usedGpuMemory` (NVML's process-info structs
#: as pynvml hands them back), compute and graphics users together.
DeviceReader = Callable[[], Sequence[Any]]


class GpuProbe:
    """Samples GPU memory used by one process tree; `note` says what is measured or why not."""

    def __init__(self, note: str) -> None:
        self.note = note

    def sample(self) -> int | None:
        return None


def tree_gpu_bytes(devices: Iterable[Sequence[Any]], pids: Iterable[int]) -> int | None:
    """Memory held by `pids` over all devices; None when NVML cannot tell how much.

    `devices` holds, per device, NVML's process entries (a pid may appear twice on one device:
    as a compute and as a graphics user of the same memory).
    """
    wanted = set(pids)
    total = 0
    for processes in devices:
        per_pid: dict[int, int] = {}
        for process in processes:
            pid = int(process.pid)
            if pid not in wanted:
                continue
            used = process.usedGpuMemory
            if used is None or used == NVML_VALUE_NOT_AVAILABLE:
                return None
            per_pid[pid] = max(per_pid.get(pid, 0), int(used))
        total += sum(per_pid.values())
    return total


class NvmlProbe(GpuProbe):
    """The tree's GPU memory from NVML, read at most every `min_gap_s` seconds."""

    def __init__(
        self,
        root_pid: int,
        devices: Sequence[DeviceReader],
        min_gap_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        pids: Callable[[int], list[int]] = tree_pids,
    ) -> None:
        super().__init__(f"measured by NVML on {len(devices)} device(s)")
        self.root_pid = root_pid
        self.devices = devices
        self.min_gap_s = min_gap_s
        self.clock = clock
        self.pids = pids
        self._last_read_at: float | None = None
        self._last: int | None = None

    def sample(self) -> int | None:
        if not self.devices:  # NVML failed earlier: the note says why
            return None
        now = self.clock()
        if self._last_read_at is not None and now - self._last_read_at < self.min_gap_s:
            return self._last
        self._last_read_at = now
        try:
            figure = tree_gpu_bytes((read() for read in self.devices), self.pids(self.root_pid))
        except Exception as error:  # noqa: BLE001 - NVML errors are library-specific classes
            self.note = f"not measured (NVML failed: {type(error).__name__}: {error})"
            self.devices = ()
            figure = None
        if figure is None and self.devices:
            self.note = "not measured (NVML does not report per-process memory on this device)"
        self._last = figure
        return figure


def _device_reader(pynvml: Any, handle: Any) -> DeviceReader:
    compute = _versioned(pynvml, "nvmlDeviceGetComputeRunningProcesses")
    graphics = _versioned(pynvml, "nvmlDeviceGetGraphicsRunningProcesses")

    def read() -> list[Any]:
        return list(compute(handle)) + list(graphics(handle))

    return read


def _versioned(pynvml: Any, name: str) -> Callable[[Any], Sequence[Any]]:
    """The newest version of an NVML call that this driver has (older drivers lack _v3)."""
    candidates = [getattr(pynvml, f"{name}{suffix}", None) for suffix in ("_v3", "_v2", "")]
    functions = [function for function in candidates if function is not None]

    def call(handle: Any) -> Sequence[Any]:
        last_error: Exception | None = None
        for function in functions:
            try:
                found: Sequence[Any] = function(handle)
                return found
            except pynvml.NVMLError_FunctionNotFound as error:
                last_error = error
            except pynvml.NVMLLibraryMismatchError as error:
                last_error = error
        raise last_error or RuntimeError(f"pynvml has no {name}")

    return call


@functools.cache
def _nvml() -> tuple[Any, tuple[Any, ...]] | str:
    """(pynvml, device handles) once per process, or why there is none.

    Cached: NVML's library and device handles do not change while a session runs, and nvmlInit
    costs more than a test's whole sampling.
    """
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed; pip install nvidia-ml-py (the gpu extra)"
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handles = tuple(pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(count))
    except pynvml.NVMLError as error:
        return f"NVML unavailable: {error}"
    if not handles:
        return "NVML sees no NVIDIA GPU"
    return pynvml, handles


def no_gpu_reason() -> str | None:
    """Why this machine has no NVIDIA GPU to measure, where that is the case; None where it has
    one (or NVML failed on it for another reason, which every test's note then says)."""
    found = _nvml()
    if not isinstance(found, str):
        return None
    if any(sign in found for sign in _NO_HARDWARE):
        return found
    if found.startswith("nvidia-ml-py is not installed") and not _nvidia_driver_present():
        return found
    return None


def _nvidia_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def probe_for(root_pid: int) -> GpuProbe:
    found = _nvml()
    if isinstance(found, str):
        return GpuProbe(NO_NVIDIA_GPU_NOTE if no_gpu_reason() else f"not measured ({found})")
    pynvml, handles = found
    return NvmlProbe(root_pid, [_device_reader(pynvml, handle) for handle in handles])


def smallest_device_total_bytes() -> int | None:
    """Total memory of the smallest NVIDIA device, or None where NVML cannot tell.

    Used in the child to turn a requested device_memory_fraction into gigabytes.
    """
    found = _nvml()
    if isinstance(found, str):
        return None
    pynvml, handles = found
    try:
        return min(int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) for handle in handles)
    except pynvml.NVMLError:
        return None
