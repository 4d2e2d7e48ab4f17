"""Taichi inside the supervised child: the GPU cap on ti.init, Taichi's own device out-of-memory
errors, a crash inside ti.init, and a clean reset at the end.

What Taichi 1.7.4 does (read at tag v1.7.4, python/taichi/lang/misc.py and
taichi/runtime/llvm/llvm_runtime_executor.cpp):
- `device_memory_GB` (default 1) and `device_memory_fraction` (default 0; non-zero replaces GB)
  size the pool that only the CUDA and AMDGPU backends preallocate; the CPU backend ignores both
  but `taichi.lang.impl.current_cfg()` still shows them.
- A ti.init keyword beats the matching TI_* environment variable (Taichi warns that it was
  overridden); each key is resolved on its own, so TI_DEVICE_MEMORY_FRACTION still applies when
  only device_memory_GB is passed. TI_ARCH beats `arch=`.
So the cap passes both keys explicitly on every ti.init. A second line of defence checks the
resolved configuration inside ti.init itself (at `adaptive_arch_select`, which every ti.init
calls after arguments and environment are applied and before the program is created), so that
an `init` reached through a reference the plugin could not replace is capped too.

The wrapper around ti.init and that backstop are taichi_hooks', installed once per process;
this module is the context a supervised child puts in it (`_Cap`). Nothing here depends on how
the child was started (fork or a fresh interpreter).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from ..config.budget import Budget
from ..config.units import GIB
from ..ipc.channel import ChannelWriter
from ..ipc.protocol import CLAMP_NOTE, Note, TaichiDeviceOom, TaichiInit, TaichiInitDone
from . import reinit
from .hooks import install_init_wrapper, set_init_context

#: Taichi's own default for device_memory_GB (taichi/program/compile_config.cpp).
TAICHI_DEFAULT_DEVICE_MEMORY_GB = 1.0

# -- the cap ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryRequest:
    """What a ti.init call asks for after Taichi's own precedence (argument > environment)."""

    gb: float
    gb_from: str  # "argument", "TI_DEVICE_MEMORY_GB" or "Taichi's default"
    fraction: float
    fraction_from: str  # "argument", "TI_DEVICE_MEMORY_FRACTION" or "Taichi's default"

    def describe(self) -> str:
        if self.fraction:
            return f"device_memory_fraction={self.fraction:g} (from {self.fraction_from})"
        return f"device_memory_GB={self.gb:g} (from {self.gb_from})"


@dataclass(frozen=True)
class CappedMemory:
    """The two keys the plugin passes to ti.init, and whether that took memory away."""

    device_memory_GB: float
    device_memory_fraction: float
    clamped: bool
    request: MemoryRequest
    cap_gb: float

    def note(self) -> str:
        return (
            f"ti.init {self.request.describe()} clamped to "
            f"device_memory_GB={self.device_memory_GB:g} by gpu_gb={self.cap_gb:g}"
        )


def _env_number(environ: Mapping[str, str], name: str) -> float | None:
    text = environ.get(name, "")
    if not text:  # Taichi treats an empty variable as unset
        return None
    try:
        return float(text)
    except ValueError:
        return None  # the plugin passes the key explicitly, so Taichi never parses it


def memory_request(kwargs: Mapping[str, Any], environ: Mapping[str, str]) -> MemoryRequest:
    """Resolve device_memory_GB / _fraction as Taichi 1.7.4 does, key by key."""
    if "device_memory_GB" in kwargs:
        gb, gb_from = float(kwargs["device_memory_GB"]), "argument"
    elif (value := _env_number(environ, "TI_DEVICE_MEMORY_GB")) is not None:
        gb, gb_from = value, "TI_DEVICE_MEMORY_GB"
    else:
        gb, gb_from = TAICHI_DEFAULT_DEVICE_MEMORY_GB, "Taichi's default"
    if "device_memory_fraction" in kwargs:
        fraction, fraction_from = float(kwargs["device_memory_fraction"]), "argument"
    elif (value := _env_number(environ, "TI_DEVICE_MEMORY_FRACTION")) is not None:
        fraction, fraction_from = value, "TI_DEVICE_MEMORY_FRACTION"
    else:
        fraction, fraction_from = 0.0, "Taichi's default"
    return MemoryRequest(gb, gb_from, fraction, fraction_from)


def cap_memory(
    request: MemoryRequest, cap_gb: float, device_total_bytes: int | None
) -> CappedMemory:
    """At most `cap_gb`, always as device_memory_GB with the fraction switched off.

    A fraction can only be kept as its size in GB when the device's size is known; otherwise the
    cap itself is the bound.
    """
    if request.fraction:
        if device_total_bytes is not None:
            asked_gb = request.fraction * device_total_bytes / GIB
        else:
            asked_gb = math.inf  # unknown: assume it is more than the cap
    else:
        asked_gb = request.gb
    granted = min(asked_gb, cap_gb)
    return CappedMemory(granted, 0.0, asked_gb > cap_gb, request, cap_gb)


class GpuCap:
    """The supervised child's ti.init context (taichi_hooks.InitContext): caps device memory
    and tells the parent which arch Taichi was asked for and which it chose. The child sets
    `cap_gb` to each test's gpu_gb before it runs that test."""

    def __init__(
        self, budget: Budget, writer: ChannelWriter, device_total: Callable[[], int | None]
    ) -> None:
        self.cap_gb = budget.gpu_gb
        self.writer = writer
        self.device_total = device_total

    def run_init(
        self, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        reinit.cancel()  # the test's own init: the pytest process's is not replayed
        arch = args[0] if args else kwargs.get("arch")
        self.writer.send(TaichiInit(*requested_arch(arch, os.environ)))
        if self.cap_gb is not None:
            request = memory_request(kwargs, os.environ)
            total = self.device_total() if request.fraction else None
            capped = cap_memory(request, self.cap_gb, total)
            kwargs["device_memory_GB"] = capped.device_memory_GB
            kwargs["device_memory_fraction"] = capped.device_memory_fraction
            if capped.clamped:
                self._send_clamp(capped.note())
        try:
            return original(*args, **kwargs)
        finally:
            self.writer.send(TaichiInitDone(_applied_arch()))

    def check_resolved(self, arch: Any, through_wrapper: bool) -> None:
        if not through_wrapper:
            # No TaichiInit was sent for this call: at least the record names the arch.
            self.writer.send(TaichiInitDone(arch_name(arch)))
        if self.cap_gb is None:
            return
        from taichi.lang import impl

        cfg = impl.default_cfg()
        fraction, gb = float(cfg.device_memory_fraction), float(cfg.device_memory_GB)
        if not fraction and gb <= self.cap_gb:
            return
        request = MemoryRequest(gb, "ti.init", fraction, "ti.init")
        capped = cap_memory(request, self.cap_gb, self.device_total() if fraction else None)
        cfg.device_memory_GB = capped.device_memory_GB
        cfg.device_memory_fraction = capped.device_memory_fraction
        if capped.clamped:
            text = capped.note()
            if not through_wrapper:  # only then is it true
                text += " (ti.init was reached through a reference the plugin could not replace)"
            self._send_clamp(text)

    def _send_clamp(self, text: str) -> None:
        self.writer.send(Note(CLAMP_NOTE, text))


def _applied_arch() -> str | None:
    """The arch Taichi chose, where it got that far (it falls back, e.g. cuda -> x64)."""
    try:
        from taichi.lang import impl

        return arch_name(impl.current_cfg().arch)
    except Exception:  # noqa: BLE001 - a failed ti.init has no program to ask
        return None


def current_arch() -> str | None:
    """The arch of this process's Taichi program now; None when there is none (never replays
    the pytest process's init to find out)."""
    if not reinit.taichi_initialised():
        return None
    return _applied_arch()


def requested_arch(arch: Any, environ: Mapping[str, str]) -> tuple[str, str]:
    """The arch a ti.init call will try, by name, and where that came from."""
    env_arch = environ.get("TI_ARCH")
    if env_arch is not None:
        return env_arch, "TI_ARCH"
    if arch is None:
        return "cpu", "Taichi's default"
    return arch_name(arch), "argument"


def arch_name(arch: Any) -> str:
    if isinstance(arch, (list, tuple)):
        misc = sys.modules.get("taichi.lang.misc")
        if misc is not None and list(arch) == list(misc.gpu):
            return "gpu"
        return "[" + ", ".join(arch_name(one) for one in arch) + "]"
    name = getattr(arch, "name", None)
    return str(name) if name else str(arch)


# -- the child's side ---------------------------------------------------------------------------


def prepare_child(budget: Budget, writer: ChannelWriter) -> GpuCap:
    """Called in the child before the test's phases run: cap every ti.init of this process.

    The wrapper is normally inherited (installed in the pytest process or the spawn-mode zygote,
    see taichi_hooks), so this only sets the context; where it is not, it is installed here.
    """
    from ..measure import gpu

    install_init_wrapper()
    cap = GpuCap(budget, writer, gpu.smallest_device_total_bytes)
    set_init_context(cap)
    return cap


def finish_child(writer: ChannelWriter) -> None:
    """Reset Taichi so that its offline kernel cache is written before the child exits.

    Only where the test left a program: without one there is no cache to write, and the child
    leaves through os._exit, so nothing else needs the reset.
    """
    taichi = sys.modules.get("taichi")
    if taichi is None or not _has_program():
        return
    try:
        taichi.reset()
    except Exception as error:  # noqa: BLE001 - a failing reset must not hide the test's result
        writer.send(Note("taichi_reset_failed", f"{type(error).__name__}: {error}"))


def _has_program() -> bool:
    # Never through `.prog`: that would replay the pytest process's init (taichi_replay).
    return reinit.taichi_initialised()


# -- Taichi's own device out-of-memory errors ---------------------------------------------------

#: Texts Taichi 1.7.4 produces when device memory runs out (from its source at tag v1.7.4):
#: runtime.cpp's allocate_from_reserved_memory (the device_memory_GB pool; CUDA prints the first
#: from a device-side assert, the host-side check raises the second), the CUDA/AMDGPU driver
#: wrappers' "CUDA Error {name}: {text} while calling ..." and device_memory_pool.cpp.
DEVICE_OOM_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "the device_memory_GB pool is exhausted",
        re.compile(r"Out of CUDA pre-allocated memory[^\n]*"),
    ),
    ("the device_memory_GB pool is exhausted", re.compile(r"Out of pre-allocated memory[^\n]*")),
    ("the GPU driver is out of memory", re.compile(r"CUDA_ERROR_OUT_OF_MEMORY[^\n]*")),
    ("the GPU driver is out of memory", re.compile(r"hipErrorOutOfMemory[^\n]*")),
    ("the GPU driver is out of memory", re.compile(r"VK_ERROR_OUT_OF_DEVICE_MEMORY[^\n]*")),
    ("a device allocation failed", re.compile(r"Device memory allocation \(\d+ B\) failed[^\n]*")),
)


def recognise_device_oom(text: str) -> tuple[str, str] | None:
    """(what ran out, the line Taichi wrote) for a device out-of-memory text, else None."""
    for what, pattern in DEVICE_OOM_PATTERNS:
        match = pattern.search(text)
        if match:
            return what, match.group(0).strip()
    return None


def inspect_report(report: pytest.TestReport, writer: ChannelWriter) -> None:
    """Tell the parent when a phase failed because Taichi ran out of device memory."""
    if not report.failed or "taichi" not in sys.modules:
        return
    # The driver's text is in the exception message; a device-side assert's only in captured
    # output. The full traceback comes last: its source lines may quote such a text too.
    crash = getattr(report.longrepr, "reprcrash", None)
    texts = [str(getattr(crash, "message", ""))] + [content for _, content in report.sections]
    texts.append(report.longreprtext)
    for text in texts:
        found = recognise_device_oom(text)
        if found is not None:
            what, line = found
            writer.send(TaichiDeviceOom(report.when, what, line))
            return
