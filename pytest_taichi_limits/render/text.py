"""Everything a person reads: violation and crash reports, usage lines, user properties.

The one renderer of a violation's report: the failed test shows it in pytest's output, and the
HTML report shows it again from the test's record. Both `Usage` (what the supervisor measured,
in the pytest process) and `UsageRecord` (what a report holds) have the figures it reads.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any, Protocol

from ..config.budget import BUDGET_KEYS, Budget
from ..config.units import GIB, MIB, human_bytes
from ..measure.gpu import NO_NVIDIA_GPU_NOTE
from ..model.leaks import Leaks
from ..model.records import Crash, Ending, Usage, Violation
from . import leaks as leak_text

#: Taichi archs that run on the host: device_memory_GB (the GPU pool the gpu_gb cap sets) is
#: never used there.
CPU_ARCHS = frozenset({"x64", "arm64", "cpu"})

_CLAMPED = re.compile(r" clamped to device_memory_GB=[0-9.e+-]+ by gpu_gb=[0-9.e+-]+")


class Figures(Protocol):
    """What the reports read of a test's usage: a `Usage` or a `UsageRecord`."""

    @property
    def pid(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def wall_s(self) -> float: ...
    @property
    def cpu_s(self) -> float: ...
    @property
    def start_rss_bytes(self) -> int: ...
    @property
    def peak_own_memory_bytes(self) -> int: ...
    @property
    def memory_method(self) -> str: ...
    @property
    def kernel_own_rss_bytes(self) -> int: ...
    @property
    def peak_rss_bytes(self) -> int: ...
    @property
    def peak_vms_bytes(self) -> int: ...
    @property
    def gpu_peak_bytes(self) -> int | None: ...
    @property
    def gpu_note(self) -> str: ...
    @property
    def gpu_clamps(self) -> tuple[str, ...]: ...
    @property
    def shm_files_left(self) -> tuple[str, ...]: ...
    @property
    def shm_not_removed(self) -> tuple[str, ...]: ...
    @property
    def page_cache_bytes(self) -> int | None: ...
    @property
    def arch(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def budget(self) -> Budget: ...
    @property
    def ending(self) -> Ending | None: ...
    @property
    def leaks(self) -> Leaks | None: ...


#: Budget keys that switch a way of running on, rather than limit a figure: shown only when set
#: (a test that does not hunt leaks has no leak_mb to speak of).
_SHOWN_WHEN_SET = frozenset({"leak_mb"})


def budget_text(budget: Budget) -> str:
    parts = []
    for key, value in budget.as_dict().items():
        if value is None and key in _SHOWN_WHEN_SET:
            continue
        parts.append(f"{key}={'off' if value is None else f'{value:g}'}")
    return " ".join(parts)


def gpu_text(usage: Figures) -> str:
    if usage.gpu_peak_bytes is None:
        return f"GPU {usage.gpu_note}"
    return f"GPU {human_bytes(usage.gpu_peak_bytes)}"


def gpu_cap_lines(usage: Figures) -> list[str]:
    """What the gpu_gb cap took away from the test's ti.init calls, one line each, and what
    the test left in /dev/shm."""
    lines = [f"GPU cap: {clamp_note(note, usage.arch)}" for note in usage.gpu_clamps]
    if usage.shm_files_left:
        lines.append(
            f"left in /dev/shm (memory the machine still holds; "
            f"--taichi-limits-clean-shm removes it): {', '.join(usage.shm_files_left)}"
        )
    if usage.shm_not_removed:
        lines.append(f"kept in /dev/shm: {', '.join(usage.shm_not_removed)}")
    return lines


def clamp_note(note: str, arch: str) -> str:
    """A clamp note as the user should read it on `arch`: on a CPU arch the cap was passed to
    ti.init but takes nothing away, since Taichi's CPU backend never uses that pool."""
    if arch not in CPU_ARCHS:
        return note
    return _CLAMPED.sub(
        f": the gpu_gb cap does not apply on arch {arch} (device_memory_GB is "
        "a GPU pool; the CPU backend's memory counts against mem_mb)",
        note,
    )


def usage_line(usage: Figures) -> str:
    kernel = f"kernel peak +{human_bytes(usage.kernel_own_rss_bytes)}"
    if usage.page_cache_bytes is not None:  # a cgroup: its page cache is said, never charged
        kernel = f"page cache +{human_bytes(usage.page_cache_bytes)}, not charged"
    if usage.peak_rss_bytes:
        sampled = (
            f"own memory +{human_bytes(usage.peak_own_memory_bytes)} "
            f"({usage.memory_method}; {kernel}) | "
            f"RSS {human_bytes(usage.peak_rss_bytes)} "
            f"(started at {human_bytes(usage.start_rss_bytes)}) | "
            f"VMS {human_bytes(usage.peak_vms_bytes)}"
        )
    else:  # the test ended before the first sample: only the kernel's figure exists
        sampled = (
            f"own memory not sampled ({kernel}, started at {human_bytes(usage.start_rss_bytes)})"
        )
    line = f"{sampled} | CPU {usage.cpu_s:.2f} s | wall {usage.wall_s:.2f} s"
    # No NVIDIA GPU on the machine: said once in the session's header, not in every report.
    return line if usage.gpu_note == NO_NVIDIA_GPU_NOTE else f"{line} | {gpu_text(usage)}"


def _measure(resource_key: str, value: float) -> str:
    if resource_key == "mem_mb":
        return human_bytes(value * MIB)
    if resource_key == "gpu_gb":
        return human_bytes(value * GIB)
    return f"{value:.2f} s"


#: The most decimals a figure gets to show that it differs from the limit (a microsecond, a
#: millionth of a unit): an excess smaller than that is shown as it rounds.
_MAX_DECIMALS = 6
_BYTE_UNITS = (("B", 1), ("KiB", 1024), ("MiB", MIB), ("GiB", GIB))


def _precise(resource_key: str, value: float, shows: Callable[[float], bool]) -> str:
    """`value` in the key's unit as _measure writes it, with more decimals (and for bytes, if
    need be, a smaller unit) until `shows` holds of the number as written: no excess is
    rounded away."""
    text = _measure(resource_key, value)
    if resource_key not in ("mem_mb", "gpu_gb"):
        for decimals in range(2, _MAX_DECIMALS + 1):
            number = f"{value:.{decimals}f}"
            if shows(float(number)):
                return f"{number} s"
        return text
    key_unit = MIB if resource_key == "mem_mb" else GIB
    size = value * key_unit
    units = [(name, per) for name, per in _BYTE_UNITS if per <= max(abs(size), 1)]
    for name, per in reversed(units):
        for decimals in range(1) if per == 1 else range(1, _MAX_DECIMALS + 1):
            number = f"{size / per:.{decimals}f}"
            if shows(float(number) * per / key_unit):
                return f"{number} {name}"
    return text


def _above(violation: Violation) -> str:
    """The figure when caught, with the digits that show it went over the limit."""
    return _precise(violation.resource, violation.measured, lambda shown: shown > violation.limit)


def _over(violation: Violation) -> str:
    """How far over, never shown as nothing."""
    return _precise(violation.resource, violation.over_by, lambda shown: shown > 0)


def _percent(violation: Violation) -> str:
    percent = 100.0 * violation.over_by / violation.limit
    for decimals in range(1, _MAX_DECIMALS + 1):
        text = f"{percent:.{decimals}f}"
        if float(text) > 0:
            return f"+{text}%"
    return f"+<{10.0**-_MAX_DECIMALS:.{_MAX_DECIMALS}f}%"


def _limit(resource_key: str, value: float) -> str:
    return f"{resource_key}={value:g}"


def _timestamp(unix_time: float) -> str:
    moment = datetime.datetime.fromtimestamp(unix_time, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def used_text(violation: Violation) -> str:
    """What the test used when it was caught, or that it needed more than the limit (Taichi's
    own pool ran out at the cap: there is no figure above it)."""
    if violation.resource == leak_text.RESOURCE:
        return leak_text.used(violation)
    if violation.measured <= violation.limit:
        return "over the limit"
    return _above(violation)


def over_text(violation: Violation) -> str:
    """'25.5 MiB (+10.0%)': how far over the limit, "—" where no figure is above it."""
    if violation.measured <= violation.limit or violation.resource == leak_text.RESOURCE:
        return "—"
    if not violation.limit:
        return _over(violation)
    return f"{_over(violation)} ({_percent(violation)})"


def violation_headline(violation: Violation) -> str:
    """The violation in one line. Every figure shows that it exceeded the limit: with the
    decimals needed, "4096.01 MiB when caught, limit mem_mb=4096", never "4.0 GiB"."""
    if violation.resource == leak_text.RESOURCE:
        return leak_text.headline(violation)
    if violation.measured <= violation.limit:
        # Caught by Taichi itself (its pool ran out at the cap): there is no figure above it.
        return (
            f"taichi_limits: {violation.resource} exceeded: the test needed more than the "
            f"limit {_limit(violation.resource, violation.limit)}"
        )
    over = _over(violation) + (f", {_percent(violation)}" if violation.limit else ", +0.0%")
    return (
        f"taichi_limits: {violation.resource} exceeded: {_above(violation)}"
        f" when caught, limit {_limit(violation.resource, violation.limit)}"
        f" (over by {over})"
    )


def _labelled(line: str) -> str:
    """A line of gpu_cap_lines under its label in a report: a clamp, or /dev/shm's."""
    if line.startswith("GPU cap: "):
        return f"  gpu cap     {line[len('GPU cap: ') :]}"
    return f"  /dev/shm    {line}"


def violation_report(violation: Violation, usage: Figures) -> str:
    if violation.resource == leak_text.RESOURCE and usage.leaks is not None:
        return _leak_report(violation, usage, usage.leaks)
    signals = ", ".join(violation.signals_sent) or "none"
    ending = usage.ending.describe if usage.ending else "unknown"
    lines = [
        violation_headline(violation),
        f"  caught by   {violation.detected_by}, during {violation.phase}",
    ]
    if violation.detail:
        lines.append(f"  detail      {violation.detail}")
    lines += [
        f"  peak usage  {usage_line(usage)}",
        *[_labelled(line) for line in gpu_cap_lines(usage)],
        # a leak that broke a budget in round 7: the rounds so far
        *([] if usage.leaks is None else leak_text.report_lines(usage.leaks)),
        f"  budget      {budget_text(usage.budget)}",
        f"  stopped     signals sent: {signals}; the test process {ending}",
        (
            f"  process     pid {violation.pid}, caught at {_timestamp(violation.at)}, "
            f"ran {usage.wall_s:.2f} s ({usage.mode} mode)"
        ),
    ]
    lines += _stack_lines("stack at the moment of violation (all threads)", violation.stack)
    return "\n".join(lines)


def _leak_report(violation: Violation, usage: Figures, leaks: Leaks) -> str:
    """A leak: found after the rounds, nothing was stopped, no stack to show: what grew, where
    what stayed was made, and the figures after each round."""
    return "\n".join(
        [
            violation_headline(violation),
            f"  caught by   {violation.detected_by}",
            *leak_text.report_lines(leaks),
            f"  peak usage  {usage_line(usage)}",
            f"  budget      {budget_text(usage.budget)}",
            f"  process     pid {violation.pid}, {usage.wall_s:.2f} s in all ({usage.mode} mode)",
        ]
    )


def crash_report(crash: Crash, usage: Figures) -> str:
    lines = [
        f"taichi_limits: {crash.reason}",
        f"  during      {crash.phase}",
        *([f"  hint        {crash.hint}"] if crash.hint else []),
        f"  last usage  {usage_line(usage)}",
        *([] if usage.leaks is None else leak_text.report_lines(usage.leaks)),
        f"  budget      {budget_text(usage.budget)}",
        (
            f"  process     pid {usage.pid}, started at {_timestamp(usage.started_at)} "
            f"({usage.mode} mode)"
        ),
    ]
    lines += _stack_lines("stack written by faulthandler", crash.stack)
    return "\n".join(lines)


def not_torn_down_line(fixtures: tuple[str, ...]) -> str:
    """Fixtures above function scope whose teardown never ran: the child was killed (native
    code held it past the grace period) or crashed while they were set up."""
    names = ", ".join(fixtures[:_MOST_FIXTURES_NAMED])  # the child's word: bounded
    if len(fixtures) > _MOST_FIXTURES_NAMED:
        names += f" and {len(fixtures) - _MOST_FIXTURES_NAMED} more"
    return (
        f"  not torn down  {names}: the test process ended before its teardown "
        "ran (their finalizers, e.g. removing files or servers, did not run)"
    )


_MOST_FIXTURES_NAMED = 20


def trim_stack(stack: str) -> str:
    """Drop the frames below the test: pytest's, pluggy's and this plugin's own machinery."""
    kept: list[str] = []
    for header, frames in _thread_blocks(stack.splitlines()):
        # The plugin's ti.init wrappers (the cap, the spawn-mode recorder) and its fixture run
        # between the test and Taichi: the frames above and below them belong to the test.
        frames = [frame for frame in frames if not _init_wrapper_frame(frame)]
        plugin_frame = next(
            (
                index
                for index, frame in enumerate(frames)
                if "pytest_taichi_limits" in frame and "pytest_taichi_limits/fixtures" not in frame
            ),
            len(frames),
        )
        frames = frames[:plugin_frame]  # below it is how the plugin called the test
        while frames and any(part in frames[-1] for part in _PLUMBING):
            frames.pop()
        kept += [header, *frames]
    return "\n".join(kept)


def _init_wrapper_frame(frame: str) -> bool:
    return "pytest_taichi_limits/" in frame and (
        "pytest_taichi_limits/taichi_support" in frame
        or "pytest_taichi_limits/taichi_hooks" in frame
        or frame.rstrip().endswith(" in init")
    )


def _thread_blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """faulthandler output as (header line, frame lines) per thread."""
    blocks: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith(" ") and blocks:
            blocks[-1][1].append(line)
        else:
            blocks.append((line, []))
    return blocks


_PLUMBING = ("/_pytest/", "/pluggy/", "/pytest/__main__.py", "<frozen runpy>")


def _stack_lines(title: str, stack: str) -> list[str]:
    trimmed = trim_stack(stack).rstrip()
    if not trimmed.strip():
        return [f"  {title}: not available"]
    return [f"  {title}:"] + [f"    {line}" for line in trimmed.splitlines()]


def user_properties(usage: Usage, violation: Violation | None) -> list[tuple[str, Any]]:
    """Usage as (name, value) pairs: they land in junitxml as <property> elements."""
    properties: list[tuple[str, Any]] = [
        ("taichi_limits_own_memory_bytes", usage.own_memory_bytes),
        ("taichi_limits_memory_method", usage.memory_method),
        ("taichi_limits_own_rss_bytes", usage.peak_own_rss_bytes),
        ("taichi_limits_rss_bytes", usage.peak_rss_bytes),
        ("taichi_limits_kernel_maxrss_bytes", usage.kernel_maxrss_bytes),
        ("taichi_limits_vms_bytes", usage.peak_vms_bytes),
        ("taichi_limits_cpu_s", round(usage.cpu_s, 4)),
        ("taichi_limits_wall_s", round(usage.wall_s, 4)),
        (
            "taichi_limits_gpu_bytes",
            usage.gpu_peak_bytes if usage.gpu_peak_bytes is not None else usage.gpu_note,
        ),
    ]
    for key in BUDGET_KEYS:
        value = getattr(usage.budget, key)
        if value is None and key in _SHOWN_WHEN_SET:
            continue
        properties.append((f"taichi_limits_budget_{key}", "off" if value is None else value))
    clamps = gpu_cap_lines(usage)
    if clamps:
        properties.append(("taichi_limits_gpu_clamp", "; ".join(clamps)))
    properties += leak_text.properties(usage.leaks)
    if violation is not None:
        properties.append(("taichi_limits_violation", violation.resource))
    return properties
