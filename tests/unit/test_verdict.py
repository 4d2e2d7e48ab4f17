"""What a test's figures and messages mean (supervise/verdict.py), without a process: small fakes only."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator

import pytest

from pytest_taichi_limits.config.budget import Budget
from pytest_taichi_limits.config.units import MIB
from pytest_taichi_limits.ipc.protocol import (
    CLAMP_NOTE,
    EXIT_DONE,
    Exit,
    Message,
    Note,
    Refused,
    TaichiDeviceOom,
    TaichiInit,
    TaichiInitDone,
)
from pytest_taichi_limits.model.records import Ending, Usage
from pytest_taichi_limits.supervise import verdict
from pytest_taichi_limits.supervise.verdict import ExitInfo


def _usage(budget: Budget, *, cpu_s: float = 0.0, kernel_peak: int = 0, start: int = 0) -> Usage:
    return Usage(
        nodeid="t.py::t", pid=1, started_at=0.0, wall_s=1.0, cpu_s=cpu_s, start_rss_bytes=start,
        peak_own_rss_bytes=0, peak_rss_bytes=start, peak_vms_bytes=0,
        kernel_maxrss_bytes=kernel_peak, gpu_peak_bytes=None, gpu_note="", samples=1,
        budget=budget, mode="fork", peak_own_memory_bytes=max(0, kernel_peak - start),
        memory_method="smaps",
    )  # fmt: skip


@pytest.fixture
def stack_fd() -> Iterator[int]:
    with tempfile.TemporaryFile() as handle:
        yield handle.fileno()


class _Child:
    def __init__(self, stack_fd: int, cause: str | None = None) -> None:
        self.stack_fd = stack_fd
        self.cause = cause

    def crash_cause(self) -> str | None:
        return self.cause


def test_a_peak_between_two_samples_is_a_kernel_verdict(stack_fd: int) -> None:
    budget = Budget(mem_mb=100)
    within = _usage(budget, kernel_peak=150 * MIB, start=60 * MIB)  # +90 MiB
    assert verdict.after_the_fact("t", budget, within, None, 1, "call", stack_fd) is None
    over = _usage(budget, kernel_peak=200 * MIB, start=60 * MIB)  # +140 MiB
    found = verdict.after_the_fact("t", budget, over, None, 1, "call", stack_fd)
    assert found is not None and found.resource == "mem_mb"
    assert found.measured == pytest.approx(140.0)
    assert found.detected_by.startswith("kernel (peak RSS")


def test_rlimit_cpu_and_a_cgroup_oom_kill_are_named(stack_fd: int) -> None:
    budget = Budget(cpu_s=1, mem_mb=100)
    xcpu = ExitInfo(Ending(None, signal.SIGXCPU), 0, 1.2)
    found = verdict.after_the_fact("t", budget, _usage(budget, cpu_s=1.2), xcpu, 1, "call",
                                   stack_fd)  # fmt: skip
    assert found is not None and found.detected_by == "kernel (RLIMIT_CPU: SIGXCPU)"
    oom = verdict.after_the_fact("t", budget, _usage(budget), None, 1, "call", stack_fd, 1)
    assert oom is not None and oom.resource == "mem_mb" and "memory cgroup" in oom.detected_by


def test_crash_reasons_say_what_happened(stack_fd: int) -> None:
    killed = ExitInfo(Ending(None, signal.SIGKILL), 0, 0.0)
    crash = verdict.crash("t", killed, [], "call", None, _Child(stack_fd))
    assert crash is not None and "OOM killer" in crash.reason
    cause = verdict.crash("t", killed, [], "call", None, _Child(stack_fd, "the zygote died"))
    assert cause is not None and cause.reason == "the zygote died"
    refused: list[Message] = [Refused("different tests were collected")]
    clean = ExitInfo(Ending(EXIT_DONE, None), 0, 0.0)
    crash = verdict.crash("t", clean, refused, "collection", None, _Child(stack_fd))
    assert crash is not None and crash.reason == "different tests were collected"
    exited: list[Message] = [Exit("exit", "stop", None)]
    assert verdict.crash("t", clean, exited, "call", None, _Child(stack_fd)) is None
    silent = verdict.crash("t", ExitInfo(Ending(3, None), 0, 0.0), [], "call", None,
                           _Child(stack_fd))  # fmt: skip
    assert silent is not None and "before it sent its reports" in silent.reason


def test_a_crash_inside_ti_init_gets_the_arch_hint(stack_fd: int) -> None:
    messages: list[Message] = [TaichiInit("gpu", "argument")]
    crash = verdict.crash("t", ExitInfo(Ending(None, signal.SIGSEGV), 0, 0.0), messages,
                          "call", None, _Child(stack_fd))  # fmt: skip
    assert crash is not None and "arch=gpu (argument)" in crash.hint and "TI_ARCH=x64" in crash.hint
    done = [*messages, TaichiInitDone("x64")]
    assert verdict.init_crash_hint(done) == ""


def test_clamp_notes_are_distinct_and_in_order() -> None:
    messages: list[Message] = [Note(CLAMP_NOTE, "a"), Note("other", "x"), Note(CLAMP_NOTE, "b"),
                               Note(CLAMP_NOTE, "a")]  # fmt: skip
    assert verdict.clamp_notes(messages) == ["a", "b"]


def test_device_oom_is_a_gpu_gb_violation_only_under_a_gpu_budget() -> None:
    messages: list[Message] = [TaichiDeviceOom("call", "pool", "x")]
    assert verdict.device_oom("t", Budget(), _usage(Budget()), messages, 1) is None
    found = verdict.device_oom("t", Budget(gpu_gb=1), _usage(Budget(gpu_gb=1)), messages, 1)
    assert found is not None and found.resource == "gpu_gb" and found.detail == "x"


def test_read_stack_of_an_empty_file_is_empty(stack_fd: int) -> None:
    assert verdict.read_stack(stack_fd) == ""
    os.write(stack_fd, b"File x.py, line 3")
    assert verdict.read_stack(stack_fd) == "File x.py, line 3"


def test_a_gpu_arch_that_fell_back_to_the_cpu_is_noted() -> None:
    # issue 21 item 7: ti.init(arch=ti.cuda) on a machine without CUDA runs on x64 with only a
    # warning from Taichi; the record's GPU note says so instead of "no NVIDIA GPU".
    fell_back: list[Message] = [TaichiInit("cuda", "argument"), TaichiInitDone("x64")]
    note = verdict.arch_fallback(fell_back)
    assert note.startswith("not measured: the test asked for arch=cuda")
    assert "ran it on x64" in note
    from_env: list[Message] = [TaichiInit("vulkan", "TI_ARCH"), TaichiInitDone("x64")]
    assert "TI_ARCH=vulkan" in verdict.arch_fallback(from_env)
    # Asked for the CPU, or given the GPU asked for, or an init that failed: nothing to say.
    assert (
        verdict.arch_fallback([TaichiInit("cpu", "Taichi's default"), TaichiInitDone("x64")]) == ""
    )
    assert verdict.arch_fallback([TaichiInit("cuda", "argument"), TaichiInitDone("cuda")]) == ""
    assert verdict.arch_fallback([TaichiInit("cuda", "argument"), TaichiInitDone(None)]) == ""
