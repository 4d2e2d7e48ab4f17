"""Budget-aware admission: a supervised test starts only when what it may use fits the machine.

With `--taichi-limits-admit` every supervised test, before its child starts, reserves its
`mem_mb` and `gpu_gb` budgets (or, with `=baseline`, its measured peaks from the baseline of
`--taichi-limits-compare` plus the tolerance) in the machine-wide ledger (admission/ledger.py) and
waits
until they fit the capacity (admission/capacity.py); it releases them when the test ends, however
it ends.
The queue is fair: tests are admitted in ticket order, and a later test may overtake a waiting
one that does not fit yet only `MAX_OVERTAKES` times, so a large test is never starved by a
stream of small ones. A test that could never fit fails at once.

Integration (plugin.py): `start(config, options, baseline)` once per process checks the ledger
and registers this object for the header, the terminal summary and the xdist hand-over of the
capacity; around each supervised run `with admission.admitted(nodeid, budget) as grant:`
(AdmissionRefused: fail the test with its message); `grant.env` goes into the child's
environment and `grant.facts()` into the usage record.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..config.budget import Budget
from ..config.options import Options, is_xdist_worker
from ..config.units import human_bytes
from ..formats import baseline as baselines
from ..model.records import Admitted, RecordError, UsageRecord
from ..results.collect import RECORD_ATTRIBUTE
from . import capacity as capacities
from .capacity import Declared, Device
from .ledger import HELD, WAITING, Entry, Ledger, LedgerError, default_directory, this_process

PLUGIN_NAME = "taichi_limits_admission"
#: How many later tests may be admitted past a waiting test that does not fit yet. Small: each
#: overtake can delay the waiting test by one test's run; large enough that a big test waiting
#: for memory does not idle every other worker at once.
MAX_OVERTAKES = 8
#: Polling the ledger: start fast (a release is often milliseconds away), back off to this.
POLL_MIN_S = 0.01
POLL_MAX_S = 0.2
_WORKERINPUT_KEY = "taichi_limits_admission_capacity"


class AdmissionRefused(Exception):
    """A test that could never be admitted: what it needs is more than the whole capacity."""


# -- capacity of this session ---------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """What this session admits against: machine memory, and GPU devices (each its own pool)."""

    mem_bytes: int
    mem_source: str
    devices: tuple[Device, ...] = ()
    gpu_source: str = "no GPU capacity"
    physical_devices: int = 0  # NVML's device count: above 1, a test is pointed at its device

    def describe(self) -> str:
        gpu = f"GPU not reserved ({self.gpu_source}; declare gpu=... to reserve gpu_gb)"
        if self.devices:
            sizes = sorted({device.total_bytes for device in self.devices})
            each = " / ".join(human_bytes(size) for size in sizes)
            gpu = f"GPU {each} on each of {len(self.devices)} device(s) ({self.gpu_source})"
        return f"memory {human_bytes(self.mem_bytes)} ({self.mem_source}); {gpu}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "mem_bytes": self.mem_bytes,
            "mem_source": self.mem_source,
            "devices": [[d.index, d.total_bytes, d.uuid] for d in self.devices],
            "gpu_source": self.gpu_source,
            "physical_devices": self.physical_devices,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capacity:
        devices = tuple(Device(int(i), int(total), str(uuid)) for i, total, uuid in data["devices"])
        return cls(
            int(data["mem_bytes"]),
            str(data["mem_source"]),
            devices,
            str(data["gpu_source"]),
            int(data["physical_devices"]),
        )


def measure_capacity(
    declared: Declared,
    figures: Mapping[str, int] | None = None,
    nvml: Callable[[], tuple[list[Device], str]] | None = None,
    cuda_visible: str | None = None,
) -> Capacity:
    """The session's capacity: declared values, else the machine's (MemAvailable, NVML).

    `nvml` lists the devices (default: capacity.nvml_devices, looked up at each call).
    """
    if declared.mem_bytes is not None:
        mem, mem_source = declared.mem_bytes, "declared"
    else:
        figures = capacities.meminfo() if figures is None else figures
        mem = capacities.machine_memory_bytes(figures)
        mem_source = (
            f"MemAvailable at session start minus a margin of "
            f"{capacities.MARGIN_FRACTION:.0%} of MemTotal"
        )
    found, note = (nvml or capacities.nvml_devices)()
    shown = capacities.visible(found, cuda_visible)
    if found and cuda_visible is not None:
        note += f", {len(shown)} visible through CUDA_VISIBLE_DEVICES={cuda_visible!r}"
    devices = capacities.with_declared(shown, declared.gpu_bytes)
    if declared.gpu_bytes is not None:
        note = "declared" + (
            f" per device; devices from {note}" if found else f", no device list ({note})"
        )
    return Capacity(mem, mem_source, tuple(devices), note, len(found))


# -- the fair queue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    admit: bool
    device: Device | None = None
    overtaken: tuple[int, ...] = ()  # tickets of earlier waiting tests this admission passes


def _held(entries: Iterable[Entry]) -> tuple[int, dict[int, int]]:
    mem = 0
    gpu: dict[int, int] = {}
    for entry in entries:
        if entry.state == HELD:
            mem += entry.mem_bytes
            if entry.gpu_bytes and entry.device is not None:
                gpu[entry.device] = gpu.get(entry.device, 0) + entry.gpu_bytes
    return mem, gpu


def _place(
    entry: Entry, mem: int, gpu: Mapping[int, int], capacity: Capacity
) -> tuple[bool, Device | None]:
    """Whether `entry` fits next to what is held, and on which device."""
    if entry.mem_bytes and mem + entry.mem_bytes > capacity.mem_bytes:
        return False, None
    if not entry.gpu_bytes:
        return True, None
    device = capacities.choose_device(capacity.devices, gpu, entry.gpu_bytes)
    return device is not None, device


def _shares(one: Entry, other: Entry) -> bool:
    return bool(one.mem_bytes and other.mem_bytes) or bool(one.gpu_bytes and other.gpu_bytes)


def decide(
    entries: Sequence[Entry], ticket: int, capacity: Capacity, max_overtakes: int = MAX_OVERTAKES
) -> Decision:
    """Whether the waiting entry `ticket` may start now.

    Earlier waiting entries come first: one that fits counts as started (its process will take
    it at its next look), one that does not fit may be passed, unless it has been passed
    `max_overtakes` times already and competes for the same resource.
    """
    mem, gpu = _held(entries)
    passed: list[int] = []
    waiting = sorted(
        (entry for entry in entries if entry.state == WAITING), key=lambda entry: entry.ticket
    )
    mine = next((entry for entry in waiting if entry.ticket == ticket), None)
    if mine is None:
        return Decision(False)
    for entry in waiting:
        fits, device = _place(entry, mem, gpu, capacity)
        if entry.ticket == ticket:
            return Decision(True, device, tuple(passed)) if fits else Decision(False)
        if fits:
            mem += entry.mem_bytes
            if device is not None:
                gpu = {**gpu, device.index: gpu.get(device.index, 0) + entry.gpu_bytes}
            continue
        if _shares(entry, mine):
            if entry.overtaken >= max_overtakes:
                return Decision(False)
            passed.append(entry.ticket)
    return Decision(False)


# -- one test's admission ---------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """What one test reserves, and where the figure came from (for messages)."""

    mem_bytes: int
    gpu_bytes: int
    source: str


@dataclass(frozen=True)
class Grant:
    """An admitted test: how long it waited, the device it got, what was reserved then."""

    wait_s: float = 0.0
    need: Need | None = None
    device: Device | None = None
    reserved_mem_bytes: int = 0  # held on the machine right after this admission (all sessions)
    reserved_gpu_bytes: int = 0  # held on this test's device right after this admission
    env: dict[str, str] = field(default_factory=dict)  # for the child's environment
    capacity_mem_bytes: int = 0  # the memory capacity this test was admitted against

    def facts(self) -> Admitted | None:
        """Usage.admission (and so the JSON log and records); None when not admitted."""
        if self.need is None:
            return None
        return Admitted(
            wait_s=round(self.wait_s, 4),
            mem_bytes=self.need.mem_bytes,
            gpu_bytes=self.need.gpu_bytes,
            source=self.need.source,
            device=None if self.device is None or self.device.index < 0 else self.device.index,
            reserved_mem_bytes=self.reserved_mem_bytes,
            reserved_gpu_bytes=self.reserved_gpu_bytes,
            capacity_mem_bytes=self.capacity_mem_bytes,
        )


def _highest(entry: baselines.Entry, field_name: str) -> float | None:
    found = entry.ranges.get(field_name)
    return None if found is None else found.high


def report_lines(admitted: Admitted | None) -> list[str]:
    """The admission line of a test's usage section (none if it was not admitted)."""
    if admitted is None:
        return []
    gpu = ""
    if admitted.gpu_bytes:
        device = admitted.device
        gpu = f", GPU {human_bytes(admitted.gpu_bytes)}" + (
            "" if device is None else f" on device {device}"
        )
    return [
        (
            f"admission: waited {admitted.wait_s:.2f} s for memory "
            f"{human_bytes(admitted.mem_bytes)}{gpu} ({admitted.source}); reserved on the "
            f"machine then {human_bytes(admitted.reserved_mem_bytes)}"
        )
    ]


@dataclass(eq=False)  # registered as a plugin: compared by identity
class Admission:
    """Admission for one pytest process; `mode` None: off (every test starts at once)."""

    mode: str | None
    declared: Declared = field(default_factory=Declared)
    directory: str = ""
    baseline: Mapping[str, baselines.Entry] | None = None
    allowances: Mapping[str, Any] = field(default_factory=dict)
    capacity: Capacity | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _ledger: Ledger | None = None
    #: Per admitted test, from the usage records: (wait, reserved memory, reserved GPU memory).
    waits: dict[str, tuple[float, int, int]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def session_capacity(self) -> Capacity:
        if self.capacity is None:
            self.capacity = measure_capacity(
                self.declared, cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES")
            )
        return self.capacity

    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.directory)
        return self._ledger

    # -- what a test needs --------------------------------------------------------------------

    def need_of(self, nodeid: str, budget: Budget) -> Need:
        mem_limit = budget.mem_bytes
        gpu_limit = budget.gpu_bytes
        # No memory limit: nobody can say how much it takes, so it runs alone. No GPU limit:
        # most tests use no GPU at all (gpu_gb is off by default), so none is reserved; nor
        # where there is no GPU capacity (no NVML, none declared): gpu_gb then only caps ti.init.
        capacity = self.session_capacity()
        mem = capacity.mem_bytes if mem_limit is None else mem_limit
        gpu = (gpu_limit or 0) if capacity.devices else 0
        source = "its budget" if mem_limit is not None else "no mem_mb limit: runs alone"
        entry = (
            None if self.mode != "baseline" or self.baseline is None else self.baseline.get(nodeid)
        )
        if entry is None:
            if self.mode == "baseline":
                source += "; not in the baseline"
            return Need(mem, gpu, source)
        # The largest figure the baseline saw, over all its runs.
        measured_mem = self._allowed("mem", _highest(entry, "own_memory_bytes"))
        measured_gpu = self._allowed("gpu", _highest(entry, "gpu_bytes"))
        if measured_mem is not None:
            mem = measured_mem if mem_limit is None else min(mem_limit, measured_mem)
        if measured_gpu is not None and gpu_limit is not None and capacity.devices:
            gpu = min(gpu_limit, measured_gpu)
        return Need(mem, gpu, "baseline peak plus tolerance, at most the budget")

    def _allowed(self, key: str, before: object) -> int | None:
        if not isinstance(before, (int, float)) or isinstance(before, bool):
            return None
        allowance = self.allowances.get(key)
        return int(before if allowance is None else allowance.limit(float(before)))

    def refuse_if_too_large(self, nodeid: str, need: Need) -> None:
        capacity = self.session_capacity()
        if need.mem_bytes > capacity.mem_bytes:
            raise AdmissionRefused(
                f"taichi_limits admission: {nodeid} needs memory {human_bytes(need.mem_bytes)} "
                f"({need.source}) but the whole capacity is {human_bytes(capacity.mem_bytes)} "
                f"({capacity.mem_source}): it could never start. Lower its mem_mb or raise "
                "--taichi-limits-capacity=mem=..."
            )
        largest = max((device.total_bytes for device in capacity.devices), default=0)
        if need.gpu_bytes > largest:
            raise AdmissionRefused(
                f"taichi_limits admission: {nodeid} needs GPU memory "
                f"{human_bytes(need.gpu_bytes)} ({need.source}) but the largest device holds "
                f"{human_bytes(largest)}: it could never start. Lower its gpu_gb or raise "
                "--taichi-limits-capacity=gpu=..."
            )

    # -- admitting ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admitted(self, nodeid: str, budget: Budget) -> Iterator[Grant]:
        """Reserve before the block, release after it, whatever ends it."""
        if not self.enabled:
            yield Grant()
            return
        need = self.need_of(nodeid, budget)
        self.refuse_if_too_large(nodeid, need)
        ledger = self.ledger()
        pid, start = this_process()
        started = self.clock()
        with ledger.transaction() as entries:
            mine = [self._enqueue(entries, pid, start, need, nodeid)]  # _wait may re-queue it
        try:
            yield self._wait(ledger, mine, need, started)
        finally:
            with ledger.transaction() as entries:
                entries[:] = [other for other in entries if not _same(other, mine[0])]

    @staticmethod
    def _enqueue(
        entries: list[Entry],
        pid: int,
        start: int,
        need: Need,
        nodeid: str,
        ticket: int | None = None,
    ) -> Entry:
        taken = {entry.ticket for entry in entries}
        if ticket is None or ticket in taken:
            ticket = max(taken, default=0) + 1
        entry = Entry(
            ticket, pid, start, WAITING, need.mem_bytes, need.gpu_bytes, None, time.time(), nodeid
        )
        entries.append(entry)
        return entry

    def _wait(self, ledger: Ledger, mine: list[Entry], need: Need, started: float) -> Grant:
        """Wait until `mine[0]` is admitted; `mine[0]` is kept current for the release."""
        capacity = self.session_capacity()
        delay = POLL_MIN_S
        while True:
            with ledger.transaction() as entries:
                entry = mine[0]
                if not any(_same(other, entry) for other in entries):
                    # Lost with a damaged ledger: queue again, at the same place if it is free.
                    mine[0] = entry = self._enqueue(
                        entries, entry.pid, entry.start, need, entry.nodeid, entry.ticket
                    )
                decision = decide(entries, entry.ticket, capacity)
                if decision.admit:
                    return self._take(entries, entry, decision, need, started, capacity)
            self.sleep(delay)
            delay = min(POLL_MAX_S, delay * 1.5)

    def _take(
        self,
        entries: list[Entry],
        mine: Entry,
        decision: Decision,
        need: Need,
        started: float,
        capacity: Capacity,
    ) -> Grant:
        device = decision.device
        for index, other in enumerate(entries):
            if _same(other, mine):
                entries[index] = Entry(
                    mine.ticket,
                    mine.pid,
                    mine.start,
                    HELD,
                    mine.mem_bytes,
                    mine.gpu_bytes,
                    None if device is None else device.index,
                    mine.since,
                    mine.nodeid,
                )
            elif other.ticket in decision.overtaken and other.state == WAITING:
                entries[index] = _passed(other)
        mem, gpu = _held(entries)
        env = {}
        if device is not None and device.index >= 0 and capacity.physical_devices > 1:
            env = device.env()
        return Grant(
            self.clock() - started,
            need,
            device,
            mem,
            0 if device is None else gpu.get(device.index, 0),
            env,
            capacity.mem_bytes,
        )

    # -- header, summary, xdist ---------------------------------------------------------------

    def header_lines(self) -> list[str]:
        if not self.enabled:
            return []
        what = (
            "mem_mb and gpu_gb budgets"
            if self.mode == "budget"
            else "baseline peaks plus tolerance (budgets for tests not in the baseline)"
        )
        return [
            (
                f"taichi-limits: admission by {self.mode}: each supervised test reserves its "
                f"{what} before it starts; capacity {self.session_capacity().describe()}; "
                f"ledger {self.directory}"
            )
        ]

    def pytest_report_header(self) -> list[str]:
        return self.header_lines()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        # xdist controller: every worker admits against the capacity measured once, here.
        if self.enabled:
            node.workerinput[_WORKERINPUT_KEY] = self.session_capacity().as_dict()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Where reports are logged: the only process, or the xdist controller.
        data = getattr(report, RECORD_ATTRIBUTE, None)
        if report.when != "teardown" or data is None:
            return
        try:
            admitted = UsageRecord.from_json(data).admission
        except RecordError:
            return  # the results plugin reports a record it cannot read
        if admitted is not None:
            self.waits[report.nodeid] = (
                admitted.wait_s,
                admitted.reserved_mem_bytes,
                admitted.reserved_gpu_bytes,
            )

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if not self.enabled or is_xdist_worker(config):
            return
        lines = summary_lines(self.waits, self.capacity)
        if lines:
            terminalreporter.write_sep("-", "taichi-limits admission")
            for line in lines:
                terminalreporter.write_line(line)


def _same(one: Entry, other: Entry) -> bool:
    return (one.ticket, one.pid, one.start) == (other.ticket, other.pid, other.start)


def _passed(entry: Entry) -> Entry:
    return Entry(
        entry.ticket,
        entry.pid,
        entry.start,
        entry.state,
        entry.mem_bytes,
        entry.gpu_bytes,
        entry.device,
        entry.since,
        entry.nodeid,
        entry.overtaken + 1,
    )


def summary_lines(
    waits: Mapping[str, tuple[float, int, int]], capacity: Capacity | None
) -> list[str]:
    """The terminal summary: total and longest wait, peak reserved memory against capacity.

    `waits`: node id -> (wait in seconds, memory and GPU memory reserved on the machine right
    after that test was admitted), per admitted test.
    """
    if not waits:
        return []
    total = sum(wait for wait, _, _ in waits.values())
    longest_id, (longest_s, _, _) = max(waits.items(), key=lambda item: item[1][0])
    peak_mem = max(mem for _, mem, _ in waits.values())
    peak_gpu = max(gpu for _, _, gpu in waits.values())
    of = "" if capacity is None else f" of {human_bytes(capacity.mem_bytes)}"
    lines = [
        f"{len(waits)} tests admitted; waited {total:.1f} s in total"
        + (f" (longest {longest_s:.1f} s: {longest_id})" if longest_s >= 0.05 else ""),
        f"peak reserved memory {human_bytes(peak_mem)}{of} (machine-wide, every session)"
        + (f"; peak reserved GPU memory on one device {human_bytes(peak_gpu)}" if peak_gpu else ""),
    ]
    if total < 0.05 * len(waits):
        lines.append("tests hardly waited: more workers (-n) could run at once")
    return lines


# -- start ----------------------------------------------------------------------------------


def start(
    config: pytest.Config,
    options: Options,
    baseline: baselines.Baseline | None,
    spawn_worker: bool = False,
) -> Admission:
    """Admission for this process, from options validated in config/options.py; where tests are
    admitted or reported, its ledger checked (pytest.UsageError) and the object registered as a
    plugin. `baseline`: --taichi-limits-compare's, loaded once by results/session.py."""
    admission = Admission(options.admit, options.capacity)
    if options.admit is None or spawn_worker:
        return admission  # a spawn worker runs one test for a parent that admitted it
    if options.admit == "baseline" and baseline is not None:
        admission.baseline = baseline.tests
        admission.allowances = options.tolerance.allowances
    admission.directory = default_directory()
    try:
        admission.ledger()
    except LedgerError as error:
        raise pytest.UsageError(f"--taichi-limits-admit: {error.strerror or error}") from None
    handed = getattr(config, "workerinput", {}).get(_WORKERINPUT_KEY)
    if handed is not None:
        admission.capacity = Capacity.from_dict(handed)
    config.pluginmanager.register(admission, PLUGIN_NAME)
    return admission
