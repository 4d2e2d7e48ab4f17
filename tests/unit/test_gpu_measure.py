"""GPU memory measured through NVML: the sampling logic against NVML's real data structures.

The structures are pynvml's own ctypes structs, filled as the NVML library fills them and turned
into objects by pynvml's own converter; only the device (which this machine lacks) is replaced by
a function that hands back such structs. The GPU path itself runs in benchmarks/gpu_check.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from pytest_taichi_limits.config.budget import Budget
from pytest_taichi_limits.config.settings import Settings
from pytest_taichi_limits.ipc.protocol import ChildEnded, Ready, RunCommand, encode_message
from pytest_taichi_limits.measure import gpu
from pytest_taichi_limits.supervise.supervisor import ExitInfo, Worker, stack_file

pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (the [gpu] extra) is not installed")

GIB = 1024**3


def nvml_processes(*entries: tuple[int, int]) -> list[Any]:
    """What nvmlDeviceGet{Compute,Graphics}RunningProcesses hand back for (pid, bytes) entries."""
    array = (pynvml.c_nvmlProcessInfo_t * len(entries))()
    for slot, (pid, used) in zip(array, entries, strict=True):
        slot.pid = pid
        slot.usedGpuMemory = used
        slot.gpuInstanceId = 0xFFFFFFFF
        slot.computeInstanceId = 0xFFFFFFFF
    processes = []
    for struct in array:
        friendly = pynvml.nvmlStructToFriendlyObject(struct)
        if friendly.usedGpuMemory == pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
            friendly.usedGpuMemory = None  # what pynvml does for this value
        processes.append(friendly)
    return processes


def test_sums_the_tree_over_devices_and_ignores_other_processes() -> None:
    device0 = nvml_processes((100, 1 * GIB), (999, 8 * GIB), (101, 256 * 1024**2))
    device1 = nvml_processes((101, 2 * GIB))
    assert gpu.tree_gpu_bytes([device0, device1], [100, 101, 102]) == 3 * GIB + 256 * 1024**2


def test_a_compute_and_graphics_user_counts_once_per_device() -> None:
    # The same process listed by both calls on one device holds one set of memory.
    device0 = nvml_processes((100, GIB)) + nvml_processes((100, GIB))
    assert gpu.tree_gpu_bytes([device0], [100]) == GIB


def test_no_process_of_the_tree_on_the_gpu_is_zero_bytes() -> None:
    assert gpu.tree_gpu_bytes([nvml_processes((999, GIB)), []], [100]) == 0


def test_memory_the_driver_cannot_report_is_not_measured() -> None:
    unknown = nvml_processes((100, pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value))
    assert unknown[0].usedGpuMemory is None
    assert gpu.tree_gpu_bytes([unknown], [100]) is None
    # The raw value, where something hands it back unconverted, means the same.
    raw = pynvml.c_nvmlProcessInfo_t(pid=100, usedGpuMemory=gpu.NVML_VALUE_NOT_AVAILABLE)
    assert gpu.tree_gpu_bytes([[raw]], [100]) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_probe_reads_nvml_at_most_every_min_gap_and_repeats_the_last_figure() -> None:
    clock = _Clock()
    held = {"bytes": GIB}
    reads: list[float] = []

    def device() -> list[Any]:
        reads.append(clock.now)
        return nvml_processes((os.getpid(), held["bytes"]))

    probe = gpu.NvmlProbe(os.getpid(), [device], min_gap_s=0.05, clock=clock)
    assert probe.sample() == GIB
    held["bytes"] = 3 * GIB
    clock.now = 0.01
    assert probe.sample() == GIB  # too soon: the last figure, no NVML call
    clock.now = 0.06
    assert probe.sample() == 3 * GIB
    assert reads == [0.0, 0.06]
    assert probe.note.startswith("measured by NVML")


def test_probe_that_fails_says_why_and_stops_asking() -> None:
    calls = []

    def broken() -> list[Any]:
        calls.append(1)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    probe = gpu.NvmlProbe(os.getpid(), [broken], min_gap_s=0.0)
    assert probe.sample() is None
    assert probe.sample() is None
    assert len(calls) == 1
    assert probe.note.startswith("not measured (NVML failed: NVMLError_GpuIsLost")


def test_without_nvml_the_note_says_why_never_zero() -> None:
    probe = gpu.probe_for(os.getpid())
    if isinstance(probe, gpu.NvmlProbe):
        pytest.skip("this machine has an NVIDIA GPU: see benchmarks/gpu_check.py")
    assert probe.sample() is None
    assert gpu.smallest_device_total_bytes() is None
    reason = gpu.no_gpu_reason()
    if reason is None:  # a driver without NVML: every note says why
        assert probe.note.startswith("not measured (")
    else:  # no NVIDIA hardware: a short note here, the reason once in the header
        assert probe.note == gpu.NO_NVIDIA_GPU_NOTE == "not measured: no NVIDIA GPU"
        assert "NVML" in reason or "nvidia-ml-py" in reason


class _BareChild:
    """A real forked child that says it is ready, takes one command and then sleeps: only the
    supervisor's side of the protocol, none of the plugin's child code."""

    def __init__(self) -> None:
        channel_read, channel_write = os.pipe()
        control_read, control_write = os.pipe()
        self.stack_fd = stack_file()
        pid = os.fork()
        if pid == 0:
            os.write(channel_write, encode_message(Ready(os.getpid())))
            os.read(control_read, 4096)  # where the parent sees it wait, as the plugin's child
            time.sleep(30)
            os._exit(0)
        self.control_inode = os.fstat(control_read).st_ino
        os.close(channel_write)
        os.close(control_read)
        os.set_blocking(channel_read, False)
        self.pid, self.channel_fd, self.control_fd = pid, channel_read, control_write
        self.keeper_pid = self.origin_pid = os.getpid()  # no keeper: the child is ours

    def wait_fd(self) -> int | None:
        return None

    def poll_exit(self, block: bool) -> ExitInfo | None:
        waited, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        return ExitInfo.of(ChildEnded.from_wait4(status, usage)) if waited else None

    def crash_cause(self) -> str | None:
        return None

    def close(self) -> None:
        for fd in (self.channel_fd, self.control_fd, self.stack_fd):
            os.close(fd)

    unborn = False  # forked already: it reports ready

    def start(self, first: RunCommand | None) -> None:
        raise AssertionError("forked already")

    def birth_rss_bytes(self) -> int:
        return 0


def test_supervisor_enforces_gpu_gb_on_the_measured_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real forked child; NVML's answer for it is the structs above, 3 GiB against a 1 GiB cap.
    def probe_for(root_pid: int) -> gpu.NvmlProbe:
        return gpu.NvmlProbe(root_pid, [lambda: nvml_processes((root_pid, 3 * GIB))])

    monkeypatch.setattr(gpu, "probe_for", probe_for)
    worker = Worker(_BareChild(), Settings(grace_s=0.5), "fork")
    started = time.monotonic()
    try:
        result = worker.run_test(0, None, "t::gpu", Budget(wall_s=20, gpu_gb=1))
    finally:
        worker.close()
    assert time.monotonic() - started < 15
    violation = result.violation
    assert violation is not None and violation.resource == "gpu_gb"
    assert violation.measured == pytest.approx(3.0)
    assert violation.detected_by == "supervisor (GPU memory of the process tree, NVML)"
    assert result.usage.gpu_peak_bytes == 3 * GIB
    # The child was stopped (this bare child has no handler for the stack request signal, so
    # that ends it before SIGTERM does).
    assert result.usage.ending is not None and result.usage.ending.signal_number is not None
